"""MID (Wang et al. 2021): the target classifier retrained with a variational bottleneck.

The deployed model is `models.vib_classifier.VIBClassifier` (the conv trunk and hidden Dense layer
of config.classifier, then a bottleneck of half the hidden layer's width before the last layer),
trained on the private data with cross-entropy + beta * KL(N(mu, std^2) || N(0, I))
(config.mid.beta; MID and the paper's Table I: 0.01, 0.001 on CIFAR-10). It is a stage of its own,
`classifier_mid_beta<beta>`, trained with `stages.train_classifier` and the step below.

A retrained classifier is not a post-processor: `apply` returns the MID classifier's vectors for the
queried images and ignores the undefended vectors except for checking their shape. Conf Dist then
measures how far MID's vectors are from the undefended classifier's.

Inference: `config.mid.sample_at_eval` False (default) serves the bottleneck mean; True samples
z = mu + std * eps as MID's code does at test time too (deterministic given config.seed and the
queried images).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mip_jax.data import data_fingerprint
from mip_jax.defenses import artefact, protocol
from mip_jax.losses import vib
from mip_jax.models.vib_classifier import VIBClassifier
from mip_jax.protocol import rules, stages
from mip_jax.runtime import checkpoints, keys, parallel, train

STAGE = 'classifier_mid'
# The defense replaces the classifier: the private data's vectors an attacker inverts are apply()'s.
REPLACES_CLASSIFIER = True
RULES = {'mid.beta': (rules.NON_NEGATIVE,)}  # the KL term's weight


def mid_step(state: train.TrainState, batch: tuple, rng: jax.Array, *, model, beta: float):
  """One MID step: cross-entropy + beta * KL of the bottleneck (train mode, z sampled).

  Args:
    state: training state of a `VIBClassifier`.
    batch: (images [B, H, W, C], labels [B] int32).
    rng: key for dropout and the bottleneck sample.
    model: the VIBClassifier (static); beta: KL weight.

  Returns:
    (new state, {'loss', 'cross_entropy', 'kl', 'accuracy'}).
  """
  images, labels = batch
  dropout_key, noise_key = jax.random.split(rng)

  def loss_fn(params):
    (logits, (mu, std, log_std)), updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, images, train=True,
        return_stats=True, mutable=['batch_stats'],
        rngs={'dropout': dropout_key, 'bottleneck': noise_key})
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    kl = vib.gaussian_kl(mu, std, log_std=log_std)
    return ce + beta * kl, (logits, ce, kl, updates['batch_stats'])

  (loss, (logits, ce, kl, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  acc = jnp.mean(jnp.argmax(logits, -1) == labels)
  return state.apply_gradients(grads, batch_stats), {
      'loss': loss, 'cross_entropy': ce, 'kl': kl, 'accuracy': acc}


def make_model(config, num_classes: int) -> VIBClassifier:
  """MID's classifier with the trunk and widths of config.classifier."""
  section = config.classifier
  return VIBClassifier(num_classes=num_classes, channels=tuple(section.channels),
                       hidden_mult=section.hidden_mult, dropout=section.dropout)


def stage_name(beta: float) -> str:
  """'classifier_mid_beta<beta>': one stage per beta, so a sweep over beta (Figure 8) shares a workdir."""
  return f'{STAGE}_beta{beta:g}'


def train_mid(setup):
  """Trains (or loads) stage `stage_name(beta)` on the private training data; (model, variables)."""
  config = setup.config
  rules.enforce(RULES, config)
  beta = float(config.mid.beta)
  data = setup.splits.private_train
  m = setup.splits.num_private_classes
  return stages.train_classifier(
      config.classifier, data.images, data.labels, m, workdir=setup.workdir, stage=stage_name(beta),
      seed=keys.stage_seed(config.seed, 'mid'), mesh=setup.mesh, model=make_model(config, m),
      step=lambda s, b, r, model: mid_step(s, b, r, model=model, beta=beta),
      fingerprint_extra=['mid', {'beta': beta}, data_fingerprint(config)])


def fit(setup) -> dict:
  """Trains (or loads) the MID classifier."""
  model, variables = train_mid(setup)
  return {'model': model, 'variables': variables, 'num_classes': setup.splits.num_private_classes,
          'sample': bool(setup.config.mid.sample_at_eval),
          'seed': keys.stage_seed(setup.config.seed, 'mid')}


def check_queries(probs, images, num_classes: int, name: str) -> None:
  """A retrained classifier needs the queried images, one per undefended vector."""
  if images is None:
    raise ValueError(f'{name} serves its own retrained classifier\'s vectors: pass images=')
  probs = np.asarray(probs)
  if probs.ndim != 2 or probs.shape != (len(images), num_classes):
    raise ValueError(f'{name}: expected undefended vectors [{len(images)}, {num_classes}] for '
                     f'{len(images)} images, got shape {probs.shape}')


@functools.partial(jax.jit, static_argnames='model')
def _sampled_probs(variables, images, key, *, model):
  """Softmax of the VIB classifier with z sampled from `key`; compiled once per model and shape."""
  return jax.nn.softmax(model.apply(variables, images, train=False, sample=True,
                                    rngs={'bottleneck': key}), axis=-1)


def sampled_probs(model, variables, images: np.ndarray, *, seed: int,
                  batch_size: int = 512) -> np.ndarray:
  """Softmax vectors with z sampled (MID's inference); keyed by seed and the images themselves.

  Chunks are not padded: a row's noise is drawn for its chunk's shape, so padding would change the
  short last chunk's samples. At most two shapes (full chunks and the last) per model and size.
  """
  tag = int(checkpoints.array_fingerprint(images), 16) % (2 ** 31)
  key = jax.random.fold_in(jax.random.key(seed), tag)
  variables = jax.device_put(variables)
  return np.concatenate([np.asarray(_sampled_probs(variables, images[i:i + batch_size],
                                                   jax.random.fold_in(key, i), model=model))
                         for i in range(0, len(images), batch_size)])


def apply(state: dict, probs: np.ndarray, *, images: np.ndarray | None = None,
          chunk: int | None = None) -> np.ndarray:
  """The MID classifier's softmax vectors for `images` (`probs`, undefended: shape check only).

  `chunk`: serve in chunks of at most this many images, each padded to a bucket size
  (`parallel.bucket_size`: few compiled shapes for any request size); None: one batch shape.
  """
  check_queries(probs, images, state['num_classes'], 'mid')
  images = np.asarray(images, np.float32)
  if state['sample']:
    return sampled_probs(state['model'], state['variables'], images, seed=state['seed'])
  return predicted(state['model'], state['variables'], images, chunk=chunk)


def predicted(model, variables, images: np.ndarray, *, chunk: int | None = None) -> np.ndarray:
  """A retrained classifier's softmax vectors, in chunks padded to bucket sizes when `chunk`."""
  if chunk is None:
    return stages.predict_probs(model, variables, images)
  return stages.predict_probs(model, variables, images, batch_size=chunk,
                              pad_to=parallel.bucket_size)


# ---------------------------------------------------------------- serving a retrained classifier

def export_classifier(state: dict) -> artefact.Artefact:
  """A retrained classifier's architecture, variables and serving settings (MID, BiDO)."""
  settings = {'model': artefact.module_fields(state['model']),
              **{k: state[k] for k in ('num_classes', 'sample', 'seed') if k in state}}
  return artefact.Artefact(settings=settings, arrays=artefact.pack(state['variables'], 'model'))


def serve_classifier(served: artefact.Artefact, config, model_class, apply_fn) -> protocol.Backend:
  """The retrained classifier's own vectors for each request's images (the undefended vectors
  only checked for shape), in chunks of config.serve.max_batch padded to bucket sizes."""
  settings = dict(served.settings)
  state = {**settings, 'model': artefact.rebuild(model_class, settings['model']),
           'variables': artefact.unpack(served.arrays, 'model')}
  chunk = int(config.serve.max_batch)
  return protocol.Backend(
      lambda probs, images: (apply_fn(state, probs, images=images, chunk=chunk), None),
      needs_images=True)


export = export_classifier


def serve(served: artefact.Artefact, config, mesh) -> protocol.Backend:
  del mesh
  return serve_classifier(served, config, VIBClassifier, apply)
