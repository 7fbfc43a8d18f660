"""MID's classifier (Wang et al. 2021): Yang's classifier with a variational bottleneck before its
last layer.

  n conv blocks (as Classifier) -> flatten -> Dense(F) -> Dropout
  -> Dense(2k) -> (mu, raw), std = softplus(raw - 5)
  -> z = mu + std * eps (training) or z = mu (evaluation) -> Dense(m) logits

F = hidden_mult * m is the 'feature width', the width of the layer before the last one (Yang's
hidden Dense layer), and k = F // 2: MID's bottleneck is half its feature width.

MID's code also samples z at inference; `sample=True` does that here (rng stream 'bottleneck').
The conv blocks and Dense(F) carry Classifier's parameter names (conv_i, bn_i, fc_hidden, fc_out).
"""

import flax.linen as nn
import jax

from mip_jax.losses import vib
from mip_jax.models.classifier import Classifier
from mip_jax.models.feature_classifier import conv_blocks


class VIBClassifier(Classifier):
  """Classifier with MID's information bottleneck; same attributes as `Classifier`."""

  @property
  def bottleneck_width(self) -> int:
    """k: half the feature width hidden_mult * num_classes (at least 1)."""
    return max(1, self.hidden_mult * self.num_classes // 2)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, sample: bool | None = None,
               return_stats: bool = False):
    """Args:
      x: images [B, H, W, C].
      train: BatchNorm batch statistics and dropout (rng 'dropout') on.
      sample: draw z = mu + std * eps (rng 'bottleneck'); default: sample in train mode only.
      return_stats: also return (mu, std, log_std) of the bottleneck, each [B, k].

    Returns: logits [B, m], or (logits, (mu, std, log_std)).
    """
    self._check_input(x)
    h = conv_blocks(x, self.channels, train=train)[-1].reshape(x.shape[0], -1)
    h = nn.Dense(self.hidden_mult * self.num_classes, name='fc_hidden')(h)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    k = self.bottleneck_width
    stats = nn.Dense(2 * k, name='fc_bottleneck')(h)
    mu, raw = stats[:, :k], stats[:, k:]
    std, log_std = vib.softplus_std(raw)
    if train if sample is None else sample:
      z = vib.reparameterize(self.make_rng('bottleneck'), mu, std)
    else:
      z = mu
    logits = nn.Dense(self.num_classes, name='fc_out')(z)
    return (logits, (mu, std, log_std)) if return_stats else logits
