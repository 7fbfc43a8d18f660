"""The feasible set of a defended vector, and a map onto it that is exact in float32.

For a clean vector c (argmax k) the defended c' must satisfy: entries in [0, 1], sum 1, argmax k
(label kept; ties resolved like `argmax`: first index wins) and ||c' - c||_2 <= eps.

`project(c, q_raw, eps)`:
  1. q = clip(q_raw, 0, 1) / sum: the paper's "arithmetic average" normalisation onto the simplex;
  2. c' = c + t (q - c) with the largest t in [0, 1] that keeps the label and the radius.
The set is convex and contains c, so every point of the segment [c, q] is in the simplex; along it the
label constraints (c'_k - c'_j >= 0) are linear in t and the radius is |t| ||q - c||, so t has a closed
form. Float32 rounding can still create a tie or overshoot the radius by an ulp; a final check halves t
for such rows and falls back to c itself (always feasible), so every output row is feasible.
This is a feasible *map* (differentiable almost everywhere), not the Euclidean projection; on a feasible
input it is the identity, so projecting after every optimiser step is idempotent.
"""

import jax.numpy as jnp

# Relative slack on the closed-form t: a few float32 ulps, so the checks below rarely fire.
_SLACK = 1e-6


def normalize(q_raw: jnp.ndarray) -> jnp.ndarray:
  """clip to [0, 1], then divide by the row sum (a row of zeros becomes uniform)."""
  q = jnp.clip(q_raw, 0.0, 1.0)
  s = jnp.sum(q, axis=-1, keepdims=True)
  m = q.shape[-1]
  return jnp.where(s > 0, q / jnp.where(s > 0, s, 1.0), 1.0 / m)


def is_feasible(c: jnp.ndarray, p: jnp.ndarray, eps: float, *, sum_tol: float = 1e-5,
                radius_tol: float = 0.0) -> jnp.ndarray:
  """Per-row boolean: p is a label-preserving probability vector within eps of c."""
  label = jnp.argmax(p, -1) == jnp.argmax(c, -1)
  in_box = jnp.all((p >= 0) & (p <= 1), axis=-1)
  sums = jnp.abs(jnp.sum(p, -1) - 1) <= sum_tol
  radius = jnp.linalg.norm(p - c, axis=-1) <= eps * (1 + radius_tol)
  return label & in_box & sums & radius


def _step_bound(c: jnp.ndarray, q: jnp.ndarray, eps) -> jnp.ndarray:
  """Largest t in [0, 1] with argmax kept and ||t (q - c)|| <= eps, per row (closed form)."""
  k = jnp.argmax(c, -1)
  ck = jnp.take_along_axis(c, k[..., None], -1)
  qk = jnp.take_along_axis(q, k[..., None], -1)
  gap_c = ck - c                      # >= 0, the margin at t = 0
  gap_q = qk - q                      # the margin at t = 1
  shrink = gap_c - gap_q              # > 0 where the margin decreases along the segment
  # Strictness: index j < k must stay strictly below (argmax takes the first maximum), j > k may tie.
  idx = jnp.arange(c.shape[-1])
  before = idx < k[..., None]
  safe = jnp.where(shrink > 0, shrink, 1.0)
  t_j = jnp.where(shrink > 0, gap_c / safe, jnp.inf)
  t_j = jnp.where(before & (shrink > 0), t_j * (1 - _SLACK), t_j)
  t_label = jnp.min(jnp.where(idx == k[..., None], jnp.inf, t_j), -1)
  # Double-where norm: the gradient of ||q - c|| at q = c is 0/0, and a plain `where` would still
  # let that NaN into the gradient of every row (near-one-hot rows hit it).
  sq = jnp.sum(jnp.square(q - c), axis=-1)
  dist = jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
  t_ball = jnp.where(dist > 0, eps * (1 - _SLACK) / jnp.where(dist > 0, dist, 1.0), jnp.inf)
  return jnp.clip(jnp.minimum(t_label, t_ball), 0.0, 1.0)


def project(c: jnp.ndarray, q_raw: jnp.ndarray, eps) -> jnp.ndarray:
  """Maps candidate vectors `q_raw` into the feasible set around the clean vectors `c` ([..., m]).

  Args:
    c: clean probability vectors (rows on the simplex).
    q_raw: candidates, e.g. c + delta (any real values).
    eps: L2 radius (scalar or per-row [...]).

  Returns:
    Vectors with entries in [0, 1], rows summing to 1, argmax(c) kept and ||result - c|| <= eps.
  """
  eps = jnp.asarray(eps, c.dtype)
  finite = jnp.all(jnp.isfinite(q_raw), axis=-1, keepdims=True)
  q = normalize(jnp.where(finite, q_raw, c))  # a row with NaN/inf candidates stays clean
  t = _step_bound(c, q, eps)[..., None]
  out = c + t * (q - c)
  # Rounding guard: rows that are off by an ulp take half the step, then c itself.
  ok = is_feasible(c, out, eps)[..., None]
  half = c + 0.5 * t * (q - c)
  out = jnp.where(ok, out, jnp.where(is_feasible(c, half, eps)[..., None], half, c))
  return out
