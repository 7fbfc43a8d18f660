"""launch.paper's experiments end to end on the tiny digits config, sharing one workdir.

Sweeps are cut to one or two values and the zero-robust attacker is left out of all but the first
test (monkeypatched) to keep the module short; the full experiments run in `docs/results/`.
"""

import collections
import json
import os

import pytest

from configs import digits
from mip_jax.runtime import checkpoints
from mip_jax.studies import paper
from mip_jax.studies import engine as cells
from mip_jax.studies.paper import claims, experiments


@pytest.fixture(scope='module')
def saves():
  """Every (stage, epoch) saved during the module: a stage trained twice saves epoch 1 twice."""
  log = []
  original = checkpoints.StageCheckpoint.save

  def save(self, epoch, state, **kwargs):
    log.append((self.stage, epoch))
    return original(self, epoch, state, **kwargs)

  mp = pytest.MonkeyPatch()
  mp.setattr(checkpoints.StageCheckpoint, 'save', save)
  mp.setattr(experiments, 'PAPER_EPS', (0.05,))
  mp.setattr(experiments, 'FIG8_SWEEPS', {'lpa': ('lpa.eps', (0.05,)),
                                          'noise': ('noise.scale', (0.2, 0.5))})
  yield log
  mp.undo()


@pytest.fixture(scope='module')
def config(data_dir):
  c = digits.get_config('tiny')
  c.data_dir = data_dir
  return c


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('paper'))


def load(workdir, name):
  with open(os.path.join(workdir, f'{name}.json')) as f:
    return json.load(f)


def test_table6_sweep_trains_shared_stages_once_and_resumes(saves, config, workdir):
  paper.run('table6', config, workdir)
  doc = load(workdir, 'table6')
  rows = [(r['eps'], r['defense'], r['attacker']) for r in doc['rows']]
  assert rows == [(e, d, a) for a in ('none', 'floor') for e, d in
                  [('No-defense', 'none'), (0.01, 'lpa'), (0.01, 'random control'),
                   (0.05, 'lpa'), (0.05, 'random control')]]
  lpa = {r['eps']: r for r in doc['rows'] if r['defense'] == 'lpa' and r['attacker'] == 'none'}
  assert 0 < lpa[0.01]['conf_dist'] <= 0.01 + 1e-6 < lpa[0.05]['conf_dist'] <= 0.05 + 1e-6
  first = collections.Counter(stage for stage, epoch in saves if epoch == 1)
  # One classifier, one evaluator, one substitute for the whole sweep; one attacker per cell.
  assert first['classifier'] == first['eval_classifier'] == 1
  assert sum(v for k, v in first.items() if k.startswith('substitute')) == 1
  attackers = [k for k in first if k.startswith('attacker_')]
  assert len(attackers) == 10 and all(first[k] == 1 for k in attackers)
  text = open(os.path.join(workdir, 'table6.md')).read()
  assert 'random control' in text and '## What holds' in text
  assert os.path.getsize(os.path.join(workdir, 'table6_fig7.png')) > 1000
  # A rerun (a resumed sweep, or another experiment with the same cells) trains nothing.
  before = len(saves)
  paper.run('table6', config, workdir)
  assert len(saves) == before
  assert load(workdir, 'table6')['rows'] == doc['rows']


def test_cell_keys_name_only_what_differs_from_the_base(config):
  key = lambda c, d='lpa': cells.group_key(config, c, d)
  same = cells.apply_overrides(config, (('lpa.eps', config.lpa.eps),))
  assert key(same) == key(config) != key(config, 'random')
  assert key(cells.apply_overrides(config, (('lpa.eps', 0.05),))) != key(config)
  # A field added to the config (base and cell alike) keeps every key.
  grown_base, grown = config.copy_and_resolve_references(), same.copy_and_resolve_references()
  grown_base.lpa.new_field = grown.lpa.new_field = 3
  assert cells.group_key(grown_base, grown, 'lpa') == key(config)


def test_saved_cells_survive_added_fields_not_changed_ones(saves, config, workdir, monkeypatch):
  """A cell measured before a config field existed is reused (the field takes today's default); one
  measured under another value of a field is measured again."""
  runner = cells.Runner(paper.seed_config(config, config.seed), os.path.join(workdir, 'seed_0'))
  path = runner._config_path(runner.key(cells.Cell('lpa')))
  with open(path) as f:
    saved = json.load(f)
  calls = []
  original = cells.experiment.evaluate_defense
  monkeypatch.setattr(cells.experiment, 'evaluate_defense',
                      lambda setup, name, **kw: calls.append(name) or original(setup, name, **kw))

  def rewrite(edit):
    doc = json.loads(json.dumps(saved))
    edit(doc)
    with open(path, 'w') as f:
      json.dump(doc, f)

  rewrite(lambda d: d['lpa'].pop('objective'))  # as if measured before lpa.objective existed
  paper.run('table6', config, workdir)
  assert calls == []
  rewrite(lambda d: d['lpa'].update(objective='decoy_class'))
  paper.run('table6', config, workdir)
  assert calls == ['lpa']  # only the stale group, for both its attackers
  with open(path) as f:
    assert json.load(f) == saved


def test_claims_compare_each_defense_with_its_control_seed_by_seed():
  def row(defense, accs):
    return {'atta_loss': 'MSE', 'attacker': 'none', 'defe_loss': defense,
            'attack_acc': sum(accs) / 3, 'attack_acc_std': 0.0, 'attack_acc_seeds': accs}
  rows = [row('No-defense', [0.9, 0.9, 0.9]), row('MSE', [0.4, 0.5, 0.2]),
          row('PSNR', [0.3, 0.5, 0.6]), row('random control', [0.5, 0.5, 0.5])]
  lines = claims.table2(rows)
  assert ('atta_loss=MSE, attacker=none: MSE minus the random control, paired: -13.3 ± 12.5 '
          'points (per seed -10.0 / +0.0 / -30.0; not the same sign on every seed)') in lines
  psnr = 'PSNR minus the random control, paired: -3.3 ± 12.5 points (per seed -20.0 / +0.0 / +10.0'
  assert any(psnr in line for line in lines)
  assert not any('random control minus' in l for l in lines)  # the control is not its own control
  rows[1]['attack_acc_seeds'] = [0.4, 0.45, 0.2]
  assert any('per seed -10.0 / -5.0 / -30.0; lower on every seed' in l for l in claims.table2(rows))


@pytest.fixture
def paper_attacker_only(monkeypatch):
  monkeypatch.setattr(experiments, 'zero_robust', lambda all_of_them=False: ())


def test_table10_and_table2_share_cells_with_table6(saves, config, workdir, paper_attacker_only):
  before = len(saves)
  paper.run('table10', config, workdir)
  doc = load(workdir, 'table10')
  assert [(r['defense'], r['attacker']) for r in doc['rows']] == [
      (d, a) for d in ('none', 'lpa', 'random') for a in ('none', 'noise', 'softmax')]
  new = collections.Counter(s for s, e in saves[before:] if e == 1)
  # none/lpa/random against 'none' were measured by table6: only 3 x 2 attackers are new.
  assert sum(new.values()) == 6 and not any(s.startswith(('classifier', 'substitute')) for s in new)
  assert 'Paper Attack Acc. (mnist)' in open(os.path.join(workdir, 'table10.md')).read()

  paper.run('table2', config, workdir)
  rows = load(workdir, 'table2')['rows']
  assert [(r['atta_loss'], r['defe_loss']) for r in rows] == [
      (a, d) for a in ('MSE', 'PSNR') for d in ('No-defense', 'MSE', 'PSNR', 'random control')]


def test_table3_and_table4_vary_the_substitute_and_the_attacker(saves, config, workdir,
                                                                 paper_attacker_only):
  before = len(saves)
  paper.run('table3', config, workdir)
  rows = load(workdir, 'table3')['rows']
  assert [(r['atta_data'], r['defe_data']) for r in rows] == [
      (a, d) for a in ('D1', 'D2') for d in ('No-defense', 'D1', 'D2', 'random control')]
  new = collections.Counter(s for s, e in saves[before:] if e == 1)
  assert sum(v for k, v in new.items() if k.startswith('substitute')) == 2  # on D1 and on D2
  before = len(saves)
  paper.run('table4', config, workdir)
  rows = load(workdir, 'table4')['rows']
  assert [(r['relation'], r['defense']) for r in rows[:3]] == [
      ('shallower', 'w/o'), ('shallower', 'w/'), ('shallower', 'random control')]
  assert {r['architecture'] for r in rows} == {'3-TCNNs', '4-TCNNs', '5-TCNNs',
                                               '4-TCNNs x2 width'}
  new = collections.Counter(s for s, e in saves[before:] if e == 1)
  assert sum(v for k, v in new.items() if k.startswith('substitute')) == 1  # the deeper one
  assert os.path.exists(os.path.join(workdir, 'table4_fig5.png'))


def test_figures_and_timing(saves, config, workdir, paper_attacker_only):
  for name in ('fig8', 'fig10', 'fig3', 'table8'):
    result = paper.run(name, config, workdir)
    for f in result['files']:
      assert os.path.getsize(os.path.join(workdir, f)) > 100, f
  table6 = {(r['eps'], r['defense']): r for r in load(workdir, 'table6')['rows']
            if r['attacker'] == 'none'}
  lpa, control = table6[(config.lpa.eps, 'lpa')], table6[(config.lpa.eps, 'random control')]

  fig8 = load(workdir, 'fig8')['rows']
  assert [(r['defense'], r['value']) for r in fig8] == [
      ('none', '-'), ('lpa', 0.05), ('noise', 0.2), ('noise', 0.5), ('random', 0.05)]
  by = {(r['defense'], r['value']): r for r in fig8}
  assert by[('none', '-')]['conf_dist'] == 0
  assert by[('noise', 0.2)]['conf_dist'] < by[('noise', 0.5)]['conf_dist']  # stronger noise
  # LPA at 0.05 is table6's cell at 0.05: measured once, the same numbers in both experiments.
  assert by[('lpa', 0.05)]['attack_acc'] == table6[(0.05, 'lpa')]['attack_acc']
  assert by[('lpa', 0.05)]['conf_dist'] == table6[(0.05, 'lpa')]['conf_dist']

  fig10 = load(workdir, 'fig10')['rows']
  assert [r['defense'] for r in fig10] == ['none', 'lpa', 'lfp', 'mid', 'random']
  for r in fig10:  # the fraction of reconstructions with error > eps, over config.eval.eps_grid
    eps, fractions = zip(*r['eps_eta'])
    assert list(eps) == pytest.approx(list(config.eval.eps_grid))
    assert fractions[0] == 1.0 and all(a >= b for a, b in zip(fractions, fractions[1:]))
  assert fig10[1]['attack_acc'] == lpa['attack_acc']  # lpa at the base eps: table6's cell

  fig3 = {r['defense']: r for r in load(workdir, 'fig3')['rows']}
  assert list(fig3) == ['lpa', 'random']
  # The poisoned query vectors are the very ones table6's cells served: same mean L2 distance.
  assert fig3['lpa']['l2_probs'] == pytest.approx(lpa['conf_dist'], rel=1e-5)
  assert fig3['random']['l2_probs'] == pytest.approx(control['conf_dist'], rel=1e-5)
  assert all(0 <= r['probe_acc'] <= 1 and r['l2_features'] > 0 for r in fig3.values())

  t8 = load(workdir, 'table8')
  (seed,) = t8['per_seed']
  assert t8['seeds'] == [config.seed]
  assert (seed['lpa_steps'], seed['lpa_batch_size']) == (config.lpa.steps, config.lpa.batch_size)
  text = open(os.path.join(workdir, 'table8.md')).read()
  assert f'{seed["samples"]} private test vectors' in text
  for k in ('training_s', 'inference_ms', 'poisoning_ms'):  # one seed: its figures, no spread
    assert seed[k] > 0 and t8['stats'][k] == seed[k] and t8['stats'][f'{k}_std'] == 0
  ours = next(l for l in text.splitlines() if '(ours)' in l)
  assert f'{seed["training_s"]:.1f}s' in ours and f'{seed["poisoning_ms"]:.2f}ms' in ours
  # Training time is a fresh classifier stage of its own, not the seed's cached one.
  timing = os.path.join(workdir, f'seed_{config.seed}', 'timing')
  (run,) = os.listdir(timing)
  assert os.listdir(os.path.join(timing, run, 'checkpoints')) == ['classifier']


def test_bad_names_and_overrides_fail_clearly(config, workdir):
  with pytest.raises(ValueError, match='unknown experiment'):
    paper.run('table99', config, workdir)
  with pytest.raises(KeyError, match="no field 'lpa.epsilon'"):
    cells.apply_overrides(config, (('lpa.epsilon', 0.1),))
