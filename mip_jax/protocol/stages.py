"""The trained pieces of the protocol, each a checkpointed stage: classifiers and inversion decoders.

Every stage is a pure step function plus `train.fit`; the functions here build the model from the
config, train it (or load it from `<workdir>/checkpoints/<stage>`) and return `(model, variables)`.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mip_jax.losses import reconstruction
from mip_jax.models import make_classifier, make_decoder
from mip_jax.protocol import rules
from mip_jax.runtime import checkpoints, parallel, train

RULES = {
    'decoder.loss': (rules.one_of(lambda: reconstruction.LOSSES),),
    # The attacker's early stopping (`train_attacker`): None trains decoder.epochs.
    'attack.patience': (rules.optional(rules.above(0)),),
    'attack.val_fraction': (rules.UNIT_OPEN,),
}


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
  state = train.TrainState.create(variables=variables, tx=optax.adam(section.learning_rate))
  ckpt = checkpoints.StageCheckpoint(workdir, stage, classifier_fingerprint(
      section, labels, seed=seed, fingerprint_extra=fingerprint_extra))
  state = train.fit(state, train.Step(step or classifier_step, model=model), (images, labels),
                    epochs=section.epochs, batch_size=section.batch_size, seed=seed,
                    checkpoint=ckpt, mesh=mesh, desc=stage)
  ckpt.close()
  return model, jax.device_get(state.variables)


def classifier_fingerprint(section, labels: np.ndarray, *, seed: int,
                           fingerprint_extra: Any = None) -> str:
  """The config fingerprint of a classifier stage (what `train_classifier` checkpoints under)."""
  return checkpoints.fingerprint([section.to_dict(), seed, fingerprint_extra,
                                  checkpoints.array_fingerprint(labels)])


def load_classifier(section, record: dict, *, workdir: str, mesh=None):
  """A finished classifier stage restored from its checkpoint alone, without its training data.

  Args:
    section: its config section (config.classifier): the architecture and optimiser to restore.
    record: {'stage', 'config_hash', 'num_classes', 'image_shape'} (`experiment.Setup`'s
      `classifier_stage`, kept in serving artefacts): which checkpoint, trained under what.

  Returns:
    (model, variables).

  Raises:
    train.StageNotTrainedError (no finished checkpoint), checkpoints.StageMismatchError (the stage
    was retrained under another config since the record was taken).
  """
  model = make_classifier(section, int(record['num_classes']))
  example = jnp.zeros((1, *record['image_shape']), jnp.float32)
  abstract = jax.eval_shape(lambda: train.TrainState.create(
      variables=model.init(jax.random.key(0), example, train=False),
      tx=optax.adam(section.learning_rate)))
  ckpt = checkpoints.StageCheckpoint(workdir, record['stage'], record['config_hash'])
  state = train.load(abstract, ckpt, mesh=mesh, desc=record['stage'])
  ckpt.close()
  return model, jax.device_get(state.variables)


@functools.partial(jax.jit, static_argnames='model')
def _probs(variables, images, *, model):
  return jax.nn.softmax(model.apply(variables, images, train=False), axis=-1)


@functools.partial(jax.jit, static_argnames='model')
def _features(variables, images, *, model):
  """The classifier's penultimate activations (the hidden Dense layer's output, `fc_hidden`)."""
  _, state = model.apply(variables, images, train=False, capture_intermediates=lambda m, _: (
      m.name == 'fc_hidden'), mutable=['intermediates'])
  return state['intermediates']['fc_hidden']['__call__'][0]


@functools.partial(jax.jit, static_argnames='model')
def _decode(variables, inputs, *, model):
  return model.apply(variables, inputs, train=False)


def batched(fn, model, variables, arrays: np.ndarray, *, batch_size: int = 512,
            pad_to=None) -> np.ndarray:
  """`fn(variables, batch, model=model)` over `arrays` in batches of one shape (the last padded),
  so a jitted forward pass compiles once per model and batch size; `pad_to` (n -> rows, e.g.
  `parallel.bucket_size`) pads each batch to a few sizes instead (serving any request size)."""
  variables = jax.device_put(variables)
  pad_to = pad_to or (lambda n: batch_size)
  out = [np.asarray(fn(variables, batch, model=model))[:n]
         for _, n, (batch, _) in parallel.padded_batches((arrays,), batch_size, pad_to=pad_to)]
  return np.concatenate(out) if out else np.zeros((0,), np.float32)


def predict_probs(model, variables, images: np.ndarray, *, batch_size: int = 512,
                  pad_to=None) -> np.ndarray:
  """Softmax confidence vectors of a classifier in eval mode, batched; float32 [N, m]."""
  return batched(_probs, model, variables, images, batch_size=min(batch_size, len(images)),
                 pad_to=pad_to)


def features(model, variables, images: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
  """A classifier's penultimate features (eval mode) of `images`, batched; [N, hidden]."""
  return batched(_features, model, variables, images, batch_size=min(batch_size, len(images)))


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
                  seed: int, mesh=None, fingerprint_extra: Any = None, section=None,
                  patience: int | None = None, val_fraction: float = 0.1):
  """Trains (or loads) an inversion decoder on (transformed vectors, images) pairs.

  `section` is the decoder's config section (architecture, loss, optimiser, epochs): config.decoder
  (the attacker's, default) or the substitute's (`substitute.decoder_section`).
  The stage's fingerprint includes the inputs themselves, so a workdir never reuses a decoder trained
  on other vectors (another defense, another transform); config.attack is left out on purpose, since
  its fields that matter reach the inputs and the others (reconstruct_from, the adaptive attacker of
  another row) must not force a retrain. `fingerprint_extra` adds anything else.
  `patience`: hold out `val_fraction` of the pairs (a fixed draw of `seed`) and stop once their loss
  has not improved for that many epochs (`section.epochs` is then the most); the best epoch is kept.
  """
  dec = config.decoder if section is None else section
  num_classes = inputs.shape[-1]
  model = make_decoder(config, num_classes, section=dec)
  variables = model.init(jax.random.key(seed), inputs[:1], train=False)
  state = train.TrainState.create(variables=variables, tx=decoder_optimizer(dec))
  early = None
  key = [dec.to_dict(), seed, fingerprint_extra, checkpoints.array_fingerprint(inputs)]
  if patience is not None:
    train_idx, val_idx = holdout(len(inputs), val_fraction, seed=seed)
    val = (jax.device_put(inputs[val_idx]), jax.device_put(images[val_idx]))
    early = train.EarlyStopping(
        validate=lambda s: float(_val_loss(s.variables, *val, model=model, loss=dec.loss)),
        patience=int(patience))
    inputs, images = inputs[train_idx], images[train_idx]
    key.append({'patience': int(patience), 'val_fraction': float(val_fraction)})
  ckpt = checkpoints.StageCheckpoint(workdir, stage, checkpoints.fingerprint(key))
  state = train.fit(state, train.Step(decoder_step, model=model, loss=dec.loss), (inputs, images),
                    epochs=dec.epochs, batch_size=dec.batch_size, seed=seed, checkpoint=ckpt,
                    mesh=mesh, desc=stage, early_stopping=early)
  ckpt.close()
  return model, jax.device_get(state.variables)


def holdout(n: int, fraction: float, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train, validation) indices: a fixed `fraction` of n held out, drawn from `seed`."""
  if not 0 < fraction < 1:
    raise ValueError(f'the held-out fraction must lie in (0, 1), got {fraction}')
  perm = np.random.default_rng([int(seed), n]).permutation(n)
  n_val = max(1, int(round(fraction * n)))
  return np.sort(perm[n_val:]), np.sort(perm[:n_val])


@functools.partial(jax.jit, static_argnames=('model', 'loss'))
def _val_loss(variables, inputs, images, *, model, loss: str):
  return reconstruction.get_loss(loss)(model.apply(variables, inputs, train=False), images)


def content_key(*parts) -> str:
  """A short hash of `parts` (arrays by their values): names a stage by what it learns from."""
  return checkpoints.fingerprint([checkpoints.array_fingerprint(p) if isinstance(p, np.ndarray)
                                  else p for p in parts])[:10]


def train_attacker(config, inputs: np.ndarray, images: np.ndarray, *, workdir: str, tag: str,
                   seed: int, mesh=None, fingerprint_extra: Any = None):
  """The attacker's decoder (config.decoder) on (inputs, images): a stage named by what it learns
  from, `attacker_<tag>_<hash>`, so two cells whose attackers see the same inputs (the `label`
  attacker behind any label-preserving defense) share one trained decoder. Early stopping as
  config.attack.patience / val_fraction say (None: config.decoder.epochs, the paper's)."""
  attack = config.attack
  patience = attack.get('patience')
  stage = f'attacker_{tag}_' + content_key(config.decoder.to_dict(), seed, fingerprint_extra, inputs,
                                           images, patience, attack.get('val_fraction'))
  return stage, train_decoder(config, inputs, images, workdir=workdir, stage=stage, seed=seed,
                              mesh=mesh, fingerprint_extra=fingerprint_extra, patience=patience,
                              val_fraction=attack.get('val_fraction', 0.1))


def reconstruct(model, variables, inputs: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
  """Decoder outputs (eval mode) for attacker inputs, batched."""
  return batched(_decode, model, variables, inputs, batch_size=min(batch_size, len(inputs)))
