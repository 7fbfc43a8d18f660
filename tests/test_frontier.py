"""The frontier from hand-made rows: effective values, leakage beyond labels, fronts, budgets, and
one tiny run end to end."""

import json
import os

import numpy as np
import pytest

from mip_jax.studies import frontier

SEEDS = 3


def row(family, knob, attacker, acc, err, dist, private=None, model_acc=1.0):
  """An aggregated row as the engine writes it: per-seed values and their mean."""
  acc, err = np.broadcast_to(acc, SEEDS).astype(float), np.broadcast_to(err, SEEDS).astype(float)
  dist = np.full(SEEDS, dist, float)
  private = dist if private is None else np.full(SEEDS, private, float)
  knob = '-' if knob == '-' else f'x={knob}'  # as Setting.knob writes the override ('x', knob)
  out = {'family': family, 'defense': family.split(':')[0], 'knob': knob, 'attacker': attacker}
  for name, v in (('attack_acc', acc), ('recon_error', err), ('conf_dist', dist),
                  ('conf_dist_private', private), ('model_acc', np.full(SEEDS, model_acc)),
                  ('knn_dist', err * 10)):
    out.update({name: float(v.mean()), f'{name}_std': float(v.std()), f'{name}_seeds': v.tolist()})
  return out


def settings_of(rows):
  seen = dict.fromkeys((r['family'], r['knob']) for r in rows)
  return [frontier.Setting(f, f, () if k == '-' else (('x', k[2:]),)) for f, k in seen]


def test_effective_is_the_best_attacker_per_seed():
  rows = [row('noise', '0.1', 'floor', [0.9, 0.5, 0.7], [0.02, 0.05, 0.03], 0.1),
          row('noise', '0.1', 'label', [0.6, 0.8, 0.6], [0.04, 0.04, 0.04], 0.1)]
  (e,) = frontier.effective(rows, [frontier.Setting('noise', 'noise', (('x', '0.1'),))])
  assert e['effective_attack_acc_seeds'] == [0.9, 0.8, 0.7]  # max per seed, not max of means
  assert e['effective_attack_acc'] == pytest.approx(0.8)
  assert e['effective_recon_error_seeds'] == [0.02, 0.04, 0.03]  # min per seed
  assert e['effective_attack_acc_by'] == 'floor'  # best on 2 of 3 seeds
  assert e['effective_knn_dist'] == pytest.approx(0.3)


def test_leakage_beyond_labels_and_the_gap_closed():
  rows = [row('none', '-', 'floor', 0.9, 0.02, 0.0), row('none', '-', 'label', 0.5, 0.04, 0.0),
          row('tail', '1', 'floor', 0.6, 0.035, 0.01), row('tail', '1', 'label', 0.5, 0.04, 0.01)]
  entries = frontier.effective(rows, settings_of(rows))
  frontier.add_leakage(entries, rows)
  none, tail = entries
  assert none['leakage_attack_acc'] == pytest.approx(0.4)
  assert tail['leakage_attack_acc'] == pytest.approx(0.1)  # 0.6 - 0.5
  assert tail['gap_closed_attack_acc'] == pytest.approx(0.75)  # (0.4 - 0.1) / 0.4
  assert tail['leakage_recon_error'] == pytest.approx(0.005)  # the label error minus its error
  assert tail['gap_closed_recon_error'] == pytest.approx(0.75)  # (0.035-0.02)/(0.04-0.02)
  assert none['gap_closed_attack_acc'] == pytest.approx(0.0)


def entries_for(points):
  """family -> [(knob, distortion, attack acc, error)] as entries (one attacker each)."""
  rows = [row(f, k, 'floor', acc, err, d) for f, pts in points.items() for k, d, acc, err in pts]
  return frontier.effective(rows, settings_of(rows))


POINTS = {
    'random': [('a', 0.002, 0.95, 0.02), ('b', 0.01, 0.90, 0.03), ('c', 0.1, 0.60, 0.05)],
    'lpa': [('a', 0.003, 0.97, 0.02), ('b', 0.02, 0.80, 0.03), ('c', 0.05, 0.85, 0.04)],
}


def test_the_front_and_the_best_setting_within_each_budget():
  entries = entries_for(POINTS)
  lpa = [e for e in entries if e['family'] == 'lpa']
  # 'c' distorts more than 'b' and leaks more: off the front.
  assert [e['knob'] for e in frontier.front(lpa)] == ['x=a', 'x=b']
  assert frontier.best_within(lpa, 0.001) is None
  assert frontier.best_within(lpa, 0.01)['knob'] == 'x=a'
  assert frontier.best_within(lpa, 0.3)['knob'] == 'x=b'  # the lowest accuracy, not the largest eps
  error = frontier.MEASURES['recon_error']
  assert frontier.best_within(lpa, 0.3, measure=error)['knob'] == 'x=c'  # the highest error


def test_budget_table_pairs_with_the_controls_best_at_the_same_budget():
  entries = entries_for(POINTS)
  table = frontier.by_budget(entries, [0.01, 0.3])
  at = {(r['budget'], r['family']): r for r in table}
  assert at[(0.01, 'lpa')]['control_knob'] == 'x=b'
  assert at[(0.01, 'lpa')]['vs_control']['mean'] == pytest.approx(0.97 - 0.90)
  assert at[(0.3, 'lpa')]['control_knob'] == 'x=c'
  assert at[(0.3, 'lpa')]['vs_control']['mean'] == pytest.approx(0.80 - 0.60)
  assert 'vs_control' not in at[(0.3, 'random')]
  rec = frontier.recommended(table)
  assert [(r['budget'], r['family']) for r in rec] == [(0.01, 'random'), (0.3, 'random')]
  assert rec[1]['overrides'] == {'x': 'c'} and rec[1]['effective_attack_acc'] == pytest.approx(0.6)


def test_a_saturated_accuracy_ties_are_broken_by_the_error():
  entries = entries_for({'x': [('a', 0.01, 1.0, 0.03), ('b', 0.02, 1.0, 0.05)]})
  assert frontier.best_within(entries, 0.1)['knob'] == 'x=b'


def test_tiny_frontier_end_to_end(tiny_config, tmp_path):
  c = tiny_config
  c.frontier.max_epochs = 2
  c.frontier.families = ('none', 'random', 'tailfloor:noise')
  c.frontier.cheap = ('floor', 'label')
  c.frontier.suite = ('floor', 'label', 'rank:defended')
  with c.unlocked():
    c.frontier.budgets = (0.01, 0.3)
  result = frontier.run(c, str(tmp_path), seeds=[0])
  doc = json.load(open(tmp_path / 'frontier.json'))
  assert os.path.getsize(tmp_path / 'frontier.png') > 1000
  families = [e['family'] for e in doc['settings']]
  assert families.count('random') == 7 and families.count('tailfloor:noise') == 5
  full = [e for e in doc['settings'] if e['suite'] == 'full']
  assert full and all('rank:defended' in e['attackers'] for e in full)
  for e in doc['settings']:
    accs = [a['attack_acc'] for a in e['attackers'].values()]
    assert e['effective_attack_acc'] == pytest.approx(max(accs))  # one seed: the max
    assert e['agreement'] == 1.0  # all label preserving
  assert [r['budget'] for r in doc['recommended']] == [0.01, 0.3]
  assert '## Effective attack accuracy at budget b' in result['markdown']


def test_knobs_keep_the_named_grid_points_and_reject_others():
  from configs import digits
  c = digits.get_config()
  c.frontier.families = ('none', 'random', 'lpa:attributed', 'topk')
  c.frontier.knobs = {'random': (0.05, 0.01), 'lpa:attributed': (0.05,)}
  got = [(s.family, s.knob) for s in frontier.sweeps(c)]
  m = len(c.private_classes)
  assert got == ([('none', '-'), ('random', 'lpa.eps=0.01'), ('random', 'lpa.eps=0.05'),
                  ('lpa:attributed', 'lpa.eps=0.05')] + [('topk', f'topk.k={k}') for k in range(1, m)])
  c.frontier.knobs = {'random': (0.03,)}
  with pytest.raises(ValueError, match=r"knobs\['random'\] lists \[0.03\]"):
    frontier.sweeps(c)
  c.frontier.knobs = {'nonesuch': (1,)}
  with pytest.raises(ValueError, match='nonesuch'):
    frontier.sweeps(c)


def test_report_only_measures_nothing_and_keeps_what_is_saved(tiny_config, tmp_path):
  c = tiny_config
  c.frontier.max_epochs = 2
  c.frontier.families = ('none', 'random')
  c.frontier.knobs = {'random': (0.01, 0.05)}
  c.frontier.cheap = c.frontier.suite = ('floor', 'label')
  with c.unlocked():
    c.frontier.budgets = (0.3,)
  first = frontier.run(c, str(tmp_path), seeds=[0])
  c.frontier.knobs = {'random': (0.01, 0.05, 0.2)}  # 0.2 was never measured: left out
  again = frontier.run(c, str(tmp_path), seeds=[0], report_only=True)
  assert [(e['family'], e['knob']) for e in again['settings']] == \
      [(e['family'], e['knob']) for e in first['settings']]
  assert again['by_budget'] == first['by_budget']
  cells = os.listdir(tmp_path / 'seed_0' / 'cells')
  assert len([f for f in cells if f.endswith('.config.json')]) == 3  # none, random x2
