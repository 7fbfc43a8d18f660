"""Per-example gradient norms and inner products without per-example gradients ("ghost" norms).

Per-example alignment needs, for every example i of a batch, <g_t, g_i> and ||g_i|| where g_i is
the decoder's parameter gradient on example i alone. Materialising every g_i (a vmapped `jax.grad`)
costs B copies of the parameters and, on XLA:CPU, batched weight-gradient kernels that run 2.5-3x
slower than the one batch gradient of the paper's aggregate mode. Neither quantity needs g_i: both
are sums over layers. A layer that is linear in its kernel, y_p = a_p W at positions p (a dense
layer: one position; a convolution: a_p the input patch under the kernel at output p), has the
per-example kernel gradient G_i = sum_p a_ip^T d_ip, where d = dl/dy is the cotangent at the layer's
output. ||G_i||^2 is either computed from G_i, which is small ([K, N] per example, one batched
matmul), or as sum_{p,q} (a_ip . a_iq)(d_ip . d_iq) (the Gram "ghost norm" of Goodfellow 2015 /
Li et al. 2022), whichever costs fewer multiplications; <T, G_i> for the layer's share T of g_t is
read from G_i, or in the Gram form as sum_p a_ip T d_ip. Biases and BatchNorm's scale and offset
are per-channel sums.

The activations a and cotangents d come from one backward pass of the summed loss with zero
perturbations added to the output of every parameterised module (Flax's `intercept_methods`; the
cotangent of a zero perturbation is the layer's output gradient). With running BatchNorm statistics
the loss is a sum of per-example terms, so d_i is example i's own cotangent. The decoder is not
touched, and the whole computation stays differentiable: LPA takes `jax.grad` of the result.

Supported modules: `nn.Dense`, `nn.Conv` (no feature groups, no input or kernel dilation),
`nn.BatchNorm` with running averages, and the decoder's transposed convolutions
(`models.conv_transpose`, the stride-1 `Conv3x3` included). Any other parameterised module, or
batch-statistics BatchNorm, raises `Unsupported` while tracing;
`alignment.per_example_alignment_loss` then falls back to vmapped per-example gradients.
"""

from typing import Any, Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mip_jax.models.conv_transpose import (Conv3x3, ConvTranspose4x4S2, ConvTransposeStem,
                                           windows)


class Unsupported(Exception):
  """The loss involves a module (or BatchNorm mode) the ghost computation cannot handle."""


def _kernel_terms(a: jnp.ndarray, d: jnp.ndarray, t: jnp.ndarray
                  ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(<t, G_i>, ||G_i||^2) per example for G_i = sum_p a_ip^T d_ip; a [B, P, K], d [B, P, N],
  t [K, N].

  ||G_i||^2 takes the cheaper exact form, chosen statically from the shapes: materialised G
  (B*P*K*N multiplications, one batched matmul; the inner product then reads G too) or the Gram
  form sum_{p,q} (a_p . a_q)(d_p . d_q) (B*P*P*(K+N); the inner product is then sum_p a_p t d_p).
  """
  _, p, k = a.shape
  n = d.shape[-1]
  if p == 1:
    return jnp.einsum('bk,kn,bn->b', a[:, 0], t, d[:, 0]), (jnp.sum(a[:, 0] ** 2, -1)
                                                           * jnp.sum(d[:, 0] ** 2, -1))
  if k * n <= p * (k + n):
    g = jnp.einsum('bpk,bpn->bkn', a, d)
    return jnp.einsum('bkn,kn->b', g, t), jnp.sum(g ** 2, axis=(1, 2))
  dots = jnp.einsum('bpn,bpn->b', jnp.einsum('bpk,kn->bpn', a, t), d)
  gram_a = jnp.einsum('bpk,bqk->bpq', a, a)
  gram_d = jnp.einsum('bpn,bqn->bpq', d, d)
  return dots, jnp.sum(gram_a * gram_d, axis=(1, 2))


def _positions(x: jnp.ndarray) -> jnp.ndarray:
  """[B, ..., C] -> [B, P, C]."""
  return x.reshape(x.shape[0], -1, x.shape[-1])


def _channel_sums(d: jnp.ndarray) -> jnp.ndarray:
  """Per-example bias gradient: the cotangent summed over positions, [B, C]."""
  return jnp.sum(_positions(d), axis=1)


def _same_pads(n: int, k: int, s: int) -> tuple[int, int]:
  """lax's 'SAME' padding of one spatial axis of length n (kernel k, stride s)."""
  total = max((-(-n // s) - 1) * s + k - n, 0)
  return total // 2, total - total // 2


def _layer_terms(kind: str, a: jnp.ndarray, d: jnp.ndarray, meta: dict, t: dict
                 ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(<t, g_i>, ||g_i||^2) [B] over one module's parameters from its input a and output cotangent d.

  t: the direction's leaves of this module ({'kernel': ..., 'bias': ...} or BatchNorm's scale/bias).
  """
  dots, sq = 0.0, 0.0
  if meta['bias']:
    bias_grad = _channel_sums(d)
    dots, sq = bias_grad @ t['bias'], jnp.sum(bias_grad ** 2, -1)
  if kind == 'batchnorm':
    if meta['scale']:
      xhat = (a - meta['mean']) * jax.lax.rsqrt(meta['var'] + meta['epsilon'])
      scale_grad = _channel_sums(d * xhat)
      dots, sq = dots + scale_grad @ t['scale'], sq + jnp.sum(scale_grad ** 2, -1)
    return dots, sq
  kernel = t['kernel']
  if kind == 'dense':
    a, d = _positions(a), _positions(d)
  elif kind == 'stem':
    # y = z @ K with K = kernel[::-1, ::-1] as (m, (i, j, c)) and y read as [B, 4, 4, C]
    # (`conv_transpose_stem`): one position, all 16 taps in the output features.
    a, d = a.reshape(a.shape[0], 1, -1), d.reshape(d.shape[0], 1, -1)
    kernel = kernel[::-1, ::-1].transpose(2, 0, 1, 3).reshape(a.shape[-1], -1)
  elif kind == 'convt_s2':
    # Output pixel o receives input i through tap k for o = 2i + 2 - k (`conv_transpose_s2`): the
    # cotangents input i meets are the 4x4 window of d (padded by 1) at 2i, window tap w = 3 - k.
    a, d = _positions(a), _positions(windows(d, (4, 4), (2, 2), ((1, 1), (1, 1))))
    kernel = kernel[::-1, ::-1].transpose(2, 0, 1, 3).reshape(a.shape[-1], -1)
  else:  # 'conv' (cross-correlation): the input windows under the kernel at every output position
    size, strides = meta['kernel_size'], meta['strides']
    pads = (tuple(_same_pads(n, k, s) for n, k, s in zip(a.shape[1:3], size, strides))
            if meta['padding'] == 'SAME' else ((0, 0), (0, 0)))
    a, d = _positions(windows(a, size, strides, pads)), _positions(d)
    kernel = kernel.reshape(-1, kernel.shape[-1])
  kernel_dots, kernel_sq = _kernel_terms(a, d, kernel)
  return dots + kernel_dots, sq + kernel_sq


def _describe(module: nn.Module, args, kwargs) -> tuple[str, dict] | None:
  """(kind, static facts) of a parameterised module the ghost norms handle; None for containers."""
  if isinstance(module, Conv3x3):  # before its parent class below: a convolution, not transposed
    return 'conv', {'bias': module.use_bias, 'kernel_size': (3, 3), 'strides': (1, 1),
                    'padding': 'SAME'}
  if isinstance(module, ConvTransposeStem):
    return 'stem', {'bias': module.use_bias}
  if isinstance(module, ConvTranspose4x4S2):
    return 'convt_s2', {'bias': module.use_bias}
  if isinstance(module, nn.Dense):
    return 'dense', {'bias': module.use_bias}
  if isinstance(module, nn.Conv) and not isinstance(module, nn.ConvTranspose):
    one = lambda v: v is None or all(x == 1 for x in (v if isinstance(v, (tuple, list)) else (v,)))
    if (module.feature_group_count != 1 or not one(module.input_dilation)
        or not one(module.kernel_dilation) or not isinstance(module.padding, str)
        or module.padding not in ('SAME', 'VALID')):
      raise Unsupported(f'nn.Conv {module.name}: only plain convolutions (SAME/VALID, no groups '
                        'or dilation) have ghost norms')
    size = tuple(module.kernel_size)
    if len(size) != 2:
      raise Unsupported(f'nn.Conv {module.name}: ghost norms handle 2-D convolutions only')
    strides = module.strides or 1
    strides = tuple(strides) if isinstance(strides, (tuple, list)) else (strides,) * len(size)
    return 'conv', {'bias': module.use_bias, 'kernel_size': size, 'strides': strides,
                    'padding': module.padding}
  if isinstance(module, nn.BatchNorm):
    running = kwargs.get('use_running_average', args[1] if len(args) > 1 else None)
    running = module.use_running_average if running is None else running
    if not running:
      raise Unsupported('BatchNorm with batch statistics couples the examples of a batch; '
                        'per-example gradients then need vmap')
    return 'batchnorm', {'bias': module.use_bias, 'scale': module.use_scale,
                         'epsilon': module.epsilon}
  return None


def _tapped(loss_fn, params, inputs, images, perturbations):
  """The summed loss with `perturbations[path]` added to every handled module's output.

  Returns (sum of per-example losses, {path: (kind, input, meta)}, {path: output}) where meta holds
  BatchNorm's running statistics (arrays) next to the static facts; `perturbations` None adds
  nothing (a trace that finds the outputs' shapes).
  """
  taps, outputs = {}, {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name != '__call__':
      return out
    described = _describe(context.module, args, kwargs)
    if described is None:
      return out
    kind, meta = described
    path = '/'.join(context.module.scope.path)
    if kind == 'batchnorm':
      meta = dict(meta, mean=context.module.get_variable('batch_stats', 'mean'),
                  var=context.module.get_variable('batch_stats', 'var'))
    taps[path] = (kind, args[0], meta)
    outputs[path] = out
    return out if perturbations is None else out + perturbations[path]

  n = inputs.shape[0]
  with nn.intercept_methods(interceptor):
    # loss_fn is the weighted mean; n x the unweighted mean is the sum of per-example losses, whose
    # cotangent at example i's activations is example i's own.
    total = n * loss_fn(params, inputs, images, jnp.ones((n,), inputs.dtype))
  return total, taps, outputs


def per_example_dots_and_sq_norms(loss_fn: Callable, params: Any, inputs: jnp.ndarray,
                                  images: jnp.ndarray, direction: Any
                                  ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(<direction, g_i>, ||g_i||^2) for every example i; g_i = grad_params loss_fn on example i
  alone.

  Args:
    loss_fn: `loss_fn(params, inputs, images, weights)`, a weighted mean of per-example losses of a
      Flax model built from the supported modules (running BatchNorm statistics).
    params: the model's parameters; inputs [B, ...], images [B, ...]; direction: a pytree like
      params.

  Returns:
    two [B] arrays. Raises `Unsupported` (while tracing) for models it cannot handle.
  """
  chex.assert_equal_shape_prefix([inputs, images], 1)
  # The direction's leaves are matched to the parameters' by position (`_leaves_by_module`).
  chex.assert_trees_all_equal_shapes(direction, params)
  zeros = _output_zeros(loss_fn, params, inputs, images)
  cotangents, taps = jax.grad(lambda z: _tapped(loss_fn, params, inputs, images, z)[:2],
                              has_aux=True)(zeros)
  by_module = _leaves_by_module(params, direction)
  missing = set(by_module) - set(taps)
  if missing:  # a parameter outside every handled module: its share of the norm would be lost
    raise Unsupported(f'parameters of {sorted(missing)} belong to modules without ghost norms')
  terms = [_layer_terms(kind, a, cotangents[path], meta, by_module[path])
           for path, (kind, a, meta) in taps.items()]
  return sum(t[0] for t in terms), sum(t[1] for t in terms)


def _leaves_by_module(params, direction) -> dict:
  """{module path 'a/b': {leaf name: the direction's leaf}} (params fix the structure)."""
  out = {}
  leaves = jax.tree.leaves(direction)
  for (path, _), leaf in zip(jax.tree_util.tree_flatten_with_path(params)[0], leaves):
    names = [str(getattr(k, 'key', k)) for k in path]
    out.setdefault('/'.join(names[:-1]), {})[names[-1]] = leaf
  return out


def _output_zeros(loss_fn, params, inputs, images) -> dict:
  """Zeros shaped like every handled module's output (found by tracing once, no FLOPs)."""
  shapes = jax.eval_shape(lambda: _tapped(loss_fn, params, inputs, images, None)[2])
  return {path: jnp.zeros(s.shape, s.dtype) for path, s in shapes.items()}


def cosine_distances(loss_fn: Callable, params: Any, inputs: jnp.ndarray, images: jnp.ndarray,
                     target_grad: Any, *, eps: float = 1e-12) -> jnp.ndarray:
  """1 - cos(target_grad, g_i) for every example i [B], without materialising any g_i."""
  dots, sq_norms = per_example_dots_and_sq_norms(loss_fn, params, inputs, images, target_grad)
  norm = jnp.sqrt(jnp.maximum(sq_norms, eps * eps))  # no NaN gradient at a zero-gradient row
  return 1.0 - dots / jnp.maximum(optax.tree.norm(target_grad) * norm, eps)


def mse_distances(loss_fn: Callable, params: Any, inputs: jnp.ndarray, images: jnp.ndarray,
                  target_grad: Any) -> jnp.ndarray:
  """mean((target_grad - g_i)^2) over entries for every example i [B]:
  (|t|^2 - 2<t, g_i> + |g_i|^2) / size."""
  dots, sq_norms = per_example_dots_and_sq_norms(loss_fn, params, inputs, images, target_grad)
  t2 = optax.tree.sum(jax.tree.map(jnp.square, target_grad))
  return (t2 - 2.0 * dots + sq_norms) / optax.tree.size(target_grad)


DISTANCES = {'cosine': cosine_distances, 'mse': mse_distances}
