"""Transposed convolutions of the inversion decoder, fast on XLA:CPU and exact everywhere.

The decoder (design section 4) only needs two transposed convolutions:

* the stem, ConvT(k4, s1, p0) on a 1x1 input: a plain matmul [B, m] @ [m, 4*4*C];
* the upsampling block, ConvT(k4, s2, p1): [B, H, W, Cin] -> [B, 2H, 2W, Cout];
* and, for the optional stride-1 extra blocks, one plain convolution Conv(k3, s1, SAME)
  (`conv3x3_same`, an im2col GEMM on CPU for the same reason).

XLA:CPU runs `lax.conv_transpose` forward at about GEMM speed, but its gradients (the kernel
gradient above all) are 10-20x slower: 760 ms per decoder train step (width 64, batch 128) against
about 72 ms for the formulation below (design section 6 measured 722 and 98). The fast formulation
is one GEMM from each input pixel to all 16 kernel taps, x [B*H*W, Cin] @ W [Cin, 16*Cout],
followed by col2im: every tap lands on the output at a fixed offset, so the output is a sum of
shifted copies of the GEMM result. The shifts are slice-adds into a zero buffer, one transpose and
reshapes (no concatenation of shifted slices, no materialised im2col patches), which XLA turns into
a few in-place memory-bound loops. The backward and second-order passes are again GEMMs plus
slices, obtained by plain autodiff (no custom_vjp, so forward mode, vmap and grad-of-grad all work).

Kernel convention: HWIO (4, 4, Cin, Cout), exactly as `flax.linen.ConvTranspose` (and
`lax.conv_transpose` with `transpose_kernel=False`) store and apply it, so parameters are
interchangeable with
`flax.linen.ConvTranspose(features, (4, 4), (2, 2), padding=((2, 2), (2, 2)))`.
Relative to PyTorch's ConvTranspose2d weight w (Cin, Cout, kh, kw) the taps are spatially flipped:
kernel = w.transpose(2, 3, 0, 1)[::-1, ::-1].
"""

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Impl = Literal['auto', 'gemm', 'lax']

# lax.conv_transpose padding equal to PyTorch ConvTranspose2d(k=4, s=2, p=1): the dilated input is
# padded by k - 1 - p = 2 on each side, giving an output of exactly 2H x 2W.
_S2_PADDING = ((2, 2), (2, 2))
_DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')


def resolve_impl(impl: Impl) -> str:
  """Returns 'gemm' or 'lax' for `impl`; 'auto' picks by `jax.default_backend()`.

  'gemm' wins on CPU (XLA:CPU's transposed convolution is slow); GPUs/TPUs have tuned
  convolution kernels (cuDNN), so the plain `lax.conv_transpose` is kept there.
  """
  if impl == 'auto':
    return 'gemm' if jax.default_backend() == 'cpu' else 'lax'
  if impl not in ('gemm', 'lax'):
    raise ValueError(f"impl must be 'auto', 'gemm' or 'lax', got {impl!r}")
  return impl


def _check_kernel(x: jax.Array, kernel: jax.Array, in_axis_name: str) -> None:
  if kernel.ndim != 4 or kernel.shape[:2] != (4, 4):
    raise ValueError(f'kernel must have shape (4, 4, Cin, Cout) (HWIO), got {kernel.shape}')
  if kernel.shape[2] != x.shape[-1]:
    raise ValueError(
        f'kernel Cin={kernel.shape[2]} does not match the input {in_axis_name}={x.shape[-1]} '
        f'(input shape {x.shape})')


def conv_transpose_s2(x: jax.Array, kernel: jax.Array, *, impl: Impl = 'auto',
                      precision=None) -> jax.Array:
  """Transposed convolution k=4, stride 2, padding 1 (PyTorch semantics): NHWC, out = 2x in.

  Args:
    x: [B, H, W, Cin] input.
    kernel: (4, 4, Cin, Cout) HWIO kernel, flax.linen.ConvTranspose convention (see module doc).
    impl: 'gemm' (one GEMM to the 16 taps + col2im by shifted adds), 'lax'
      (`lax.conv_transpose`) or 'auto' ('gemm' on CPU, 'lax' elsewhere). All are equal up to
      floating-point rounding, including first and second derivatives.
    precision: passed to the matmul / convolution (e.g. `lax.Precision.HIGHEST` on GPUs whose
      float32 default is TF32).

  Returns:
    [B, 2H, 2W, Cout].
  """
  if x.ndim != 4:
    raise ValueError(f'conv_transpose_s2 expects NHWC input of rank 4, got shape {x.shape}')
  _check_kernel(x, kernel, 'channels')
  if resolve_impl(impl) == 'lax':
    return lax.conv_transpose(x, kernel, (2, 2), _S2_PADDING,
                              dimension_numbers=_DIMENSION_NUMBERS, precision=precision)
  return _conv_transpose_s2_gemm(x, kernel, precision)


def _conv_transpose_s2_gemm(x, kernel, precision):
  """GEMM to all 16 taps, then col2im by shifted adds into a zero buffer, one transpose.

  Index algebra. With the flax kernel convention output pixel o receives x[i] * kernel[k] for
  o = 2i + 2 - k. Flip the taps (t = 3 - k, PyTorch's order) and work on the un-cropped output
  u of length 2H + 2, where o = u_index - 1: u[2i + t] += x[i] * kernel_flipped[t]. Split
  t = 2g + r (g, r in {0, 1}) and u's index as 2q + r: q = i + g. So for each output phase r,
  u[q, r] = Y[i=q, g=0, r] + Y[i=q-1, g=1, r], q in [0, H]: the g=0 taps added at rows [0, H),
  the g=1 taps at rows [1, H]. Doing this along H and then W, interleaving the phases
  (transpose + reshape) and cropping one pixel on each side (PyTorch's p=1) gives the output.

  The static-slice `.at[].add` updates compile to in-place dynamic-update-slices (also under
  vmap). Measured against the equivalent `pad(Y0) + pad(Y1)` and explicit dynamic_update_slice
  forms it was 3-6% faster per decoder train step on XLA:CPU (2 cores), the other two within noise
  of each other; sums of 16 interior-padded taps and stacks of phases had 3-4x slower backward
  passes.
  """
  b, h, w, cin = x.shape
  cout = kernel.shape[-1]
  # (t_h, t_w, Cin, Cout) -> (gh, rh, gw, rw, Cin, Cout) -> (Cin, gh, gw, rh, rw, Cout): putting the
  # shift groups before the phases makes each col2im step a slice of a leading tap axis.
  k = kernel[::-1, ::-1].reshape(2, 2, 2, 2, cin, cout)
  k = k.transpose(4, 0, 2, 1, 3, 5).reshape(cin, 16 * cout)
  y = jnp.dot(x.reshape(b * h * w, cin), k, precision=precision)
  y = y.reshape(b, h, w, 2, 2, 2, 2, cout)       # (b, i, j, gh, gw, rh, rw, c)
  # Along H: u[q] = Y[q, gh=0] + Y[q-1, gh=1], q in [0, H] -> (b, q, j, gw, rh, rw, c).
  u = jnp.zeros((b, h + 1, w, 2, 2, 2, cout), y.dtype)
  u = u.at[:, :h].add(y[:, :, :, 0]).at[:, 1:].add(y[:, :, :, 1])
  # Along W, the same -> (b, q, p, rh, rw, c).
  v = jnp.zeros((b, h + 1, w + 1, 2, 2, cout), y.dtype)
  v = v.at[:, :, :w].add(u[:, :, :, 0]).at[:, :, 1:].add(u[:, :, :, 1])
  # (b, q, p, rh, rw, c) -> (b, q, rh, p, rw, c) -> (b, 2H + 2, 2W + 2, c); crop p=1.
  v = v.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h + 2, 2 * w + 2, cout)
  return v[:, 1:-1, 1:-1, :]


def conv_transpose_stem(z: jax.Array, kernel: jax.Array, *, impl: Impl = 'auto',
                        precision=None) -> jax.Array:
  """Transposed convolution k=4, stride 1, padding 0 of a 1x1 input: [B, m] -> [B, 4, 4, C].

  This is the decoder's first layer (the confidence vector seen as an m x 1 x 1 image). With a
  1x1 input every output pixel sees exactly one kernel tap, so it is a single matmul
  [B, m] @ [m, 16*C]; 'lax' applies `lax.conv_transpose(..., 'VALID')` to z as [B, 1, 1, m] and is
  equal to it (the VALID transposed convolution reads the taps flipped, hence the flip below).

  Args:
    z: [B, m] (or [B, 1, 1, m]) input.
    kernel: (4, 4, m, C) HWIO kernel.
    impl: 'gemm', 'lax' or 'auto' (as in `conv_transpose_s2`; the matmul is fast everywhere but
      'auto' still defers to the platform's convolution off-CPU for symmetry).
    precision: passed to the matmul / convolution.

  Returns:
    [B, 4, 4, C].
  """
  if z.ndim == 4:
    if z.shape[1:3] != (1, 1):
      raise ValueError(f'conv_transpose_stem expects a 1x1 input, got shape {z.shape}')
    z = z.reshape(z.shape[0], z.shape[-1])
  if z.ndim != 2:
    raise ValueError(f'conv_transpose_stem expects [B, m] (or [B, 1, 1, m]), got shape {z.shape}')
  _check_kernel(z, kernel, 'm')
  b, m = z.shape
  c = kernel.shape[-1]
  if resolve_impl(impl) == 'lax':
    return lax.conv_transpose(z.reshape(b, 1, 1, m), kernel, (1, 1), 'VALID',
                              dimension_numbers=_DIMENSION_NUMBERS, precision=precision)
  k = kernel[::-1, ::-1].transpose(2, 0, 1, 3).reshape(m, 16 * c)
  return jnp.dot(z, k, precision=precision).reshape(b, 4, 4, c)


class ConvTranspose4x4S2(nn.Module):
  """ConvT(k=4, s=2, p=1) layer: [B, H, W, Cin] -> [B, 2H, 2W, features].

  Same parameters ('kernel' (4, 4, Cin, features), 'bias') and initialisers as
  `flax.linen.ConvTranspose(features, (4, 4), (2, 2), padding=((2, 2), (2, 2)))`, so the two are
  interchangeable; only the computation differs (see `conv_transpose_s2`).
  """
  features: int
  impl: Impl = 'auto'
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
  precision: Any = None
  param_dtype: Any = jnp.float32
  _op = staticmethod(conv_transpose_s2)  # the computation; the subclasses swap it
  _kernel_size = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self._kernel_size
    kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1], self.features),
                        self.param_dtype)
    y = self._op(x, kernel, impl=self.impl, precision=self.precision)
    if self.use_bias:
      y = y + self.param('bias', self.bias_init, (self.features,), self.param_dtype)
    return y


class ConvTransposeStem(ConvTranspose4x4S2):
  """ConvT(k=4, s=1, p=0) of a 1x1 input: [B, m] -> [B, 4, 4, features] (the decoder's first layer).

  Parameters as `flax.linen.ConvTranspose(features, (4, 4), padding='VALID')` applied to
  [B, 1, 1, m]; computed as one matmul (see `conv_transpose_stem`). Same fields as its parent.
  """
  _op = staticmethod(conv_transpose_stem)


def conv3x3_same(x: jax.Array, kernel: jax.Array, *, impl: Impl = 'auto',
                 precision=None) -> jax.Array:
  """Convolution (cross-correlation) k=3, stride 1, SAME padding: [B, H, W, Cin] -> [B, H, W, Cout].

  'gemm': the nine shifted copies of the zero-padded input side by side, [B*H*W, 9*Cin] @
  [9*Cin, Cout]. XLA:CPU's own convolution is fine forward but its derivatives of derivatives, which
  LPA's crafting takes, are slow: one alignment gradient through a 3x3 block cost 5x the GEMM form,
  and 30x inside the crafting loop (measured on the digits decoder, 2 cores). 'lax': `lax.conv`,
  as `flax.linen.Conv(features, (3, 3), padding='SAME')` computes it. Kernel HWIO (3, 3, Cin, Cout).
  """
  if x.ndim != 4 or kernel.shape[:2] != (3, 3) or kernel.shape[2] != x.shape[-1]:
    raise ValueError(f'conv3x3_same expects NHWC input and a (3, 3, Cin, Cout) kernel with Cin = '
                     f'the input channels; got {x.shape} and {kernel.shape}')
  if resolve_impl(impl) == 'lax':
    return lax.conv_general_dilated(x, kernel, (1, 1), 'SAME', dimension_numbers=_DIMENSION_NUMBERS,
                                    precision=precision)
  b, h, w, cin = x.shape
  patches = windows(x, (3, 3), (1, 1), ((1, 1), (1, 1)))  # (i, j, c) order, as the kernel's reshape
  y = jnp.dot(patches.reshape(b * h * w, 9 * cin), kernel.reshape(9 * cin, -1), precision=precision)
  return y.reshape(b, h, w, -1)


def windows(x: jax.Array, size: tuple[int, int], strides: tuple[int, int],
            pads: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """[B, H, W, C] -> [B, Ho, Wo, kh * kw * C]: every kh x kw window of x (zero-padded by `pads`) at
  `strides`, features ordered (i, j, c) like a flattened HWIO kernel (im2col).

  Strided slices (memory moves, and so are their derivatives): XLA:CPU runs the equivalent
  `conv_general_dilated_patches`, a convolution with a one-hot kernel, several times slower. Used by
  `conv3x3_same` and by the per-example gradient norms of `losses.ghost`.
  """
  (kh, kw), (sh, sw) = size, strides
  padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  ho = (padded.shape[1] - kh) // sh + 1
  wo = (padded.shape[2] - kw) // sw + 1
  return jnp.concatenate([padded[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
                          for i in range(kh) for j in range(kw)], axis=-1)


class Conv3x3(ConvTranspose4x4S2):
  """Conv(k=3, s=1, SAME) layer: [B, H, W, Cin] -> [B, H, W, features] (the decoder's extra blocks).

  Same parameters ('kernel' (3, 3, Cin, features), 'bias') and initialisers as
  `flax.linen.Conv(features, (3, 3), padding='SAME')`, so checkpoints of either load in the other;
  computed by `conv3x3_same`. Same fields as `ConvTranspose4x4S2`.
  """
  _op = staticmethod(conv3x3_same)
  _kernel_size = 3
