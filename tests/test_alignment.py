"""Gradient-alignment losses: values, first- and second-order derivatives against finite differences."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mip_jax.losses import alignment, reconstruction


def smooth_decoder_loss(params, inputs, images, weights):
  """A small smooth 'decoder' (two dense layers, tanh, sigmoid) and its weighted MSE."""
  h = jnp.tanh(inputs @ params['w1'] + params['b1'])
  recon = jax.nn.sigmoid(h @ params['w2'])
  err = jnp.mean((recon - images) ** 2, axis=-1)
  return jnp.sum(err * weights) / jnp.sum(weights)


def problem(dtype):
  k = jax.random.split(jax.random.key(0), 6)
  params = {'w1': jax.random.normal(k[0], (4, 6), dtype), 'b1': jax.random.normal(k[1], (6,), dtype),
            'w2': jax.random.normal(k[2], (6, 5), dtype)}
  inputs = jax.random.normal(k[3], (3, 4), dtype)
  images = jax.random.uniform(k[4], (3, 5), dtype)
  private = jax.random.normal(k[5], (7, 4), dtype), jax.random.uniform(k[5], (7, 5), dtype)
  g_t = alignment.target_gradient(smooth_decoder_loss, params, *private)
  return params, inputs, images, g_t


def finite_difference(f, x, h=1e-6):
  grad = np.zeros(x.shape)
  for idx in np.ndindex(x.shape):
    e = np.zeros(x.shape)
    e[idx] = h
    grad[idx] = (f(x + e) - f(x - e)) / (2 * h)
  return grad


@pytest.mark.parametrize('per_example', [False, True])
@pytest.mark.parametrize('distance', ['cosine', 'mse'])
def test_second_order_gradient_matches_finite_differences(per_example, distance):
  with jax.enable_x64(True):
    params, inputs, images, g_t = problem(jnp.float64)
    loss = alignment.per_example_alignment_loss if per_example else alignment.alignment_loss
    f = lambda z: loss(z, loss_fn=smooth_decoder_loss, params=params, images=images,
                       target_grad=g_t, distance=distance)
    analytic = np.asarray(jax.grad(f)(inputs))
    numeric = finite_difference(lambda z: float(f(jnp.asarray(z))), np.asarray(inputs))
    assert np.abs(analytic).max() > 1e-6  # a non-trivial gradient
    chex.assert_trees_all_close(analytic, numeric, rtol=1e-6, atol=1e-9)


def test_cosine_distance_over_whole_pytree():
  a = {'x': jnp.array([1.0, 0.0]), 'y': jnp.array([[0.0]])}
  assert float(alignment.cosine_distance(a, a)) == pytest.approx(0.0, abs=1e-7)
  neg = jax.tree.map(lambda v: -v, a)
  assert float(alignment.cosine_distance(a, neg)) == pytest.approx(2.0)
  b = {'x': jnp.array([0.0, 1.0]), 'y': jnp.array([[1.0]])}
  assert float(alignment.cosine_distance(a, b)) == pytest.approx(1.0)
  # One cosine across leaves, not a mean of per-leaf cosines: here they differ.
  c = {'x': jnp.array([1.0, 1.0]), 'y': jnp.array([[3.0]])}
  expected = 1 - 1.0 / (1.0 * np.sqrt(11.0))
  assert float(alignment.cosine_distance(a, c)) == pytest.approx(expected, rel=1e-6)


def test_per_example_loss_is_mean_of_single_example_losses_and_ignores_padding():
  params, inputs, images, g_t = problem(jnp.float32)
  kw = dict(loss_fn=smooth_decoder_loss, params=params, target_grad=g_t)
  singles = [alignment.alignment_loss(inputs[i:i + 1], images=images[i:i + 1], **kw)
             for i in range(3)]
  together = alignment.per_example_alignment_loss(inputs, images=images, **kw)
  assert float(together) == pytest.approx(float(np.mean(singles)), rel=1e-5)
  padded = alignment.per_example_alignment_loss(
      jnp.concatenate([inputs, inputs[:1] * 5]), images=jnp.concatenate([images, images[:1]]),
      weights=jnp.array([1.0, 1.0, 1.0, 0.0]), **kw)
  assert float(padded) == pytest.approx(float(together), rel=1e-5)


def test_target_gradient_is_negated_training_gradient():
  params, inputs, images, _ = problem(jnp.float32)
  g = alignment.poisoned_gradient(smooth_decoder_loss, params, inputs, images)
  t = alignment.target_gradient(smooth_decoder_loss, params, inputs, images)
  chex.assert_trees_all_close(t, jax.tree.map(jnp.negative, g), rtol=0, atol=0)
  assert float(alignment.cosine_distance(g, t)) == pytest.approx(2.0, abs=1e-5)
  # The poisoned gradient is the whole tree's jax.grad of the weighted loss, leaf by leaf.
  ref = jax.grad(smooth_decoder_loss)(params, inputs, images, jnp.ones(3))
  chex.assert_trees_all_close(g, ref, rtol=1e-6, atol=0)
  halves = [alignment.poisoned_gradient(smooth_decoder_loss, params, inputs, images,
                                        jnp.asarray(w, jnp.float32))
            for w in ([1, 1, 0], [0, 0, 1])]
  # A weighted mean: over three rows, 2/3 of the first two rows' gradient plus 1/3 of the last's.
  mixed = optax.tree.add(optax.tree.scale(2 / 3, halves[0]), optax.tree.scale(1 / 3, halves[1]))
  chex.assert_trees_all_close(g, mixed, rtol=1e-5, atol=1e-7)


def test_shapes_that_would_broadcast_silently_are_refused_at_trace_time():
  params, inputs, images, g_t = problem(jnp.float32)
  kw = dict(loss_fn=smooth_decoder_loss, params=params, target_grad=g_t)
  loss = jax.jit(lambda z, x, w: alignment.alignment_loss(z, images=x, weights=w, **kw))
  assert np.isfinite(float(loss(inputs, images, jnp.ones(3))))
  with pytest.raises(AssertionError):  # one image for three vectors
    loss(inputs, images[:1], jnp.ones(3))
  with pytest.raises(AssertionError):  # one weight for three rows
    loss(inputs, images, jnp.ones(1))
  with pytest.raises(AssertionError):  # weights per row in the per-example mean too
    alignment.per_example_alignment_loss(inputs, images=images, weights=jnp.ones(1), **kw)
  # g_t shaped unlike the parameters: a flat dot product would still run.
  transposed = dict(g_t, w1=g_t['w1'].T)
  with pytest.raises(AssertionError):
    alignment.alignment_loss(inputs, images=images, **dict(kw, target_grad=transposed))
  with pytest.raises(AssertionError):
    alignment.per_example_alignment_losses(inputs, images=images,
                                           **dict(kw, target_grad=transposed))
  with pytest.raises(AssertionError):  # a batch of images against one image
    reconstruction.mse(jnp.zeros((2, 4, 4, 1)), jnp.zeros((4, 4, 1)))


def test_reconstruction_losses():
  x = jnp.zeros((2, 4, 4, 1))
  r = x + 0.1
  assert float(reconstruction.mse(r, x)) == pytest.approx(0.01)
  assert float(reconstruction.psnr(r, x)) == pytest.approx(20.0, rel=1e-4)
  assert float(reconstruction.psnr_loss(r, x)) == pytest.approx(-20.0, rel=1e-4)
  with pytest.raises(ValueError, match='known'):
    reconstruction.get_loss('l1')
