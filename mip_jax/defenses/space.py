"""Where a crafted perturbation lives (config `lpa.space`), shared by LPA, its `random` control and LFP.

'prob' (the paper): the variable delta is added to the probabilities and `feasible.project` clips the
  candidate to [0, 1] before normalising. Small entries pushed below 0 come out exactly 0, and Yang's
  log transform sends an exact 0 to its -1000 floor: the whole row then moves by ~950 in the attacker's
  input space, a protection that has nothing to do with gradient alignment.
'log' (zero-free): the variable d lives in log-probability space, |d_j| <= log_bound; the candidate is
  softmax(log c + d) (strictly positive) and the same feasible map moves from c toward it along the
  segment, so every entry of c' = (1 - t) c + t q stays strictly positive: no served entry is ever 0.
  Entries the classifier itself rounded to 0 are lifted to float32's smallest normal number (its log,
  -87, is far from the -1000 floor and moves nothing by more than the classifier's own tiny entries do).

Both spaces keep the label, the L2 radius eps around c and rows on the simplex (`feasible.project`).
The optimiser's step size is `tau * scale(space)`: eps in 'prob' (the paper), log_bound in 'log'.
"""

import jax
import jax.numpy as jnp

from mip_jax.defenses import feasible
from mip_jax.runtime import keys
from mip_jax.runtime.row_keys import row_keys

SPACES = ('prob', 'log')
TINY = float(jnp.finfo(jnp.float32).tiny)  # smallest normal float32: XLA:CPU flushes subnormals


def crafting_seed(config) -> int:
  """The key of LPA's random starts, shared by LPA, its `random` control and LFP: the control is
  LPA's first restart unoptimised only when both draw from the same key."""
  return keys.stage_seed(config.seed, 'lpa')


def check(space: str) -> str:
  if space not in SPACES:
    raise ValueError(f'unknown crafting space {space!r}; known: {", ".join(SPACES)}')
  return space


def step_scale(cfg) -> float:
  """The size a step of `tau` is relative to: eps (probabilities) or log_bound (log space)."""
  return cfg.eps if check(cfg.space) == 'prob' else cfg.log_bound


def restart_keys(key: jax.Array, restarts: int) -> jax.Array:
  """One key per restart of a crafting batch (the `random` control uses the first)."""
  return jax.random.split(key, restarts)


def init(key: jax.Array, c: jnp.ndarray, eps, *, space: str, log_bound: float) -> jnp.ndarray:
  """A random start of the variable, one per row (the paper: a unique random init per vector).

  'prob': uniform in [-eps, eps] per entry, mapped into the feasible set (the paper's LPA start).
  'log': uniform in [-log_bound, log_bound] per entry: a random direction in log space, which the
  feasible map shortens to the radius (or the label margin).
  `eps` is a scalar or a per-row radius [B, 1]. Each row draws from a key of its own (`row_keys`:
  `key` and the row's rounded log-probabilities), so a vector's start, and in per-example mode the
  vector itself, does not depend on its position in the batch or on its batch-mates.
  """
  draw = jax.vmap(lambda k: jax.random.uniform(k, c.shape[-1:], c.dtype, -1.0, 1.0))
  u = draw(row_keys(c, key))
  if check(space) == 'prob':
    return feasible.project(c, c + u * eps, _row(eps, c)) - c
  return u * log_bound


def defended(c: jnp.ndarray, v: jnp.ndarray, eps, *, space: str, log_bound: float) -> jnp.ndarray:
  """The defended vectors for variable `v` (differentiable almost everywhere; feasible always)."""
  if check(space) == 'prob':
    return feasible.project(c, c + v, _row(eps, c))
  logc = jnp.log(jnp.maximum(c, TINY))
  q = jax.nn.softmax(logc + jnp.clip(v, -log_bound, log_bound), axis=-1)
  out = feasible.project(c, q, _row(eps, c))
  # (1 - t) c + t q > 0 in exact arithmetic; the max only undoes float32 underflow and lifts the
  # classifier's own exact zeros (a change below 1e-37, far inside any radius).
  return jnp.maximum(out, TINY)


def after_step(c: jnp.ndarray, v: jnp.ndarray, eps, *, space: str, log_bound: float) -> jnp.ndarray:
  """Keeps the variable where it means something: on the feasible set ('prob') or in the box ('log')."""
  if check(space) == 'prob':
    return feasible.project(c, c + v, _row(eps, c)) - c
  return jnp.clip(v, -log_bound, log_bound)


def _row(eps, c):
  """eps as a scalar or a per-row [B] radius (callers may pass [B, 1])."""
  eps = jnp.asarray(eps, c.dtype)
  return eps.reshape(eps.shape[:1]) if eps.ndim == 2 else eps
