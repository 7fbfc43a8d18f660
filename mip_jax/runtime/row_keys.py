"""Per-row PRNG keys that depend on a vector's own values, not on its place in a batch.

A served vector must be the same in every request that contains it (repeating a query must not let an
attacker average the randomness away, and a batch-mate must not change it). So randomness per vector
(LPA's random start, the VAE's latent) is drawn from a key folded with a hash of the row itself. The
hash reads log(c) rounded to 1/16: the same image classified in batches of other sizes (float32
results that differ in the last bits) still gets the same key, except with a probability of about
1e-5 per vector (a rounding boundary).
"""

import jax
import jax.numpy as jnp

_LOG_FLOOR = 1e-30  # entries below it hash alike
_KEY_GRID = 16.0


def row_keys(c: jnp.ndarray, key: jax.Array) -> jax.Array:
  """One PRNG key per row of `c` [B, m], a function of `key` and the row's rounded log (FNV-1a)."""
  grid = jnp.round(jnp.log(jnp.maximum(c.astype(jnp.float32), _LOG_FLOOR)) * _KEY_GRID)
  bits = jax.lax.bitcast_convert_type(grid.astype(jnp.int32), jnp.uint32)
  h = jnp.full(c.shape[:1], 2166136261, jnp.uint32)
  for j in range(c.shape[-1]):
    h = (h ^ bits[:, j]) * jnp.uint32(16777619)
  return jax.vmap(lambda x: jax.random.fold_in(key, x))(h)
