"""VAE: LPA-like poisoned vectors in one forward pass (the paper's Table IX, design section 3).

  1. LPA as configured (`lpa.fit`, `lpa.apply`: substitute decoder I_sub, target gradient g_t over
     private data, crafted vectors) on the attacker queries the defender can anticipate: its
     attack-class training images and their clean vectors c. The crafted c* are cached in the
     workdir and shared with the `lpa` defense.
  2. A conditional VAE (`models.vae.PerturbationVAE`) learns the distribution of those perturbations
     (stage 'vae'): c' = P(c + delta(z, c)), P = `feasible.project` (label kept, ||c' - c|| <= eps),
     minimising per batch
        align_weight * alignment(c')     per-example: mean_i [1 - cos(g_t, grad R(I_sub(c'_i), x_i))]
      + recon_weight * sum_j (f(c')_j - f(c*)_j)^2     f: the log-probability features of the model
      + kl_weight * KL(q(z | c, c*) || N(0, I))
     with z drawn from the posterior. The alignment term is the paper's loss (poisoned gradient of
     each query on its own image x_i, as LPA's per-example mode); the reconstruction term ties the
     VAE to LPA's perturbations; the KL term lets serving sample z from the prior.
  3. Serving needs only c: z from the prior with a key derived from c's bits (the same query always
     gets the same vector), one jitted decoder pass and P. No images, no optimisation, and a vector
     never depends on the other queries of its batch.

`c.vae.alignment = 'aggregate'` uses the batch cosine instead; `recon_weight = 0` trains on the
alignment loss alone (then step 1 only supplies the substitute and g_t).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from mip_jax.data import data_fingerprint
from mip_jax.defenses import artefact, feasible, lpa, protocol
from mip_jax.losses import alignment
from mip_jax.models import vae as vae_model
from mip_jax.protocol import rules, substitute
from mip_jax.runtime import checkpoints, keys, parallel, train

REPLACES_CLASSIFIER = False  # a post-processing unit (defenses.protocol)
LABEL_PRESERVING = True  # its feasible map keeps every argmax (defenses.protocol)

STAGE = 'vae'
# Rows whose candidate moves no entry by this much have a numerically 0/0 projection gradient.
_STUCK = 1e-18
_ALIGNMENTS = ('per_example', 'aggregate')
RULES = {
    'vae.eps': (rules.POSITIVE,),  # the served vectors' L2 radius
    'vae.latent': (rules.above(0, integer=True),),
    'vae.hidden': (rules.each(rules.above(0, integer=True)),),
    'vae.*_weight': (rules.NON_NEGATIVE,),
    'vae.alignment': (rules.one_of(_ALIGNMENTS),),
    'vae.distance': (rules.one_of(lambda: alignment.DISTANCES),),
}


def make_generator(cfg, num_classes: int):
  """The generator module from config.vae (latent, hidden, eps)."""
  return vae_model.PerturbationVAE(num_classes=num_classes, latent=cfg.latent,
                                   hidden=tuple(cfg.hidden), eps=cfg.eps)


def check_config(cfg) -> None:
  """ConfigError naming the field to fix on a config.vae section the generator cannot train with."""
  values = {f'vae.{k}': v for k, v in rules.flatten(cfg).items()}
  rules.raise_problems(rules.problems(RULES, values))


def project_with_finite_grad(c: jnp.ndarray, delta: jnp.ndarray, eps) -> jnp.ndarray:
  """`feasible.project(c, c + delta, eps)` whose gradient in delta stays finite.

  Where the candidate maps back onto c (a near one-hot c whose tiny entries get negative deltas and
  whose top entry is clipped at 1), ||q - c|| is 0 or its squares underflow float32 (entries below
  ~1e-19), and the projection's gradient x / ||x|| is 0/0: NaN, which would poison every parameter.
  Such rows keep their value and get no gradient instead.
  """
  q = c + delta
  stuck = jnp.all(jnp.abs(feasible.normalize(q) - c) < _STUCK, axis=-1, keepdims=True)
  q = jnp.where(stuck, c + jax.lax.stop_gradient(delta), q)
  return feasible.project(c, q, eps)


def generator_step(state: train.TrainState, batch: tuple, rng: jax.Array, *, model, loss_fn,
                   sub_params, target_grad, cfg):
  """One step of the generator on a batch of anticipated queries.

  Args:
    state: the generator's training state.
    batch: (clean vectors c [B, m], LPA's vectors c* of them [B, m], the queried images x).
    rng: the VAE's 'sample' key.
    model: the generator module; loss_fn: `substitute.decoder_loss_fn(...)` of the substitute.
    sub_params: the substitute decoder's parameters; target_grad: g_t (pytree like sub_params).
    cfg: config.vae (eps, align_weight, recon_weight, kl_weight, alignment, distance).

  Returns:
    (new state, {'loss', 'alignment', 'recon', 'kl'}).
  """
  c, target, x = batch
  align_fn = (alignment.per_example_alignment_loss if cfg.alignment == 'per_example'
              else alignment.alignment_loss)

  def objective(params):
    delta, mu, log_var = model.apply({'params': params}, c, target, rngs={'sample': rng})
    defended = project_with_finite_grad(c, delta, cfg.eps)
    align = align_fn(defended, loss_fn=loss_fn, params=sub_params, images=x,
                     target_grad=target_grad, distance=cfg.distance)
    diff = vae_model.vector_features(defended) - vae_model.vector_features(target)
    recon = jnp.mean(jnp.sum(jnp.square(diff), axis=-1))
    kl = jnp.mean(vae_model.kl_divergence(mu, log_var))
    loss = cfg.align_weight * align + cfg.recon_weight * recon + cfg.kl_weight * kl
    return loss, (align, recon, kl)

  (loss, (align, recon, kl)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  return state.apply_gradients(grads, state.batch_stats), {'loss': loss, 'alignment': align,
                                                           'recon': recon, 'kl': kl}


def train_generator(config, probs: np.ndarray, targets: np.ndarray, images: np.ndarray, *, loss_fn,
                    sub_params, target_grad, workdir: str, seed: int, mesh=None,
                    fingerprint_extra=None):
  """Trains (or loads) the generator stage 'vae_<hash>' on (c, c*, x); returns (model, params).

  The fingerprint covers config.vae, what defines the substitute and LPA's vectors (decoder, attack
  transform, config.lpa) and the training vectors themselves, so a workdir never reuses a generator
  trained for another classifier, substitute or LPA setting.
  """
  cfg = config.vae
  model = make_generator(cfg, probs.shape[-1])
  variables = model.init(jax.random.key(seed), jnp.asarray(probs[:1]), jnp.asarray(probs[:1]),
                         sample=False)
  state = train.TrainState.create(variables=variables, tx=optax.adam(cfg.learning_rate))
  key = checkpoints.fingerprint(
      [cfg.to_dict(), config.decoder.to_dict(), config.substitute.to_dict(), config.attack.to_dict(),
       config.lpa.to_dict(), seed, fingerprint_extra, checkpoints.array_fingerprint(probs)])
  # Named by what defines it: generators of two settings (vae.eps 0.01 and 0.05) share a workdir.
  stage = f'{STAGE}_{key[:8]}'
  ckpt = checkpoints.StageCheckpoint(workdir, stage, key)
  mesh = mesh or parallel.data_mesh()
  # Device arrays (replicated), not numpy: closed-over numpy arrays would become HLO constants.
  step = functools.partial(generator_step, model=model, loss_fn=loss_fn,
                           sub_params=parallel.replicate(sub_params, mesh),
                           target_grad=parallel.replicate(target_grad, mesh), cfg=cfg)
  state = train.fit(state, step, (probs, targets, images), epochs=cfg.epochs,
                    batch_size=cfg.batch_size, seed=seed, checkpoint=ckpt, mesh=mesh, desc=stage)
  ckpt.close()
  return model, jax.device_get(state.params)


# ---------------------------------------------------------------- the defense protocol

def fit(setup) -> dict:
  """LPA's vectors of the attack-class queries, then trains (or loads) the generator on them."""
  config = setup.config
  rules.enforce(RULES, config)
  queries = setup.splits.attack_train
  clean, images = setup.clean['attack_train'], queries.images.astype(np.float32)
  lpa_state = lpa.fit(setup)  # substitute stage (shared with `lpa`) and g_t
  targets = clean
  if config.vae.recon_weight > 0:  # cached in <workdir>/perturbations, shared with `lpa`
    targets = np.asarray(lpa.apply(lpa_state, clean, images=queries.images), np.float32)
  sub_model, sub_vars = substitute.train_substitute(setup)  # finished above: loaded
  loss_fn = substitute.decoder_loss_fn(sub_model, sub_vars['batch_stats'],
                                       substitute.attack_config(config), config.lpa.loss)
  model, params = train_generator(
      config, clean, targets, images, loss_fn=loss_fn, sub_params=sub_vars['params'],
      target_grad=lpa_state['crafter'].target_grad, workdir=setup.workdir,
      seed=keys.stage_seed(config.seed, 'vae'),
      mesh=setup.mesh, fingerprint_extra=['vae', data_fingerprint(config)])
  return make_state(model, params, config.vae.eps, seed=keys.stage_seed(config.seed, 'vae_serving'))


def make_state(model, params, eps: float, *, seed: int) -> dict:
  """The served generator: module, parameters on device, the jitted forward pass and eps.

  `seed` makes the serving key: the latent of a vector is drawn from N(0, I) with a key derived
  from it and the vector's bits.
  """
  key = jax.random.key(seed)
  fn = jax.jit(lambda p, c: vae_model.defended_vectors(model, p, c, eps, key))
  return {'model': model, 'params': jax.device_put(params), 'eps': float(eps), 'fn': fn,
          'seed': seed}


def export(state: dict) -> artefact.Artefact:
  """The generator's architecture and parameters, its radius and its serving seed."""
  return artefact.of_network('generator', state['model'], jax.device_get(state['params']),
                             eps=state['eps'], seed=state['seed'])


def serve(served: artefact.Artefact, config, mesh) -> protocol.Backend:
  """One generator pass per request (no images, no optimisation), in chunks of
  config.serve.max_batch padded to bucket sizes; a row whose network output is not finite fails."""
  del mesh
  model, params = artefact.network(served, 'generator', vae_model.PerturbationVAE)
  state = make_state(model, params, served.settings['eps'], seed=int(served.settings['seed']))
  chunk = int(config.serve.max_batch)
  return protocol.Backend(lambda probs, images: generate(state, probs, chunk=chunk),
                          moves_rows=True)


def generate(state: dict, probs: np.ndarray, *, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """Defended vectors and a per-row `finite` flag (False: the network failed on that row).

  Rows go through the jitted generator in chunks; each chunk is padded (with copies of its first row,
  dropped afterwards) to a power of two, so serving any batch size compiles at most log2(chunk) + 1
  shapes. Rows are independent: padding never changes a real row's result.
  """
  probs = np.asarray(probs, np.float32)
  out, finite = [], []
  for _, n, (padded, _) in parallel.padded_batches((probs,), chunk, pad_to=parallel.bucket_size):
    res = state['fn'](state['params'], padded)
    out.append(np.asarray(res['defended'])[:n])
    finite.append(np.asarray(res['finite'])[:n])
  m = probs.shape[-1] if probs.ndim == 2 else 0
  if not out:
    return np.zeros((0, m), np.float32), np.zeros((0,), bool)
  return np.concatenate(out), np.concatenate(finite)


def apply(state: dict, probs: np.ndarray, *, images: np.ndarray | None = None) -> np.ndarray:
  """The generator's vectors for clean `probs` (images are not needed: c' depends on c alone)."""
  del images
  defended, finite = generate(state, probs)
  if not finite.all():
    bad = np.flatnonzero(~finite)
    raise FloatingPointError(f'the VAE generator produced NaN/inf for {len(bad)} rows (first: '
                             f'{bad[:10].tolist()}); retrain its stage (delete '
                             f'<workdir>/checkpoints/{STAGE}_*) with a lower vae.learning_rate')
  logging.info('VAE defended %d vectors: mean L2 distortion %.5f', len(probs),
               float(np.mean(np.linalg.norm(defended - probs, axis=1))) if len(probs) else 0.0)
  return defended
