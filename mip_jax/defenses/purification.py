"""Prediction purification (Yang et al. 2020): an autoencoder G on confidence vectors.

G (`models.purifier.Purifier`, softmax output) is trained on the defender's reference data,
vectors of non-members of the classifier's training set, to reproduce each vector (squared L2) and
keep its label (cross-entropy on argmax c): trained on non-member vectors, it serves less dispersed
vectors. Served vectors are G(c).

Reference data (config.purification.reference): 'private_test' (default), the classifier's own task
data that it was not trained on: the paper's reference set is non-member data from the classifier's
distribution, which is what the private test split is. 'attack_train' (the attacker's queries, also
non-members) is the alternative; it fits G to the very queries it defends, and G then breaks the
classifier on its own task (digits, seed 0: Model Acc 60.6% against 100% with 'private_test').
Caveat of the default: Model Acc is measured on the same private test vectors G was fitted to (G is
fitted to the classifier's predicted labels, never the true ones).

Adversarial variant (config.purification.adversarial): an inversion model H (the attacker's decoder
architecture, fed `attacks.transforms.attacker_input` of G's output) learns to rebuild the reference
images from purified vectors while G also maximises H's error (min-max, weight
config.purification.adversarial_weight). Both take one simultaneous gradient step per batch (H on
G's output with G fixed; G against the current H). Its stage is `purifier_adversarial_<hash>`,
else `purifier_<hash>` (the hash of what defines it).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mip_jax.attacks import transforms
from mip_jax.data import data_fingerprint
from mip_jax.defenses import artefact, protocol
from mip_jax.losses import reconstruction
from mip_jax.models import make_decoder
from mip_jax.models.purifier import Purifier, purifier_widths
from mip_jax.protocol import rules, stages
from mip_jax.runtime import checkpoints, keys, parallel, train

REPLACES_CLASSIFIER = False  # a post-processing unit (defenses.protocol)

REFERENCES = ('private_test', 'attack_train')
RULES = {
    'purification.reference': (rules.one_of(REFERENCES),),
    'purification.width_factors': (rules.each(rules.POSITIVE),),
    'purification.*_weight': (rules.NON_NEGATIVE,),
    'purification.epochs': (rules.at_least(1, integer=True),),
    'purification.batch_size': (rules.at_least(1, integer=True),),
    'purification.learning_rate': (rules.POSITIVE,),
}


def reference_data(setup) -> tuple[np.ndarray, np.ndarray]:
  """(clean vectors, images) of the reference split named by config.purification.reference."""
  name = setup.config.purification.reference
  return setup.clean[name], getattr(setup.splits, name).images


def purifier_step(state: train.TrainState, batch: tuple, rng: jax.Array, *, purifier, inverter,
                  attack_cfg, label_weight: float, adversarial_weight: float):
  """One purifier step (and, when `inverter` is given, one inversion-model step).

  G minimises ||G(c) - c||^2 + label_weight * CE(G(c), argmax c)
              [- adversarial_weight * MSE(H(G(c)), x)];
  H minimises MSE(H(G(c)), x) with G's output held fixed.

  Args:
    state: params / batch_stats {'purifier': ..., ['inverter': ...]}.
    batch: (clean vectors [B, m], images [B, H, W, C]).
    rng: unused (no stochastic layers).
    purifier: the Purifier; inverter: a Decoder or None; attack_cfg: config.attack (H's input).
    label_weight, adversarial_weight: loss weights.

  Returns:
    (new state, {'loss', 'reconstruction', 'label', 'inversion', 'label_kept'}).
  """
  del rng
  probs, images = batch
  labels = jnp.argmax(probs, axis=-1)
  params, stats = state.params, state.batch_stats

  def inversion_error(inv_params, purified):
    recon, updates = inverter.apply({'params': inv_params, 'batch_stats': stats['inverter']},
                                    transforms.attacker_input(purified, attack_cfg), train=True,
                                    mutable=['batch_stats'])
    return reconstruction.mse(recon, images), updates['batch_stats']

  def purifier_loss(pur_params):
    logits, updates = purifier.apply({'params': pur_params, 'batch_stats': stats['purifier']},
                                     probs, train=True, mutable=['batch_stats'])
    purified = jax.nn.softmax(logits, axis=-1)
    rec = jnp.mean(jnp.sum(jnp.square(purified - probs), axis=-1))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    loss = rec + label_weight * ce
    inv = jnp.zeros(())
    if inverter is not None:
      inv, _ = inversion_error(params['inverter'], purified)
      loss = loss - adversarial_weight * inv
    return loss, (purified, logits, rec, ce, inv, updates['batch_stats'])

  (loss, (purified, logits, rec, ce, inv, pur_stats)), pur_grads = jax.value_and_grad(
      purifier_loss, has_aux=True)(params['purifier'])
  grads, new_stats = {'purifier': pur_grads}, {'purifier': pur_stats}
  if inverter is not None:
    (inv, inv_stats), inv_grads = jax.value_and_grad(inversion_error, has_aux=True)(
        params['inverter'], jax.lax.stop_gradient(purified))
    grads['inverter'], new_stats['inverter'] = inv_grads, inv_stats
  kept = jnp.mean(jnp.argmax(logits, -1) == labels)
  return state.apply_gradients(grads, new_stats), {
      'loss': loss, 'reconstruction': rec, 'label': ce, 'inversion': inv, 'label_kept': kept}


def train_purifier(setup):
  """Trains (or loads) the purifier stage on the reference data; (Purifier, its variables)."""
  config, cfg = setup.config, setup.config.purification
  rules.enforce(RULES, config)
  probs, images = reference_data(setup)
  m = probs.shape[1]
  adversarial = bool(cfg.adversarial)
  seed = keys.stage_seed(config.seed, 'purification')
  purifier = Purifier(num_classes=m, widths=purifier_widths(m, cfg.width_factors))
  k_pur, k_inv = jax.random.split(jax.random.key(seed))
  pur_vars = purifier.init(k_pur, probs[:1], train=False)
  variables = {'params': {'purifier': pur_vars['params']},
               'batch_stats': {'purifier': pur_vars['batch_stats']}}
  optimizers = {'purifier': optax.adam(cfg.learning_rate)}
  inverter = None
  fingerprint = [cfg.to_dict(), seed, data_fingerprint(config),
                 checkpoints.array_fingerprint(probs)]
  if adversarial:
    inverter = make_decoder(config, m)
    inv_vars = inverter.init(k_inv, transforms.attacker_input(probs[:1], config.attack),
                             train=False)
    variables['params']['inverter'] = inv_vars['params']
    variables['batch_stats']['inverter'] = inv_vars['batch_stats']
    optimizers['inverter'] = stages.decoder_optimizer(config.decoder)
    fingerprint += [config.decoder.to_dict(), config.attack.to_dict()]
  labels = {name: name for name in optimizers}
  state = train.TrainState.create(variables=variables,
                                  tx=optax.multi_transform(optimizers, labels))
  key = checkpoints.fingerprint(fingerprint)
  # Named by what defines it: purifiers of two settings (or two attacker decoders) share a workdir.
  stage = f'{"purifier_adversarial" if adversarial else "purifier"}_{key[:8]}'
  ckpt = checkpoints.StageCheckpoint(setup.workdir, stage, key)
  label_weight, adversarial_weight = float(cfg.label_weight), float(cfg.adversarial_weight)
  step = lambda s, b, r: purifier_step(s, b, r, purifier=purifier, inverter=inverter,
                                       attack_cfg=config.attack, label_weight=label_weight,
                                       adversarial_weight=adversarial_weight)
  state = train.fit(state, step, (probs, images), epochs=cfg.epochs, batch_size=cfg.batch_size,
                    seed=seed, checkpoint=ckpt, mesh=setup.mesh, desc=stage)
  ckpt.close()
  state = jax.device_get(state)
  return purifier, {'params': state.params['purifier'],
                    'batch_stats': state.batch_stats['purifier']}


@functools.partial(jax.jit, static_argnames='model')
def _purified(variables, probs, *, model):
  return jax.nn.softmax(model.apply(variables, probs, train=False), axis=-1)


def make_state(purifier, variables) -> dict:
  """The purifier with its variables (G(c) is `_purified`, compiled once per module and shape)."""
  return {'purifier': purifier, 'variables': variables}


def purify(state: dict, probs: np.ndarray, *, batch_size: int = 1024, pad_to=None) -> np.ndarray:
  """G(c) for clean vectors [N, m] (eval mode: rows are independent), in padded batches of one
  shape (or of `pad_to(n)` rows: serving's bucket sizes); float32 probability vectors."""
  probs = np.asarray(probs, np.float32)
  m = state['purifier'].num_classes
  if probs.ndim != 2 or probs.shape[1] != m:
    raise ValueError(f'purification expects confidence vectors [N, {m}], got shape {probs.shape}')
  if not len(probs):
    return np.zeros_like(probs)
  return stages.batched(_purified, state['purifier'], state['variables'], probs,
                        batch_size=max(1, min(batch_size, len(probs))), pad_to=pad_to)


def fit(setup) -> dict:
  """Trains (or loads) the purifier."""
  return make_state(*train_purifier(setup))


def apply(state: dict, probs: np.ndarray, *, images: np.ndarray | None = None) -> np.ndarray:
  """Purified vectors G(c) for clean vectors `probs` (images are not needed)."""
  del images
  return purify(state, probs)


def export(state: dict) -> artefact.Artefact:
  """The purifier's architecture and variables."""
  return artefact.of_network('purifier', state['purifier'], state['variables'])


def serve(served: artefact.Artefact, config, mesh) -> protocol.Backend:
  """G(c) of each request's clean vectors, in chunks of config.serve.max_batch padded to bucket
  sizes (few compiled shapes for any request size)."""
  del mesh
  state = make_state(*artefact.network(served, 'purifier', Purifier))
  chunk = int(config.serve.max_batch)
  return protocol.Backend(lambda probs, images: (
      purify(state, probs, batch_size=chunk, pad_to=parallel.bucket_size), None))
