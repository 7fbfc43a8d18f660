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

from mip_jax.attacks import suite, transforms
from mip_jax.defenses import lpa, random_control, space
from mip_jax.protocol import metrics
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
  crafted, _ = lpa.Crafter(model=model, variables=variables, target_grad=g_t, config=c)(
      p, x, seed=space.crafting_seed(c))
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
  floor = lambda p: np.asarray(transforms.attacker_input(p, suite.parse('floor').attack_config(cfg)))
  assert metrics.input_shift(paper(tiny), paper(zero)) > 900   # the -1000 floor shifts the row
  np.testing.assert_allclose(floor(zero), floor(tiny))         # the floor attacker: no difference
  prob = suite.parse('prob').attack_config(cfg)
  assert prob.transform == 'prob' and cfg.transform == 'log'   # the paper's config is untouched
  np.testing.assert_allclose(np.asarray(transforms.attacker_input(zero, prob)), zero)
  with pytest.raises(ValueError, match='known: none, floor, prob, noise, softmax, label'):
    suite.check('flor')


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


def test_an_ensemble_objective_is_the_mean_of_its_members():
  c, model, variables, g_t, probs, images = craft_lpa.problem('aggregate')
  other = model.init(jax.random.key(7), jnp.asarray(probs[:1]), train=False)
  loss_fn = lpa.decoder_loss_fn(model, other['batch_stats'], c.attack)
  g_other = lpa.target_gradient(loss_fn, other['params'], probs[:8], images[:8])
  p, x, w = probs[8:24].astype(np.float32), images[8:24].astype(np.float32), np.ones(16, np.float32)
  single = lambda v, g: lpa.alignment_objective(x, w, params=v['params'], target_grad=g, cfg=c.lpa,
                                                loss_fn=lpa.decoder_loss_fn(model, v['batch_stats'],
                                                                            c.attack))(p)
  both = lpa.alignment_objective(
      x, w, params=(variables['params'], other['params']), target_grad=(g_t, g_other), cfg=c.lpa,
      loss_fn=tuple(lpa.decoder_loss_fn(model, v['batch_stats'], c.attack)
                    for v in (variables, other)))(p)
  np.testing.assert_allclose(both, (single(variables, g_t) + single(other, g_other)) / 2, rtol=1e-5)
  crafter = lpa.Crafter(members=[(model, variables, g_t), (model, other, g_other)], config=c)
  defended, _ = crafter(p, x, seed=0)
  assert metrics.label_flip_rate(defended, p) == 0 and np.abs(defended - p).max() > 1e-4


@pytest.fixture(scope='module')
def lpa_setup(tiny_setup_copy):
  return tiny_setup_copy('attribution')  # its own workdir: substitutes and crafted vectors go there


def test_crafted_vectors_are_cached_under_everything_they_depend_on(lpa_setup):
  import dataclasses
  import os
  files = lambda: sorted(os.listdir(os.path.join(lpa_setup.workdir, 'perturbations')))
  queries = lpa_setup.splits.attack_train
  clean = lpa_setup.clean['attack_train']
  first = lpa.apply(lpa.fit(lpa_setup), clean, images=queries.images)
  again = lpa.apply(lpa.fit(lpa_setup), clean, images=queries.images)
  assert len(files()) == 1
  np.testing.assert_array_equal(again, first)  # the same inputs: served from the cache
  changed = lpa_setup.config.copy_and_resolve_references()
  changed.attack.log_floor = -500.0  # another attacker transform: another substitute, new vectors
  lpa.apply(lpa.fit(dataclasses.replace(lpa_setup, config=changed)), clean, images=queries.images)
  assert len(files()) == 2
  other_images = queries.images[::-1].copy()  # same vectors, other images: crafted afresh
  lpa.apply(lpa.fit(lpa_setup), clean, images=other_images)
  assert len(files()) == 3


def test_ensemble_members_are_distinct_substitutes(lpa_setup):
  import dataclasses
  c = lpa_setup.config.copy_and_resolve_references()
  c.lpa.ensemble_size, c.lpa.ensemble_vary = 3, 'arch'
  members = lpa.ensemble_members(dataclasses.replace(lpa_setup, config=c))
  sizes = [sum(x.size for x in jax.tree.leaves(v['params'])) for _, v, _ in members]
  assert len(set(sizes)) == 3  # widths x1, x0.5, x2 (and an extra block) differ in size
  c.substitute.transform = 'floor'
  from mip_jax.protocol import substitute
  assert substitute.stage_name(c) != substitute.stage_name(lpa_setup.config)


@pytest.mark.parametrize('objective', ['untargeted', 'decoy_mean', 'decoy_class'])
def test_a_step_along_the_defensive_gradient_does_what_its_objective_says(lpa_setup, objective):
  """g_t is what the attacker's update should follow (theta -= lr * g_p with g_p aligned to g_t):
  untargeted, it must raise the private reconstruction error; targeted, lower the error toward the
  decoys (a sign error in either would make LPA poison the wrong way)."""
  from mip_jax.protocol import substitute
  cfg = lpa_setup.config.lpa.copy_and_resolve_references()
  cfg.objective = objective
  model, variables = substitute.train_substitute(lpa_setup)
  loss_fn = lpa.decoder_loss_fn(model, variables['batch_stats'], lpa_setup.config.attack)
  g_t = lpa.defensive_gradient(loss_fn, variables['params'], lpa_setup, cfg)
  private = lpa_setup.splits.private_train
  probs, ones = lpa_setup.clean['private_train'], np.ones(len(private.labels), np.float32)
  if objective == 'untargeted':
    target, sign = private.images, +1        # the private error must go up
  elif objective == 'decoy_mean':
    target = np.broadcast_to(lpa_setup.splits.attack_train.images.mean(0), private.images.shape)
    sign = -1                                # the error toward the decoy must go down
  else:
    classes = np.unique(private.labels)
    means = {k: private.images[private.labels == k].mean(0) for k in classes}
    target = np.stack([means[classes[(list(classes).index(y) + 1) % len(classes)]]
                       for y in private.labels])
    sign = -1
  target = np.ascontiguousarray(target, np.float32)
  before = float(loss_fn(variables['params'], probs, target, ones))
  stepped = optax.apply_updates(variables['params'], optax.tree.scale(-1e-2, g_t))
  after = float(loss_fn(stepped, probs, target, ones))
  assert sign * (after - before) > 0
  with pytest.raises(ValueError, match='lpa.objective'):
    cfg.objective = 'decoy'
    lpa.defensive_gradient(loss_fn, variables['params'], lpa_setup, cfg)
