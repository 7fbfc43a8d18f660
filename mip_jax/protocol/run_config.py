"""A workdir remembers the config it was trained with: `<workdir>/config.json`.

  run_config.save(workdir, config)            # studies.compare, before any stage trains
  config = run_config.load(workdir)           # serve / benchmark / Defender without --config
  run_config.check_matches(workdir, config)   # a given --config must be the trained one

Stage checkpoints are fingerprinted by the config fields they depend on, so a wrong config never
loads a wrong model; but it fails deep inside a stage. `check_matches` fails first and names the
fields that differ. Fields that decide nothing a stage learns (where data lives, serving limits,
metric settings) may differ: `IGNORED`.
"""

import importlib
import json
import os

from absl import logging
import ml_collections

from mip_jax.runtime import files

CONFIG_FILE = 'config.json'
# Top-level fields and sections free to differ between training and later use of a workdir.
IGNORED = ('data_dir', 'manual_dir', 'serve', 'eval', 'frontier')  # frontier: which cells a study measures


class ConfigMismatchError(ValueError):
  """A given config differs from the one a workdir was trained with."""


def save(workdir: str, config: ml_collections.ConfigDict) -> str:
  """Writes `config` to `<workdir>/config.json` (whole, by process 0); returns the path."""
  path = os.path.join(workdir, CONFIG_FILE)
  files.write_text(path, config.to_json(indent=2, sort_keys=True) + '\n')
  return path


def load(workdir: str) -> ml_collections.ConfigDict:
  """The config saved in `workdir` (JSON lists back as tuples, as config files write them).

  Raises:
    FileNotFoundError: the workdir has no config.json (not trained, or trained before workdirs
      saved their config): pass --config.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} does not exist: {workdir!r} was not trained by launch.compare/attack/lpa/lfp (or '
        'before workdirs saved their config); pass the config it was trained with, --config=...')
  with open(path) as f:
    return ml_collections.ConfigDict(_tuples(with_defaults(json.load(f), path)))


def _defaults(dataset: str) -> dict | None:
  """Today's config of `dataset` (configs/<dataset>.py), or None where the configs package is not
  importable (a process started outside the repository)."""
  try:
    module = importlib.import_module(f'configs.{dataset}')
  except ImportError:
    try:
      module = importlib.import_module('configs.common')
    except ImportError:
      return None
    return module.base_config().to_dict()
  return module.get_config().to_dict()


def with_defaults(saved: dict, path: str) -> dict:
  """`saved` completed with today's defaults for fields added since it was written (with a warning
  naming them); a field today's code does not know is refused, since nothing would read it.

  New fields default to the behaviour that existed before them (the paper's), so an old workdir's
  stages mean what they meant when they were trained.
  """
  defaults = _defaults(saved.get('dataset', ''))
  if defaults is None:
    return saved
  have, want = flatten(saved), flatten(defaults)
  unknown = sorted(k for k in have.keys() - want.keys() if k.split('.')[0] not in IGNORED
                   and not any(w.startswith(k + '.') for w in want))
  if unknown:
    raise ConfigMismatchError(
        f'{path} has fields this version of mip_jax does not know: {", ".join(unknown)}. It was '
        'written by another version; run that version, or pass --config=... and retrain.')
  added = sorted(k for k in want.keys() - have.keys()
                 if not any(h.startswith(k + '.') for h in have))
  if added:
    logging.warning('%s predates the fields %s: using today\'s defaults for them', path,
                 ', '.join(added))
  return _unflatten({**want, **have}) if added else saved


def _unflatten(flat: dict) -> dict:
  out = {}
  for key, value in flat.items():
    *sections, field = key.split('.')
    node = out
    for section in sections:
      node = node.setdefault(section, {})
    node[field] = value
  return out


def differences(saved: dict, given: dict, ignored=IGNORED) -> list[str]:
  """'field: saved value != given value' for every field (dotted path) that differs, `ignored`
  top-level fields and sections aside."""
  a, b = flatten(_tuples(saved)), flatten(_tuples(given))
  keys = sorted(k for k in a.keys() | b.keys() if k.split('.')[0] not in ignored)
  missing = object()
  return [f'{k}: trained with {a.get(k, "(absent)")!r}, given {b.get(k, "(absent)")!r}'
          for k in keys if a.get(k, missing) != b.get(k, missing)]


def check_matches(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Raises ConfigMismatchError naming the differing fields unless `config` is the one saved in
  `workdir` (a workdir without config.json is not checked: its stage fingerprints still are)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    diff = differences(with_defaults(json.load(f), path), json.loads(config.to_json()))
  if diff:
    shown = '; '.join(diff[:5]) + (f'; and {len(diff) - 5} more' if len(diff) > 5 else '')
    raise ConfigMismatchError(
        f'the given config does not match the one {workdir!r} was trained with ({path}): {shown}. '
        'Leave out --config to use the saved one, or give the same overrides as in training.')


def _tuples(value):
  """JSON lists -> tuples, recursively (configs write sequences as tuples; dicts stay dicts)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(_tuples(v) for v in value)
  return value


def flatten(d: dict, prefix: str = '') -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out
