"""Attribution: the `random` control, the zero-free crafting space, zero-robust attackers, diagnostics.

LPA must protect through gradient alignment, not through exact zeros (which Yang's log transform maps
to -1000); these tests pin down the pieces that let a table say which it is.
"""

import types

import hypothesis.extra.numpy  # noqa: F401  (hypothesis' numpy support, as test_feasible)
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

from mip_jax import metrics
from mip_jax.attacks import adaptive, transforms
from mip_jax.defenses import lpa, random_control, space
from tests.scripts import craft_lpa
from tests.test_feasible import assert_feasible, rows

defended = jax.jit(space.defended, static_argnames=('space', 'log_bound'))


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(['softmax', 'one_hot', 'uniform', 'near_uniform', 'tie']),
       m=st.integers(2, 12), scale=st.sampled_from([1e-3, 1.0, 10.0, 1e3]),
       eps=st.sampled_from([1e-6, 1e-3, 0.01, 0.2, 2.0]), bound=st.sampled_from([1.0, 10.0, 50.0]),
       seed=st.integers(0, 2 ** 16))
def test_log_space_serves_no_zero_and_stays_feasible(kind, m, scale, eps, bound, seed):
  rng = np.random.default_rng(seed)
  c = jnp.asarray(rows(kind, rng, 64, m), jnp.float32)  # one-hot rows hold exact zeros already
  v = jnp.asarray(rng.normal(size=c.shape) * scale, jnp.float32)
  p = np.asarray(defended(c, v, eps, space='log', log_bound=bound))
  assert metrics.zero_fraction(p) == 0.0
  assert p.min() >= space.TINY
  assert_feasible(c, p, eps)


def test_prob_space_does_serve_zeros_on_confident_vectors():
  """The contrast that makes the diagnostic meaningful: the paper's space zeroes tiny entries."""
  c = jax.nn.softmax(jnp.asarray(np.random.default_rng(0).normal(size=(64, 5)) * 8), -1)
  c = c.astype(jnp.float32)
  start = space.init(jax.random.key(0), c, 0.01, space='prob', log_bound=10.0)
  assert metrics.zero_fraction(np.asarray(defended(c, start, 0.01, space='prob', log_bound=10.0))) > 0.1
  start = space.init(jax.random.key(0), c, 0.01, space='log', log_bound=10.0)
  assert metrics.zero_fraction(np.asarray(defended(c, start, 0.01, space='log', log_bound=10.0))) == 0


def _random_setup(c):
  return types.SimpleNamespace(config=c)


@pytest.mark.parametrize('where', ['prob', 'log'])
def test_random_control_is_lpa_without_optimisation(where):
  c, model, variables, g_t, probs, images = craft_lpa.problem('aggregate')
  c.lpa.space, c.lpa.steps, c.lpa.restarts = where, 0, 1
  p, x = probs.astype(np.float32), images.astype(np.float32)
  crafted, _ = lpa.Crafter(model=model, variables=variables, target_grad=g_t, config=c)(p, x, seed=c.seed)
  state = random_control.fit(_random_setup(c))
  control = random_control.apply(state, p)
  np.testing.assert_allclose(control, crafted, atol=1e-7)
  assert metrics.label_flip_rate(control, p) == 0
  assert np.abs(control - p).max() > 1e-4  # it moved
  dist = np.linalg.norm(control - p, axis=1)
  assert dist.max() <= c.lpa.eps * (1 + 1e-5)


def test_online_lpa_vector_does_not_depend_on_its_position():
  c, model, variables, g_t, probs, images = craft_lpa.problem('per_example')
  c.lpa.restarts = 1
  crafter = lpa.Crafter(model=model, variables=variables, target_grad=g_t, config=c)
  p, x = probs[:16].astype(np.float32), images[:16].astype(np.float32)
  first, _ = crafter(p, x, seed=0)
  perm = np.random.default_rng(1).permutation(16)
  shuffled, _ = crafter(p[perm], x[perm], seed=0)
  np.testing.assert_allclose(shuffled, first[perm], atol=1e-6)
  assert np.abs(first - p).max() > 1e-4


def test_floor_attacker_reads_an_exact_zero_as_a_tiny_number():
  cfg = ml_collections.ConfigDict({'transform': 'log', 'top_k': None, 'log_floor': -1000.0,
                                   'floor': 1e-8})
  zero = np.asarray([[0.9, 0.1 - 1e-12, 1e-12, 0.0]], np.float32)
  tiny = np.asarray([[0.9, 0.1 - 1e-12, 1e-12, 1e-12]], np.float32)
  paper = lambda p: np.asarray(transforms.attacker_input(p, cfg))
  floor = lambda p: np.asarray(transforms.attacker_input(p, adaptive.attack_config('floor', cfg)))
  assert metrics.input_shift(paper(tiny), paper(zero)) > 900   # the -1000 floor shifts the row
  np.testing.assert_allclose(floor(zero), floor(tiny))         # the floor attacker: no difference
  prob = adaptive.attack_config('prob', cfg)
  assert prob.transform == 'prob' and cfg.transform == 'log'   # the paper's config is untouched
  np.testing.assert_allclose(np.asarray(transforms.attacker_input(zero, prob)), zero)
  with pytest.raises(ValueError, match='known: none, noise, softmax, floor, prob'):
    adaptive.check('flor')


def test_diagnostics():
  probs = np.asarray([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], np.float32)
  assert metrics.zero_fraction(probs) == pytest.approx(3 / 6)
  a, b = np.zeros((2, 2)), np.asarray([[3.0, 4.0], [0.0, 1.0]])
  assert metrics.input_shift(a, b) == pytest.approx(3.0)


@pytest.mark.parametrize('where', ['prob', 'log'])
def test_one_step_on_lpa_vectors_hurts_private_reconstruction_more_than_random(where):
  """The mechanism itself: an SGD step of the decoder on (LPA vector, image) pairs does less good (or
  more harm) to its error on the private data than a step on random vectors of the same radius: that
  is what aligning the poisoned gradient with g_t = -grad R_private means. (On this untrained toy
  decoder every step still lowers the private error; LPA's lowers it clearly less.)"""
  c, model, variables, g_t, probs, images = craft_lpa.problem('aggregate')
  c.lpa.space, c.lpa.steps, c.lpa.restarts = where, 30, 1
  p, x = probs.astype(np.float32), images.astype(np.float32)
  private_p, private_x = p[:8], x[:8]  # g_t's data (craft_lpa.problem)
  queries_p, queries_x = p[8:40], x[8:40]
  loss_fn = lpa.decoder_loss_fn(model, variables['batch_stats'], c.attack)
  g_t = lpa.target_gradient(loss_fn, variables['params'], private_p, private_x)
  crafted, _ = lpa.Crafter(model=model, variables=variables, target_grad=g_t, config=c)(
      queries_p, queries_x, seed=0)
  control = random_control.apply(random_control.fit(_random_setup(c)), queries_p)
  ones = lambda n: np.ones(n, np.float32)
  before = float(loss_fn(variables['params'], private_p, private_x, ones(8)))

  def after_one_step(vectors):
    g = jax.grad(loss_fn)(variables['params'], vectors, queries_x, ones(32))
    params = optax.apply_updates(variables['params'], optax.tree.scale(-1.0, g))
    return float(loss_fn(params, private_p, private_x, ones(8)))

  lpa_rise, random_rise = after_one_step(crafted) - before, after_one_step(control) - before
  assert lpa_rise - random_rise > 0.1 * abs(random_rise)
