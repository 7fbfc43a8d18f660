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
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

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
  return jax.grad(loss_fn)(params, inputs, images, weights)


def target_gradient(loss_fn: LossFn, params: Any, inputs: jnp.ndarray, images: jnp.ndarray,
                    weights: jnp.ndarray | None = None) -> Any:
  """Gradient of the defensive loss -R(I(c), x) on private data (the direction to push the attacker)."""
  return optax.tree.scale(-1.0, poisoned_gradient(loss_fn, params, inputs, images, weights))


def alignment_loss(inputs: jnp.ndarray, *, loss_fn: LossFn, params: Any, images: jnp.ndarray,
                   target_grad: Any, weights: jnp.ndarray | None = None,
                   distance: str = 'cosine') -> jnp.ndarray:
  """Aggregate alignment: distance(g_t, grad of the loss over the whole batch) (the paper's Eq. 7)."""
  g_p = poisoned_gradient(loss_fn, params, inputs, images, weights)
  return DISTANCES[distance](target_grad, g_p)


def per_example_alignment_loss(inputs: jnp.ndarray, *, loss_fn: LossFn, params: Any,
                               images: jnp.ndarray, target_grad: Any,
                               weights: jnp.ndarray | None = None,
                               distance: str = 'cosine') -> jnp.ndarray:
  """Weighted mean over examples of distance(g_t, g_p(example)): each row's poison stands alone.

  The per-example gradients are vmapped, so a served vector does not depend on its batch-mates.
  """
  if weights is None:
    weights = jnp.ones(inputs.shape[:1], inputs.dtype)

  def one(z, x):
    g = poisoned_gradient(loss_fn, params, z[None], x[None], jnp.ones((1,), z.dtype))
    return DISTANCES[distance](target_grad, g)

  losses = jax.vmap(one)(inputs, images)
  return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)
