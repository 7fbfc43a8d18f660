"""Adaptive Misinformation (Kariyappa & Qureshi, CVPR 2020), registered as `am`.

AM defends against model stealing by exploiting that the thief's queries are out of distribution:
it serves y' = (1 - a) y + a y_mis, where a = sigmoid(nu (tau - s)) grows as the out-of-distribution
score of the query grows and y_mis is misinformation. The inversion attacker's queries here are out
of distribution too (images of classes the model never learned), so the same gate defends them while
in-distribution users mostly get their clean vector. As in AM:

  s       the maximum softmax probability of the clean vector (low: out of distribution), the OOD
          detector AM's paper uses;
  a       sigmoid(am.steepness * (am.threshold - s)): ~1 below the threshold, ~0 above it;
  y_mis   misinformation that minimises the probability of the predicted class: the rank-reversed
          vector (the largest probability moves to the least likely class, and so on), so a
          misinformed query is served a confident wrong label, as AM's misinformation model does.

Not label preserving: misinformed vectors change their argmax, so model accuracy falls by the share
of in-distribution test vectors below the threshold. `looks_defended` tells misinformed vectors by
their served top probability (below the threshold: the gate fired), what an attacker who knows the
algorithm and its threshold can do; the `drop` attacker trains on the others.
"""

import numpy as np

from mip_jax.protocol import rules

REPLACES_CLASSIFIER = False  # a post-processing unit (defenses.protocol)
# The gate's threshold is a maximum softmax probability; its steepness the sigmoid's slope.
RULES = {'am.threshold': (rules.within(0, 1, open_lo=True),), 'am.steepness': (rules.POSITIVE,)}


def fit(setup) -> dict:
  """Checks config.am; nothing is trained."""
  rules.enforce(RULES, setup.config)
  cfg = setup.config.am
  return {'threshold': float(cfg.threshold), 'steepness': float(cfg.steepness)}


def reversed_ranks(probs: np.ndarray) -> np.ndarray:
  """Each row's values with their order reversed: the i-th largest value moves to the entry of the
  i-th smallest (LFP's reversal, Algorithm 2)."""
  order = np.argsort(-probs, axis=1, kind='stable')
  out = np.empty_like(probs)
  np.put_along_axis(out, order[:, ::-1], np.take_along_axis(probs, order, axis=1), axis=1)
  return out


def gate(probs: np.ndarray, threshold: float, steepness: float) -> np.ndarray:
  """a [N]: how much misinformation each vector gets (the query's OOD score through a sigmoid)."""
  z = steepness * (threshold - np.asarray(probs, np.float64).max(axis=1))
  return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


def apply(state: dict, probs: np.ndarray, *, images: np.ndarray | None = None) -> np.ndarray:
  """(1 - a) y + a y_mis for clean `probs`."""
  del images
  probs = np.asarray(probs, np.float32)
  a = gate(probs, state['threshold'], state['steepness'])[:, None]
  out = (1 - a) * probs + a * reversed_ranks(probs)
  return (out / out.sum(axis=1, keepdims=True)).astype(np.float32)


def looks_defended(state: dict, probs: np.ndarray) -> np.ndarray:
  """Served vectors whose top probability lies below the gate's threshold: misinformed ones."""
  return np.asarray(probs).max(axis=1) < state['threshold']
