"""Cells of the paper's experiments: one defense under one set of config changes, one attacker.

  runner = Runner(config, workdir)            # data, classifier T, evaluator E: trained once
  row = runner.row(Cell('lpa', (('lpa.eps', 0.02),), attacker='none'))

Every cell of every experiment of one seed shares the runner's workdir, so the stages that do not
depend on a cell's changes (classifier, evaluator, the default substitute, identical crafted
vectors) are trained once and loaded afterwards. A cell's result row is saved in
`<workdir>/cells/` as soon as it is measured: a killed sweep resumes at the first unmeasured cell,
and a cell shared by two experiments (the default LPA row) is measured once.

A cell is named by its defense and the fields where its config differs from the seed's base config
(`group_key`), and its full config is saved beside its rows. A saved cell is reused when that
config, completed with today's defaults for fields added since (as `run_config.load` does), equals
the cell's config now: adding a config field keeps every measured cell, and changing a default, the
base config or an override measures the cell again (with a warning naming the fields).
"""

import dataclasses
import json
import os

import numpy as np
from absl import logging

from mip_jax.protocol import experiment, run_config
from mip_jax.runtime import checkpoints

CELLS_DIR = 'cells'
# Where the data lives: the same cell wherever it was read from.
PLACES = ('data_dir', 'manual_dir')


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


def _plain(config) -> dict:
  return json.loads(config.to_json())


_MISSING = object()


def group_key(base, config, defense: str) -> str:
  """Short key of a defense under a cell's config: the defense and the fields where `config`
  differs from the seed's `base` config. Cells with equal keys share their defended vectors; an
  override equal to the base value changes nothing (Table II's MSE rows are Table VI's default)."""
  have, want = run_config.flatten(_plain(base)), run_config.flatten(_plain(config))
  changed = sorted((k, v) for k, v in want.items() if have.get(k, _MISSING) != v)
  return checkpoints.fingerprint([defense, changed])[:10]


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

  def key(self, cell: Cell) -> str:
    return group_key(self.config, self.cell_setup(cell.overrides).config, cell.defense)

  def _paths(self, key: str, attacker: str) -> tuple[str, str]:
    base = os.path.join(self.workdir, CELLS_DIR, f'{key}_{attacker}')
    return base + '.json', base + '.npz'

  def _config_path(self, key: str) -> str:
    return os.path.join(self.workdir, CELLS_DIR, f'{key}.config.json')

  def _current(self, key: str, config) -> bool:
    """Whether the cells saved under `key` were measured with `config` (fields added to the config
    since taking today's defaults). A stale group is measured again, with a warning."""
    path = self._config_path(key)
    if not os.path.exists(path):
      return False
    with open(path) as f:
      saved = run_config.with_defaults(json.load(f), path)
    diff = run_config.differences(saved, _plain(config), ignored=PLACES)
    if diff:
      logging.warning('cells %s were measured with another config (%s): measuring them again',
                      key, '; '.join(diff[:3]) + (' ...' if len(diff) > 3 else ''))
    return not diff

  def rows(self, cells) -> list[dict]:
    """Result rows of `cells` (in order); unmeasured ones are measured, grouped per defense setting
    so a defense is fitted and applied once for all its attackers."""
    cells = list(cells)
    keys = [self.key(cell) for cell in cells]
    groups = {}
    for key, cell in zip(keys, cells):
      groups.setdefault(key, (cell, []))[1].append(cell.attacker)
    for key, (cell, attackers) in groups.items():
      setup = self.cell_setup(cell.overrides)
      attackers = list(dict.fromkeys(attackers))
      if self._current(key, setup.config):
        todo = [a for a in attackers if not os.path.exists(self._paths(key, a)[0])]
      else:  # never measured, or measured under another config: none of its rows count
        todo = attackers
        self._remove(key)
        _atomic_json(self._config_path(key), _plain(setup.config))
      if not todo:
        continue
      logging.info('cell %s %s: attackers %s', cell.defense, dict(cell.overrides), todo)
      results = experiment.evaluate_defense(setup, cell.defense, attackers=todo, cell=key)
      for attacker, (row, recon) in zip(todo, results):
        self._save(key, attacker, row, recon[self.figure_idx])
    out = []
    for key, cell in zip(keys, cells):
      with open(self._paths(key, cell.attacker)[0]) as f:
        out.append(json.load(f))
    return out

  def row(self, cell: Cell) -> dict:
    return self.rows([cell])[0]

  def reconstructions(self, cell: Cell) -> np.ndarray:
    """The saved reconstructions of the figure's private examples for a measured cell."""
    with np.load(self._paths(self.key(cell), cell.attacker)[1]) as f:
      return f['recon']

  def figure_images(self) -> np.ndarray:
    return self.setup.splits.private_train.images[self.figure_idx]

  def _remove(self, key: str) -> None:
    """Forgets a stale group's rows (its config file is rewritten before any new row)."""
    cells_dir = os.path.join(self.workdir, CELLS_DIR)
    if os.path.isdir(cells_dir):
      for name in os.listdir(cells_dir):
        if name.startswith(f'{key}_') and name.endswith('.json'):
          os.remove(os.path.join(cells_dir, name))

  def _save(self, key: str, attacker: str, row: dict, recon: np.ndarray) -> None:
    path, npz = self._paths(key, attacker)
    np.savez(npz + '.tmp.npz', recon=recon)
    os.replace(npz + '.tmp.npz', npz)
    _atomic_json(path, row)  # last: a row file means the cell is complete


def _atomic_json(path: str, value) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(value, f, indent=1, default=float)
  os.replace(path + '.tmp', path)
