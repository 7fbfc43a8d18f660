"""The feasible-set map: every output row is a label-preserving probability vector within eps."""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

from mip_jax.defenses import feasible

project = jax.jit(feasible.project)


def assert_feasible(c, p, eps):
  c, p = np.asarray(c), np.asarray(p)
  assert np.all(np.isfinite(p))
  assert np.all(p >= 0) and np.all(p <= 1)
  np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(np.argmax(p, -1), np.argmax(c, -1))
  assert np.all(np.linalg.norm(p.astype(np.float64) - c, axis=-1) <= eps * (1 + 1e-6))


def rows(kind, rng, n, m):
  if kind == 'softmax':
    return jax.nn.softmax(rng.normal(size=(n, m)) * rng.uniform(0.1, 20), -1)
  if kind == 'one_hot':
    return np.eye(m, dtype=np.float32)[rng.integers(0, m, n)]
  if kind == 'uniform':
    return np.full((n, m), 1.0 / m, np.float32)
  if kind == 'near_uniform':
    r = 1.0 / m + rng.normal(size=(n, m)) * 1e-7
    return r / r.sum(-1, keepdims=True)
  if kind == 'tie':  # two equal top entries: argmax picks the first
    r = rng.uniform(0, 0.1, (n, m))
    r[:, 1] = r[:, m - 1] = 1.0
    return r / r.sum(-1, keepdims=True)
  raise ValueError(kind)


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(['softmax', 'one_hot', 'uniform', 'near_uniform', 'tie']),
       m=st.integers(2, 12), scale=st.sampled_from([1e-8, 1e-3, 0.1, 1.0, 100.0]),
       eps=st.sampled_from([1e-6, 1e-3, 0.01, 0.2, 2.0]), seed=st.integers(0, 2 ** 16))
def test_random_and_adversarial_rows_are_feasible(kind, m, scale, eps, seed):
  rng = np.random.default_rng(seed)
  c = jnp.asarray(rows(kind, rng, 64, m), jnp.float32)
  q = c + rng.normal(size=c.shape).astype(np.float32) * scale
  assert_feasible(c, project(c, q, eps), eps)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, (8, 5), elements=st.floats(-1e6, 1e6, width=32)),
       st.sampled_from([1e-4, 0.05, 1.0]))
def test_arbitrary_candidates_including_huge_values(q, eps):
  c = jax.nn.softmax(jnp.arange(40.0).reshape(8, 5) % 7, -1)
  assert_feasible(c, project(c, q, eps), eps)


def test_nan_and_inf_candidates_fall_back_to_clean_rows():
  c = jax.nn.softmax(jnp.arange(12.0).reshape(3, 4), -1)
  q = jnp.asarray(c).at[0, 0].set(jnp.nan).at[1, 2].set(jnp.inf)
  p = project(c, q, 0.1)
  assert_feasible(c, p, 0.1)
  np.testing.assert_array_equal(p[0], c[0])


def test_feasible_input_is_kept_and_projection_is_idempotent():
  rng = np.random.default_rng(0)
  c = jnp.asarray(rows('softmax', rng, 256, 10), jnp.float32)
  p = project(c, c + rng.normal(size=c.shape).astype(np.float32) * 0.05, 0.03)
  np.testing.assert_allclose(project(c, p, 0.03), p, atol=1e-6)
  np.testing.assert_allclose(project(c, c, 0.03), c, atol=1e-6)


def test_radius_is_used_when_label_allows():
  """Not a trivial map: a feasible direction moves the full radius."""
  c = jnp.array([[0.7, 0.2, 0.1]])
  p = project(c, c + jnp.array([[0.0, -0.1, 0.1]]), 0.05)
  assert abs(float(jnp.linalg.norm(p - c)) - 0.05) < 1e-6
  assert_feasible(c, p, 0.05)


def test_gradient_is_finite():
  c = jax.nn.softmax(jnp.arange(10.0).reshape(2, 5), -1)
  g = jax.grad(lambda d: jnp.sum(feasible.project(c, c + d, 0.05) ** 2))(jnp.full((2, 5), 0.01))
  assert np.all(np.isfinite(g)) and np.abs(g).max() > 0


def test_gradient_is_finite_where_the_candidate_maps_back_onto_c():
  """A one-hot row clips back onto itself: ||q - c|| = 0 there, its gradient must not be NaN."""
  c = jnp.array([[1.0, 0.0, 0.0], [0.6, 0.3, 0.1]])
  d = jnp.array([[0.01, -0.01, -0.01], [0.01, -0.02, 0.01]])  # row 0 clips to c exactly
  g = jax.grad(lambda d: jnp.sum(feasible.project(c, c + d, 0.05) ** 2))(d)
  assert np.all(np.isfinite(g))

