"""LPA: label-preserving poisoning of every served vector (the paper's Algorithm 1).

  1. A substitute decoder I_sub is trained on clean (T(x), x), x in the attacker's queries (a stage;
     `mip_jax.protocol.substitute`, config.substitute).
  2. The target gradient g_t = grad_theta -R(I_sub(T(x)), x) over private data, once.
  3. For each crafting batch of queries, R rounds of signed Adam on delta (optax: scale_by_sign then
     adam with a step schedule), minimising 1 - cos(g_t, g_p(P(c + delta))), where P is
     `feasible.project` (label kept, ||delta|| <= eps, probability vector); restarts keep the best.
     `lpa.space='log'` crafts on log-probabilities instead, so that no served entry is ever 0
     (`defenses.space`); the `random` control is the random start of this crafting, unoptimised.
  Modes: 'aggregate' (the paper: one cosine over the batch gradient) and 'per_example' (the mean of
  per-example cosines: a served vector does not depend on its batch-mates; computed from layer
  activations and output gradients without per-example gradients, `losses.ghost`).

The crafting of a batch is one jitted function (a `fori_loop` over rounds, the restarts vmapped)
compiled once per batch shape; batches are padded with zero-weight rows so every batch has the same
shape, and are split over the 'data' mesh axis (parameters and g_t replicated).
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from mip_jax.defenses import artefact, cache, protocol, space
from mip_jax.losses import alignment, reconstruction
from mip_jax.models.decoder import Decoder
from mip_jax.protocol import rules, substitute
from mip_jax.protocol.substitute import decoder_loss_fn, train_substitute
from mip_jax.runtime import checkpoints, console, killpoints, parallel

REPLACES_CLASSIFIER = False  # a post-processing unit (defenses.protocol)
LABEL_PRESERVING = True  # its feasible map keeps every argmax (defenses.protocol)

MODES = ('aggregate', 'per_example')  # lpa.mode / lfp.mode: one batch cosine, or one per example
OBJECTIVES = ('untargeted', 'decoy_mean', 'decoy_class')


def crafting_rules(section: str) -> rules.Table:
  """The limits of a crafting section's fields: config.lpa's, and config.lfp's (the same fields)."""
  return {
      f'{section}.eps': (rules.POSITIVE,),
      f'{section}.steps': (rules.at_least(0, integer=True),),
      f'{section}.tau': (rules.POSITIVE,),
      f'{section}.milestones': (rules.each(rules.UNIT_OPEN, nonempty=False, ascending=True),),
      f'{section}.restarts': (rules.at_least(1, integer=True),),
      f'{section}.mode': (rules.one_of(MODES),),
      f'{section}.batch_size': (rules.at_least(1, integer=True),),
      f'{section}.distance': (rules.one_of(lambda: alignment.DISTANCES),),
      f'{section}.loss': (rules.one_of(lambda: reconstruction.LOSSES),),
      f'{section}.space': (rules.one_of(space.SPACES),),
      f'{section}.log_bound': (rules.POSITIVE,),
      f'{section}.batchnorm': (rules.one_of(substitute.BATCHNORMS),),
      f'{section}.objective': (rules.one_of(OBJECTIVES),),
  }


RULES = {**crafting_rules('lpa'), 'lpa.ensemble_size': (rules.at_least(1, integer=True),),
         'lpa.ensemble_vary': (rules.one_of(('seed', 'arch')),)}


# ---------------------------------------------------------------- functional pieces

@functools.partial(jax.jit, static_argnames='loss_fn')
def _chunk_target_gradient(params, probs, images, weights, *, loss_fn):
  """g_t of one padded chunk (the weighted mean over its real rows); compiled once per loss_fn and
  chunk shape, so a whole private set costs one compilation whatever its size."""
  return alignment.target_gradient(loss_fn, params, probs, images, weights)


def target_gradient(loss_fn, params, probs: np.ndarray, images: np.ndarray, *,
                    chunk: int = 256) -> Any:
  """g_t over all private data, accumulated in chunks (mean over examples of -grad R).

  Every chunk has one shape: the last is padded with zero-weight rows (`parallel.padded_batches`),
  so it does not compile a second time; a set smaller than `chunk` is one unpadded chunk.

  Args:
    loss_fn: `decoder_loss_fn(...)` (static: one compilation per loss function and chunk shape).
    params: the substitute decoder's parameters (put on device once, reused by every chunk).
    probs: clean private vectors [N, m]; images: their images [N, H, W, C].
    chunk: rows per jitted call.

  Returns:
    g_t, a pytree like params.
  """
  n = len(probs)
  params = jax.device_put(params)
  total = None
  for _, rows, (c, x, w) in parallel.padded_batches((probs, images), min(chunk, n)):
    g = optax.tree.scale(rows / n, _chunk_target_gradient(params, c, x, w, loss_fn=loss_fn))
    total = g if total is None else optax.tree.add(total, g)
  return total


def delta_optimizer(cfg) -> optax.GradientTransformation:
  """Signed Adam with Witches' Brew's step schedule: lr = tau * scale, x0.1 at 3/8, 5/8 and 7/8 of R.

  scale is eps when crafting on probabilities (the paper), log_bound in log space (`space.step_scale`).
  """
  lr = cfg.tau * space.step_scale(cfg)
  schedule = optax.piecewise_constant_schedule(
      lr, {int(cfg.steps * f): 0.1 for f in cfg.milestones})
  return optax.chain(optax.scale_by_sign(), optax.adam(schedule))


def alignment_objective(images, weights, *, params, target_grad, loss_fn, cfg):
  """`objective(probs)`: Algorithm 1's alignment loss of candidate vectors for these queries.

  With an ensemble of substitutes `params`, `target_grad` and `loss_fn` are tuples (one entry per
  member) and the objective is the mean of the members' losses (Witches' Brew's --ensemble).
  """
  loss = (alignment.per_example_alignment_loss if cfg.mode == 'per_example'
          else alignment.alignment_loss)
  return _ensemble_mean(loss, params=params, target_grad=target_grad, loss_fn=loss_fn,
                        images=images, weights=weights, distance=cfg.distance)


def _ensemble_mean(loss, *, params, target_grad, loss_fn, **kwargs):
  """`f(probs)` = mean over ensemble members of `loss(probs, loss_fn=, params=, target_grad=, ...)`."""
  if not isinstance(loss_fn, tuple):
    return functools.partial(loss, loss_fn=loss_fn, params=params, target_grad=target_grad, **kwargs)
  parts = [functools.partial(loss, loss_fn=f, params=p, target_grad=g, **kwargs)
           for f, p, g in zip(loss_fn, params, target_grad)]
  return lambda probs: sum(part(probs) for part in parts) / len(parts)


def crafting_round(v: jnp.ndarray, opt_state, c: jnp.ndarray, eps, radius=None, *, objective,
                   opt: optax.GradientTransformation, space_name: str = 'prob',
                   log_bound: float = 10.0):
  """One round of Algorithm 1 (pure): the objective's gradient in the crafting variable through the
  feasible map, the signed-Adam update, and the map back (`defenses.space`).

  Args:
    v: current variable [B, m] (delta in 'prob' space, the log-space change in 'log');
    opt_state: `opt`'s state; c: clean vectors [B, m]; eps: L2 radius (scalar or [B]);
    radius: optional per-row radius [B] (rows of 0 are frozen).
    objective: `alignment_objective(...)`; opt: `delta_optimizer(cfg)`;
    space_name, log_bound: cfg.space and cfg.log_bound.

  Returns:
    (new variable, new optimiser state).
  """
  where = dict(space=space_name, log_bound=log_bound)
  g = jax.grad(lambda v: objective(space.defended(c, v, eps, **where)))(v)
  if radius is not None:  # frozen rows: their (0/0 at delta = 0) gradient is dropped
    g = jnp.where(radius[:, None] > 0, g, 0.0)
  updates, opt_state = opt.update(g, opt_state, v)
  return space.after_step(c, optax.apply_updates(v, updates), eps, **where), opt_state


def craft_restart(c: jnp.ndarray, images: jnp.ndarray, weights: jnp.ndarray, key: jax.Array,
                  radius: jnp.ndarray | None = None, *, params: Any, target_grad: Any, loss_fn,
                  cfg) -> tuple[jnp.ndarray, jnp.ndarray]:
  """One restart of Algorithm 1 on one batch (pure): a random start from `key`, cfg.steps rounds.

  Arguments as `craft_batch`, `key` being this restart's own key (`space.restart_keys`).

  Returns:
    (defended vectors [B, m], per-row alignment loss of those vectors [B]; in aggregate mode every
    row carries the batch loss).
  """
  eps = cfg.eps if radius is None else radius
  opt = delta_optimizer(cfg)
  where = dict(space=cfg.space, log_bound=cfg.log_bound)
  to_vector = lambda v: space.defended(c, v, eps, **where)
  objective = alignment_objective(images, weights, params=params, target_grad=target_grad,
                                  loss_fn=loss_fn, cfg=cfg)

  def row_losses(v):
    probs = to_vector(v)
    if cfg.mode == 'per_example':
      return _ensemble_mean(alignment.per_example_alignment_losses, loss_fn=loss_fn,
                            params=params, target_grad=target_grad, images=images,
                            distance=cfg.distance)(probs)
    return jnp.full(c.shape[:1], objective(probs))

  # Random per-vector start inside the feasible set (the paper: unique init per vector); with
  # cfg.steps = 0 this is exactly the `random` control defense.
  v = space.init(key, c, eps if radius is None else radius[:, None], **where)

  def body(_, carry):
    return crafting_round(*carry, c, eps, radius, objective=objective, opt=opt,
                          space_name=cfg.space, log_bound=cfg.log_bound)

  v, _ = jax.lax.fori_loop(0, cfg.steps, body, (v, opt.init(v)))
  return to_vector(v), row_losses(v)


def best_restart(vectors: jnp.ndarray, losses: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Per row, the restart of lowest loss: vectors [R, B, m], losses [R, B] -> ([B, m], [B]).

  A tie keeps the earlier restart (as a sequential `loss < best` would); a NaN loss never wins.
  """
  pick = jnp.argmin(jnp.where(jnp.isnan(losses), jnp.inf, losses), axis=0)  # [B]
  rows = jnp.arange(losses.shape[1])
  return vectors[pick, rows], losses[pick, rows]


def craft_batch(c: jnp.ndarray, images: jnp.ndarray, weights: jnp.ndarray, key: jax.Array,
                radius: jnp.ndarray | None = None, *, params: Any, target_grad: Any, loss_fn,
                cfg) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Crafts defended vectors for one batch of queries (pure; jit it with `cfg` and `loss_fn` static).

  The cfg.restarts restarts run side by side (`vmap` over their keys, one program, no unrolled
  copies) and each row keeps its lowest-loss restart (`best_restart`; in aggregate mode the loss is
  the batch's, so a batch keeps one restart).

  Args:
    c: clean vectors [B, m]; images: the queried images [B, H, W, C]; weights: 1 for real rows, 0 for
      padding rows [B]; key: init randomness (each row folds in its own values: `space.init`);
      radius: optional per-row L2 radius [B] (default cfg.eps for every row); a row of radius 0
      stays exactly at c but still enters the poisoned gradient (LFP's clean rows D_c);
      params: substitute decoder params; target_grad: g_t.
    loss_fn: `decoder_loss_fn(...)`; cfg: config.lpa (eps, steps, tau, milestones, restarts, mode,
      distance, space, log_bound).

  Returns:
    (defended vectors [B, m], per-row alignment loss of the returned vectors [B]; in aggregate mode
    every row carries the batch loss).
  """
  one = lambda k: craft_restart(c, images, weights, k, radius, params=params,
                                target_grad=target_grad, loss_fn=loss_fn, cfg=cfg)
  keys = space.restart_keys(key, cfg.restarts)
  if cfg.restarts == 1:  # no restart axis: the very program of a single restart
    return one(keys[0])
  return best_restart(*jax.vmap(one)(keys))


class Crafter:
  """Crafts LPA vectors for any number of queries with one compiled batch function.

  Args:
    model / variables: the substitute decoder (Flax module, its variables); target_grad: its g_t.
    members: instead of those, an ensemble: [(model, variables, target_grad), ...], whose alignment
      losses are averaged.
    config: the run config (uses config.lpa, config.attack and config.substitute's transform).
    mesh: 'data' mesh; the crafting batch is split over it.
    section: the crafting settings when not config.lpa (LFP's config.lfp); same fields.
    name: the section's config name, which its errors name ('lfp' for LFP's).
  """

  def __init__(self, *, model=None, variables=None, target_grad=None, config, mesh=None,
               section=None, name: str = 'lpa', members=None):
    self.cfg = config.lpa if section is None else section
    self.mesh = mesh or parallel.data_mesh()
    check_crafting(self.cfg, self.mesh, name)
    members = members or [(model, variables, target_grad)]
    attack_cfg = substitute.attack_config(config)
    loss_fn = tuple(decoder_loss_fn(m, v['batch_stats'], attack_cfg, self.cfg.loss,
                                    self.cfg.batchnorm) for m, v, _ in members)
    params, target_grads = tuple(v['params'] for _, v, _ in members), tuple(g for *_, g in members)
    if len(members) == 1:  # a single substitute: plain pytrees, as the functional API takes them
      loss_fn, params, target_grads = loss_fn[0], params[0], target_grads[0]
    self.loss_fn = loss_fn
    self.params = parallel.replicate(params, self.mesh)
    self.target_grad = parallel.replicate(target_grads, self.mesh)
    # Replicated outputs: with several processes every one of them reads the whole crafted batch.
    self.craft_fn = jax.jit(functools.partial(craft_batch, loss_fn=loss_fn, cfg=self.cfg),
                            out_shardings=parallel.replicated(self.mesh))

  def __call__(self, probs: np.ndarray, images: np.ndarray, *, seed: int,
               radius: np.ndarray | None = None, chunk: int | None = None, pad_to=None,
               progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Defended vectors and per-row alignment losses for `probs` (clean) of `images`.

    `radius` (optional, [N]): per-row L2 radius instead of cfg.eps; rows of radius 0 stay as given.
    `chunk` rows per crafting batch (default cfg.batch_size), each padded to `pad_to(n)` rows
    (default: chunk, one compiled shape; serving passes `parallel.bucket_size`).
    """
    b = chunk or self.cfg.batch_size
    out, losses = [], []
    arrays = (probs, np.asarray(images, probs.dtype))
    if radius is not None:
      arrays += (np.asarray(radius, probs.dtype),)
    batches = parallel.padded_batches(arrays, b, mesh=self.mesh, pad_to=pad_to)
    # A bar per call (a terminal only): crafting R rounds per batch can take minutes on a CPU.
    show = progress and parallel.is_main_process()
    for start, n, batch in tqdm(batches, desc=f'crafting ({self.cfg.steps} rounds per batch)',
                                total=-(-len(probs) // b), leave=False,
                                disable=None if show else True):
      killpoints.reached(f'craft:batch:{start // b}')
      c, x, *rad, w = batch
      key = jax.random.key(seed)  # rows draw their own start from it (space.row_keys)
      defended, loss = self.craft_fn(c, x, w, key, *rad, params=self.params,
                                     target_grad=self.target_grad)
      out.append(np.asarray(defended)[:n])
      losses.append(np.asarray(loss)[:n])
    return np.concatenate(out), np.concatenate(losses)


def check_crafting(cfg, mesh, name: str = 'lpa') -> None:
  """A crafting section (config.lpa, config.lfp: `name`) the Crafter can run on `mesh`;
  ValueError naming the field otherwise."""
  if cfg.mode not in MODES:
    raise ValueError(f'{name}.mode must be one of {MODES}, got {cfg.mode!r}')
  if cfg.batch_size % mesh.devices.size:
    raise ValueError(f'{name}.batch_size={cfg.batch_size} must be a multiple of the '
                     f'{mesh.devices.size} devices')
  space.check(cfg.space)


# ---------------------------------------------------------------- the defense protocol

def ensemble_members(setup, cfg=None) -> list[tuple]:
  """[(model, variables, g_t)] of the defender's substitutes: config.substitute, plus
  cfg.ensemble_size - 1 members with other seeds ('seed') or also other widths / depths ('arch').
  Each member is its own cached stage; g_t is taken over the private training data for each."""
  config = setup.config
  cfg = config.lpa if cfg is None else cfg
  if cfg.ensemble_size < 1 or cfg.ensemble_vary not in ('seed', 'arch'):
    raise ValueError(f"lpa.ensemble_size must be >= 1 and lpa.ensemble_vary 'seed' or 'arch'; got "
                     f'{cfg.ensemble_size} and {cfg.ensemble_vary!r}')
  members = []
  for k in range(cfg.ensemble_size):
    section = config.substitute.copy_and_resolve_references()
    if k and cfg.ensemble_vary == 'arch':
      width = substitute.decoder_section(config).width
      section.width = max(1, int(width * (1.0, 0.5, 2.0)[k % 3]))
      section.extra_blocks = k % 2
    seed = substitute.default_seed(config, k)
    model, variables = train_substitute(setup, section, seed=seed)
    loss_fn = decoder_loss_fn(model, variables['batch_stats'], substitute.attack_config(config),
                              cfg.loss, cfg.batchnorm)
    members.append((model, variables, defensive_gradient(loss_fn, variables['params'], setup, cfg)))
  return members


def defensive_gradient(loss_fn, params, setup, cfg) -> Any:
  """g_t: where the defender wants the attacker's training to move the decoder (cfg.objective).

  'untargeted' (the paper): -grad R(I(c), x) over private data, i.e. make private reconstructions
  worse. The targeted ones are Witches' Brew's own setting, poisoning toward a chosen outcome:
  +grad R(I(c), decoy), i.e. teach the decoder to rebuild a decoy from private vectors:
  'decoy_mean' the mean query image (one blurry digit for every class), 'decoy_class' the mean private
  image of the next private class (a recognisable wrong answer, aimed at attack accuracy).
  """
  if cfg.objective not in OBJECTIVES:
    raise ValueError(f'lpa.objective must be one of {", ".join(OBJECTIVES)}, got {cfg.objective!r}')
  private = setup.splits.private_train
  probs = setup.clean['private_train']
  if cfg.objective == 'untargeted':
    return target_gradient(loss_fn, params, probs, private.images)
  if cfg.objective == 'decoy_mean':
    decoys = np.broadcast_to(setup.splits.attack_train.images.mean(0), private.images.shape)
  else:
    classes = np.unique(private.labels)
    means = {int(k): private.images[private.labels == k].mean(0) for k in classes}
    nxt = {int(k): int(classes[(i + 1) % len(classes)]) for i, k in enumerate(classes)}
    decoys = np.stack([means[nxt[int(y)]] for y in private.labels])
  # target_gradient is the mean of -grad R; the targeted direction is +grad R toward the decoys.
  return optax.tree.scale(-1.0, target_gradient(loss_fn, params, probs,
                                                np.ascontiguousarray(decoys, np.float32)))


def fit(setup) -> dict:
  """Trains (or loads) the substitute(s) and the target gradient over private training data."""
  rules.enforce(RULES, setup.config)
  check_crafting(setup.config.lpa, setup.mesh)
  members = ensemble_members(setup)
  crafter = Crafter(members=members, config=setup.config, mesh=setup.mesh)
  variables, g_t = [m[1] for m in members], [m[2] for m in members]
  return {'crafter': crafter, 'members': members, 'workdir': setup.workdir,
          'seed': space.crafting_seed(setup.config),
          'tag': cache_tag(setup.config, setup.config.lpa, variables, g_t)}


def export_members(members) -> tuple[list[dict], dict]:
  """(architectures, arrays) of substitutes [(model, variables, g_t)]: what crafting needs."""
  fields, arrays = [], {}
  for k, (model, variables, g_t) in enumerate(members):
    fields.append(artefact.module_fields(model))
    arrays.update(artefact.pack(variables, f'member{k}/variables'))
    arrays.update(artefact.pack(g_t, f'member{k}/target_grad'))
  return fields, arrays


def restore_members(fields: list[dict], arrays: dict) -> list[tuple]:
  """The substitutes `export_members` saved: [(Decoder, variables, g_t)]."""
  return [(artefact.rebuild(Decoder, f), artefact.unpack(arrays, f'member{k}/variables'),
           artefact.unpack(arrays, f'member{k}/target_grad')) for k, f in enumerate(fields)]


def export(state: dict) -> artefact.Artefact:
  """The substitutes' architectures and variables, their target gradients and the crafting seed."""
  fields, arrays = export_members(state['members'])
  return artefact.Artefact(settings={'members': fields, 'seed': state['seed']}, arrays=arrays)


def serve(served: artefact.Artefact, config, mesh) -> protocol.Backend:
  """LPA crafted online for every request, in per-example mode whatever config.lpa.mode says:
  a served vector then does not depend on the other rows of its request (each row's start comes
  from its own values, `space.init`). Requests are crafted in chunks of config.serve.max_batch
  rows, each padded to a bucket size (a multiple of the devices), so any request size compiles
  few shapes of the crafting loop. A row whose alignment loss is not finite is reported failed."""
  section = config.lpa.copy_and_resolve_references()
  section.mode = 'per_example'
  crafter = Crafter(members=restore_members(served.settings['members'], served.arrays),
                    config=config, mesh=mesh, section=section)
  pad_to = functools.partial(parallel.bucket_size, multiple=crafter.mesh.devices.size)
  seed, chunk = int(served.settings['seed']), int(config.serve.max_batch)

  def online(probs, images):
    defended, losses = crafter(probs, images, seed=seed, chunk=chunk, pad_to=pad_to,
                               progress=False)
    return defended, np.isfinite(losses)

  return protocol.Backend(online, needs_images=True, moves_rows=True)


def cache_tag(config, section, variables, g_t) -> str:
  """What crafted vectors depend on besides the queries: the crafting settings, the attack transform,
  the seed, the substitute (its stage and variables) and g_t (which carries the private data)."""
  return checkpoints.fingerprint([section.to_dict(), config.attack.to_dict(), config.seed,
                                  substitute.stage_name(config),
                                  checkpoints.exact_fingerprint(variables, g_t)])


def apply(state: dict, probs: np.ndarray, *, images: np.ndarray | None = None) -> np.ndarray:
  """LPA vectors for clean `probs` of `images`; crafted once and cached in `<workdir>/perturbations`."""
  if images is None:
    raise ValueError('LPA needs the queried images: its poisoned gradient is R(I(c\'), x)')
  probs = np.asarray(probs, np.float32)
  images = np.asarray(images, np.float32)

  def craft():
    defended, losses = state['crafter'](probs, images, seed=state['seed'])
    console.say('LPA crafted %d vectors: mean alignment loss %.4f', len(probs),
                float(np.mean(losses)))
    return {'defended': defended, 'delta': defended - probs, 'clean': probs,
            'alignment_loss': losses}

  key = checkpoints.fingerprint([state['tag'], checkpoints.exact_fingerprint(probs, images)])
  return cache.cached(state['workdir'], 'lpa', key, craft)
