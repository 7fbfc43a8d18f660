"""Inversion decoder of Yang et al. (CCS'19): vector [B, m] -> image [B, H, W, C] in (0, 1).

Architecture (design section 4; Yang's `Inversion.decoder`, DCGAN-style):

  m x 1 x 1 --ConvT(k4, s1, p0)--> 4x4 x width*2**(blocks-2)   BatchNorm, Tanh
            --ConvT(k4, s2, p1)--> 8x8 x width*2**(blocks-3)    BatchNorm, Tanh   } blocks - 2
            ...                                                                    } of these
            [--ConvT(k3, s1, p1)--> same side x width           BatchNorm, Tanh   } extra_blocks]
            --ConvT(k4, s2, p1)--> H x W x C                    Sigmoid

so the output side is 4 * 2**(blocks - 1): blocks 3 -> 16, 4 -> 32, 5 -> 64, 6 -> 128.
`extra_blocks` stride-1 blocks (a stride-1 transposed convolution is a convolution with the kernel
flipped, so they are 3x3 SAME convolutions, `Conv3x3`: parameters as `nn.Conv`, a GEMM on CPU) make
the decoder deeper without changing its output size:
Table IV's deeper/shallower attackers at a fixed image size.
Examples: width 64, blocks 4 -> 256-128-64-C; width 128, blocks 5 -> 1024-512-256-128-C.

Transposed convolutions go through `conv_transpose` ('gemm' on CPU, `lax.conv_transpose` on
accelerators by default). Everything is linear algebra plus smooth activations, so the model is
twice differentiable and vmappable in eval mode (callers take second-order derivatives through it
in eval mode, with `use_running_average`).
"""

import typing

import flax.linen as nn
import jax
import jax.numpy as jnp

from mip_jax.models.conv_transpose import Conv3x3, ConvTranspose4x4S2, ConvTransposeStem, Impl
from mip_jax.protocol import rules

# PyTorch BatchNorm2d defaults (Yang's code): running-stat momentum 0.1, i.e. flax momentum 0.9.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def output_side(blocks: int) -> int:
  """Side of the decoder's square output for `blocks` transposed convolutions."""
  return 4 * 2 ** (blocks - 1)


def hidden_channels(width: int, blocks: int) -> tuple[int, ...]:
  """Channels after each hidden block: width*2**(blocks-2), ..., 2*width, width."""
  return tuple(width * 2 ** (blocks - 2 - i) for i in range(blocks - 1))


# config.decoder (the attacker's) and the substitute's blocks (None in config.substitute: the
# attacker's).
RULES = {
    'decoder.width': (rules.POSITIVE,),
    '*.blocks': (rules.one_of(range(2, 9)),),  # 16 to 1024 pixels
    '*.extra_blocks': (rules.NON_NEGATIVE,),
    'decoder.b1': (rules.within(0, 1, open_hi=True),),
    'decoder.b2': (rules.within(0, 1, open_hi=True),),
    'decoder.impl': (rules.one_of(lambda: typing.get_args(Impl)),),
}


def geometry_problems(config) -> list[str]:
  """config.decoder.blocks makes images of config.image_size."""
  try:
    check_geometry((config.image_size, config.image_size, config.channels), config.decoder.blocks)
  except ValueError as e:
    return [str(e)]
  return []


CHECKS = (geometry_problems,)


def check_geometry(image_shape: tuple[int, int, int], blocks: int) -> None:
  """Raises ValueError unless `blocks` transposed convolutions produce `image_shape`."""
  if len(image_shape) != 3:
    raise ValueError(f'image_shape must be (H, W, C), got {image_shape}')
  h, w, _ = image_shape
  if h != w:
    raise ValueError(f'the decoder makes square images, got image_shape {image_shape}; '
                     'resize the data to a square (config.image_size)')
  if blocks < 2:
    raise ValueError(f'the decoder needs at least 2 blocks (stem + output layer), got {blocks}')
  if output_side(blocks) != h:
    valid = {output_side(b): b for b in range(2, 9)}
    hint = (f'for image_size {h} set config.decoder.blocks={valid[h]}' if h in valid
            else f'image_size must be 4 * 2**(blocks - 1), one of {sorted(valid)}')
    raise ValueError(
        f'decoder with blocks={blocks} outputs {output_side(blocks)}x{output_side(blocks)} images '
        f'but the images are {h}x{w} (config.image_size={h}); {hint}, or set '
        f'config.image_size={output_side(blocks)}')


class Decoder(nn.Module):
  """Yang et al.'s inversion decoder (see module docstring).

  Attributes:
    image_shape: (H, W, C) of the images to rebuild; H == W == 4 * 2**(blocks - 1).
    width: ngf, the channels of the last hidden block (config.decoder.width).
    blocks: number of transposed convolutions (config.decoder.blocks).
    extra_blocks: stride-1 blocks (3x3, `width` channels, BatchNorm, Tanh) before the output layer.
    impl: transposed-convolution implementation, 'auto' | 'gemm' | 'lax'.
    use_bias: conv biases (Yang's PyTorch layers have them; they are redundant before BatchNorm
      in train mode but part of the published parameter count).
    in_features: expected m (input width); None accepts any. Catches a decoder fed vectors of the
      wrong length (e.g. a transform that changed m) at init instead of silently re-shaping.
  """
  image_shape: tuple[int, int, int]
  width: int = 64
  blocks: int = 4
  extra_blocks: int = 0
  impl: Impl = 'auto'
  use_bias: bool = True
  in_features: int | None = None

  def __post_init__(self):
    # Fail at construction (make_decoder), not at the first init deep inside a training stage.
    check_geometry(tuple(self.image_shape), self.blocks)
    if self.extra_blocks < 0:
      raise ValueError(f'extra_blocks must be >= 0, got {self.extra_blocks}')
    super().__post_init__()

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool) -> jax.Array:
    """Args: z [B, m] decoder input; train: batch statistics (True) or running averages.

    Returns: [B, H, W, C] in (0, 1). In train mode apply with mutable=['batch_stats'].
    """
    if z.ndim != 2:
      raise ValueError(f'Decoder expects a batch of vectors [B, m], got shape {z.shape}')
    if self.in_features is not None and z.shape[-1] != self.in_features:
      raise ValueError(f'Decoder built for m={self.in_features} inputs got vectors of length '
                       f'{z.shape[-1]} (shape {z.shape})')
    norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                                     epsilon=BN_EPSILON, name=name)
    channels = hidden_channels(self.width, self.blocks)
    x = ConvTransposeStem(channels[0], impl=self.impl, use_bias=self.use_bias, name='convt_0')(z)
    x = jnp.tanh(norm('bn_0')(x))
    for i, c in enumerate(channels[1:], start=1):
      x = ConvTranspose4x4S2(c, impl=self.impl, use_bias=self.use_bias, name=f'convt_{i}')(x)
      x = jnp.tanh(norm(f'bn_{i}')(x))
    for j in range(self.extra_blocks):
      x = Conv3x3(channels[-1], impl=self.impl, use_bias=self.use_bias, name=f'extra_{j}')(x)
      x = jnp.tanh(norm(f'bn_extra_{j}')(x))
    x = ConvTranspose4x4S2(self.image_shape[-1], impl=self.impl, use_bias=self.use_bias,
                           name=f'convt_{self.blocks - 1}')(x)
    return nn.sigmoid(x)
