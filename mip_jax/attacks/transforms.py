"""What the attacker feeds its decoder (Yang et al., CCS'19): log-probabilities or raw probabilities.

`log`: keep the top-k entries (others set to 0), take the log, clamp at `floor` (-1000, where the log
of 0 lands) and shift by -floor so every input is non-negative. Tiny probabilities become large,
well-separated inputs in log space; this is why tiny perturbations can move a decoder.
`prob`: the (top-k truncated) probabilities themselves.
Both are differentiable in the probabilities (LPA differentiates through them).
"""

import jax
import jax.numpy as jnp


def truncate_top_k(probs: jnp.ndarray, k: int | None) -> jnp.ndarray:
  """Zeroes all but the k largest entries of each row (ties at the k-th value are kept)."""
  if k is None or k >= probs.shape[-1]:
    return probs
  if k < 1:
    raise ValueError(f'top_k must be >= 1, got {k}')
  kth = jax.lax.top_k(probs, k)[0][..., -1:]
  return jnp.where(probs >= kth, probs, 0.0)


def log_transform(probs: jnp.ndarray, *, top_k: int | None = None,
                  floor: float = -1000.0) -> jnp.ndarray:
  """max(log(p), floor) - floor, with zeros (and truncated entries) mapped to 0."""
  p = truncate_top_k(probs, top_k)
  positive = p > 0
  logp = jnp.log(jnp.where(positive, p, 1.0))  # where-guard keeps the gradient finite at p = 0
  return jnp.where(positive, jnp.maximum(logp, floor), floor) - floor


def prob_transform(probs: jnp.ndarray, *, top_k: int | None = None) -> jnp.ndarray:
  return truncate_top_k(probs, top_k)


def attacker_input(probs: jnp.ndarray, attack_cfg) -> jnp.ndarray:
  """Applies the transform named by `attack_cfg.transform` ('log' or 'prob')."""
  if attack_cfg.transform == 'log':
    return log_transform(probs, top_k=attack_cfg.top_k, floor=attack_cfg.log_floor)
  if attack_cfg.transform == 'prob':
    return prob_transform(probs, top_k=attack_cfg.top_k)
  raise ValueError(f"unknown attack.transform {attack_cfg.transform!r}; known: 'log', 'prob'")
