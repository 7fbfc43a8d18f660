"""results.md shows the paper's Table I rows exactly where the paper has them; the trade-off figure."""

import json
import os

import pytest

from mip_jax import reference
from mip_jax.studies import report


def _row(defense, attack_acc, conf_dist, attacker='none', **extra):
  return {'defense': defense, 'attacker': attacker, 'model_acc': 0.99, 'conf_dist': conf_dist,
          'attack_acc': attack_acc, 'recon_error': 0.05, 'label_flip_rate': 0.0,
          'eps_eta': [[0.0, 1.0]], **extra}


ROWS = [_row('none', 0.9, 0.0), _row('random', 0.8, 0.01), _row('lpa', 0.5, 0.01),
        _row('lpa', 0.85, 0.01, attacker='floor'), _row('mid', 0.7, 0.02)]


@pytest.mark.parametrize('dataset, paper_dataset, expected', [
    ('mnist5k', 'mnist', 3),         # none, lpa, mid (not random, not the adaptive attacker's row)
    ('mnist', 'mnist', 3),
    ('cifar10', 'cifar10', 3),
    ('digits', None, 0),             # the paper has no digits rows
])
def test_paper_rows_appear_exactly_for_datasets_the_paper_has(tmp_path, dataset, paper_dataset,
                                                              expected):
  table = report.write_results(str(tmp_path), dataset=dataset, config={}, rows=ROWS)
  lines = table.splitlines()
  paper_lines = [l for l in lines if l.startswith('| *paper:')]
  assert len(paper_lines) == expected
  doc = json.load(open(tmp_path / 'results.json'))
  if not expected:
    assert 'paper' not in table and 'paper_table1' not in doc
    return
  paper = {r['defense']: r for r in reference.paper_rows('table1', paper_dataset)}
  # Each paper row sits right under the measured row of the same defense, with the paper's numbers.
  for name in ('none', 'lpa', 'mid'):
    i = lines.index(next(l for l in lines if l.startswith(f'| {name} |')))
    assert lines[i + 1].startswith(f'| *paper: {paper[name]["label"]} ({paper_dataset})*')
    assert f'{100 * paper[name]["attack_acc"]:.2f}%' in lines[i + 1]
  assert doc['paper_table1']['dataset'] == paper_dataset
  assert [r['defense'] for r in doc['paper_table1']['rows']] == list(paper)


def test_mnist5k_shows_the_papers_mnist_numbers(tmp_path):
  table = report.write_results(str(tmp_path), dataset='mnist5k', config={}, rows=ROWS[:3])
  lpa = next(l for l in table.splitlines() if l.startswith('| *paper: LPA'))
  assert lpa == '| *paper: LPA (mnist)* | 99.98% | 0.00014 | 74.72% | 0.88915 | - | - | - |'
  assert 'mnist5k is a subset of it' in table


def test_tradeoff_figure_with_and_without_error_bars(tmp_path):
  mean = [dict(r, conf_dist_std=0.001, attack_acc_std=0.02) for r in ROWS]
  for name, rows, dataset in (('seeds.png', mean, 'mnist5k'), ('one.png', ROWS, 'digits')):
    path = os.path.join(tmp_path, 'figures', name)
    report.save_tradeoff(path, dataset, rows)
    assert os.path.getsize(path) > 10_000
