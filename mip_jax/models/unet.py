"""A small conditional U-Net: the noise predictor of the diffusion attacker (`attacks/diffusion.py`).

  eps = UNet(features=32, channels=1)(x_t, t, cond, keep)

x_t [B, H, W, C] is a noisy image, t [B] its integer timestep, cond [B, m] the attacker's
transformed confidence vector and keep [B] in {0, 1}: 0 drops the condition (classifier-free
guidance trains one model for the conditional and the unconditional noise). Layout, for H = 16:

  conv3x3 -> F @ 16x16 --res(F)--> h1 --pool--> res(2F) @ 8x8 = h2 --pool--> res(2F) @ 4x4
          --up, concat h2--> res(2F) @ 8x8 --up, concat h1--> res(F) @ 16x16 --GN, SiLU, conv3x3--> C

Every residual block adds a projection of the time embedding and of the condition embedding
(the single-file MNIST reference adds them at its up-sampling stages; adding them everywhere costs
little and lets a small model use them). The condition goes through LayerNorm first: Yang's log
transform gives entries of ~50 and, after an exact zero, of ~1000, and the decoder attacker
normalises them with BatchNorm for the same reason. GroupNorm instead of BatchNorm: the model has
no running statistics, so train and eval are the same function.
"""

import flax.linen as nn
import jax.numpy as jnp


def timestep_embedding(t: jnp.ndarray, dim: int, max_period: float = 10_000.0) -> jnp.ndarray:
  """Sinusoidal embedding [B, dim] of integer timesteps [B] (Transformer positions)."""
  half = dim // 2
  freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def _groups(ch: int) -> int:
  return min(8, ch)


class ResBlock(nn.Module):
  """GN-SiLU-conv, + embedding, GN-SiLU-conv, + skip (1x1 conv when the channels change)."""
  channels: int

  @nn.compact
  def __call__(self, x, emb):
    h = nn.Conv(self.channels, (3, 3))(nn.silu(nn.GroupNorm(_groups(x.shape[-1]))(x)))
    h = h + nn.Dense(self.channels)(emb)[:, None, None, :]
    h = nn.Conv(self.channels, (3, 3))(nn.silu(nn.GroupNorm(_groups(self.channels))(h)))
    skip = x if x.shape[-1] == self.channels else nn.Conv(self.channels, (1, 1))(x)
    return h + skip


def _pool(x):
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def _upsample(x):
  b, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


class UNet(nn.Module):
  """Predicts the noise of x_t given t and a (possibly dropped) condition.

  Attributes:
    features: channels at full resolution (2x at the two lower ones).
    channels: image channels (the output's).
  """
  features: int
  channels: int

  @nn.compact
  def __call__(self, x, t, cond, keep):
    """x [B,H,W,C] float, t [B] int, cond [B,m] float, keep [B] float -> eps [B,H,W,C]."""
    if x.shape[1] % 4 or x.shape[2] % 4:
      raise ValueError(f'UNet needs an image side divisible by 4, got {x.shape[1:3]}')
    f = self.features
    emb_dim = 4 * f
    temb = nn.Dense(emb_dim)(nn.silu(nn.Dense(emb_dim)(timestep_embedding(t, f))))
    c = nn.LayerNorm()(cond.astype(jnp.float32))
    cemb = nn.Dense(emb_dim)(nn.silu(nn.Dense(emb_dim)(c)))
    emb = nn.silu(temb + cemb * keep[:, None])
    h0 = nn.Conv(f, (3, 3))(x)
    h1 = ResBlock(f)(h0, emb)
    h2 = ResBlock(2 * f)(_pool(h1), emb)
    mid = ResBlock(2 * f)(_pool(h2), emb)
    u2 = ResBlock(2 * f)(jnp.concatenate([_upsample(mid), h2], -1), emb)
    u1 = ResBlock(f)(jnp.concatenate([_upsample(u2), h1], -1), emb)
    out = nn.silu(nn.GroupNorm(_groups(f))(u1))
    # Zero-initialised output: the untrained model predicts eps = 0 (a stable start).
    return nn.Conv(self.channels, (3, 3), kernel_init=nn.initializers.zeros)(out)
