"""Variational information bottleneck (Alemi et al. 2017), as MID (Wang et al. 2021) uses it.

A stochastic layer outputs mu and std; the representation is z = mu + std * eps, eps ~ N(0, I), and
the loss adds beta * KL(N(mu, std^2) || N(0, I)), an upper bound on I(x; z) up to a constant.
MID parameterises std = softplus(raw - 5), so a freshly initialised layer (raw near 0) starts with
std near 0.0067.

  std, log_std = softplus_std(raw)          # stable log: no log(0) when softplus underflows
  z = reparameterize(key, mu, std)
  kl = gaussian_kl(mu, std, log_std=log_std)   # nats, summed over dims, mean over the batch
"""

import chex
import jax
import jax.numpy as jnp

MID_STD_SHIFT = 5.0  # MID's std = softplus(raw - 5)


def log_softplus(x: jnp.ndarray) -> jnp.ndarray:
  """log(softplus(x)) without log(0): for x << 0, softplus(x) = exp(x) underflows in float32.

  Args:
    x: any array.

  Returns:
    log(log(1 + exp(x))), finite for every finite x, with a finite gradient.
  """
  small = x < -15.0
  # For x < -15: log(softplus(x)) = x + log(1 - exp(x) / 2 + O(exp(2x))), exact to float32.
  xs = jnp.where(small, x, -15.0)
  xb = jnp.where(small, 0.0, x)
  return jnp.where(small, xs + jnp.log1p(-0.5 * jnp.exp(xs)), jnp.log(jax.nn.softplus(xb)))


def softplus_std(raw: jnp.ndarray, shift: float = MID_STD_SHIFT) -> tuple[jnp.ndarray, jnp.ndarray]:
  """MID's standard deviation std = softplus(raw - shift) and its log, both stable.

  Args:
    raw: unconstrained layer outputs.
    shift: subtracted before the softplus (MID: 5).

  Returns:
    (std, log_std), same shape as raw.
  """
  return jax.nn.softplus(raw - shift), log_softplus(raw - shift)


def reparameterize(key: jax.Array, mu: jnp.ndarray, std: jnp.ndarray) -> jnp.ndarray:
  """A sample z = mu + std * eps, eps ~ N(0, I) (differentiable in mu and std)."""
  chex.assert_equal_shape([mu, std])  # eps is drawn in mu's shape: a broadcast std would not fit
  return mu + std * jax.random.normal(key, mu.shape, mu.dtype)


def gaussian_kl(mu: jnp.ndarray, std: jnp.ndarray, *,
                log_std: jnp.ndarray | None = None) -> jnp.ndarray:
  """KL(N(mu, diag(std^2)) || N(0, I)) in nats, summed over features, averaged over the batch.

  KL = 0.5 * sum(mu^2 + std^2 - 1 - 2 log std): 0 exactly at the prior (mu = 0, std = 1), > 0
  elsewhere. MID's code computes the same expression.

  Args:
    mu: means [B, k].
    std: standard deviations [B, k], > 0.
    log_std: log(std) if the caller has a stable form of it (e.g. from `softplus_std`); otherwise
      log(std) is taken, which is -inf where std underflowed to 0.

  Returns:
    Scalar mean KL per example.
  """
  if mu.shape != std.shape or mu.ndim < 2:
    raise ValueError(f'mu and std must have the same shape [B, k], got {mu.shape} and {std.shape}')
  if log_std is None:
    log_std = jnp.log(std)
  chex.assert_equal_shape([std, log_std])
  per_dim = 0.5 * (jnp.square(mu) + jnp.square(std) - 1.0 - 2.0 * log_std)
  return jnp.mean(jnp.sum(per_dim.reshape(per_dim.shape[0], -1), axis=-1))
