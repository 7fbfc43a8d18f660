"""The purifier of prediction purification (Yang et al. 2020): an autoencoder on confidence vectors.

  probs [B, m] -> [Dense -> BatchNorm -> ReLU] x (encoder widths, then the decoder's mirror image)
               -> Dense(m) logits; the purified vector is softmax(logits).

Trained on reference (non-member) vectors, the ReLU layers map the many nearly one-hot vectors of a
class onto few outputs: the served vectors are less dispersed than the classifier's own (digits:
721 private training vectors come out as 37 distinct ones). The code layer may be narrower than m
(a bottleneck); on digits a narrow one (2 units for m = 5) distorted in-distribution vectors 13x
more (mean L2 0.145 against 0.011 for widths (40, 10)) for the same labels, so the default
config.purification.width_factors (8, 2) is wider. The softmax output is a probability vector by
construction.
"""

from typing import Sequence

import flax.linen as nn
import jax

from mip_jax.models.classifier import BN_EPSILON, BN_MOMENTUM


def purifier_widths(num_classes: int, factors: Sequence[float]) -> tuple[int, ...]:
  """Encoder widths round(f * m) (at least 2) for the config's width factors, e.g. (8, 2)."""
  if not factors or any(f <= 0 for f in factors):
    raise ValueError(f'purification.width_factors must be positive numbers, got {tuple(factors)}')
  return tuple(max(2, int(round(f * num_classes))) for f in factors)


class Purifier(nn.Module):
  """Autoencoder on confidence vectors: [B, m] probabilities -> [B, m] logits.

  Attributes:
    num_classes: m.
    widths: encoder widths, the last is the code layer; the decoder mirrors the others.
  """
  num_classes: int
  widths: Sequence[int] = (20, 3)

  @nn.compact
  def __call__(self, probs: jax.Array, *, train: bool) -> jax.Array:
    if probs.ndim != 2 or probs.shape[-1] != self.num_classes:
      raise ValueError(f'Purifier expects confidence vectors [B, {self.num_classes}], '
                       f'got shape {probs.shape}')
    h = probs
    layers = list(self.widths) + list(reversed(self.widths[:-1]))
    for i, w in enumerate(layers):
      h = nn.Dense(w, name=f'fc_{i}')(h)
      h = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                       name=f'bn_{i}')(h)
      h = nn.relu(h)
    return nn.Dense(self.num_classes, name='fc_out')(h)
