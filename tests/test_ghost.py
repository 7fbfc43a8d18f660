"""Ghost per-example norms and inner products against materialised per-example gradients."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mip_jax.losses import alignment, ghost
from mip_jax.models.decoder import Decoder


class ConvNet(nn.Module):
  """Dense, strided SAME and VALID convolutions, running BatchNorm: every generic ghost branch."""

  @nn.compact
  def __call__(self, z, *, train=False):
    x = nn.Dense(4 * 4 * 3)(z).reshape(z.shape[0], 4, 4, 3)
    x = jnp.tanh(nn.BatchNorm(use_running_average=not train)(x))
    x = jnp.tanh(nn.Conv(5, (3, 3), strides=(2, 2), padding='SAME')(x))
    x = nn.Conv(2, (2, 2), padding='VALID', use_bias=False)(x)
    return nn.sigmoid(nn.Dense(16)(x.reshape(x.shape[0], -1))).reshape(-1, 4, 4, 1)


def problem(model, *, batch=5, m=4, image=(16, 16, 1), train=False, seed=0):
  rng = np.random.default_rng(seed)
  c = jax.nn.softmax(jnp.asarray(rng.normal(size=(batch, m)) * 3, jnp.float32), -1)
  x = jnp.asarray(rng.uniform(size=(batch, *image)), jnp.float32)
  v = model.init(jax.random.key(seed), c, train=False)
  # Non-trivial running statistics and parameters, so BatchNorm's terms are really exercised.
  v = jax.tree.map(lambda a: a + 0.2 * jnp.asarray(rng.normal(size=a.shape), a.dtype), v)
  v = {'params': v['params'],
       'batch_stats': jax.tree.map(lambda a: jnp.abs(a) + 0.1, v.get('batch_stats', {}))}

  def loss_fn(params, probs, images, weights):
    variables = {'params': params, 'batch_stats': v['batch_stats']}
    if train:
      recon, _ = model.apply(variables, jnp.log(probs), train=True, mutable=['batch_stats'])
    else:
      recon = model.apply(variables, jnp.log(probs), train=False)
    err = jnp.mean((recon - images) ** 2, axis=(1, 2, 3))
    return jnp.sum(err * weights) / jnp.maximum(jnp.sum(weights), 1e-12)

  direction = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), v['params'])
  return loss_fn, v['params'], c, x, direction


def materialised(loss_fn, params, c, x, direction):
  grads = jax.vmap(lambda z, xi: jax.grad(loss_fn)(params, z[None], xi[None], jnp.ones(1)))(c, x)
  flat = lambda tree, n: jnp.concatenate([l.reshape(n, -1) for l in jax.tree.leaves(tree)], -1)
  g = flat(grads, len(c))
  return g @ flat(direction, 1)[0], jnp.sum(g ** 2, -1)


MODELS = {
    'decoder': (lambda: Decoder((16, 16, 1), width=8, blocks=3, impl='gemm'), (16, 16, 1)),
    'decoder + stride-1 block': (lambda: Decoder((16, 16, 1), width=8, blocks=3, extra_blocks=1,
                                                 impl='gemm'), (16, 16, 1)),
    'dense / conv / batchnorm': (ConvNet, (4, 4, 1)),
}


@pytest.mark.parametrize('name', ['decoder + stride-1 block', 'dense / conv / batchnorm'])
def test_dots_and_norms_equal_materialised_per_example_gradients(name):
  make, image = MODELS[name]
  loss_fn, params, c, x, direction = problem(make(), image=image)
  dots, sq = jax.jit(ghost.per_example_dots_and_sq_norms, static_argnums=0)(
      loss_fn, params, c, x, direction)
  ref_dots, ref_sq = materialised(loss_fn, params, c, x, direction)
  chex.assert_shape([dots, sq], (5,))
  chex.assert_trees_all_close(sq, ref_sq, rtol=2e-5)
  chex.assert_trees_all_close(dots, ref_dots, rtol=2e-4,
                              atol=1e-6 * float(jnp.abs(ref_dots).max()))


def test_a_direction_unlike_the_parameters_is_refused():
  """Ghost terms pair the direction's leaves with the parameters' by position: a tree of another
  structure with the same leaves would be read silently, so it is refused at trace time."""
  make, image = MODELS['dense / conv / batchnorm']
  loss_fn, params, c, x, direction = problem(make(), image=image)
  nested = {'wrapped': direction}  # the same leaves in the same order, another tree
  with pytest.raises(AssertionError):
    jax.jit(ghost.per_example_dots_and_sq_norms, static_argnums=0)(loss_fn, params, c, x, nested)
  with pytest.raises(AssertionError):  # five vectors, four images
    ghost.per_example_dots_and_sq_norms(loss_fn, params, c, x[:4], direction)


@pytest.mark.parametrize('distance', ['cosine', 'mse'])
def test_ghost_alignment_gradient_equals_vmap(distance):
  loss_fn, params, c, x, direction = problem(MODELS['decoder + stride-1 block'][0]())
  weights = jnp.array([1.0, 1.0, 0.0, 1.0, 1.0])
  f = {impl: jax.jit(jax.value_and_grad(lambda z, impl=impl: alignment.per_example_alignment_loss(
      z, loss_fn=loss_fn, params=params, images=x, target_grad=direction, weights=weights,
      distance=distance, impl=impl))) for impl in ('ghost', 'vmap')}
  (v_ghost, g_ghost), (v_vmap, g_vmap) = f['ghost'](c), f['vmap'](c)
  assert float(v_ghost) == pytest.approx(float(v_vmap), rel=1e-5)
  assert float(jnp.abs(g_vmap).max()) > 1e-6
  chex.assert_trees_all_close(g_ghost, g_vmap, rtol=1e-3, atol=1e-4 * float(jnp.abs(g_vmap).max()))
  np.testing.assert_array_equal(g_ghost[2], 0.0)  # a zero-weight (padding) row gets no gradient


def test_batch_statistics_or_unknown_modules_fall_back_to_vmap():
  # Train-mode BatchNorm couples the rows of a batch: 'ghost' refuses, 'auto' materialises.
  loss_fn, params, c, x, direction = problem(MODELS['decoder'][0](), train=True)
  kw = dict(loss_fn=loss_fn, params=params, images=x, target_grad=direction)
  with pytest.raises(ghost.Unsupported, match='BatchNorm'):
    alignment.per_example_alignment_losses(c, impl='ghost', **kw)
  chex.assert_trees_all_close(alignment.per_example_alignment_losses(c, impl='auto', **kw),
                              alignment.per_example_alignment_losses(c, impl='vmap', **kw),
                              rtol=1e-6)

  class WithLayerNorm(nn.Module):  # a parameterised module ghost does not know
    @nn.compact
    def __call__(self, z, *, train=False):
      return nn.sigmoid(nn.LayerNorm()(nn.Dense(16)(z))).reshape(-1, 4, 4, 1)

  loss_fn, params, c, x, direction = problem(WithLayerNorm(), image=(4, 4, 1))
  with pytest.raises(ghost.Unsupported, match='LayerNorm'):
    ghost.per_example_dots_and_sq_norms(loss_fn, params, c, x, direction)
  with pytest.raises(ValueError, match='impl'):
    alignment.per_example_alignment_losses(c, loss_fn=loss_fn, params=params, images=x,
                                           target_grad=direction, impl='fast')
