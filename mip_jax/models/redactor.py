"""The learned post-processor of `defenses.learned`: confidence vectors in, label-preserving
served logits out.

  z = log(max(p, floor))                                   [B, m], the attacker's own view of p
  t = z + MLP(z / 10)                                      last layer zero-initialised: t = z at init
  t_top = max(t_top, max_{j != top} t_j + margin)          top = argmax p
  t_j = max(t_j, t_top - spread)                           no entry below exp(-spread) of the top
  served = softmax(t)

The residual form starts at the identity (served = p, no distortion) so training moves away from
the clean vectors only as far as the adversarial term pays for; the last line keeps the clean argmax
by construction (the served top entry is at least exp(margin) times every other entry), whatever
the weights. The softmax output is a probability vector with no exact zero: the spread bound keeps
every entry above float32's underflow (an exact 0 would be the artefact Yang's -1000 log floor
turns into a signal; the clean vectors' own spread, 18.4 at the floor 1e-8, is within it).
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class Redactor(nn.Module):
  """[B, m] probabilities -> [B, m] served logits with the input's argmax.

  Attributes:
    num_classes: m.
    hidden: widths of the MLP's hidden layers (ReLU).
    floor: probabilities are clamped here before the log (the zero-robust attacker's view).
    margin: the served top logit exceeds every other by at least this much.
    spread: and by at most this much (exp(-30) = 9e-14: no float32 underflow to 0).
  """
  num_classes: int
  hidden: Sequence[int] = (64, 64)
  floor: float = 1e-8
  margin: float = 0.01
  spread: float = 30.0

  @nn.compact
  def __call__(self, probs: jax.Array) -> jax.Array:
    if probs.ndim != 2 or probs.shape[-1] != self.num_classes:
      raise ValueError(f'Redactor expects confidence vectors [B, {self.num_classes}], '
                       f'got shape {probs.shape}')
    z = jnp.log(jnp.maximum(probs, self.floor))
    h = z / 10.0  # log-probabilities lie in [log(floor), 0] = [-18.4, 0]: order one for the MLP
    for i, w in enumerate(self.hidden):
      h = nn.relu(nn.Dense(w, name=f'fc_{i}')(h))
    t = z + nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name='fc_out')(h)
    top = jax.nn.one_hot(jnp.argmax(probs, axis=-1), self.num_classes, dtype=bool)
    # Logits relative to the largest non-top one (exactly 0), so the margin and the spread are
    # exact in float32 whatever the logits' magnitude.
    t = t - jnp.max(jnp.where(top, -jnp.inf, t), axis=-1, keepdims=True)
    t = jnp.where(top, jnp.maximum(t, self.margin), t)
    t_top = jnp.max(t, axis=-1, keepdims=True)  # the label's entry, after the line above
    return jnp.maximum(t, t_top - self.spread)
