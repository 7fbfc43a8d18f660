"""Yang's classifier that can also return its hidden representations (for BiDO's regularisers).

`FeatureClassifier` has exactly the parameters of `classifier.Classifier` (same module names, same
shapes), so variables move freely between the two; `return_hidden=True` also returns the output of
every conv block and of the hidden Dense layer (before dropout):

  logits = model.apply(variables, x, train=False)                          # like Classifier
  (logits, hidden), updates = model.apply(variables, x, train=True, return_hidden=True,
                                          mutable=['batch_stats'], rngs={'dropout': key})
"""

import flax.linen as nn
import jax

from mip_jax.models.classifier import BN_EPSILON, BN_MOMENTUM, Classifier


def conv_blocks(x: jax.Array, channels, *, train: bool) -> list[jax.Array]:
  """Yang's conv blocks [Conv3x3 -> BatchNorm -> MaxPool2 -> ReLU], called inside a compact module.

  The submodules are named conv_i / bn_i as in `Classifier`, so parameters are interchangeable.

  Args:
    x: images [B, H, W, C].
    channels: output channels per block.
    train: batch statistics (True) or running averages.

  Returns:
    The output of every block, [B, H / 2^(i+1), W / 2^(i+1), channels[i]].
  """
  outputs = []
  for i, c in enumerate(channels):
    x = nn.Conv(c, (3, 3), padding='SAME', name=f'conv_{i}')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                     name=f'bn_{i}')(x)
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(x)
    outputs.append(x)
  return outputs


class FeatureClassifier(Classifier):
  """`Classifier` whose call can also return the hidden representations (same attributes)."""

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, return_hidden: bool = False):
    """Args: x [B, H, W, C] images; train: as Classifier; return_hidden: also return the hiddens.

    Returns: logits [B, m], or (logits, [block_0, ..., block_{n-1}, dense_hidden]) when
    return_hidden.
    """
    self._check_input(x)
    hidden = conv_blocks(x, self.channels, train=train)
    h = nn.Dense(self.hidden_mult * self.num_classes, name='fc_hidden')(
        hidden[-1].reshape(x.shape[0], -1))
    hidden.append(h)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    logits = nn.Dense(self.num_classes, name='fc_out')(h)
    return (logits, hidden) if return_hidden else logits
