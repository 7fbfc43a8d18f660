"""What the attacker feeds its decoder (Yang et al., CCS'19): log-probabilities or raw probabilities.

`log` (Yang's released code): take the log of the top-k entries, clamp at `floor` (-1000), add 50 and,
where a row still has a negative entry, shift that row up so its minimum is 0; entries outside the
top k are 0. A constant offset of 1000 instead would swamp the 20-30 units of log-probability range
that carry the information (BatchNorm's variance then cancels out in float32). Tiny probabilities become large,
well-separated inputs in log space; this is why tiny perturbations can move a decoder.
`floor`: the same log transform after clamping probabilities at `attack.floor` (1e-8): a zero-robust
attacker for which an exact 0 is just a tiny number, not a -1000 input that shifts the whole row.
`prob`: the (top-k truncated) probabilities themselves.
Both are differentiable in the probabilities (LPA differentiates through them).
"""

import jax
import jax.numpy as jnp

from mip_jax.protocol import rules


def truncate_top_k(probs: jnp.ndarray, k: int | None) -> jnp.ndarray:
  """Zeroes all but the k largest entries of each row (ties at the k-th value are kept)."""
  if k is None or k >= probs.shape[-1]:
    return probs
  if k < 1:
    raise ValueError(f'top_k must be >= 1, got {k}')
  kth = jax.lax.top_k(probs, k)[0][..., -1:]
  return jnp.where(probs >= kth, probs, 0.0)


LOG_OFFSET = 50.0


def log_transform(probs: jnp.ndarray, *, top_k: int | None = None,
                  floor: float = -1000.0) -> jnp.ndarray:
  """Yang et al.'s input: max(log p, floor) + 50, rows shifted to be >= 0, truncated entries 0."""
  kept = truncate_top_k(probs, top_k) > 0 if top_k is not None else jnp.ones_like(probs, bool)
  positive = probs > 0
  logp = jnp.log(jnp.where(positive, probs, 1.0))  # where-guard keeps the gradient finite at p = 0
  z = jnp.where(positive, jnp.maximum(logp, floor), floor) + LOG_OFFSET
  row_min = jnp.min(jnp.where(kept, z, jnp.inf), axis=-1, keepdims=True)
  z = z + jax.nn.relu(-row_min)
  return jnp.where(kept, z, 0.0)


def prob_transform(probs: jnp.ndarray, *, top_k: int | None = None) -> jnp.ndarray:
  return truncate_top_k(probs, top_k)


TRANSFORMS = ('log', 'floor', 'prob')

# How config.attack (and the substitute, `protocol.substitute`) reads vectors.
RULES = {
    'attack.transform': (rules.one_of(TRANSFORMS),),
    'attack.floor': (rules.UNIT_OPEN,),  # the `floor` transform's clamp
    'attack.top_k': (rules.optional(rules.above(0)),),
    'attack.log_floor': (rules.below(0),),  # Yang's floor of log(0)
}


def top_k_within_the_classes(config) -> list[str]:
  """attack.top_k <= the number of private classes, where the config tells it."""
  from mip_jax.data.splits import private_class_count  # noqa: late import: data loading code
  m, k = private_class_count(config), config.attack.top_k
  if m is not None and k is not None and k > m:
    return [rules.problem('attack.top_k', k, f'must be <= {m}, the number of private classes')]
  return []


CHECKS = (top_k_within_the_classes,)


def attacker_input(probs: jnp.ndarray, attack_cfg) -> jnp.ndarray:
  """Applies the transform named by `attack_cfg.transform` ('log', 'floor' or 'prob')."""
  if attack_cfg.transform == 'log':
    return log_transform(probs, top_k=attack_cfg.top_k, floor=attack_cfg.log_floor)
  if attack_cfg.transform == 'floor':
    clamped = jnp.maximum(probs, attack_cfg.floor)
    return log_transform(clamped, top_k=attack_cfg.top_k, floor=attack_cfg.log_floor)
  if attack_cfg.transform == 'prob':
    return prob_transform(probs, top_k=attack_cfg.top_k)
  raise ValueError(f'unknown attack.transform {attack_cfg.transform!r}; known: '
                   f'{", ".join(TRANSFORMS)}')
