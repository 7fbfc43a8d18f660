"""What every defense is: the protocol the registry checks, `experiment` and serving rely on.

A defense is a module (or an object, like `bido.COCO`) with:

  REPLACES_CLASSIFIER: bool    True for retraining defenses (MID, BiDO): the deployed model is the
                               retrained one, so its own outputs on private data are what an
                               attacker inverts; False for post-processing units
  LABEL_PRESERVING: bool       optional (default False): True where every served vector keeps the
                               clean argmax by construction; `experiment` fails a run in which a
                               served label changed anyway
  RULES, CHECKS                optional: the limits of its config fields (`protocol.rules`), read
                               by `validation` and enforced by `fit` before any training
  fit(setup) -> state          train / craft what it needs (cached stages of setup.workdir)
  apply(state, probs, *, images=None) -> defended vectors [N, m] for clean vectors `probs` [N, m]
                               of `images` (those that need the queried images raise without them)
  looks_defended(state, probs) -> [N] bool
                               optional: which served vectors carry the defense's signature, as an
                               attacker who knows the algorithm (not its secrets) can tell from the
                               vectors alone; the `drop` attacker trains on the others only

How a defense serves (`mip_jax.serving.defender`), without the data, the evaluator or any training:

  export(state) -> artefact.Artefact
                               optional: what serving needs of a fitted state, as arrays (network
                               weights, a target gradient) and JSON-able settings; written to
                               `<workdir>/serving/` whenever the defense is fitted for a workdir's
                               own config (`artefact.write`)
  serve(artefact, config, mesh) -> Backend
                               optional: the serving function built from the artefact alone (and
                               the workdir's config: architectures, config.serve.max_batch)
Defaults (`export`, `serve` below): a defense whose state is plain settings (numbers, strings, None:
the stateless post-processors) exports that state as its settings and serves through its own
`apply(settings, probs, images=images)`. A defense whose state holds anything else must define both.
"""

import dataclasses
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Defense(Protocol):
  """A defense of the registry (see the module docstring)."""

  REPLACES_CLASSIFIER: bool

  def fit(self, setup) -> Any:
    """Trains or crafts what the defense needs for an `experiment.Setup`; returns its state."""

  def apply(self, state: Any, probs: np.ndarray, *,
            images: np.ndarray | None = None) -> np.ndarray:
    """Defended vectors for clean `probs` (of `images`, when the defense needs them)."""


@dataclasses.dataclass(frozen=True)
class Backend:
  """A served defense.

  Attributes:
    fn: `fn(probs, images) -> (defended, ok)` for float32 clean vectors [N, m] and the queried
      images [N, H, W, C] (None when the caller has none); `ok` is a per-row bool [N] (False: the
      defense failed internally on that row) or None. Any batch size; a jitted backend chunks and
      pads to few compiled shapes itself (`parallel.bucket_size`).
    needs_images: the defense cannot run without the queried images.
    moves_rows: every served row differs from its clean vector (a row that comes back unchanged
      is a failure, not an undefended answer).
  """
  fn: Callable[[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray | None]]
  needs_images: bool = False
  moves_rows: bool = False


def check(name: str, defense) -> Defense:
  """`defense` if it follows the protocol; TypeError naming what it lacks otherwise."""
  if not isinstance(defense, Defense):
    missing = [m for m in ('REPLACES_CLASSIFIER', 'fit', 'apply') if not hasattr(defense, m)]
    raise TypeError(f'defense {name!r} does not follow defenses.protocol.Defense: it lacks '
                    f'{", ".join(missing)}; define them (REPLACES_CLASSIFIER = False for a '
                    f'post-processing unit)')
  if hasattr(defense, 'export') != hasattr(defense, 'serve'):
    raise TypeError(f'defense {name!r} defines only one of export and serve; define both (or '
                    'neither, when its state is plain settings)')
  return defense


def plain(value) -> bool:
  """Whether `value` is JSON-able settings: numbers (numpy scalars too: written as numbers),
  strings, bools, None, lists and str-keyed dicts of them."""
  if value is None or isinstance(value, (bool, int, float, str, np.bool_, np.number)):
    return True
  if isinstance(value, (list, tuple)):
    return all(plain(v) for v in value)
  if isinstance(value, dict):
    return all(isinstance(k, str) and plain(v) for k, v in value.items())
  return False


def export(name: str, defense, state):
  """The serving artefact of a fitted `state` (the defense's own `export`, or its plain state)."""
  from mip_jax.defenses import artefact  # noqa: late import: serving-only, pulls in file writing
  if hasattr(defense, 'export'):
    return defense.export(state)
  if not plain(state):
    raise TypeError(f'defense {name!r} has a state that is not plain settings '
                    f'({type(state).__name__}); give it export(state) and serve(artefact, config, '
                    'mesh) (defenses.protocol)')
  return artefact.Artefact(settings=state)


def serve(defense, served, config, mesh) -> Backend:
  """The defense's Backend for an artefact (its own `serve`, or `apply` on plain settings)."""
  if hasattr(defense, 'serve'):
    return defense.serve(served, config, mesh)
  settings = served.settings
  return Backend(fn=lambda probs, images: (defense.apply(settings, probs, images=images), None))
