"""No defense: the classifier's vectors are served unchanged (the baseline row of every table)."""

import numpy as np

REPLACES_CLASSIFIER = False  # a post-processing unit (defenses.protocol)


def fit(setup) -> None:
  """Nothing to fit."""
  del setup
  return None


def apply(state, probs: np.ndarray, *, images: np.ndarray | None = None) -> np.ndarray:
  """Returns the vectors unchanged."""
  del state, images
  return np.asarray(probs)
