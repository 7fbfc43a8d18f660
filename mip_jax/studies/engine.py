"""The one study engine: cells measured once per seed, cached, aggregated over seeds.

  study = engine.Study('table6', rows=[({'eps': 0.01, ...}, Cell('lpa', (('lpa.eps', 0.01),))), ...])
  result = engine.run(study, config, workdir, seeds=[0, 1, 2])
  result.rows        # one row per study row: its labels, metrics as mean / _std / _seeds
  result.per_seed    # [seed][row] result rows as measured
  result.runners     # the seeds' Runners (reconstructions of the figure's examples, the setup)

A cell is a defense, the config changes it runs under and an attacker (`Cell`). Every study of one
seed (`launch.compare`, the attribution table, each experiment of the paper, the frontier) shares
`<workdir>/seed_<s>`: the stages that do not depend on a cell's changes (classifier, evaluator,
substitutes, identical crafted vectors) are trained once, and a cell's result row is saved in
`<workdir>/seed_<s>/cells/` as soon as it is measured, so a killed study resumes at its first
unmeasured cell and a cell shared by two studies is measured once.

A cell is named by its defense and the fields where its config differs from the seed's base config
(`group_key`), and its full config is saved beside its rows. A saved cell is reused when that
config, completed with today's defaults for fields added since (as `run_config.load` does), equals
the cell's config now: adding a config field keeps every measured cell, and changing a default, the
base config or an override measures the cell again (with a warning naming the fields). A cell
under the seed's own config (no effective override: what `launch.serve` serves) also leaves its
defense's serving artefact in `<workdir>/serving/` (`defenses.artefact`): written when the cell is
measured, or, for a cell measured before artefacts existed, by fitting the defense again from its
finished stages.

With several JAX processes every process measures every cell (training and crafting are
collective); process 0 alone writes the cell files (`runtime.files`), and all of them read the rows
back after the barrier.
"""

import dataclasses
import json
import os

import numpy as np
from absl import logging

from mip_jax.defenses import artefact
from mip_jax.protocol import experiment, run_config
from mip_jax.runtime import checkpoints, files
from mip_jax.studies import aggregate

CELLS_DIR = 'cells'
# Where the data lives: the same cell wherever it was read from.
PLACES = ('data_dir', 'manual_dir')
# Sections that say which cells a study measures, not how a cell is measured: a frontier rerun with
# another attacker suite or budget list keeps its cells (frontier.max_epochs and .patience reach
# the cells as attack overrides, which are compared).
STUDY_SECTIONS = ('frontier',)


@dataclasses.dataclass(frozen=True)
class Cell:
  """A defense, the config changes it runs under and the attacker that inverts it.

  Attributes:
    defense: a registered defense name.
    overrides: ((dotted config path, value), ...), e.g. (('lpa.eps', 0.02),).
    attacker: an attacker of the suite (`attacks.suite`; 'none' = Yang's).
  """
  defense: str
  overrides: tuple = ()
  attacker: str = 'none'


@dataclasses.dataclass
class Study:
  """Rows of (labels, cell): what a table lists, in its order."""
  name: str
  rows: list

  @property
  def cells(self) -> list[Cell]:
    return [cell for _, cell in self.rows]

  @property
  def labels(self) -> list[dict]:
    return [dict(labels) for labels, _ in self.rows]


@dataclasses.dataclass
class Result:
  rows: list[dict]
  per_seed: list[list[dict]]
  seeds: list[int]
  runners: list


def apply_overrides(config, overrides):
  """A copy of `config` with `overrides` set; an unknown path fails naming it."""
  config = config.copy_and_resolve_references()
  for path, value in overrides:
    *parents, leaf = path.split('.')
    section = config
    for p in parents:
      section = section[p]
    if leaf not in section:
      raise KeyError(f'config has no field {path!r} (study cell override)')
    section[leaf] = value
  return config


def seed_config(config, seed: int):
  c = config.copy_and_resolve_references()
  c.seed = int(seed)
  return c


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
    saved = run_config.with_defaults(files.read_json(path), path)
    diff = run_config.differences(saved, _plain(config), ignored=PLACES + STUDY_SECTIONS)
    if diff:
      logging.warning('cells %s were measured with another config (%s): measuring them again',
                      key, '; '.join(diff[:3]) + (' ...' if len(diff) > 3 else ''))
    return not diff

  def _serves(self, config) -> bool:
    """Whether a cell's config is the seed's own (no effective override): the one served."""
    return not run_config.differences(_plain(self.config), _plain(config), ignored=PLACES)

  def measured(self, cell: Cell) -> bool:
    """Whether `cell`'s row is saved and current (nothing to measure)."""
    key = self.key(cell)
    return (self._current(key, self.cell_setup(cell.overrides).config)
            and os.path.exists(self._paths(key, cell.attacker)[0]))

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
      # The workdir's own config is what launch.serve serves: its defenses leave an artefact.
      export = self._serves(setup.config) and not artefact.exists(self.workdir, cell.defense,
                                                                   setup.config)
      if self._current(key, setup.config):
        todo = [a for a in attackers if not os.path.exists(self._paths(key, a)[0])]
      else:  # never measured, or measured under another config: none of its rows count
        todo = attackers
        self._forget(key)
        files.write_json(self._config_path(key), _plain(setup.config))
      if not todo:
        if export:  # measured before artefacts were written: fit (loading its stages) only
          experiment.export_defense(setup, cell.defense)
        continue
      logging.info('cell %s %s: attackers %s', cell.defense, dict(cell.overrides), todo)
      results = experiment.evaluate_defense(setup, cell.defense, attackers=todo, export=export)
      for attacker, (row, recon) in zip(todo, results):
        path, npz = self._paths(key, attacker)
        files.write_npz(npz, {'recon': recon[self.figure_idx]})
        files.write_json(path, row)  # last: a row file means the cell is complete
    return [files.read_json(self._paths(key, cell.attacker)[0]) for key, cell in zip(keys, cells)]

  def row(self, cell: Cell) -> dict:
    return self.rows([cell])[0]

  def reconstructions(self, cell: Cell) -> np.ndarray:
    """The saved reconstructions of the figure's private examples for a measured cell."""
    with np.load(self._paths(self.key(cell), cell.attacker)[1]) as f:
      return f['recon']

  def figure_images(self) -> np.ndarray:
    return self.setup.splits.private_train.images[self.figure_idx]

  def _forget(self, key: str) -> None:
    """Forgets a stale group's rows (its config file is rewritten before any new row)."""
    cells_dir = os.path.join(self.workdir, CELLS_DIR)
    if os.path.isdir(cells_dir):
      files.remove([os.path.join(cells_dir, name) for name in sorted(os.listdir(cells_dir))
                    if name.startswith(f'{key}_') and name.endswith('.json')])


def seed_workdir(workdir: str, seed: int) -> str:
  return os.path.join(workdir, f'seed_{int(seed)}')


def runners(config, workdir: str, seeds, *, mesh=None):
  """One Runner per seed in `<workdir>/seed_<s>`, prepared lazily (one seed's data at a time)."""
  for s in seeds:
    yield Runner(seed_config(config, s), seed_workdir(workdir, s), mesh=mesh)


def measured_everywhere(study: Study, config, workdir: str, *, seeds, mesh=None) -> Study:
  """The rows of `study` whose cells are saved and current for every seed (a report from what a
  run measured so far, nothing measured anew)."""
  ok = [True] * len(study.rows)
  for runner in runners(config, workdir, [int(s) for s in seeds], mesh=mesh):
    ok = [k and runner.measured(cell) for k, cell in zip(ok, study.cells)]
  return Study(study.name, [r for r, k in zip(study.rows, ok) if k])


def run(study: Study, config, workdir: str, *, seeds, mesh=None, each_seed=None) -> Result:
  """Measures `study` for every seed and aggregates the rows over seeds.

  Args:
    study: its rows (labels, cell).
    config: the base config (each seed's is a copy with `seed` set).
    workdir: the study's directory; seed s runs in `<workdir>/seed_<s>`.
    seeds: the seeds.
    mesh: optional device mesh.
    each_seed: optional `each_seed(runner, rows)` called once a seed is measured (per-seed files).
  """
  seeds = [int(s) for s in seeds]
  per_seed, done = [], []
  for runner in runners(config, workdir, seeds, mesh=mesh):
    rows = [dict(row, **_extra_labels(labels)) for labels, row in
            zip(study.labels, runner.rows(study.cells))]
    per_seed.append(rows)
    done.append(runner)
    if each_seed is not None:
      each_seed(runner, rows)
  return Result(rows=aggregate.mean_rows(per_seed, study.labels), per_seed=per_seed, seeds=seeds,
                runners=done)


def _extra_labels(labels: dict) -> dict:
  """A study row's `label` (a name for one defense under several configs) travels with the row."""
  return {'label': labels['label']} if 'label' in labels else {}
