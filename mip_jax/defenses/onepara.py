"""OnePara: differential-privacy noise that keeps the rank order of each vector (after Ye et al.,
"One Parameter Defense: Defending against Data Inference Attacks via Differential Privacy",
TIFS 2022).

Ye et al. perturb each confidence score with a DP mechanism whose only parameter is the privacy
budget epsilon, then normalise, and guarantee that the order of the scores (hence the label and the
accuracy) is unchanged. Our reading, as used here:
  1. Laplace mechanism: s_i + Lap(sensitivity / epsilon), sensitivity 1 (scores lie in [0, 1]);
  2. order kept: the noisy values, sorted, are handed back in the clean vector's rank order (the
     largest noisy value goes to the clean argmax, ...);
  3. normalised: shift the row so its smallest entry is 0, divide by the sum (order-preserving;
     as epsilon grows the result tends to the clean vector, whose smallest entry is ~0).
The rank order of each row is kept exactly (ties among noisy values have probability 0; a tie in the
clean vector keeps argmax's first-index convention). Smaller epsilon: more noise, flatter vectors,
large confidence distortion (the paper's Table VII: Conf. Dist. ~0.99 on MNIST).
Deterministic given config.seed and the vectors.
"""

import numpy as np

from mip_jax.defenses import noise
from mip_jax.protocol import rules
from mip_jax.runtime import keys

REPLACES_CLASSIFIER = False  # a post-processing unit (defenses.protocol)
# The privacy budget and the scores' sensitivity: the Laplace scale is sensitivity / epsilon.
RULES = {'onepara.epsilon': (rules.POSITIVE,), 'onepara.sensitivity': (rules.POSITIVE,)}


def fit(setup) -> dict:
  """Checks config.onepara; nothing is trained."""
  rules.enforce(RULES, setup.config)
  cfg = setup.config.onepara
  return {'scale': float(cfg.sensitivity / cfg.epsilon),
          'seed': keys.stage_seed(setup.config.seed, 'onepara')}


def rank_kept_laplace(probs: np.ndarray, *, scale: float, rng: np.random.Generator) -> np.ndarray:
  """Steps 1-3 above on probability vectors [N, m]."""
  noisy = probs + rng.laplace(0.0, scale, probs.shape)
  order = np.argsort(-probs, axis=1, kind='stable')          # clean rank order, largest first
  out = np.empty_like(noisy)
  np.put_along_axis(out, order, -np.sort(-noisy, axis=1), 1)  # k-th largest noisy -> k-th class
  out -= out.min(1, keepdims=True)
  sums = out.sum(1, keepdims=True)
  # A row of equal noisy values (probability 0) cannot be normalised: it is served clean.
  return np.where(sums > 0, out / np.where(sums > 0, sums, 1.0), probs).astype(np.float32)


def apply(state: dict, probs: np.ndarray, *, images: np.ndarray | None = None) -> np.ndarray:
  del images
  probs = np.asarray(probs, np.float32)
  rng = noise.vector_rng(state['seed'], probs)
  return rank_kept_laplace(probs, scale=state['scale'], rng=rng)
