"""A learned post-processor trained end to end against an inversion attacker in the loop.

Issue 20's third idea: instead of a hand-made rule for what to remove from a served vector
(`tailfloor`, `template`), let a small network R learn it against the attacker it must defeat.

  R        `models.redactor.Redactor`: an MLP on log-probabilities, residual (R = identity at
           init), its output's argmax forced to the clean argmax by construction
           (LABEL_PRESERVING); served vectors are softmax(R(c)), no exact zero.
  H        an inversion decoder of the attacker's architecture (config.decoder) on
           `attacks.transforms.attacker_input` of R's output, trained alongside R.
  min-max  one simultaneous step per batch, as the adversarial purifier's:
             H minimises MSE(H(R(c)), x)                         (R's output held fixed)
             R minimises w * mean ||softmax(R(c)) - c||_2 - MSE(H(R(c)), x)
           w = config.learned.distortion_weight (the knob: larger, closer to the clean vectors).

Trained on the defender's own (query vector, queried image) pairs, the data the substitute decoder
of LPA trains on (config.learned.data: the attacker's queries, or one half of them). The attacker
of the protocol then trains a fresh decoder on what R serves, as it does against every defense, so
R is measured against attackers it never saw, not against its own H.

Served in one jitted MLP pass (padded batches), like the purifier.

Measured on mnist5k (docs/results/frontier/README.md, seeds 5-9) it does not lead: no better than
the `random` control at the same query distortion, far above `tailfloor`. The min-max finds
mappings its own decoder cannot read yet; a decoder trained afresh on the served vectors reads them.
It stays as the baseline for learned defenses (and a reusable step: `redactor_step`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mip_jax.attacks import transforms
from mip_jax.data import data_fingerprint
from mip_jax.data.splits import QUERY_PARTS, query_indices
from mip_jax.defenses import artefact, protocol
from mip_jax.losses import reconstruction
from mip_jax.models import make_decoder
from mip_jax.models.redactor import Redactor
from mip_jax.protocol import rules, stages
from mip_jax.runtime import checkpoints, keys, parallel, train

REPLACES_CLASSIFIER = False  # a post-processing unit (defenses.protocol)
LABEL_PRESERVING = True  # the Redactor keeps the argmax by construction
RULES = {
    'learned.distortion_weight': (rules.NON_NEGATIVE,),
    'learned.hidden': (rules.each(rules.at_least(1, integer=True)),),
    'learned.epochs': (rules.at_least(1, integer=True),),
    'learned.batch_size': (rules.at_least(1, integer=True),),
    'learned.learning_rate': (rules.POSITIVE,),
    'learned.data': (rules.one_of(QUERY_PARTS),),
}


def redactor_step(state: train.TrainState, batch: tuple, rng: jax.Array, *, redactor, inverter,
                  attack_cfg, distortion_weight: float):
  """One step of the redactor R and one of the inversion decoder H (see the module docstring).

  Args:
    state: params {'redactor', 'inverter'}, batch_stats {'inverter'}.
    batch: (clean vectors [B, m], images [B, H, W, C]).
    rng: unused (no stochastic layers).
    redactor: the Redactor; inverter: a Decoder; attack_cfg: config.attack (H's input transform).
    distortion_weight: w.

  Returns:
    (new state, {'loss', 'distortion', 'inversion'}): R's loss, the mean L2 distance of served to
    clean vectors and H's reconstruction MSE, both before the step.
  """
  del rng
  probs, images = batch
  params, stats = state.params, state.batch_stats

  def inversion_error(inv_params, served):
    recon, updates = inverter.apply({'params': inv_params, 'batch_stats': stats['inverter']},
                                    transforms.attacker_input(served, attack_cfg), train=True,
                                    mutable=['batch_stats'])
    return reconstruction.mse(recon, images), updates['batch_stats']

  def redactor_loss(red_params):
    served = jax.nn.softmax(redactor.apply({'params': red_params}, probs), axis=-1)
    # sqrt(. + tiny): the mean L2 distance (conf. dist.) with a finite gradient at served = c.
    dist = jnp.mean(jnp.sqrt(jnp.sum(jnp.square(served - probs), axis=-1) + 1e-12))
    inv, _ = inversion_error(params['inverter'], served)
    return distortion_weight * dist - inv, (served, dist, inv)

  (loss, (served, dist, inv)), red_grads = jax.value_and_grad(
      redactor_loss, has_aux=True)(params['redactor'])
  (_, inv_stats), inv_grads = jax.value_and_grad(inversion_error, has_aux=True)(
      params['inverter'], jax.lax.stop_gradient(served))
  return state.apply_gradients({'redactor': red_grads, 'inverter': inv_grads},
                               {'inverter': inv_stats}), {
      'loss': loss, 'distortion': dist, 'inversion': inv}


def training_data(setup) -> tuple[np.ndarray, np.ndarray]:
  """(clean vectors, images) of the queries named by config.learned.data."""
  queries = setup.splits.attack_train
  idx = query_indices(len(queries.labels), setup.config.learned.data)
  return setup.clean['attack_train'][idx], queries.images[idx]


def train_redactor(setup):
  """Trains (or loads) the redactor stage against its inversion decoder; (Redactor, variables)."""
  config, cfg = setup.config, setup.config.learned
  rules.enforce(RULES, config)
  probs, images = training_data(setup)
  m = probs.shape[1]
  seed = keys.stage_seed(config.seed, 'learned')
  redactor = Redactor(num_classes=m, hidden=tuple(int(w) for w in cfg.hidden),
                      floor=float(config.attack.floor))
  inverter = make_decoder(config, m)
  k_red, k_inv = jax.random.split(jax.random.key(seed))
  inv_vars = inverter.init(k_inv, transforms.attacker_input(probs[:1], config.attack), train=False)
  variables = {'params': {'redactor': redactor.init(k_red, probs[:1])['params'],
                          'inverter': inv_vars['params']},
               'batch_stats': {'inverter': inv_vars['batch_stats']}}
  optimizers = {'redactor': optax.adam(cfg.learning_rate),
                'inverter': stages.decoder_optimizer(config.decoder)}
  state = train.TrainState.create(
      variables=variables, tx=optax.multi_transform(optimizers, {k: k for k in optimizers}))
  key = checkpoints.fingerprint([cfg.to_dict(), seed, data_fingerprint(config),
                                 checkpoints.array_fingerprint(probs), config.decoder.to_dict(),
                                 config.attack.to_dict()])
  stage = f'learned_{key[:8]}'  # named by what defines it: two weights share a workdir
  ckpt = checkpoints.StageCheckpoint(setup.workdir, stage, key)
  weight = float(cfg.distortion_weight)
  step = lambda s, b, r: redactor_step(s, b, r, redactor=redactor, inverter=inverter,
                                       attack_cfg=config.attack, distortion_weight=weight)
  state = train.fit(state, step, (probs, images), epochs=cfg.epochs, batch_size=cfg.batch_size,
                    seed=seed, checkpoint=ckpt, mesh=setup.mesh, desc=stage)
  ckpt.close()
  return redactor, {'params': jax.device_get(state.params['redactor'])}


@functools.partial(jax.jit, static_argnames='model')
def _served(variables, probs, *, model):
  return jax.nn.softmax(model.apply(variables, probs), axis=-1)


def make_state(redactor, variables) -> dict:
  return {'redactor': redactor, 'variables': variables}


def redact(state: dict, probs: np.ndarray, *, batch_size: int = 1024, pad_to=None) -> np.ndarray:
  """softmax(R(c)) for clean vectors [N, m], in padded batches of one shape (or of `pad_to(n)`
  rows: serving's bucket sizes); float32 probability vectors with the clean argmax."""
  probs = np.asarray(probs, np.float32)
  m = state['redactor'].num_classes
  if probs.ndim != 2 or probs.shape[1] != m:
    raise ValueError(f'the learned defense expects confidence vectors [N, {m}], got shape '
                     f'{probs.shape}')
  if not len(probs):
    return np.zeros_like(probs)
  out = stages.batched(_served, state['redactor'], state['variables'], probs,
                       batch_size=max(1, min(batch_size, len(probs))), pad_to=pad_to)
  return (out / out.sum(axis=1, keepdims=True)).astype(np.float32)


def fit(setup) -> dict:
  """Trains (or loads) the redactor."""
  return make_state(*train_redactor(setup))


def apply(state: dict, probs: np.ndarray, *, images: np.ndarray | None = None) -> np.ndarray:
  """Served vectors softmax(R(c)) for clean vectors `probs` (images are not needed)."""
  del images
  return redact(state, probs)


def export(state: dict) -> artefact.Artefact:
  """The redactor's architecture and weights."""
  return artefact.of_network('redactor', state['redactor'], state['variables'])


def serve(served: artefact.Artefact, config, mesh) -> protocol.Backend:
  """softmax(R(c)) of each request's clean vectors, in chunks of config.serve.max_batch padded to
  bucket sizes."""
  del mesh
  state = make_state(*artefact.network(served, 'redactor', Redactor))
  chunk = int(config.serve.max_batch)
  return protocol.Backend(lambda probs, images: (
      redact(state, probs, batch_size=chunk, pad_to=parallel.bucket_size), None))
