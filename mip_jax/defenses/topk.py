"""Top-k truncation of the served vectors: keep the k largest scores, zero the rest, renormalise.

k = 1 is ART's `ClassLabels` postprocessor (a one-hot label); larger k is the truncation ART's
`HighConfidence` does with a cutoff, by count instead of by value. Exactly k entries are kept
(ties at the k-th value: the lower index wins), so the label (argmax, first index) is always kept.
"""

import numpy as np

from mip_jax.protocol import rules

REPLACES_CLASSIFIER = False  # a post-processing unit (defenses.protocol)
RULES = {'topk.k': (rules.above(0, integer=True),)}  # the number of scores kept


def at_most_the_classes(config) -> list[str]:
  """topk.k <= the number of private classes, where the config tells it (not FaceScrub's)."""
  from mip_jax.data.splits import private_class_count  # noqa: late import: data loading code
  m = private_class_count(config)
  if m is not None and config.topk.k is not None and config.topk.k > m:
    return [rules.problem('topk.k', config.topk.k, f'must be <= {m}, the number of private '
                          'classes')]
  return []


# Validation only: `fit` cannot know the classes (vectors wider than k are refused by `apply`).
CHECKS = (at_most_the_classes,)


def fit(setup) -> dict:
  """Checks config.topk; nothing is trained."""
  rules.enforce(RULES, setup.config)
  return {'k': int(setup.config.topk.k)}


def apply(state: dict, probs: np.ndarray, *, images: np.ndarray | None = None) -> np.ndarray:
  """Vectors with only their top k entries, rescaled to sum 1."""
  del images
  probs = np.asarray(probs, np.float32)
  k = state['k']
  if k > probs.shape[1]:
    raise ValueError(f'topk.k={k} exceeds the {probs.shape[1]} classes of the vectors')
  top = np.argsort(-probs, axis=1, kind='stable')[:, :k]
  kept = np.zeros_like(probs)
  np.put_along_axis(kept, top, np.take_along_axis(probs, top, 1), 1)
  sums = kept.sum(1, keepdims=True)
  one_hot = np.eye(probs.shape[1], dtype=np.float32)[np.argmax(probs, 1)]
  return np.where(sums > 0, kept / np.where(sums > 0, sums, 1.0), one_hot).astype(np.float32)
