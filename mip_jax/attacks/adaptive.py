"""Adaptive attackers (the paper's Table X): transform received vectors before training on them.

An attacker who knows a defense is running may post-process every vector it receives, hoping to
wash the poison out: 'noise' adds Gaussian noise and renormalises, 'softmax' applies a softmax to
the probability vector. The same transform is applied to every vector the attacker's decoder sees
(training queries and the vectors it inverts).
"""

import numpy as np

from mip_jax.defenses.noise import gaussian_noise

ADAPTIVE = ('none', 'noise', 'softmax')


def check(kind: str) -> str:
  """Returns `kind` if it names an adaptive attacker, else raises ValueError listing the known ones."""
  if kind not in ADAPTIVE:
    raise ValueError(f'unknown adaptive attacker {kind!r}; known: {", ".join(ADAPTIVE)}')
  return kind


def adapt(probs: np.ndarray, kind: str, *, noise_std: float = 1e-3, seed: int = 0) -> np.ndarray:
  """Applies the adaptive attacker's transform `kind` to probability vectors [N, m]."""
  probs = np.asarray(probs, np.float32)
  if check(kind) == 'none':
    return probs
  if kind == 'noise':  # the same transform as the `noise` defense, at the attacker's scale
    return gaussian_noise(probs, scale=noise_std, rng=np.random.default_rng(seed))
  # 'softmax'
  e = np.exp(probs - probs.max(axis=1, keepdims=True))
  return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
