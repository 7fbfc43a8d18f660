"""Cells of the paper's experiments: one defense under one set of config changes, one attacker.

  runner = Runner(config, workdir)            # data, classifier T, evaluator E: trained once
  row = runner.row(Cell('lpa', (('lpa.eps', 0.02),), attacker='none'))

Every cell of every experiment of one seed shares the runner's workdir, so the stages that do not
depend on a cell's changes (classifier, evaluator, the default substitute, identical crafted
vectors) are trained once and loaded afterwards. A cell's result row is saved in
`<workdir>/cells/` as soon as it is measured: a killed sweep resumes at the first unmeasured cell,
and a cell shared by two experiments (the default LPA row) is measured once.
"""

import dataclasses
import json
import os

import numpy as np
from absl import logging

from mip_jax import checkpoints, experiment

CELLS_DIR = 'cells'


@dataclasses.dataclass(frozen=True)
class Cell:
  """A defense, the config changes it runs under and the attacker that inverts it.

  Attributes:
    defense: a registered defense name.
    overrides: ((dotted config path, value), ...), e.g. (('lpa.eps', 0.02),).
    attacker: an adaptive attacker of `attacks.adaptive` ('none' = Yang's).
  """
  defense: str
  overrides: tuple = ()
  attacker: str = 'none'


def apply_overrides(config, overrides):
  """A copy of `config` with `overrides` set; an unknown path fails naming it."""
  config = config.copy_and_resolve_references()
  for path, value in overrides:
    *parents, leaf = path.split('.')
    section = config
    for p in parents:
      section = section[p]
    if leaf not in section:
      raise KeyError(f'config has no field {path!r} (experiment cell override)')
    section[leaf] = value
  return config


def group_key(config, defense: str) -> str:
  """Short key of a defense under a config: cells with equal keys share their defended vectors."""
  return checkpoints.fingerprint([defense, config.to_dict()])[:10]


class Runner:
  """Measures cells for one seed in one workdir, each at most once (cached in `cells/`).

  Args:
    config: the seed's base config; workdir: the seed's run directory; mesh: optional device mesh.
  """

  def __init__(self, config, workdir: str, *, mesh=None):
    os.makedirs(workdir, exist_ok=True)
    self.config = config
    self.workdir = workdir
    self.setup = experiment.prepare(config, workdir, mesh=mesh)
    labels = self.setup.splits.private_train.labels
    self.figure_idx = experiment.figure_indices(labels, config.eval.num_figure_images)

  def cell_setup(self, overrides):
    """The shared setup under a cell's config (same data, classifier and evaluator)."""
    return dataclasses.replace(self.setup, config=apply_overrides(self.config, overrides))

  def _paths(self, key: str, attacker: str) -> tuple[str, str]:
    base = os.path.join(self.workdir, CELLS_DIR, f'{key}_{attacker}')
    return base + '.json', base + '.npz'

  def rows(self, cells) -> list[dict]:
    """Result rows of `cells` (in order); unmeasured ones are measured, grouped per defense setting
    so a defense is fitted and applied once for all its attackers."""
    cells = list(cells)
    groups = {}
    for cell in cells:
      setup = self.cell_setup(cell.overrides)
      key = group_key(setup.config, cell.defense)
      groups.setdefault(key, (cell, setup, []))[2].append(cell.attacker)
    for key, (cell, setup, attackers) in groups.items():
      todo = [a for a in dict.fromkeys(attackers) if not os.path.exists(self._paths(key, a)[0])]
      if not todo:
        continue
      logging.info('cell %s %s: attackers %s', cell.defense, dict(cell.overrides), todo)
      results = experiment.evaluate_defense(setup, cell.defense, attackers=todo, cell=key)
      for attacker, (row, recon) in zip(todo, results):
        self._save(key, attacker, row, recon[self.figure_idx])
    out = []
    for cell in cells:
      key = group_key(self.cell_setup(cell.overrides).config, cell.defense)
      with open(self._paths(key, cell.attacker)[0]) as f:
        out.append(json.load(f))
    return out

  def row(self, cell: Cell) -> dict:
    return self.rows([cell])[0]

  def reconstructions(self, cell: Cell) -> np.ndarray:
    """The saved reconstructions of the figure's private examples for a measured cell."""
    key = group_key(self.cell_setup(cell.overrides).config, cell.defense)
    with np.load(self._paths(key, cell.attacker)[1]) as f:
      return f['recon']

  def figure_images(self) -> np.ndarray:
    return self.setup.splits.private_train.images[self.figure_idx]

  def _save(self, key: str, attacker: str, row: dict, recon: np.ndarray) -> None:
    path, npz = self._paths(key, attacker)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(npz + '.tmp.npz', recon=recon)
    os.replace(npz + '.tmp.npz', npz)
    with open(path + '.tmp', 'w') as f:
      json.dump(row, f, indent=1, default=float)
    os.replace(path + '.tmp', path)  # last: a row file means the cell is complete
