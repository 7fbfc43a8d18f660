"""Target / evaluation classifier of Yang et al. (CCS'19), returning logits.

  n x [Conv3x3 (SAME) -> BatchNorm -> MaxPool 2x2 -> ReLU]  (channels given, e.g. 128-256-512)
  flatten -> Dense(hidden_mult * m) -> Dropout -> Dense(m)

Yang's model ends in a softmax; here the module returns LOGITS so that losses can use the
numerically stable log-softmax, and callers apply `jax.nn.softmax` to get confidence vectors.
The evaluation classifier E is the same class with other channels and another seed.
"""

from typing import Sequence

import flax.linen as nn
import jax

from mip_jax.protocol import rules

# PyTorch BatchNorm2d defaults (Yang's code): momentum 0.1 is flax momentum 0.9.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# config.classifier and config.eval_classifier.
RULES = {
    '*classifier.channels': (rules.each(rules.POSITIVE),),
    '*classifier.hidden_mult': (rules.POSITIVE,),
    '*classifier.dropout': (rules.within(0, 1, open_hi=True),),
}


def blocks_fit_the_image(config) -> list[str]:
  """Each conv block halves the image: at most log2(image_size) of them."""
  found = []
  for section in ('classifier', 'eval_classifier'):
    blocks = len(config[section].channels)
    if config.image_size < 2 ** blocks:
      found.append(f'config.{section}.channels has {blocks} conv blocks, each halving the image, '
                   f'too many for image_size {config.image_size}: drop blocks or raise image_size')
  return found


CHECKS = (blocks_fit_the_image,)


class Classifier(nn.Module):
  """Conv classifier: [B, H, W, C] images -> [B, num_classes] logits.

  Attributes:
    num_classes: m, the number of private classes.
    channels: output channels of each conv block; each block halves H and W, so H and W must be
      divisible by 2**len(channels).
    hidden_mult: the hidden Dense layer has hidden_mult * num_classes units (Yang: 5).
    dropout: dropout rate after the hidden Dense layer; uses the 'dropout' rng in train mode.
  """
  num_classes: int
  channels: Sequence[int] = (128, 256, 512)
  hidden_mult: int = 5
  dropout: float = 0.5

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Args: x [B, H, W, C] images; train: batch statistics and dropout on (True) or off.

    Returns: [B, num_classes] logits. In train mode apply with mutable=['batch_stats'] and
    rngs={'dropout': key}.
    """
    self._check_input(x)
    for i, c in enumerate(self.channels):
      x = nn.Conv(c, (3, 3), padding='SAME', name=f'conv_{i}')(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                       name=f'bn_{i}')(x)
      # Pool before ReLU as in Yang's code (the two commute; pooling first is cheaper).
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
      x = nn.relu(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(self.hidden_mult * self.num_classes, name='fc_hidden')(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name='fc_out')(x)

  def _check_input(self, x: jax.Array) -> None:
    if x.ndim != 4:
      raise ValueError(f'Classifier expects images [B, H, W, C] (rank 4), got shape {x.shape}')
    factor = 2 ** len(self.channels)
    _, h, w, _ = x.shape
    if h % factor or w % factor:
      raise ValueError(
          f'{len(self.channels)} conv blocks halve the image {len(self.channels)} times, so H '
          f'and W must be divisible by {factor}; got {h}x{w} (check config.image_size against '
          f'the classifier channels {tuple(self.channels)})')
