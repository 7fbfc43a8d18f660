"""The evaluation protocol of design section 2 as functions; studies call them.

  setup = prepare(config, workdir)   # data, target classifier T, evaluation classifier E, clean vectors
  [(row, recon), ...] = evaluate_defense(setup, name, attackers=['floor', 'label'])

Stages are cached in `<workdir>/checkpoints/`: rerunning with the same workdir reuses them. Grids of
defenses, attackers and seeds are studies (`mip_jax.studies`: `compare` writes results.md).
"""

import dataclasses
import time
from typing import Any

import jax
import numpy as np

from mip_jax import defenses
from mip_jax.attacks import diffusion, suite
from mip_jax.defenses import artefact
from mip_jax.data import Splits, data_fingerprint, load_splits, query_indices
from mip_jax.protocol import metrics, rules, stages, validation
from mip_jax.runtime import console, keys, parallel

RULES = {
    'attack.reconstruct_from': (rules.one_of(('clean', 'defended')),),  # step 7's source
    'eval.num_figure_images': (rules.above(0),),
}


@dataclasses.dataclass
class Setup:
  """What every defense of one run shares (trained once, cached in the workdir)."""
  config: Any
  workdir: str
  splits: Splits
  classifier: tuple            # (model, variables) of the target classifier T
  evaluator: tuple             # (model, variables) of the evaluation classifier E
  clean: dict                  # clean softmax vectors: 'attack_train', 'private_train', 'private_test'
  mesh: jax.sharding.Mesh
  evaluator_acc: float = float('nan')  # E's accuracy on the real private images: attack acc's ceiling
  private_features: np.ndarray | None = None  # E's penultimate features of private_train (KNN dist)
  # T's stage record (`stages.load_classifier`): serving restores T from its checkpoint with it.
  classifier_stage: dict | None = None


def prepare(config, workdir: str, *, mesh=None) -> Setup:
  """Loads the data and trains (or loads) the target and evaluation classifiers."""
  mesh = mesh or parallel.data_mesh()
  # Config errors surface before any data is read or any stage is trained.
  validation.check(config, devices=mesh.devices.size)
  # A dataset built on first use is built by process 0; the other processes then read it.
  splits = parallel.main_process_first(lambda: load_splits(config), 'load_splits')
  console.say('%s: %d private train / %d private test / %d attack train images of %s, %d devices',
               config.dataset, len(splits.private_train.labels), len(splits.private_test.labels),
               len(splits.attack_train.labels), splits.image_shape, mesh.devices.size)
  m = splits.num_private_classes
  data = data_fingerprint(config)
  tr = splits.private_train
  seed = keys.stage_seed(config.seed, 'classifier')
  classifier = stages.train_classifier(config.classifier, tr.images, tr.labels, m, workdir=workdir,
                                       stage='classifier', seed=seed, mesh=mesh,
                                       fingerprint_extra=data)
  classifier_stage = {'stage': 'classifier', 'num_classes': m,
                      'image_shape': list(splits.image_shape),
                      'config_hash': stages.classifier_fingerprint(
                          config.classifier, tr.labels, seed=seed, fingerprint_extra=data)}
  evaluator = stages.train_classifier(config.eval_classifier, tr.images, tr.labels, m,
                                      workdir=workdir, stage='eval_classifier',
                                      seed=keys.stage_seed(config.seed, 'eval_classifier'),
                                      mesh=mesh, fingerprint_extra=data)
  clean = {name: stages.predict_probs(*classifier, getattr(splits, name).images)
           for name in ('attack_train', 'private_train', 'private_test')}
  # The reconstructions judged are of private_train: E on those very images is attack acc's ceiling.
  evaluator_acc = metrics.accuracy(stages.predict_probs(*evaluator, tr.images), tr.labels)
  return Setup(config=config, workdir=workdir, splits=splits, classifier=classifier,
               evaluator=evaluator, clean=clean, mesh=mesh, evaluator_acc=evaluator_acc,
               private_features=stages.features(*evaluator, tr.images),
               classifier_stage=classifier_stage)


def export_defense(setup: Setup, name: str) -> str:
  """Fits defense `name` (loading its finished stages, training what is missing) and writes its
  serving artefact for `setup`'s workdir and config (`defenses.artefact`); returns its path."""
  module = defenses.get(name)
  return artefact.write(setup, name, module, module.fit(setup))


def evaluate_defense(setup: Setup, name: str, *, attackers=None,
                     export: bool = False) -> list[tuple[dict, np.ndarray]]:
  """Protocol steps 4-7 for one defense, against each attacker; [(result row, reconstructions)].

  `attackers` names attackers of the suite (`attacks.suite`: the paper's 'none', 'floor', 'label',
  'topk@k', ..., any of them with ':defended'); default `[config.attack.adaptive]`. The defense is
  fitted and applied once for all of them: to the attacker's queries, to the private test set (what
  legitimate users get: utility) and, when an attacker inverts defended vectors, to the private
  training set.

  Every row carries
    utility   model_acc (top-1 of the served private test vectors), conf_dist / conf_dist_l1 (mean
              L2 / L1 distance between served and clean query vectors: what the attacker's
              out-of-distribution queries get), conf_dist_private / conf_dist_private_l1 (the same
              on the private test set: what legitimate users get), agreement (top-1 agreement with
              the clean private test vectors), ece (expected calibration error of the served private
              test vectors, 15 bins), label_flip_rate (on the queries);
    privacy   attack_acc (E's top-1 on the reconstructions of the private training images),
              knn_dist (E's penultimate features of each reconstruction to the nearest private
              training image of its class), recon_error, eps_eta;
    how       zero_fraction (exact zeros among the served queries), input_shift (mean L2 distance
              between this attacker's inputs of clean and served queries), evaluator_acc (E on the
              real private images: attack_acc's ceiling), kept_fraction (queries the attacker
              trained on), defend_seconds.
  Diffusion attackers ('diffusion', 'diffusion_floor', '@w') generate an image per private vector
  instead of decoding it; their rows add `guidance`, and one trained model serves every guidance.
  Attackers that see the same inputs share one trained model (`stages.train_attacker`).
  `export`: also write the fitted defense's serving artefact (`defenses.artefact`; for the
  workdir's own config, the one `launch.serve` serves).
  """
  config, splits = setup.config, setup.splits
  m = splits.num_private_classes
  attackers = [suite.parse(a) for a in (attackers or [config.attack.adaptive])]
  for a in attackers:  # unknown names and impossible parameters fail before any work
    suite.check_classes(a, m)
  module = defenses.get(name)
  label_preserving = getattr(module, 'LABEL_PRESERVING', False)
  # Steps 4-5: the attacker's queries (all of D_inv train, or one half: Table III) get defended.
  idx = query_indices(len(splits.attack_train.labels), config.attack.data)
  queries, clean_queries = splits.attack_train.take(idx), setup.clean['attack_train'][idx]
  test, clean_test = splits.private_test, setup.clean['private_test']
  start = time.time()
  state = module.fit(setup)

  def serve(clean, images, what):
    out = np.asarray(module.apply(state, clean, images=images), np.float32)
    metrics.check_probability_vectors(out, name=f'{name} defended {what}')
    flips = metrics.label_flip_rate(out, clean)
    if label_preserving and flips:
      raise RuntimeError(f'{name} is declared label preserving but changed {flips:.2%} of the '
                         f'labels of the {what}')
    return out

  defended_queries = serve(clean_queries, queries.images, 'queries')
  defended_test = serve(clean_test, test.images, 'private test vectors')
  defend_s = time.time() - start
  if export:
    artefact.write(setup, name, module, state)
  console.say('defense %s: %d queries and %d private test vectors defended in %.0f s', name,
              len(defended_queries), len(defended_test), defend_s)
  utility = {
      'model_acc': metrics.accuracy(defended_test, test.labels),
      'conf_dist': metrics.confidence_distortion(defended_queries, clean_queries),
      'conf_dist_l1': metrics.confidence_distortion_l1(defended_queries, clean_queries),
      'conf_dist_private': metrics.confidence_distortion(defended_test, clean_test),
      'conf_dist_private_l1': metrics.confidence_distortion_l1(defended_test, clean_test),
      'agreement': 1.0 - metrics.label_flip_rate(defended_test, clean_test),
      'ece': metrics.expected_calibration_error(defended_test, test.labels),
      'label_flip_rate': metrics.label_flip_rate(defended_queries, clean_queries),
      'zero_fraction': metrics.zero_fraction(defended_queries),
  }

  # Step 7's source: the private data's clean vectors (Definition 2) or their defended ones.
  private = splits.private_train
  sources = {}

  def source(defended: bool) -> np.ndarray:
    if config.attack.reconstruct_from not in ('clean', 'defended'):
      raise ValueError(f"attack.reconstruct_from must be 'clean' or 'defended', "
                       f'got {config.attack.reconstruct_from!r}')
    # A retrained classifier (MID, BiDO) is the deployed model: its own outputs are the "clean"
    # vectors an attacker inverts; the undefended classifier's would be vectors it never serves.
    defended = defended or module.REPLACES_CLASSIFIER or config.attack.reconstruct_from == 'defended'
    if defended not in sources:
      sources[defended] = (serve(setup.clean['private_train'], private.images,
                                 'private training vectors') if defended
                           else setup.clean['private_train'])
    return sources[defended]

  fingerprint = data_fingerprint(config)
  results = []
  for attacker in attackers:
    receive = lambda p: attacker.receive(p, noise_std=config.attack.adaptive_noise_std,
                                         seed=config.seed)
    received = receive(defended_queries)
    keep = attacker.keep(received, module, state, min_kept=config.decoder.batch_size)
    # Steps 5-6: the attacker trains a fresh model on (received vector, query image) pairs.
    z = attacker.inputs(received, config.attack)
    z_private = attacker.inputs(receive(source(attacker.defended)), config.attack)
    tag = attacker.training_name.replace('@', '').replace('.', '_')
    extra = {}
    if attacker.is_diffusion:  # Table V: one model per input, sampled at each guidance
      guidance = config.diffusion.guidance if attacker.param is None else float(attacker.param)
      seed = keys.stage_seed(config.seed, 'attacker')
      stage = f'attacker_{tag}_' + stages.content_key(config.diffusion.to_dict(), seed, fingerprint,
                                                      z[keep], queries.images[keep])
      ddpm = diffusion.train_diffusion(config, z[keep], queries.images[keep],
                                       workdir=setup.workdir, stage=stage, seed=seed,
                                       mesh=setup.mesh, fingerprint_extra=fingerprint)
      console.say('%s: generating %d images at guidance %g', stage, len(z_private), guidance)
      recon = diffusion.generate(*ddpm, config.diffusion, z_private,
                                 image_shape=private.images.shape[1:],
                                 seed=keys.stage_seed(config.seed, 'attacker_sampling'),
                                 guidance=guidance, mesh=setup.mesh)
      extra['guidance'] = float(guidance)
    else:
      _, decoder = stages.train_attacker(config, z[keep], queries.images[keep],
                                         workdir=setup.workdir, tag=tag,
                                         seed=keys.stage_seed(config.seed, 'attacker'),
                                         mesh=setup.mesh, fingerprint_extra=fingerprint)
      recon = stages.reconstruct(*decoder, z_private)
    errors = metrics.per_image_mse(recon, private.images)
    recon_probs = stages.predict_probs(*setup.evaluator, recon)
    results.append(({
        'defense': name,
        'attacker': attacker.name,
        **extra,
        **utility,
        'attack_acc': metrics.accuracy(recon_probs, private.labels),
        'knn_dist': metrics.knn_feature_distance(stages.features(*setup.evaluator, recon),
                                                 private.labels, setup.private_features,
                                                 private.labels),
        'recon_error': float(np.mean(errors)),
        'eps_eta': metrics.eps_eta_curve(errors, config.eval.eps_grid),
        'input_shift': metrics.input_shift(attacker.inputs(receive(clean_queries), config.attack),
                                           z),
        'evaluator_acc': setup.evaluator_acc,
        'kept_fraction': float(keep.mean()),
        'defend_seconds': defend_s,
    }, recon))
  return results


def figure_indices(labels: np.ndarray, n: int) -> np.ndarray:
  """`n` private examples spread over the classes (round-robin), for the reconstruction figure."""
  by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
  picked = [idx[i] for i in range(max(map(len, by_class))) for idx in by_class if i < len(idx)]
  return np.asarray(picked[:n])
