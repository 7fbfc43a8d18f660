"""The evaluation protocol of design section 2 as functions; launchers call `run`.

  setup = prepare(config, workdir)   # data, target classifier T, evaluation classifier E, clean vectors
  row, recon = evaluate_defense(setup, name)   # defend queries, train the attacker, measure
  results = run(config, workdir, defenses=('none',))   # all of it + results.json/.md + figure

Stages are cached in `<workdir>/checkpoints/`: rerunning with the same workdir reuses them.
"""

import dataclasses
import os
import re
import time
from typing import Any

import jax
import numpy as np

from mip_jax import defenses
from mip_jax.attacks import adaptive, diffusion, transforms
from mip_jax.data import Splits, data_fingerprint, load_splits, query_indices
from mip_jax.protocol import metrics, run_config, stages, validation
from mip_jax.runtime import console, parallel
from mip_jax.studies import report


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
  classifier = stages.train_classifier(config.classifier, tr.images, tr.labels, m, workdir=workdir,
                                       stage='classifier', seed=config.seed, mesh=mesh,
                                       fingerprint_extra=data)
  evaluator = stages.train_classifier(config.eval_classifier, tr.images, tr.labels, m,
                                      workdir=workdir, stage='eval_classifier',
                                      seed=config.seed + 1, mesh=mesh, fingerprint_extra=data)
  clean = {name: stages.predict_probs(*classifier, getattr(splits, name).images)
           for name in ('attack_train', 'private_train', 'private_test')}
  # The reconstructions judged are of private_train: E on those very images is attack acc's ceiling.
  evaluator_acc = metrics.accuracy(stages.predict_probs(*evaluator, tr.images), tr.labels)
  return Setup(config=config, workdir=workdir, splits=splits, classifier=classifier,
               evaluator=evaluator, clean=clean, mesh=mesh, evaluator_acc=evaluator_acc)


def evaluate_defense(setup: Setup, name: str, *, attackers=None,
                     label: str | None = None,
                     cell: str | None = None) -> list[tuple[dict, np.ndarray]]:
  """Protocol steps 4-7 for one defense, against each attacker; [(result row, reconstructions)].

  `attackers` lists attackers (attacks.adaptive: the paper's 'none', the adaptive 'noise' and
  'softmax', the zero-robust 'floor' and 'prob'); default `[config.attack.adaptive]`. The defense is
  fitted and applied once for all of them. Besides the paper's metrics every row carries diagnostics
  of how it protects: `zero_fraction` (exact zeros among the served query vectors), `input_shift`
  (mean L2 distance between this attacker's decoder inputs of clean and defended queries) and
  `evaluator_acc` (E on the real private images: the ceiling of attack accuracy).
  Diffusion attackers ('diffusion', 'diffusion_floor', 'diffusion@w': attacks.diffusion) generate
  an image per private vector instead of decoding it; their rows add `guidance`, and the variants
  of one attacker at several guidances share one trained model (the stage drops '@w').
  `label` names the row and its attacker stages when one defense runs under several configs (the
  attribution table's `lpa (zero-free)`); default `name`. `cell` (a short key of the defense's
  settings) suffixes the attacker stages, so a sweep over a defense's settings in one workdir gives
  each setting its own cached attacker (`mip_jax.studies.paper`).
  """
  config, splits = setup.config, setup.splits
  label = label or name
  attackers = list(attackers or [config.attack.adaptive])
  for kind in attackers:
    adaptive.check(kind)  # unknown kinds fail before any work
  module = defenses.get(name)
  # Steps 4-5: the attacker's queries (all of D_inv train, or one half: Table III) get defended.
  idx = query_indices(len(splits.attack_train.labels), config.attack.data)
  queries, clean_queries = splits.attack_train.take(idx), setup.clean['attack_train'][idx]
  start = time.time()
  state = module.fit(setup)
  defended_queries = module.apply(state, clean_queries, images=queries.images)
  metrics.check_probability_vectors(defended_queries, name=f'{name} defended queries')
  if getattr(module, 'LABEL_PRESERVING', False):
    # Its feasible map keeps every argmax, so model accuracy is the clean model's: crafting the
    # private test vectors would serve only that one number. The queries prove the labels kept.
    flips = metrics.label_flip_rate(defended_queries, clean_queries)
    if flips:
      raise RuntimeError(f'{name} is declared label preserving but changed {flips:.2%} of the labels')
    defended_test = setup.clean['private_test']
  else:
    defended_test = module.apply(state, setup.clean['private_test'],
                                 images=splits.private_test.images)
    metrics.check_probability_vectors(defended_test, name=f'{name} defended test vectors')
  defend_s = time.time() - start
  console.say('defense %s: %d queries defended in %.0f s', name, len(defended_queries), defend_s)

  # Step 7's source: the private data's clean (Definition 2) or defended vectors.
  private = splits.private_train
  source = setup.clean['private_train']
  if module.REPLACES_CLASSIFIER:
    # A retrained classifier (MID, BiDO) is the deployed model: its own outputs are the "clean"
    # vectors an attacker inverts; the undefended classifier's would be vectors it never serves.
    source = module.apply(state, source, images=private.images)
  elif config.attack.reconstruct_from == 'defended':
    source = module.apply(state, source, images=private.images)
  elif config.attack.reconstruct_from != 'clean':
    raise ValueError(f"attack.reconstruct_from must be 'clean' or 'defended', "
                     f'got {config.attack.reconstruct_from!r}')

  results = []
  for kind in attackers:
    adapt = lambda p: adaptive.adapt(p, kind, noise_std=config.attack.adaptive_noise_std,
                                     seed=config.seed)
    attack_cfg = adaptive.attack_config(kind, config.attack)
    to_input = lambda p: np.asarray(transforms.attacker_input(adapt(p), attack_cfg))
    received = adapt(defended_queries)
    # Steps 5-6: the attacker trains a fresh decoder on (received vector, query image) pairs.
    z = np.asarray(transforms.attacker_input(received, attack_cfg))
    slug = re.sub(r'[^A-Za-z0-9]+', '_', label).strip('_')
    base, guidance = adaptive.split_guidance(kind)
    stage = f'attacker_{slug}' if kind == 'none' else f'attacker_{slug}_{base}'
    stage += f'_{cell}' if cell else ''
    # Step 7: invert the private data's vectors (through the attacker's own transform).
    z_private = to_input(source)
    if base in adaptive.DIFFUSION:  # Table V: one model per stage, sampled at each guidance
      guidance = config.diffusion.guidance if guidance is None else guidance
      ddpm = diffusion.train_diffusion(config, z, queries.images, workdir=setup.workdir,
                                       stage=stage, seed=config.seed + 2, mesh=setup.mesh,
                                       fingerprint_extra=data_fingerprint(config))
      console.say('%s: generating %d images at guidance %g', stage, len(z_private), guidance)
      recon = diffusion.generate(*ddpm, config.diffusion, z_private,
                                 image_shape=private.images.shape[1:], seed=config.seed + 3,
                                 guidance=guidance, mesh=setup.mesh)
    else:
      decoder = stages.train_decoder(config, z, queries.images, workdir=setup.workdir,
                                     stage=stage, seed=config.seed + 2, mesh=setup.mesh,
                                     fingerprint_extra=data_fingerprint(config))
      recon = stages.reconstruct(*decoder, z_private)
    errors = metrics.per_image_mse(recon, private.images)
    recon_probs = stages.predict_probs(*setup.evaluator, recon)
    results.append(({
        'defense': name,
        **({'label': label} if label != name else {}),
        'attacker': kind,
        **({'guidance': float(guidance)} if base in adaptive.DIFFUSION else {}),
        'model_acc': metrics.accuracy(defended_test, splits.private_test.labels),
        'conf_dist': metrics.confidence_distortion(received, clean_queries),
        'attack_acc': metrics.accuracy(recon_probs, private.labels),
        'recon_error': float(np.mean(errors)),
        'label_flip_rate': metrics.label_flip_rate(defended_queries, clean_queries),
        'eps_eta': metrics.eps_eta_curve(errors, config.eval.eps_grid),
        'zero_fraction': metrics.zero_fraction(defended_queries),
        'input_shift': metrics.input_shift(to_input(clean_queries), z),
        'evaluator_acc': setup.evaluator_acc,
        'defend_seconds': defend_s,
    }, recon))
  return results


# Figures every run writes, relative to its workdir (with --seeds: the trade-off of the mean rows in
# the top workdir, reconstructions per seed in seed_<s>/).
FIGURES = {'reconstructions': os.path.join('figures', 'reconstructions.png'),
           'tradeoff': os.path.join('figures', 'tradeoff.png')}


def figure_indices(labels: np.ndarray, n: int) -> np.ndarray:
  """`n` private examples spread over the classes (round-robin), for the reconstruction figure."""
  by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
  picked = [idx[i] for i in range(max(map(len, by_class))) for idx in by_class if i < len(idx)]
  return np.asarray(picked[:n])


def run(config, workdir: str, *, defenses_to_run=('none',), attackers=None, mesh=None) -> dict:
  """The whole protocol for the listed defenses (and adaptive attackers); writes results.json,
  results.md and the figure of reconstructions (one row per defense and attacker)."""
  # Typos fail before any training, naming the closest registered names.
  names = validation.check_names('defense', defenses_to_run, defenses.REGISTRY)
  validation.check_names('attacker', [adaptive.split_guidance(a)[0] for a in attackers or ()],
                         adaptive.ATTACKERS)
  # serve/benchmark/Defender read it when given no --config.
  parallel.on_main_process(lambda: run_config.save(workdir, config), 'run_config')
  setup = prepare(config, workdir, mesh=mesh)
  rows, recons = [], {}
  for name in names:
    for row, recon in evaluate_defense(setup, name, attackers=attackers):
      rows.append(row)
      recons[report.row_label(row)] = recon
  table = report.write_results(workdir, dataset=config.dataset, config=config.to_dict(), rows=rows)
  idx = figure_indices(setup.splits.private_train.labels, config.eval.num_figure_images)
  report.save_reconstructions(os.path.join(workdir, FIGURES['reconstructions']),
                              setup.splits.private_train.images[idx],
                              {name: r[idx] for name, r in recons.items()})
  report.save_tradeoff(os.path.join(workdir, FIGURES['tradeoff']), config.dataset, rows)
  return {'dataset': config.dataset, 'rows': rows, 'table': table}


def run_seeds(config, workdir: str, seeds, **kwargs) -> dict:
  """`run` once per seed in `<workdir>/seed_<s>`, then the mean (and std) table in `workdir`.

  The paper's tables report means over runs; every stage (classifier included) is retrained per
  seed, so the spread covers the whole protocol.
  """
  seeds = [int(s) for s in seeds]
  per_seed = []
  for seed in seeds:
    c = config.copy_and_resolve_references()
    c.seed = seed
    per_seed.append(run(c, os.path.join(workdir, f'seed_{seed}'), **kwargs))
  rows = report.mean_rows([r['rows'] for r in per_seed])
  table = report.write_results(workdir, dataset=config.dataset, config=config.to_dict(), rows=rows,
                               extra={'seeds': seeds})
  report.save_tradeoff(os.path.join(workdir, FIGURES['tradeoff']), config.dataset, rows)
  return {'dataset': config.dataset, 'rows': rows, 'table': table, 'per_seed': per_seed}

