"""Gradient alignment (Witches' Brew, adapted by the paper's Eq. 7): pure, jit/vmap/grad-safe.

The defender wants the gradient an attacker's decoder receives on poisoned pairs (c', x) to point
where the *defensive* gradient on private data points. Both are gradients w.r.t. the decoder's
parameters; the loss compares them as whole pytrees (one cosine across all leaves). Because the
poisoned gradient is a `jax.grad` inside the loss, `jax.grad` of an alignment loss w.r.t. the poisoned
inputs is a second-order derivative.

  g_t = target_gradient(loss_fn, params, private_inputs, private_images)
  loss = alignment_loss(poison_inputs, loss_fn=..., params=..., images=..., target_grad=g_t)
  d_loss_d_inputs = jax.grad(alignment_loss)(poison_inputs, ...)

`loss_fn(params, inputs, images, weights) -> scalar` is any weighted reconstruction loss of a decoder.
Shapes are checked with chex at trace time (free under jit): inputs and images pair up row by row,
weights are one per row, and g_t has the parameters' tree and shapes.
"""

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import optax

from mip_jax.losses import ghost

LossFn = Callable[[Any, jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]


def cosine_distance(a: Any, b: Any, *, eps: float = 1e-12) -> jnp.ndarray:
  """1 - cos(a, b) with one cosine over all leaves of two pytrees of equal structure."""
  dot = optax.tree.vdot(a, b)
  norm_a = optax.tree.norm(a)
  norm_b = optax.tree.norm(b)
  return 1.0 - dot / jnp.maximum(norm_a * norm_b, eps)


def mse_distance(a: Any, b: Any) -> jnp.ndarray:
  """Mean squared difference over all entries of two pytrees (the Poi_MSE ablation's distance)."""
  diff = optax.tree.sub(a, b)
  return optax.tree.sum(jax.tree.map(jnp.square, diff)) / optax.tree.size(a)


DISTANCES = {'cosine': cosine_distance, 'mse': mse_distance}


def poisoned_gradient(loss_fn: LossFn, params: Any, inputs: jnp.ndarray, images: jnp.ndarray,
                      weights: jnp.ndarray | None = None) -> Any:
  """grad_params of the training loss the attacker's decoder sees on (inputs, images)."""
  if weights is None:
    weights = jnp.ones(inputs.shape[:1], inputs.dtype)
  _check_rows(inputs, images, weights)
  return jax.grad(loss_fn)(params, inputs, images, weights)


def _check_rows(inputs, images, weights=None) -> None:
  """Paired rows: inputs [B, ...], images [B, ...], weights [B] (a mismatch would broadcast)."""
  chex.assert_equal_shape_prefix([inputs, images], 1)
  if weights is not None:
    chex.assert_shape(weights, inputs.shape[:1])


def target_gradient(loss_fn: LossFn, params: Any, inputs: jnp.ndarray, images: jnp.ndarray,
                    weights: jnp.ndarray | None = None) -> Any:
  """Gradient of the defensive loss -R(I(c), x) on private data (the direction to push the attacker)."""
  return optax.tree.scale(-1.0, poisoned_gradient(loss_fn, params, inputs, images, weights))


def alignment_loss(inputs: jnp.ndarray, *, loss_fn: LossFn, params: Any, images: jnp.ndarray,
                   target_grad: Any, weights: jnp.ndarray | None = None,
                   distance: str = 'cosine') -> jnp.ndarray:
  """Aggregate alignment: distance(g_t, grad of the loss over the whole batch) (the paper's Eq. 7)."""
  chex.assert_trees_all_equal_shapes(target_grad, params)
  g_p = poisoned_gradient(loss_fn, params, inputs, images, weights)
  return DISTANCES[distance](target_grad, g_p)


PER_EXAMPLE_IMPLS = ('auto', 'ghost', 'vmap')


def per_example_alignment_losses(inputs: jnp.ndarray, *, loss_fn: LossFn, params: Any,
                                 images: jnp.ndarray, target_grad: Any, distance: str = 'cosine',
                                 impl: str = 'auto') -> jnp.ndarray:
  """distance(g_t, g_p(example i)) for every example [B]: each row's poison stands alone.

  impl: 'ghost' computes each example's <g_t, g_p> and ||g_p|| from layer activations and output
  gradients without materialising per-example gradients (`losses.ghost`; about the cost of one
  batch gradient); 'vmap' materialises them (a vmapped `jax.grad`, any model); 'auto' uses ghost
  where the model's modules allow it and vmap otherwise. Both are exact and agree to rounding.
  """
  if impl not in PER_EXAMPLE_IMPLS:
    raise ValueError(f'per-example impl must be one of {PER_EXAMPLE_IMPLS}, got {impl!r}')
  _check_rows(inputs, images)
  chex.assert_trees_all_equal_shapes(target_grad, params)
  if impl in ('auto', 'ghost'):
    try:
      return ghost.DISTANCES[distance](loss_fn, params, inputs, images, target_grad)
    except ghost.Unsupported:
      if impl == 'ghost':
        raise

  def one(z, x):
    g = poisoned_gradient(loss_fn, params, z[None], x[None], jnp.ones((1,), z.dtype))
    return DISTANCES[distance](target_grad, g)

  return jax.vmap(one)(inputs, images)


def per_example_alignment_loss(inputs: jnp.ndarray, *, weights: jnp.ndarray | None = None,
                               **kwargs) -> jnp.ndarray:
  """Weighted mean over examples of `per_example_alignment_losses(inputs, **kwargs)`."""
  if weights is None:
    weights = jnp.ones(inputs.shape[:1], inputs.dtype)
  chex.assert_shape(weights, inputs.shape[:1])
  losses = per_example_alignment_losses(inputs, **kwargs)
  return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)
