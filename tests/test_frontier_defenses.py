"""The defenses the frontier adds: tailfloor, template (confidence template), grad2 (GRAD²-style
redirection), am (Adaptive Misinformation). Invariants (probability vectors, labels, budgets), the information each removes,
and the math against a reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from mip_jax import defenses
from mip_jax.attacks import suite
from mip_jax.defenses import grad2, misinformation, tailfloor, template
from mip_jax.protocol import metrics

from tests.test_defenses import hand_made_probs, query_images, setup, with_config  # noqa: F401


def tail_probs(n=200, m=5, seed=0):
  """Rows with entries from 1e-9 to 0.9 (log-uniform shapes), distinct, a clear top entry."""
  rng = np.random.default_rng(seed)
  p = np.exp(rng.uniform(np.log(1e-9), 0, (n, m)))
  p[np.arange(n), rng.integers(0, m, n)] = rng.uniform(2, 20, n)
  return (p / p.sum(1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize('fill', ['floor', 'noise'])
def test_tailfloor_serves_label_preserving_vectors_without_zeros(setup, fill):  # noqa: F811
  state = tailfloor.fit(with_config(setup, tailfloor={'threshold': 0.01, 'fill': fill}))
  p = tail_probs()
  p[0] = [1.0, 0, 0, 0, 0]  # a classifier's own exact zeros
  out = tailfloor.apply(state, p)
  metrics.check_probability_vectors(out, atol=1e-5)
  assert metrics.label_flip_rate(out, p) == 0.0 and out.min() > 0
  small = p < 0.01
  small[np.arange(len(p)), p.argmax(1)] = False
  if fill == 'floor':
    np.testing.assert_allclose(out[small], state['floor'], rtol=1e-6)
  else:
    assert (out[small] >= 1e-10 * 0.999).all() and (out[small] <= 0.01 * 1.001).all()
  # The entries kept keep their ratios to the top entry.
  kept = ~small
  ratio = lambda v: v / v.max(1, keepdims=True)
  np.testing.assert_allclose(ratio(out)[kept], ratio(p)[kept], rtol=1e-4)
  # It costs at most about twice the mass below the threshold (more only where filled entries
  # exceed the entries they replace: at most the threshold each).
  moved = np.abs(out - p).sum(1)
  assert (moved <= 2 * (np.where(small, p, 0).sum(1) + 0.01 * small.sum(1)) + 1e-5).all()


def test_tailfloor_vectors_cannot_depend_on_entries_below_the_threshold(setup):  # noqa: F811
  state = tailfloor.fit(with_config(setup, tailfloor={'threshold': 0.01, 'fill': 'floor'}))
  p = tail_probs().astype(np.float64)
  p = np.where((p > 0.004) & (p < 0.025), 0.001, p)  # no entry near the threshold
  p /= p.sum(1, keepdims=True)
  small = p < 0.01
  small[np.arange(len(p)), p.argmax(1)] = False
  rng = np.random.default_rng(3)
  # Every entry below the threshold takes another value below it; the row is renormalised, so the
  # entries above it keep their ratios (all the information they carry).
  q = np.where(small, rng.uniform(0, 0.004, p.shape), p)
  q /= q.sum(1, keepdims=True)
  assert ((q < 0.01) == (p < 0.01)).all()
  served_p = tailfloor.apply(state, p.astype(np.float32))
  served_q = tailfloor.apply(state, q.astype(np.float32))
  np.testing.assert_allclose(served_p, served_q, rtol=2e-6)
  # An in-distribution vector (every non-top entry below the threshold) is one constant per label.
  confident = np.array([[0.999, 4e-4, 3e-4, 2e-4, 1e-4], [0.9999, 1e-5, 2e-5, 3e-5, 4e-5]])
  a, b = tailfloor.apply(state, confident.astype(np.float32))
  np.testing.assert_allclose(a, b, rtol=1e-6)
  # What the label attacker and the rank attacker (ties broken by index) see: the same.
  rank = suite.parse('rank')
  np.testing.assert_array_equal(rank.receive(a[None]), rank.receive(b[None]))


def test_tailfloor_noise_is_a_function_of_the_row_alone(setup):  # noqa: F811
  state = tailfloor.fit(with_config(setup, tailfloor={'threshold': 0.01, 'fill': 'noise'}))
  p = tail_probs(64)
  full = tailfloor.apply(state, p)
  np.testing.assert_array_equal(tailfloor.apply(state, p[[5, 0]]), full[[5, 0]])
  np.testing.assert_array_equal(tailfloor.apply(state, p), full)  # repeating it averages nothing
  u = tailfloor.row_noise(tail_probs(4000, seed=1), 0, 1e-10, 0.01)
  logs = (np.log(u) - np.log(1e-10)) / (np.log(0.01) - np.log(1e-10))
  assert 0 <= logs.min() and logs.max() < 1 and abs(logs.mean() - 0.5) < 0.01  # log-uniform
  assert not tailfloor.looks_defended(state, full).any()  # no signature to drop vectors by


def test_tailfloor_fits_its_floor_to_the_private_tails_and_checks_its_config(setup):  # noqa: F811
  state = tailfloor.fit(with_config(setup, tailfloor={'floor': None, 'threshold': 0.5}))
  fitted = tailfloor.fitted_floor(setup.clean['private_train'])
  assert state['floor'] == pytest.approx(min(fitted, 0.25))
  private = np.array([[0.98, 0.01, 1e-3, 1e-5, 1e-6]] * 3)
  assert tailfloor.fitted_floor(private) == pytest.approx((0.01 * 1e-3 * 1e-5 * 1e-6) ** 0.25)
  state = tailfloor.fit(with_config(setup, tailfloor={'floor': 1e-6, 'threshold': 0.01}))
  served = tailfloor.apply(state, tail_probs())
  assert tailfloor.looks_defended(state, served).mean() > 0.9
  for fields, match in (({'threshold': 0.0}, 'threshold'), ({'floor': 0.3}, 'floor'),
                        ({'fill': 'zero'}, 'fill'), ({'fill': 'noise', 'low': 0.5}, 'low')):
    with pytest.raises(ValueError, match=match):
      tailfloor.fit(with_config(setup, tailfloor=fields))


def test_template_serves_confident_vectors_their_labels_template_and_the_rest_unchanged(
    setup):  # noqa: F811
  state = template.fit(with_config(setup, template={'confidence': 0.9, 'floor': None}))
  assert state['floor'] == pytest.approx(tailfloor.fitted_floor(setup.clean['private_train']))
  p = tail_probs(400)
  p[0] = [1.0, 0, 0, 0, 0]  # a classifier's own exact zeros
  out = template.apply(state, p)
  metrics.check_probability_vectors(out, atol=1e-5)
  assert metrics.label_flip_rate(out, p) == 0.0 and out.min() > 0
  confident = p.max(1) >= 0.9
  assert 0 < confident.sum() < len(p)  # both kinds of row are tested
  np.testing.assert_array_equal(out[~confident], p[~confident])
  f, m = state['floor'], p.shape[1]
  expected = np.full((confident.sum(), m), f)
  expected[np.arange(confident.sum()), p[confident].argmax(1)] = 1 - (m - 1) * f
  np.testing.assert_allclose(out[confident], expected, rtol=1e-5)
  # A confident vector moves by at most about its non-top mass (and the floors it gets).
  moved = np.abs(out - p).sum(1)
  assert (moved <= 2 * (1 - p.max(1)) + 2 * (m - 1) * f + 1e-5).all()
  np.testing.assert_array_equal(template.looks_defended(state, out), confident)


def test_template_vectors_of_confident_rows_depend_on_the_label_alone(setup):  # noqa: F811
  """The removed information is gone: two confident vectors of one label, however their top value
  and tail differ, are served the same vector, so no attacker of the suite (label, rank, topk@k,
  floor, ...) can tell them apart."""
  state = template.fit(with_config(setup, template={'confidence': 0.99, 'floor': 1e-5}))
  a = np.array([[1e-3, 0.995, 2e-3, 1e-3, 1e-3], [2e-3, 3e-4, 5e-3, 2.7e-3, 0.99]], np.float32)
  b = np.array([[1e-9, 0.9999999, 1e-8, 1e-8, 7e-8], [1e-6, 1e-7, 1e-8, 1e-9, 0.9999989]],
               np.float32)
  served_a, served_b = template.apply(state, a), template.apply(state, b)
  np.testing.assert_array_equal(served_a, served_b)
  for name in ('floor', 'rank', 'topk@2', 'prob', 'softmax'):
    attacker = suite.parse(name)
    np.testing.assert_array_equal(attacker.receive(served_a), attacker.receive(served_b))


def test_template_checks_its_config(setup):  # noqa: F811
  for fields, match in (({'confidence': 0.0}, 'confidence'), ({'confidence': 1.0}, 'confidence'),
                        ({'floor': 0.3}, 'floor'), ({'floor': -1e-3}, 'floor')):
    with pytest.raises(ValueError, match=match):
      template.fit(with_config(setup, template=fields))


def linprog_best(c, s, eps):
  """max s . x on the simplex with ||x - c||_1 <= eps (variables x, and t >= |x - c|)."""
  m = len(c)
  obj = np.concatenate([-s, np.zeros(m)])
  a_ub = np.block([[np.eye(m), -np.eye(m)], [-np.eye(m), -np.eye(m)],
                   [np.zeros((1, m)), np.ones((1, m))]])
  b_ub = np.concatenate([c, -c, [eps]])
  a_eq = np.concatenate([np.ones(m), np.zeros(m)])[None]
  res = optimize.linprog(obj, a_ub, b_ub, a_eq, [1.0], bounds=[(0, 1)] * m + [(0, None)] * m)
  return -res.fun


def test_grad2_greedy_move_is_the_linear_programs_optimum():
  rng = np.random.default_rng(0)
  for _ in range(30):
    c = rng.dirichlet(np.full(5, 0.7))
    s = rng.normal(size=5)
    s[np.argmax(c)] = s.max() + 1  # the best entry is the label's: no label constraint binds
    eps = rng.uniform(0.01, 1.0)
    out = grad2.greedy_move(c[None], s[None], eps)[0].astype(np.float64)
    assert np.abs(out - c).sum() <= eps + 1e-5
    assert s @ out == pytest.approx(linprog_best(c, s, eps), abs=1e-5)


def test_grad2_move_keeps_the_label_when_the_best_entry_is_another():
  rng = np.random.default_rng(1)
  c = rng.dirichlet(np.full(5, 0.7), 500)
  s = rng.normal(size=(500, 5))
  out = grad2.greedy_move(c, s, 0.8)
  assert metrics.label_flip_rate(out, c) == 0.0
  metrics.check_probability_vectors(out, atol=1e-5)
  assert (np.abs(out - c).sum(1) <= 0.8 + 1e-5).all()
  moved_to = np.argmax(out - c, axis=1)
  assert np.mean(moved_to == s.argmax(1)) > 0.9  # the mass goes where the score is highest


def test_grad2_scores_are_the_derivative_of_the_directional_gradient():
  # A linear "decoder" theta . p with squared error: <grad_theta L, d> and its p-derivative by hand.
  jax.config.update('jax_enable_x64', True)
  try:
    rng = np.random.default_rng(0)
    theta, d = jnp.asarray(rng.normal(size=4)), jnp.asarray(rng.normal(size=4))
    p, x = jnp.asarray(rng.dirichlet(np.ones(4), 3)), jnp.asarray(rng.normal(size=3))
    w = jnp.asarray([1.0, 1.0, 0.0])  # the last row is padding
    loss_fn = lambda th, probs, images, weights: jnp.sum(
        weights * (probs @ th - images) ** 2) / jnp.sum(weights)
    s = grad2.scores(p, x, w, params=theta, target_grad=d, loss_fn=loss_fn)
    r = p @ theta - x
    by_hand = 2 * w[:, None] / w.sum() * ((p @ d)[:, None] * theta + r[:, None] * d)
    np.testing.assert_allclose(np.asarray(s), np.asarray(by_hand), rtol=1e-10, atol=1e-12)
  finally:
    jax.config.update('jax_enable_x64', False)


def test_grad2_end_to_end_on_the_tiny_setup(setup):  # noqa: F811
  state = grad2.fit(with_config(setup, grad2={'eps': 0.2}))
  p, images = hand_made_probs(), query_images(setup)
  out = grad2.apply(state, p, images=images)
  metrics.check_probability_vectors(out, atol=1e-5)
  assert metrics.label_flip_rate(out, p) == 0.0
  assert (np.abs(out - p).sum(1) <= 0.2 + 1e-4).all() and np.abs(out - p).sum(1).mean() > 0.05
  with pytest.raises(ValueError, match='queried images'):
    grad2.apply(state, p)


def test_am_misinforms_exactly_the_queries_below_its_threshold(setup):  # noqa: F811
  state = misinformation.fit(with_config(setup, am={'threshold': 0.6, 'steepness': 1e4}))
  p = hand_made_probs(200)
  out = misinformation.apply(state, p)
  metrics.check_probability_vectors(out, atol=1e-5)
  low = p.max(1) < 0.6
  assert low.any() and (~low).any()
  np.testing.assert_allclose(out[~low], p[~low], atol=1e-6)  # in distribution: served clean
  # misinformed: the rank order reversed, so the served label is the clean least likely class
  np.testing.assert_array_equal(out[low].argmax(1), p[low].argmin(1))
  np.testing.assert_allclose(np.sort(out[low], 1), np.sort(p[low], 1), atol=1e-6)
  np.testing.assert_array_equal(misinformation.looks_defended(state, out), low)
  soft = misinformation.gate(p, 0.6, 10.0)
  assert ((soft > 0.5) == (p.max(1) < 0.6)).all() and 0 < soft.min() and soft.max() < 1


def test_the_registry_knows_them():
  for name in ('tailfloor', 'template', 'grad2', 'am'):
    assert defenses.get(name) is not None
  assert all(defenses.get(name).LABEL_PRESERVING for name in ('tailfloor', 'template', 'grad2'))
  assert not getattr(defenses.get('am'), 'LABEL_PRESERVING', False)
