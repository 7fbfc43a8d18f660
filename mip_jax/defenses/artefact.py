"""Serving artefacts: what a fitted defense needs to serve, saved in its workdir.

  artefact.write(setup, name, defense, state)     # experiment: after fit, for the workdir's config
  stored = artefact.load(workdir, name, config)   # Defender.from_workdir; MissingArtefactError
  Artefact(settings={'eps': 0.01, ...}, arrays={'generator/Dense_0/kernel': ..., ...})

A defense's `export(state)` builds its Artefact (`defenses.protocol`): arrays (network weights, a
target gradient: `pack` / `unpack` flatten nested dicts of arrays to '/'-joined names) and JSON-able
settings (a Flax module's constructor fields: `module_fields` / `rebuild`). Serving reads nothing
else of the workdir but the target classifier's stage checkpoint, whose identity (stage, config
fingerprint, classes, image shape) the artefact records, so no dataset is needed to restore it.

Files: `<workdir>/serving/<name>_<key>.json` (settings, the classifier's record, the array names;
written last, so it marks a complete artefact) and `.npz` (the arrays). The key is a fingerprint of
the config without the fields that decide nothing a stage learns (`run_config.IGNORED`: where data
lives, serving limits, metric settings): a workdir whose config changed (a new field's default,
another override) is never served an artefact fitted under the old one.
"""

import dataclasses
import glob
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from mip_jax.defenses import protocol
from mip_jax.protocol import run_config
from mip_jax.runtime import checkpoints, files

DIRECTORY = 'serving'


@dataclasses.dataclass
class Artefact:
  """What a defense serves from: JSON-able `settings` and named float/int `arrays`."""
  settings: Any = None
  arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Stored:
  """An artefact as loaded, with the record of the target classifier it was fitted against."""
  artefact: Artefact
  classifier: dict  # {'stage', 'config_hash', 'num_classes', 'image_shape'}
  path: str


class MissingArtefactError(FileNotFoundError):
  """A workdir holds no serving artefact of a defense for the given config."""


# ---------------------------------------------------------------- arrays and modules

def pack(tree: Mapping, prefix: str) -> dict[str, np.ndarray]:
  """{'prefix/a/b': array} for the leaves of a nested dict of arrays (Flax variables, gradients)."""
  out = {}
  for key, value in tree.items():
    name = f'{prefix}/{key}'
    if isinstance(value, Mapping):
      out.update(pack(value, name))
    else:
      out[name] = np.asarray(value)
  return out


def unpack(arrays: Mapping[str, np.ndarray], prefix: str) -> dict:
  """The nested dict `pack(tree, prefix)` was made of; KeyError naming `prefix` if it is absent."""
  tree = {}
  start = prefix + '/'
  for name, value in arrays.items():
    if not name.startswith(start):
      continue
    *parents, leaf = name[len(start):].split('/')
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  if not tree:
    raise KeyError(f'the artefact holds no arrays under {prefix!r}')
  return tree


def module_fields(module) -> dict:
  """A Flax module's constructor fields (architecture) as JSON-able settings."""
  return {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
          if f.name not in ('parent', 'name')}


def rebuild(cls, fields: dict):
  """`cls(**fields)` with JSON lists back as tuples (module fields must be hashable)."""
  tupled = lambda v: tuple(tupled(x) for x in v) if isinstance(v, list) else v
  return cls(**{k: tupled(v) for k, v in fields.items()})


def of_network(prefix: str, module, variables: Mapping, **settings) -> Artefact:
  """The artefact of a network a defense serves (the purifier, the redactor, the VAE's generator):
  its architecture as settings[prefix], its variables as arrays under `prefix`, and `settings`."""
  return Artefact(settings={prefix: module_fields(module), **settings},
                  arrays=pack(variables, prefix))


def network(served: Artefact, prefix: str, cls) -> tuple[Any, dict]:
  """(module, variables) of the network `of_network(prefix, ...)` saved, rebuilt as `cls`."""
  return rebuild(cls, served.settings[prefix]), unpack(served.arrays, prefix)


# ---------------------------------------------------------------- files

def config_key(config) -> str:
  """The fingerprint an artefact is filed under: the config without `run_config.IGNORED` fields."""
  plain = json.loads(config.to_json())
  return checkpoints.fingerprint({k: v for k, v in plain.items()
                                  if k not in run_config.IGNORED})[:12]


def base_path(workdir: str, name: str, config) -> str:
  """`<workdir>/serving/<name>_<key>` (add .json / .npz)."""
  return os.path.join(workdir, DIRECTORY, f'{name}_{config_key(config)}')


def exists(workdir: str, name: str, config) -> bool:
  return os.path.exists(base_path(workdir, name, config) + '.json')


def save(workdir: str, name: str, config, artefact: Artefact, *, classifier: dict) -> str:
  """Writes the artefact (arrays first, the JSON last) and removes `name`'s artefacts of other
  configs; returns the JSON's path."""
  base = base_path(workdir, name, config)
  stale = [p for p in glob.glob(os.path.join(workdir, DIRECTORY, f'{name}_*'))
           if not p.startswith(base + '.') and _artefact_name(p) == name]
  if artefact.arrays:
    files.write_npz(base + '.npz', artefact.arrays)
  files.write_json(base + '.json', {'defense': name, 'config_key': config_key(config),
                                    'classifier': classifier, 'settings': artefact.settings,
                                    'arrays': sorted(artefact.arrays)})
  files.remove(stale)
  return base + '.json'


def _artefact_name(path: str) -> str:
  """'lpa' of '<dir>/lpa_<key>.json' (names may hold underscores: bido_coco_<key>.npz)."""
  return os.path.basename(path).rsplit('.', 1)[0].rsplit('_', 1)[0]


def load(workdir: str, name: str, config) -> Stored:
  """The artefact of defense `name` fitted under `config` in `workdir`.

  Raises:
    MissingArtefactError naming the command that writes it (none was written, or only for another
    config: the workdir was fitted before its config changed).
  """
  base = base_path(workdir, name, config)
  if not os.path.exists(base + '.json'):
    others = [p for p in glob.glob(os.path.join(workdir, DIRECTORY, f'{name}_*.json'))
              if _artefact_name(p) == name]
    why = ('only for another config (the config changed since the defense was fitted)' if others
           else 'none was written')
    raise MissingArtefactError(
        f'{workdir!r} holds no serving artefact of defense {name!r} for this config '
        f'({base}.json; {why}). Create it (training only what is missing) with: python -m '
        f'launch.compare --config=<the config file and overrides of this workdir> '
        f'--workdir={workdir} --defenses={name}')
  record = files.read_json(base + '.json')
  arrays = {}
  if record['arrays']:
    with np.load(base + '.npz') as f:
      arrays = {k: f[k] for k in record['arrays']}
  return Stored(Artefact(settings=record['settings'], arrays=arrays), record['classifier'],
                base + '.json')


def write(setup, name: str, defense, state) -> str:
  """Exports a fitted `state` of `defense` (`protocol.export`) and saves it for `setup`'s workdir
  and config; returns the JSON's path."""
  return save(setup.workdir, name, setup.config, protocol.export(name, defense, state),
              classifier=setup.classifier_stage)
