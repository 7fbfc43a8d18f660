"""Gaussian noise on the served vectors, as ART's `GaussianNoise` postprocessor (Nicolae et al.).

ART adds N(0, scale^2) noise to every entry, sets negative entries to 0 and divides each row by its
sum (probability outputs). The same here, with ART's default scale 0.2 (config.noise.scale). Like
ART's, the defense is not label preserving: noise larger than a vector's top-2 margin moves its
argmax. A row whose entries all fall below 0 (ART would divide by 0) becomes uniform.
Noise is drawn from a generator seeded by config.seed and the vectors themselves: deterministic,
and a different batch of vectors gets different noise.
"""

import numpy as np

from mip_jax.protocol import rules
from mip_jax.runtime import checkpoints, keys

REPLACES_CLASSIFIER = False  # a post-processing unit (defenses.protocol)
RULES = {'noise.scale': (rules.POSITIVE,)}  # the noise's standard deviation


def fit(setup) -> dict:
  """Checks config.noise; nothing is trained."""
  rules.enforce(RULES, setup.config)
  return {'scale': float(setup.config.noise.scale),
          'seed': keys.stage_seed(setup.config.seed, 'noise')}


def gaussian_noise(probs: np.ndarray, *, scale: float, rng: np.random.Generator) -> np.ndarray:
  """ART's GaussianNoise on probability vectors [N, m]: add noise, clip at 0, renormalise rows."""
  noisy = np.clip(probs + rng.normal(0.0, scale, probs.shape), 0.0, None)
  sums = noisy.sum(1, keepdims=True)
  uniform = np.full_like(noisy, 1.0 / probs.shape[1])
  return np.where(sums > 0, noisy / np.where(sums > 0, sums, 1.0), uniform).astype(np.float32)


def vector_rng(seed: int, probs: np.ndarray) -> np.random.Generator:
  """Noise generator keyed by the seed and the vectors: the same query gets the same noise, so
  repeating it cannot average the noise away."""
  return np.random.default_rng([seed, int(checkpoints.array_fingerprint(probs), 16)])


def apply(state: dict, probs: np.ndarray, *, images: np.ndarray | None = None) -> np.ndarray:
  """Noisy vectors for `probs`; the same inputs and seed give the same output."""
  del images
  probs = np.asarray(probs, np.float32)
  rng = vector_rng(state['seed'], probs)
  return gaussian_noise(probs, scale=state['scale'], rng=rng)
