"""results.md shows the paper's Table I rows exactly where the paper has them; the trade-off figure."""

import json
import os

import numpy as np
import pytest
from matplotlib.collections import PathCollection

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


def drawn_tradeoff(monkeypatch, path, dataset, rows):
  """The trade-off figure as drawn: `save_tradeoff` runs, the figure is kept open to be read."""
  figures = []
  monkeypatch.setattr(report.plt, 'close', figures.append)
  report.save_tradeoff(path, dataset, rows)
  (fig,) = figures
  return fig.axes[0]


@pytest.mark.parametrize('seeds', [False, True])
def test_tradeoff_figure_draws_one_point_per_row_and_the_papers(tmp_path, monkeypatch, seeds):
  rows = [dict(r, conf_dist_std=0.001 * (i + 1), attack_acc_std=0.02) for i, r in enumerate(ROWS)
          ] if seeds else ROWS
  dataset = 'mnist5k' if seeds else 'digits'
  path = os.path.join(tmp_path, 'figures', 'tradeoff.png')
  ax = drawn_tradeoff(monkeypatch, path, dataset, rows)
  assert os.path.getsize(path) > 10_000
  # One errorbar point per row, at (Conf. Dist., 100 * Attack Acc.), labelled with the row's name.
  points = [c.lines[0].get_xydata().tolist() for c in ax.containers]
  assert points == [[[r['conf_dist'], 100 * r['attack_acc']]] for r in rows]
  labels = [t.get_text() for t in ax.texts]
  assert labels[:len(rows)] == ['none', 'random', 'lpa', 'lpa / floor attacker', 'mid']
  for c, r in zip(ax.containers, rows):
    bars = c.lines[2]  # ErrorbarContainer: (data line, caps, bar collections: x then y)
    if not seeds:
      assert c.has_xerr is False and c.has_yerr is False
      continue
    assert c.has_xerr and c.has_yerr
    (x_bar,), (y_bar,) = bars[0].get_segments(), bars[1].get_segments()
    np.testing.assert_allclose(x_bar[:, 0], [r['conf_dist'] - r['conf_dist_std'],
                                             r['conf_dist'] + r['conf_dist_std']])
    np.testing.assert_allclose(y_bar[:, 1], [100 * (r['attack_acc'] - 0.02),
                                             100 * (r['attack_acc'] + 0.02)])
  # The paper's Table I points (hollow, grey) only where the paper has the dataset (MNIST here).
  scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
  if not seeds:
    assert scatters == [] and labels[len(rows):] == []
    return
  paper = reference.paper_rows('table1', 'mnist')
  (scatter,) = scatters
  np.testing.assert_allclose(scatter.get_offsets(),
                             [[p['conf_dist'] or 0.0, 100 * p['attack_acc']] for p in paper])
  assert labels[len(rows):] == [p['label'] for p in paper]
