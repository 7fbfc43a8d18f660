"""The VAE perturbation generator of the paper's Table IX: a conditional VAE over defended vectors.

The paper's VAE "captures and reproduces the distribution of defensive perturbations that would
normally be generated through optimization" (LPA). Here that is a conditional VAE:

  f(c) = vector_features(c)                         log-probabilities, row max 0, scaled to [-1, 0]
  encoder  q(z | c, c*) = N(mu, exp(log_var))       c* = an LPA-crafted vector of c (training only)
  decoder  delta = eps * tanh(MLP([z, f(c)]))       the perturbation of c
  defended c' = feasible.project(c, c + delta, eps) label kept, ||c' - c|| <= eps, on the simplex

Training draws z from the posterior (reparameterised); serving draws z from the prior N(0, I) with a
key derived from c itself (its rounded log-probabilities, `row_keys`): a perturbation like one of
LPA's, different for every vector, yet the same query always gets the same answer (so averaging
repeated queries does not remove it), and a vector never depends on the other queries of its batch.

Why log-probabilities as input: the attacker's decoder (and so the alignment gradient) sees c through
Yang's log transform, where the tiny entries of a confident vector carry most of the information
(1e-8 and 1e-12 are far apart in log space, both ~0 as probabilities); an MLP on raw probabilities
could not tell such vectors, or LPA's perturbations of them, apart. The floor 1e-30 keeps the features
finite where a softmax entry is exactly 0 (LPA's perturbations zero many tiny entries).
"""

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mip_jax.defenses import feasible
from mip_jax.runtime.row_keys import row_keys

LOG_FLOOR = 1e-30
_FEATURE_SCALE = -math.log(LOG_FLOOR)  # maps [log 1e-30, 0] onto [-1, 0]


def vector_features(c: jnp.ndarray) -> jnp.ndarray:
  """log(max(c, 1e-30)) minus the row max, divided by -log(1e-30): [..., m] in [-1, 0]."""
  logc = jnp.log(jnp.maximum(c, LOG_FLOOR))
  return (logc - jnp.max(logc, axis=-1, keepdims=True)) / _FEATURE_SCALE


class PerturbationVAE(nn.Module):
  """Conditional VAE: encode (c, c*) -> (mu, log_var); decode (z, c) -> delta.

  Attributes:
    num_classes: m.
    latent: size of z.
    hidden: widths of the encoder's and the decoder's hidden layers.
    eps: bound of each entry of delta (eps * tanh); the feasible map then bounds its L2 norm.
  """
  num_classes: int
  latent: int = 8
  hidden: Sequence[int] = (128, 128)
  eps: float = 0.01

  def setup(self):
    self.enc = [nn.Dense(w, name=f'enc_{i}') for i, w in enumerate(self.hidden)]
    self.enc_mu = nn.Dense(self.latent, name='enc_mu')
    self.enc_log_var = nn.Dense(self.latent, name='enc_log_var')
    self.dec = [nn.Dense(w, name=f'dec_{i}') for i, w in enumerate(self.hidden)]
    self.dec_out = nn.Dense(self.num_classes, name='dec_out')

  def _check(self, c):
    if c.ndim != 2 or c.shape[-1] != self.num_classes:
      raise ValueError(f'PerturbationVAE expects vectors [B, {self.num_classes}], got {c.shape}')

  def encode(self, c: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
    """q(z | c, c*): (mu, log_var) [B, latent] from clean and target vectors [B, m]."""
    self._check(c)
    h = jnp.concatenate([vector_features(c), vector_features(target)], axis=-1)
    for layer in self.enc:
      h = nn.gelu(layer(h))
    # Bounded log-variance keeps exp() finite early in training.
    return self.enc_mu(h), jnp.clip(self.enc_log_var(h), -10.0, 5.0)

  def decode(self, z: jax.Array, c: jax.Array) -> jax.Array:
    """delta [B, m] for latents z [B, latent] and clean vectors c [B, m]."""
    self._check(c)
    h = jnp.concatenate([z, vector_features(c)], axis=-1)
    for layer in self.dec:
      h = nn.gelu(layer(h))
    return self.eps * jnp.tanh(self.dec_out(h))

  def __call__(self, c: jax.Array, target: jax.Array, *, sample: bool = True):
    """Training path: (delta, mu, log_var); z from the posterior ('sample' rng) or its mean."""
    mu, log_var = self.encode(c, target)
    z = mu
    if sample:
      z = mu + jnp.exp(0.5 * log_var) * jax.random.normal(self.make_rng('sample'), mu.shape,
                                                           mu.dtype)
    return self.decode(z, c), mu, log_var


def kl_divergence(mu: jnp.ndarray, log_var: jnp.ndarray) -> jnp.ndarray:
  """KL(N(mu, exp(log_var)) || N(0, 1)) per row, summed over the latent axis: [B]."""
  return 0.5 * jnp.sum(jnp.square(mu) + jnp.exp(log_var) - 1.0 - log_var, axis=-1)


def prior_latents(c: jnp.ndarray, key: jax.Array, latent: int) -> jnp.ndarray:
  """z ~ N(0, I) per row, drawn with `row_keys` (deterministic per vector): [B, latent]."""
  return jax.vmap(lambda k: jax.random.normal(k, (latent,), c.dtype))(row_keys(c, key))


def defended_vectors(model: PerturbationVAE, params, c: jnp.ndarray, eps, key: jax.Array) -> dict:
  """Serving: the generator's defended vectors (pure; jit it with `model` static).

  Args:
    model: the generator module; params: its parameters; c: clean vectors [B, m].
    eps: L2 radius of the feasible set; key: the defender's serving key (latents per `row_keys`).

  Returns:
    {'defended': [B, m] feasible vectors, 'finite': [B] bool (False where the network's own output
    was NaN/inf: `feasible.project` would then return c itself, so callers must treat such rows as
    failures, not as defended)}.
  """
  z = prior_latents(c, key, model.latent)
  delta = model.apply({'params': params}, z, c, method=PerturbationVAE.decode)
  finite = jnp.all(jnp.isfinite(delta), axis=-1)
  return {'defended': feasible.project(c, c + delta, eps), 'finite': finite}
