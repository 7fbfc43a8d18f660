"""A conditional diffusion inversion attacker (the paper's Table V): DDPM with classifier-free guidance.

  model, params = train_diffusion(config, cond, images, workdir=..., stage=..., seed=0, mesh=mesh)
  images = generate(model, params, config.diffusion, cond_private, seed=0, guidance=0.5, mesh=mesh)

Instead of a decoder that maps a confidence vector to one image, the attacker trains a noise
predictor eps(x_t, t, c) (`models/unet.py`) on its (received vector, query image) pairs and then
generates an image from noise for every private vector it inverts. The condition c is the vector
through the same transform as the decoder attacker's (`attacks/transforms.py`), so the exact-zero
artefact of Yang's log transform reaches it too, and the zero-robust `floor` variant exists here as
well (`diffusion_floor`).

Schedule (Ho et al. 2020): betas linear from beta_start to beta_end over T steps, alpha_t = 1 - beta_t,
abar_t = prod_{s<=t} alpha_s (t = 0 .. T-1), so q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I).
Training: x_0 = 2 * image - 1, t uniform, eps ~ N(0, I), loss ||eps - eps(x_t, t, c)||^2 with c
dropped (keep = 0) with probability drop_prob. Sampling: ancestral steps
x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) * eps) / sqrt(alpha_t) + sqrt(beta_t) z (no z at t = 0),
with the guided noise eps = (1 + w) eps(x, t, c) - w eps(x, t, none) (Ho & Salimans 2022), as one
jitted `lax.scan` over the timesteps. Every example draws its noise from `fold_in(key, its index)`,
so a generated image does not depend on the batch size or on how many devices share the batch.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mip_jax.models.unet import UNet
from mip_jax.protocol import rules
from mip_jax.runtime import checkpoints, parallel, train

RULES = {
    'diffusion.timesteps': (rules.above(0, integer=True),),
    'diffusion.beta_*': (rules.UNIT_OPEN,),
    'diffusion.features': (rules.above(0, integer=True),),
    'diffusion.drop_prob': (rules.within(0, 1, open_hi=True),),
    'diffusion.guidance': (rules.NON_NEGATIVE,),
    'diffusion.guidances': (rules.each(rules.NON_NEGATIVE),),
    'diffusion.sample_batch_size': (rules.above(0, integer=True),),
}


def betas_ascend(config) -> list[str]:
  """The linear schedule runs from beta_start up to beta_end (`Schedule.linear`)."""
  cfg = config.diffusion
  if cfg.beta_start is not None and cfg.beta_end is not None and cfg.beta_start > cfg.beta_end:
    return [rules.problem('diffusion.beta_start', cfg.beta_start, f'must be <= '
                          f'diffusion.beta_end={cfg.beta_end} (betas rise linearly)')]
  return []


CHECKS = (betas_ascend,)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The linear-beta noise schedule and its closed forms (arrays of length T, float32)."""
  betas: jnp.ndarray
  alphas: jnp.ndarray
  alpha_bars: jnp.ndarray
  one_minus_alpha_bars: jnp.ndarray  # 1 - abar_t computed in float64 (float32 1 - abar loses digits)

  @classmethod
  def linear(cls, timesteps: int, beta_start: float, beta_end: float) -> 'Schedule':
    if timesteps < 1 or not 0 < beta_start <= beta_end < 1:
      raise ValueError(f'diffusion needs timesteps >= 1 and 0 < beta_start <= beta_end < 1; got '
                       f'{timesteps}, {beta_start}, {beta_end}')
    betas = np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)
    alphas = 1.0 - betas
    log_abar = np.cumsum(np.log1p(-betas))
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    return cls(f32(betas), f32(alphas), f32(np.exp(log_abar)), f32(-np.expm1(log_abar)))

  @property
  def timesteps(self) -> int:
    return int(self.betas.shape[0])

  def q_mean_coef(self, t):
    """sqrt(abar_t): E[x_t | x_0] = q_mean_coef(t) * x_0."""
    return jnp.sqrt(self.alpha_bars[t])

  def q_var(self, t):
    """1 - abar_t: Var[x_t | x_0] (per pixel)."""
    return self.one_minus_alpha_bars[t]

  def q_sample(self, x0, t, noise):
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise, t [B]."""
    shape = (-1,) + (1,) * (x0.ndim - 1)
    return (self.q_mean_coef(t).reshape(shape) * x0 + jnp.sqrt(self.q_var(t)).reshape(shape) * noise)


def schedule_of(cfg) -> Schedule:
  """The schedule of a config.diffusion section."""
  return Schedule.linear(cfg.timesteps, cfg.beta_start, cfg.beta_end)


def make_model(cfg, channels: int) -> UNet:
  return UNet(features=cfg.features, channels=channels)


def diffusion_step(state: train.TrainState, batch: tuple, rng: jax.Array, *, model, schedule,
                   drop_prob: float):
  """One denoising step of the conditional DDPM.

  Args:
    state: training state of the U-Net.
    batch: (cond [B, m] the attacker's transformed vectors, images [B,H,W,C] in [0, 1]).
    rng: key for t, the noise and the condition dropout.
    model: the UNet (static); schedule: the noise schedule; drop_prob: P(condition dropped).

  Returns:
    (new state, {'loss': mean squared error of the predicted noise}).
  """
  cond, images = batch
  x0 = 2.0 * images - 1.0
  k_t, k_eps, k_drop = jax.random.split(rng, 3)
  t = jax.random.randint(k_t, (x0.shape[0],), 0, schedule.timesteps)
  eps = jax.random.normal(k_eps, x0.shape)
  keep = (jax.random.uniform(k_drop, (x0.shape[0],)) >= drop_prob).astype(jnp.float32)
  x_t = schedule.q_sample(x0, t, eps)

  def loss_fn(params):
    return jnp.mean((model.apply({'params': params}, x_t, t, cond, keep) - eps) ** 2)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return state.apply_gradients(grads, state.batch_stats), {'loss': loss}


def guided_eps(model, params, x, t, cond, guidance: float):
  """(1 + w) eps(x, t, c) - w eps(x, t, none); w = 0 runs only the conditional model.

  `guidance` is a Python float (static): at w = 0 the unconditional pass is skipped, so the result
  is exactly the conditional model's.
  """
  n = x.shape[0]
  if guidance == 0:
    return model.apply({'params': params}, x, t, cond, jnp.ones((n,), jnp.float32))
  both = model.apply({'params': params}, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                     jnp.concatenate([cond, cond]),
                     jnp.concatenate([jnp.ones((n,)), jnp.zeros((n,))]).astype(jnp.float32))
  return (1.0 + guidance) * both[:n] - guidance * both[n:]


def sample(model, params, schedule: Schedule, cond, keys, *, image_shape: tuple, guidance: float):
  """Ancestral DDPM sampling from pure noise, one `lax.scan` over the T steps.

  Args:
    model, params: the trained U-Net.
    schedule: its noise schedule.
    cond: [B, m] transformed confidence vectors.
    keys: [B] one PRNG key per example (its noise at every step derives from it).
    image_shape: (H, W, C).
    guidance: w of classifier-free guidance (static).

  Returns:
    Images [B, H, W, C] in [0, 1].
  """
  draw = jax.vmap(lambda k, i: jax.random.normal(jax.random.fold_in(k, i), image_shape),
                  in_axes=(0, None))
  x_T = draw(keys, schedule.timesteps)

  def step(x, t):
    tt = jnp.full((x.shape[0],), t, jnp.int32)
    eps = guided_eps(model, params, x, tt, cond, guidance)
    beta, alpha = schedule.betas[t], schedule.alphas[t]
    mean = (x - beta / jnp.sqrt(schedule.q_var(t)) * eps) / jnp.sqrt(alpha)
    noise = jnp.where(t > 0, jnp.sqrt(beta), 0.0) * draw(keys, t)
    return mean + noise, None

  x0, _ = jax.lax.scan(step, x_T, jnp.arange(schedule.timesteps - 1, -1, -1))
  return jnp.clip((x0 + 1.0) / 2.0, 0.0, 1.0)


def stage_fingerprint(cfg) -> dict:
  """The config.diffusion fields a trained model depends on (guidance and sampling ones are not)."""
  return {k: cfg[k] for k in ('timesteps', 'beta_start', 'beta_end', 'features', 'drop_prob',
                              'epochs', 'batch_size', 'learning_rate')}


def train_diffusion(config, cond: np.ndarray, images: np.ndarray, *, workdir: str, stage: str,
                    seed: int, mesh=None, fingerprint_extra: Any = None):
  """Trains (or loads) the attacker's conditional DDPM on (transformed vectors, images): an Orbax stage
  that resumes epoch by epoch like every other (`train.fit`). Returns (model, params)."""
  rules.enforce(RULES, config, checks=CHECKS)
  cfg = config.diffusion
  model = make_model(cfg, images.shape[-1])
  schedule = schedule_of(cfg)
  n = 1
  variables = model.init(jax.random.key(seed), jnp.zeros((n,) + images.shape[1:]),
                         jnp.zeros((n,), jnp.int32), jnp.asarray(cond[:n]), jnp.ones((n,)))
  state = train.TrainState.create(variables=variables, tx=optax.adam(cfg.learning_rate))
  ckpt = checkpoints.StageCheckpoint(workdir, stage, checkpoints.fingerprint(
      [stage_fingerprint(cfg), seed, fingerprint_extra, checkpoints.array_fingerprint(cond)]))
  step = lambda s, b, r: diffusion_step(s, b, r, model=model, schedule=schedule,
                                        drop_prob=cfg.drop_prob)
  state = train.fit(state, step, (cond, images), epochs=cfg.epochs, batch_size=cfg.batch_size,
                    seed=seed, checkpoint=ckpt, mesh=mesh, desc=stage)
  ckpt.close()
  return model, jax.device_get(state.params)


@functools.lru_cache(maxsize=16)
def _sampler(model, schedule_args: tuple, image_shape: tuple, guidance: float, mesh):
  """`sample` jitted once per model, schedule, shape, guidance and mesh (Table V samples one model
  at several guidances, and every defense's model has the same shapes)."""
  schedule = Schedule.linear(*schedule_args)
  return jax.jit(lambda p, c, k: sample(model, p, schedule, c, jax.random.wrap_key_data(k),
                                        image_shape=image_shape, guidance=guidance),
                 out_shardings=parallel.replicated(mesh))


def generate(model, params, cfg, cond: np.ndarray, *, image_shape: tuple, seed: int,
             guidance: float, mesh=None) -> np.ndarray:
  """One generated image per condition row [N, m] -> [N, H, W, C] in [0, 1], in padded batches of
  cfg.sample_batch_size split over the 'data' mesh; example i's noise comes from fold_in(seed, i)."""
  mesh = mesh or parallel.data_mesh()
  batch = cfg.sample_batch_size - cfg.sample_batch_size % mesh.devices.size or mesh.devices.size
  fn = _sampler(model, (cfg.timesteps, cfg.beta_start, cfg.beta_end), tuple(image_shape),
                float(guidance), mesh)
  root = jax.random.key(seed)
  keys = np.asarray(jax.random.key_data(jax.vmap(lambda i: jax.random.fold_in(root, i))(
      jnp.arange(len(cond)))))
  params = parallel.replicate(params, mesh)
  out = np.zeros((len(cond),) + tuple(image_shape), np.float32)
  for start, n, (c, k, _) in parallel.padded_batches((np.asarray(cond, np.float32), keys), batch,
                                                      mesh=mesh):
    imgs = fn(params, c, k)
    out[start:start + n] = parallel.to_host(imgs)[:n]
  return out
