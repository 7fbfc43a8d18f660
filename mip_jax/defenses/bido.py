"""BiDO (Peng et al., KDD'22): the target classifier retrained with bilateral dependency terms.

For every hidden representation Z_l (each conv block's output and the hidden Dense layer, from
`models.feature_classifier.FeatureClassifier`):

  loss = CE + lambda_x * sum_l dep(X, Z_l) - lambda_y * sum_l dep(Y, Z_l)

minimising what Z_l keeps of the input X (flattened images) while keeping Z_l informative of the
label Y (one-hot). Two dependence measures, two defenses:
  bido_coco  dep = COCO (losses.hsic.coco, Frobenius norm as BiDO's code)
  bido_hsic  dep = normalised HSIC (losses.hsic.normalized_hsic, eps = config.bido.eps)
Kernels as in BiDO's code (Defend_MI/BiDO/engine.py, hsic.py): Gaussian on X and Z_l with
2 sigma^2 = 2 * 5^2 * dim (config.bido.sigma = 5 per feature dimension), linear
(config.bido.kernel_y) on the one-hot labels.

Default weights (config.bido.*_lambda_x/y) are BiDO's published MNIST values: COCO (1, 50) (README
of Defend_MI, KED-MI on MNIST) and HSIC (2, 20) (Defend_MI DMI/recovery.py, the MNIST hp list).
Their CIFAR-10 values are COCO (0.1, 5), HSIC (0.1, 1); CelebA HSIC (0.05, 0.5).

Each retrained classifier is a stage (`classifier_bido_coco`, `classifier_bido_hsic`); `apply`
serves its softmax vectors for the queried images, like `mid`.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mip_jax.data import data_fingerprint
from mip_jax.defenses import artefact, mid, protocol
from mip_jax.losses import hsic
from mip_jax.models.feature_classifier import FeatureClassifier
from mip_jax.protocol import rules, stages
from mip_jax.runtime import keys, train

MEASURES = ('coco', 'hsic')
RULES = {  # config.bido, shared by both variants
    'bido.*_lambda_*': (rules.NON_NEGATIVE,),
    'bido.sigma': (rules.POSITIVE,),  # the Gaussian kernel's width per feature dimension
    'bido.kernel_y': (rules.one_of(hsic.KERNELS),),
    'bido.eps': (rules.POSITIVE,),  # the normalised HSIC's regulariser
}


def dependence(measure: str, cfg):
  """`dep(z, other, kernel_other, sigma_other)` for 'coco' or 'hsic' (normalised HSIC)."""
  if measure == 'coco':
    fn = hsic.coco
  elif measure == 'hsic':
    fn = functools.partial(hsic.normalized_hsic, eps=float(cfg.eps))
  else:
    raise ValueError(f'unknown BiDO measure {measure!r}; known: {", ".join(MEASURES)}')

  def dep(z, other, kernel_other, sigma_other):
    return fn(z, other, kernel_x='gaussian', sigma_x=bandwidth(z, cfg.sigma),
              kernel_y=kernel_other, sigma_y=sigma_other)

  return dep


def bandwidth(features: jnp.ndarray, sigma: float) -> float:
  """BiDO's Gaussian width: sigma per feature dimension, i.e. 2 s^2 = 2 sigma^2 dim."""
  return float(sigma) * math.sqrt(int(np.prod(features.shape[1:])))


def dependence_terms(hidden, images: jnp.ndarray, onehot: jnp.ndarray, *, measure: str, cfg):
  """(sum_l dep(X, Z_l), sum_l dep(Y, Z_l)) over the hidden representations.

  Args:
    hidden: list of [B, ...] hidden representations.
    images: X [B, H, W, C]; onehot: Y [B, m].
    measure: 'coco' or 'hsic'; cfg: config.bido (sigma, kernel_y, eps).

  Returns:
    Two scalars.
  """
  dep = dependence(measure, cfg)
  x = images.reshape(images.shape[0], -1)
  sigma_x = bandwidth(x, cfg.sigma)
  sigma_y = bandwidth(onehot, cfg.sigma) if cfg.kernel_y == 'gaussian' else None
  dxz = sum(dep(z, x, 'gaussian', sigma_x) for z in hidden)
  dyz = sum(dep(z, onehot, cfg.kernel_y, sigma_y) for z in hidden)
  return dxz, dyz


def bido_step(state: train.TrainState, batch: tuple, rng: jax.Array, *, model, measure: str,
              lambda_x: float, lambda_y: float, cfg):
  """One BiDO step: CE + lambda_x * sum dep(X, Z_l) - lambda_y * sum dep(Y, Z_l).

  Args:
    state: training state of a `FeatureClassifier`.
    batch: (images [B, H, W, C], labels [B] int32).
    rng: dropout key.
    model: the FeatureClassifier (static); measure: 'coco' / 'hsic'; lambda_x, lambda_y: weights;
      cfg: config.bido.

  Returns:
    (new state, {'loss', 'cross_entropy', 'dep_x', 'dep_y', 'accuracy'}).
  """
  images, labels = batch
  onehot = jax.nn.one_hot(labels, model.num_classes, dtype=images.dtype)

  def loss_fn(params):
    (logits, hidden), updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, images, train=True,
        return_hidden=True, mutable=['batch_stats'], rngs={'dropout': rng})
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    dxz, dyz = dependence_terms(hidden, images, onehot, measure=measure, cfg=cfg)
    return ce + lambda_x * dxz - lambda_y * dyz, (logits, ce, dxz, dyz, updates['batch_stats'])

  (loss, (logits, ce, dxz, dyz, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  acc = jnp.mean(jnp.argmax(logits, -1) == labels)
  return state.apply_gradients(grads, batch_stats), {
      'loss': loss, 'cross_entropy': ce, 'dep_x': dxz, 'dep_y': dyz, 'accuracy': acc}


@dataclasses.dataclass(frozen=True)
class BiDO:
  """One BiDO defense (the registry holds `COCO` and `HSIC`); `fit` / `apply` like a module's."""
  measure: str
  REPLACES_CLASSIFIER = True  # see mid.REPLACES_CLASSIFIER

  @property
  def name(self) -> str:
    return f'bido_{self.measure}'

  @property
  def stage(self) -> str:
    return f'classifier_{self.name}'

  RULES = RULES

  def weights(self, cfg) -> tuple[float, float]:
    return float(cfg[f'{self.measure}_lambda_x']), float(cfg[f'{self.measure}_lambda_y'])

  def train(self, setup):
    """Trains (or loads) this variant's classifier stage; (model, variables)."""
    config, cfg = setup.config, setup.config.bido
    rules.enforce(RULES, config)
    lx, ly = self.weights(cfg)
    data = setup.splits.private_train
    m = setup.splits.num_private_classes
    section = config.classifier
    model = FeatureClassifier(num_classes=m, channels=tuple(section.channels),
                              hidden_mult=section.hidden_mult, dropout=section.dropout)
    measure = self.measure
    step = lambda s, b, r, model: bido_step(s, b, r, model=model, measure=measure, lambda_x=lx,
                                            lambda_y=ly, cfg=cfg)
    settings = {'measure': measure, 'lambda_x': lx, 'lambda_y': ly, 'sigma': float(cfg.sigma),
                'kernel_y': cfg.kernel_y, 'eps': float(cfg.eps) if measure == 'hsic' else None}
    return stages.train_classifier(
        section, data.images, data.labels, m, workdir=setup.workdir, stage=self.stage,
        seed=keys.stage_seed(config.seed, 'bido'), mesh=setup.mesh, model=model, step=step,
        fingerprint_extra=['bido', settings, data_fingerprint(config)])

  def fit(self, setup) -> dict:
    model, variables = self.train(setup)
    return {'model': model, 'variables': variables,
            'num_classes': setup.splits.num_private_classes}

  def apply(self, state: dict, probs: np.ndarray, *, images: np.ndarray | None = None,
            chunk: int | None = None) -> np.ndarray:
    """This BiDO classifier's softmax vectors for `images` (`probs` only checked for shape);
    `chunk` as in `mid.apply`."""
    mid.check_queries(probs, images, state['num_classes'], self.name)
    return mid.predicted(state['model'], state['variables'], np.asarray(images, np.float32),
                         chunk=chunk)

  def export(self, state: dict) -> artefact.Artefact:
    return mid.export_classifier(state)

  def serve(self, served: artefact.Artefact, config, mesh) -> protocol.Backend:
    del mesh
    return mid.serve_classifier(served, config, FeatureClassifier, self.apply)


COCO = BiDO('coco')
HSIC = BiDO('hsic')
