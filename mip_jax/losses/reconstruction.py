"""Reconstruction losses between images in [0, 1] (NHWC); pure, jit/vmap/grad-safe.

Reconstruction and target must have the same shape, [B, ...] (chex, at trace time): a broadcast
[B, H, W, C] against [H, W, C] or [1, ...] would silently average the wrong pairs.
"""

import chex
import jax.numpy as jnp


def per_example_mse(recon: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """Mean squared error of each example over its pixels: shape [B]."""
  chex.assert_equal_shape([recon, target])
  chex.assert_rank(recon, {2, 3, 4})
  return jnp.mean(jnp.square(recon - target), axis=tuple(range(1, recon.ndim)))


def mse(recon: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """Mean over the batch of the per-example MSE (the paper's reconstruction error R)."""
  return jnp.mean(per_example_mse(recon, target))


def psnr(recon: jnp.ndarray, target: jnp.ndarray, *, max_value: float = 1.0,
         eps: float = 1e-10) -> jnp.ndarray:
  """Mean per-example peak signal-to-noise ratio in dB (higher is better)."""
  err = per_example_mse(recon, target)
  return jnp.mean(10.0 * jnp.log10(max_value ** 2 / (err + eps)))


def psnr_loss(recon: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """Negative PSNR: a loss to minimise (Table II's 'PSNR' training loss)."""
  return -psnr(recon, target)


LOSSES = {'mse': mse, 'psnr': psnr_loss}


def get_loss(name: str):
  if name not in LOSSES:
    raise ValueError(f'unknown reconstruction loss {name!r}; known: {sorted(LOSSES)}')
  return LOSSES[name]
