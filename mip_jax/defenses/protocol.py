"""What every defense is: the protocol the registry checks and `experiment` relies on.

A defense is a module (or an object, like `bido.COCO`) with:

  REPLACES_CLASSIFIER: bool    True for retraining defenses (MID, BiDO): the deployed model is the
                               retrained one, so its own outputs on private data are what an
                               attacker inverts; False for post-processing units
  LABEL_PRESERVING: bool       optional (default False): True where every served vector keeps the
                               clean argmax by construction; `experiment` fails a run in which a
                               served label changed anyway
  fit(setup) -> state          train / craft what it needs (cached stages of setup.workdir)
  apply(state, probs, *, images=None) -> defended vectors [N, m] for clean vectors `probs` [N, m]
                               of `images` (those that need the queried images raise without them)
  looks_defended(state, probs) -> [N] bool
                               optional: which served vectors carry the defense's signature, as an
                               attacker who knows the algorithm (not its secrets) can tell from the
                               vectors alone; the `drop` attacker trains on the others only
"""

from typing import Any, Protocol, runtime_checkable

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


def check(name: str, defense) -> Defense:
  """`defense` if it follows the protocol; TypeError naming what it lacks otherwise."""
  if not isinstance(defense, Defense):
    missing = [m for m in ('REPLACES_CLASSIFIER', 'fit', 'apply') if not hasattr(defense, m)]
    raise TypeError(f'defense {name!r} does not follow defenses.protocol.Defense: it lacks '
                    f'{", ".join(missing)}; define them (REPLACES_CLASSIFIER = False for a '
                    f'post-processing unit)')
  return defense
