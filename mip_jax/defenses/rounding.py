"""Rounding of the served vectors, as ART's `Rounded` postprocessor (default 3 decimals).

ART returns `np.around(preds, decimals)`; those rows need not sum to 1 (up to m/2 units of the last
decimal off), so each row is divided by its sum afterwards (zeros stay zeros, order is kept). A row
that rounds to all zeros (only when decimals is small and m large) becomes one-hot at its argmax.
Rounding can create a tie at the top (0.4996 vs 0.5004 -> 0.5, 0.5); argmax then names the first
index, so a near-tied vector can change label, as with ART.
"""

import numpy as np

from mip_jax.protocol import rules

REPLACES_CLASSIFIER = False  # a post-processing unit (defenses.protocol)
RULES = {'rounding.decimals': (rules.at_least(1, integer=True),)}  # ART Rounded: >= 1 decimal


def fit(setup) -> dict:
  """Checks config.rounding; nothing is trained."""
  rules.enforce(RULES, setup.config)
  return {'decimals': int(setup.config.rounding.decimals)}


def apply(state: dict, probs: np.ndarray, *, images: np.ndarray | None = None) -> np.ndarray:
  """Rounded, renormalised vectors."""
  del images
  probs = np.asarray(probs, np.float32)
  rounded = np.around(probs.astype(np.float64), state['decimals'])
  sums = rounded.sum(1, keepdims=True)
  one_hot = np.eye(probs.shape[1])[np.argmax(probs, 1)]
  return np.where(sums > 0, rounded / np.where(sums > 0, sums, 1.0), one_hot).astype(np.float32)
