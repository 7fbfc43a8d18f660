"""The trained pieces of the protocol, each a checkpointed stage: classifiers and inversion decoders.

Every stage is a pure step function plus `train.fit`; the functions here build the model from the
config, train it (or load it from `<workdir>/checkpoints/<stage>`) and return `(model, variables)`.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mip_jax.losses import reconstruction
from mip_jax.models import make_classifier, make_decoder
from mip_jax.runtime import checkpoints, train


# ---------------------------------------------------------------- classifiers

def classifier_step(state: train.TrainState, batch: tuple, rng: jax.Array, *, model):
  """One cross-entropy step of a classifier (train mode: dropout on, BatchNorm batch statistics).

  Args:
    state: classifier training state.
    batch: (images [B,H,W,C] float32 in [0,1], labels [B] int32).
    rng: dropout key.
    model: the Flax classifier (static).

  Returns:
    (new state, {'loss': scalar, 'accuracy': scalar}).
  """
  images, labels = batch

  def loss_fn(params):
    logits, updates = model.apply({'params': params, 'batch_stats': state.batch_stats}, images,
                                  train=True, mutable=['batch_stats'], rngs={'dropout': rng})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (logits, updates['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  acc = jnp.mean(jnp.argmax(logits, -1) == labels)
  return state.apply_gradients(grads, batch_stats), {'loss': loss, 'accuracy': acc}


def train_classifier(section, images: np.ndarray, labels: np.ndarray, num_classes: int, *,
                     workdir: str, stage: str, seed: int, mesh=None, fingerprint_extra: Any = None,
                     model=None, step=None):
  """Trains (or loads) a classifier stage. `section` is config.classifier or config.eval_classifier.

  Retrained defenses (MID, BiDO) pass their own `model` (default: `make_classifier(section, m)`) and
  `step` (default: `classifier_step`; called as `step(state, batch, rng, model=model)`); the loss
  settings such a step closes over belong in `fingerprint_extra`.
  """
  if model is None:
    model = make_classifier(section, num_classes)
  variables = model.init(jax.random.key(seed), images[:1], train=False)
  tx = optax.adam(section.learning_rate)
  state = train.TrainState.create(variables=variables, tx=tx)
  ckpt = checkpoints.StageCheckpoint(
      workdir, stage, checkpoints.fingerprint([section.to_dict(), seed, fingerprint_extra,
                                          checkpoints.array_fingerprint(labels)]))
  step_fn = step or classifier_step
  step = lambda s, b, r: step_fn(s, b, r, model=model)
  state = train.fit(state, step, (images, labels), epochs=section.epochs,
                    batch_size=section.batch_size, seed=seed, checkpoint=ckpt, mesh=mesh, desc=stage)
  ckpt.close()
  return model, jax.device_get(state.variables)


def predict_probs(model, variables, images: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
  """Softmax confidence vectors of a classifier in eval mode, batched; float32 [N, m]."""
  fn = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False), axis=-1))
  return np.concatenate([np.asarray(fn(variables, images[i:i + batch_size]))
                         for i in range(0, len(images), batch_size)])


# ---------------------------------------------------------------- inversion decoders

def decoder_step(state: train.TrainState, batch: tuple, rng: jax.Array, *, model, loss: str):
  """One step of an inversion decoder on (attacker inputs z [B, m], images [B,H,W,C])."""
  del rng
  inputs, images = batch
  loss_fn_ = reconstruction.get_loss(loss)

  def loss_fn(params):
    recon, updates = model.apply({'params': params, 'batch_stats': state.batch_stats}, inputs,
                                 train=True, mutable=['batch_stats'])
    return loss_fn_(recon, images), updates['batch_stats']

  (value, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  return state.apply_gradients(grads, batch_stats), {'loss': value}


def decoder_optimizer(dec_cfg) -> optax.GradientTransformation:
  return optax.adam(dec_cfg.learning_rate, b1=dec_cfg.b1, b2=dec_cfg.b2)


def train_decoder(config, inputs: np.ndarray, images: np.ndarray, *, workdir: str, stage: str,
                  seed: int, mesh=None, fingerprint_extra: Any = None, section=None):
  """Trains (or loads) an inversion decoder on (transformed vectors, images) pairs.

  `section` is the decoder's config section (architecture, loss, optimiser, epochs): config.decoder
  (the attacker's, default) or the substitute's (`substitute.decoder_section`).
  The stage's fingerprint includes the inputs themselves, so a workdir never reuses a decoder trained
  on other vectors (another defense, another transform); config.attack is left out on purpose, since
  its fields that matter reach the inputs and the others (reconstruct_from, the adaptive attacker of
  another row) must not force a retrain. `fingerprint_extra` adds anything else.
  """
  dec = config.decoder if section is None else section
  num_classes = inputs.shape[-1]
  model = make_decoder(config, num_classes, section=dec)
  variables = model.init(jax.random.key(seed), inputs[:1], train=False)
  state = train.TrainState.create(variables=variables, tx=decoder_optimizer(dec))
  ckpt = checkpoints.StageCheckpoint(workdir, stage, checkpoints.fingerprint(
      [dec.to_dict(), seed, fingerprint_extra, checkpoints.array_fingerprint(inputs)]))
  step = lambda s, b, r: decoder_step(s, b, r, model=model, loss=dec.loss)
  state = train.fit(state, step, (inputs, images), epochs=dec.epochs, batch_size=dec.batch_size,
                    seed=seed, checkpoint=ckpt, mesh=mesh, desc=stage)
  ckpt.close()
  return model, jax.device_get(state.variables)


def reconstruct(model, variables, inputs: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
  """Decoder outputs (eval mode) for attacker inputs, batched."""
  fn = jax.jit(lambda v, z: model.apply(v, z, train=False))
  return np.concatenate([np.asarray(fn(variables, inputs[i:i + batch_size]))
                         for i in range(0, len(inputs), batch_size)])
