"""LPA: label-preserving poisoning of every served vector (the paper's Algorithm 1).

  1. A substitute decoder I_sub is trained on clean (T(x), x), x in the attacker's queries (a stage).
  2. The target gradient g_t = grad_theta -R(I_sub(T(x)), x) over private data, once.
  3. For each crafting batch of queries, R rounds of signed Adam on delta (optax: scale_by_sign then
     adam with a step schedule), minimising 1 - cos(g_t, g_p(P(c + delta))), where P is
     `feasible.project` (label kept, ||delta|| <= eps, probability vector); restarts keep the best.
  Modes: 'aggregate' (the paper: one cosine over the batch gradient) and 'per_example' (the mean of
  per-example cosines, vmapped: a served vector does not depend on its batch-mates).

The crafting of a batch is one jitted function (a `fori_loop` over rounds, a static number of restarts)
compiled once per batch shape; batches are padded with zero-weight rows so every batch has the same
shape, and are split over the 'data' mesh axis (parameters and g_t replicated).
"""

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mip_jax import checkpoints, console, parallel, stages
from mip_jax.attacks import transforms
from mip_jax.defenses import feasible
from mip_jax.losses import alignment, reconstruction


# ---------------------------------------------------------------- functional pieces

def decoder_loss_fn(model, batch_stats, attack_cfg, loss: str = 'mse'):
  """`loss_fn(params, probs, images, weights)`: a decoder's weighted reconstruction loss on probs.

  The decoder runs in eval mode (running BatchNorm statistics), so the loss of a batch is the mean of
  per-example losses and the per-example gradients are well defined.
  """
  per_example = {'mse': reconstruction.per_example_mse,
                 'psnr': lambda r, x: -10.0 * jnp.log10(reconstruction.per_example_mse(r, x) + 1e-10)}
  if loss not in per_example:
    raise ValueError(f'unknown reconstruction loss {loss!r}; known: {sorted(per_example)}')

  def loss_fn(params, probs, images, weights):
    z = transforms.attacker_input(probs, attack_cfg)
    recon = model.apply({'params': params, 'batch_stats': batch_stats}, z, train=False)
    errors = per_example[loss](recon, images)
    return jnp.sum(errors * weights) / jnp.maximum(jnp.sum(weights), 1e-12)

  return loss_fn


def target_gradient(loss_fn, params, probs: np.ndarray, images: np.ndarray, *,
                    chunk: int = 256) -> Any:
  """g_t over all private data, accumulated in chunks (mean over examples of -grad R)."""
  grad = jax.jit(lambda p, c, x, w: alignment.target_gradient(loss_fn, p, c, x, w))
  total, n = None, len(probs)
  for i in range(0, n, chunk):
    c, x = probs[i:i + chunk], images[i:i + chunk]
    g = optax.tree.scale(len(c) / n, grad(params, c, x, np.ones(len(c), np.float32)))
    total = g if total is None else optax.tree.add(total, g)
  return total


def delta_optimizer(cfg) -> optax.GradientTransformation:
  """Signed Adam with Witches' Brew's step schedule: lr = tau * eps, x0.1 at 3/8, 5/8 and 7/8 of R."""
  lr = cfg.tau * cfg.eps
  schedule = optax.piecewise_constant_schedule(
      lr, {int(cfg.steps * f): 0.1 for f in cfg.milestones})
  return optax.chain(optax.scale_by_sign(), optax.adam(schedule))


def craft_batch(c: jnp.ndarray, images: jnp.ndarray, weights: jnp.ndarray, key: jax.Array,
                radius: jnp.ndarray | None = None, *, params: Any, target_grad: Any, loss_fn,
                cfg) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Crafts defended vectors for one batch of queries (pure; jit it with `cfg` and `loss_fn` static).

  Args:
    c: clean vectors [B, m]; images: the queried images [B, H, W, C]; weights: 1 for real rows, 0 for
      padding rows [B]; key: init randomness; radius: optional per-row L2 radius [B] (default
      cfg.eps for every row); a row of radius 0 stays exactly at c but still enters the poisoned
      gradient (LFP's clean rows D_c); params: substitute decoder params; target_grad: g_t.
    loss_fn: `decoder_loss_fn(...)`; cfg: config.lpa (eps, steps, tau, milestones, restarts, mode,
      distance).

  Returns:
    (defended vectors [B, m], per-row alignment loss of the returned vectors [B]; in aggregate mode
    every row carries the batch loss).
  """
  eps = cfg.eps if radius is None else radius
  opt = delta_optimizer(cfg)
  per_example = cfg.mode == 'per_example'
  objective = functools.partial(
      alignment.per_example_alignment_loss if per_example else alignment.alignment_loss,
      loss_fn=loss_fn, params=params, images=images, target_grad=target_grad, weights=weights,
      distance=cfg.distance)

  def row_losses(delta):
    probs = feasible.project(c, c + delta, eps)
    if per_example:
      one = lambda p, x: alignment.per_example_alignment_loss(
          p[None], loss_fn=loss_fn, params=params, images=x[None], target_grad=target_grad,
          distance=cfg.distance)
      return jax.vmap(one)(probs, images)
    return jnp.full(c.shape[:1], objective(probs))

  def one_restart(key):
    # Random per-vector start inside the feasible set (the paper: unique init per vector).
    lim = eps if radius is None else radius[:, None]
    delta = jax.random.uniform(key, c.shape, c.dtype, -lim, lim)
    delta = feasible.project(c, c + delta, eps) - c
    state = opt.init(delta)

    def body(_, carry):
      delta, state = carry
      g = jax.grad(lambda d: objective(feasible.project(c, c + d, eps)))(delta)
      if radius is not None:  # frozen rows: their (0/0 at delta = 0) gradient is dropped
        g = jnp.where(radius[:, None] > 0, g, 0.0)
      updates, state = opt.update(g, state, delta)
      delta = feasible.project(c, c + optax.apply_updates(delta, updates), eps) - c
      return delta, state

    delta, _ = jax.lax.fori_loop(0, cfg.steps, body, (delta, state))
    return delta, row_losses(delta)

  keys = jax.random.split(key, cfg.restarts)
  best_delta, best_loss = one_restart(keys[0])
  for k in keys[1:]:  # static count: unrolled, still one compilation
    delta, loss = one_restart(k)
    better = (loss < best_loss)[:, None]
    best_delta = jnp.where(better, delta, best_delta)
    best_loss = jnp.minimum(loss, best_loss)
  return c + best_delta, best_loss


class Crafter:
  """Crafts LPA vectors for any number of queries with one compiled batch function.

  Args:
    params / batch_stats: the substitute decoder's variables; model: its Flax module.
    target_grad: g_t; config: the run config (uses config.lpa and config.attack).
    mesh: 'data' mesh; the crafting batch is split over it.
    section: the crafting settings when not config.lpa (LFP's config.lfp); same fields.
  """

  def __init__(self, *, model, variables, target_grad, config, mesh=None, section=None):
    self.cfg = config.lpa if section is None else section
    self.mesh = mesh or parallel.data_mesh()
    if self.cfg.mode not in ('aggregate', 'per_example'):
      raise ValueError(f"lpa.mode must be 'aggregate' or 'per_example', got {self.cfg.mode!r}")
    if self.cfg.batch_size % self.mesh.devices.size:
      raise ValueError(f'lpa.batch_size={self.cfg.batch_size} must be a multiple of the '
                       f'{self.mesh.devices.size} devices')
    loss_fn = decoder_loss_fn(model, variables['batch_stats'], config.attack, self.cfg.loss)
    self.params = parallel.replicate(variables['params'], self.mesh)
    self.target_grad = parallel.replicate(target_grad, self.mesh)
    self.craft_fn = jax.jit(functools.partial(craft_batch, loss_fn=loss_fn, cfg=self.cfg))

  def __call__(self, probs: np.ndarray, images: np.ndarray, *, seed: int,
               radius: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Defended vectors and per-row alignment losses for `probs` (clean) of `images`.

    `radius` (optional, [N]): per-row L2 radius instead of cfg.eps; rows of radius 0 stay as given.
    """
    b = self.cfg.batch_size
    out, losses = [], []
    for start in range(0, len(probs), b):
      c, x = probs[start:start + b], images[start:start + b]
      n = len(c)
      pad = b - n  # pad with copies of row 0 at weight 0: same shape, no recompilation
      w = np.concatenate([np.ones(n), np.zeros(pad)]).astype(c.dtype)
      c = np.concatenate([c, np.repeat(c[:1], pad, 0)])
      x = np.concatenate([x, np.repeat(x[:1], pad, 0)]).astype(c.dtype)
      arrays = (c, x, w)
      if radius is not None:
        arrays += (np.concatenate([radius[start:start + b], np.zeros(pad)]).astype(c.dtype),)
      batch = parallel.shard_batch(arrays, self.mesh)
      key = jax.random.fold_in(jax.random.key(seed), start // b)
      defended, loss = self.craft_fn(*batch[:3], key, *batch[3:], params=self.params,
                                     target_grad=self.target_grad)
      out.append(np.asarray(defended)[:n])
      losses.append(np.asarray(loss)[:n])
    return np.concatenate(out), np.concatenate(losses)


# ---------------------------------------------------------------- the defense protocol

def train_substitute(setup):
  """The defender's substitute decoder on clean attack-data vectors (stage 'substitute')."""
  from mip_jax import experiment  # late import: experiment imports the defense registry
  config = setup.config
  z = np.asarray(transforms.attacker_input(setup.clean['attack_train'], config.attack))
  return stages.train_decoder(config, z, setup.splits.attack_train.images, workdir=setup.workdir,
                              stage='substitute', seed=config.seed + 3, mesh=setup.mesh,
                              fingerprint_extra=['substitute', experiment.data_fingerprint(config)])


def fit(setup) -> dict:
  """Trains (or loads) the substitute and computes the target gradient over private training data."""
  model, variables = train_substitute(setup)
  loss_fn = decoder_loss_fn(model, variables['batch_stats'], setup.config.attack,
                            setup.config.lpa.loss)
  g_t = target_gradient(loss_fn, variables['params'], setup.clean['private_train'],
                        setup.splits.private_train.images)
  crafter = Crafter(model=model, variables=variables, target_grad=g_t, config=setup.config,
                    mesh=setup.mesh)
  return {'crafter': crafter, 'workdir': setup.workdir, 'seed': setup.config.seed,
          'tag': checkpoints.fingerprint(setup.config.lpa.to_dict())}


def apply(state: dict, probs: np.ndarray, *, images: np.ndarray | None = None) -> np.ndarray:
  """LPA vectors for clean `probs` of `images`; crafted once and cached in `<workdir>/perturbations`."""
  if images is None:
    raise ValueError('LPA needs the queried images: its poisoned gradient is R(I(c\'), x)')
  probs = np.asarray(probs, np.float32)
  key = f'lpa_{state["tag"]}_{checkpoints.array_fingerprint(probs)}'
  path = os.path.join(state['workdir'], 'perturbations', key + '.npz')
  if os.path.exists(path):
    with np.load(path) as f:
      return f['defended']
  defended, losses = state['crafter'](probs, images, seed=state['seed'])
  console.say('LPA crafted %d vectors: mean alignment loss %.4f', len(probs), float(np.mean(losses)))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + '.tmp.npz'
  np.savez(tmp, defended=defended, delta=defended - probs, clean=probs, alignment_loss=losses)
  os.replace(tmp, path)
  return defended
