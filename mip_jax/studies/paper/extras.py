"""The experiments that are not a grid of protocol cells: Figure 3 (how poisoned vectors look next
to clean ones) and Table VIII (time)."""

import os
import time

import numpy as np

from mip_jax import defenses
from mip_jax.attacks import transforms
from mip_jax.defenses import lpa
from mip_jax.protocol import stages
from mip_jax.runtime import files, keys
from mip_jax.studies.paper import experiments, render

FIG3_POINTS = 300  # queries shown (t-SNE is quadratic in the points)


def fig3_seed(runner, *, with_figure: str | None = None) -> list[dict]:
  """Clean vs defended query vectors of one seed: distances, and how well a linear probe tells them
  apart (5-fold logistic regression on the attacker's input features; 50% = indistinguishable).

  Returns rows for `lpa` and (when registered) the `random` control at the same radius.
  """
  from sklearn.decomposition import PCA
  from sklearn.linear_model import LogisticRegression
  from sklearn.model_selection import cross_val_score

  setup = runner.setup
  config = setup.config
  queries = setup.splits.attack_train
  clean = setup.clean['attack_train']
  names = ['lpa'] + (['random'] if experiments.has_control() else [])
  defended = {}
  for name in names:
    cell = (experiments.control_cell(config, config.lpa.eps) if name == 'random'
            else experiments.Cell('lpa'))
    cs = runner.cell_setup(cell.overrides)
    module = defenses.get(name)
    defended[name] = np.asarray(module.apply(module.fit(cs), clean, images=queries.images))
  z_clean = np.asarray(transforms.attacker_input(clean, config.attack))
  rows = []
  for name, d in defended.items():
    z = np.asarray(transforms.attacker_input(d, config.attack))
    x = np.concatenate([z_clean, z])
    y = np.concatenate([np.zeros(len(z)), np.ones(len(z))])
    probe = cross_val_score(LogisticRegression(max_iter=2000), x, y, cv=5).mean()
    rows.append({'defense': name, 'attacker': 'none',
                 'l2_probs': float(np.mean(np.linalg.norm(d - clean, axis=1))),
                 'l2_features': float(np.mean(np.linalg.norm(z - z_clean, axis=1))),
                 'probe_acc': float(probe)})
  if with_figure:
    _fig3(with_figure, z_clean, {n: np.asarray(transforms.attacker_input(d, config.attack))
                                 for n, d in defended.items()}, PCA)
  return rows


def _fig3(path, z_clean, z_defended: dict, pca_cls) -> None:
  from sklearn.manifold import TSNE
  n = min(FIG3_POINTS, len(z_clean))
  fig, axes = render.plt.subplots(len(z_defended), 2, figsize=(10, 4.5 * len(z_defended)),
                                  squeeze=False)
  for row, (name, z) in enumerate(z_defended.items()):
    x = np.concatenate([z_clean[:n], z[:n]])
    for col, (title, emb) in enumerate((
        ('PCA', pca_cls(2).fit_transform(x)),
        ('t-SNE', TSNE(2, init='pca', random_state=0, perplexity=30).fit_transform(x)))):
      ax = axes[row][col]
      ax.scatter(emb[:n, 0], emb[:n, 1], s=8, alpha=0.6, label='clean')
      ax.scatter(emb[n:, 0], emb[n:, 1], s=8, alpha=0.6, marker='x', label=f'{name} (poisoned)')
      ax.set_title(f'{title} of attacker input features: clean vs {name}')
      ax.legend(fontsize=8)
  fig.tight_layout()
  files.write_with(path, lambda tmp: fig.savefig(tmp, dpi=100))
  render.plt.close(fig)


def table8_seed(runner) -> dict:
  """Classifier training time (s, a fresh stage), inference and LPA crafting time per sample (ms)."""
  setup = runner.setup
  config = setup.config
  tr, test = setup.splits.private_train, setup.splits.private_test
  m = setup.splits.num_private_classes
  scratch = os.path.join(runner.workdir, 'timing', f'run_{time.time_ns()}')
  start = time.perf_counter()
  stages.train_classifier(config.classifier, tr.images, tr.labels, m, workdir=scratch,
                          stage='classifier', seed=keys.stage_seed(config.seed, 'classifier'),
                          mesh=setup.mesh)
  train_s = time.perf_counter() - start
  # Compile on the very shapes timed below (a warm-up on 8 images timed a new compilation on 180).
  stages.predict_probs(*setup.classifier, test.images)
  start = time.perf_counter()
  probs = stages.predict_probs(*setup.classifier, test.images)
  infer_ms = 1000 * (time.perf_counter() - start) / len(test.images)
  state = lpa.fit(setup)
  crafter = state['crafter']
  crafter(probs[:1], test.images[:1], seed=config.seed)  # compile (one padded batch shape)
  start = time.perf_counter()
  crafter(probs, test.images, seed=keys.stage_seed(config.seed, 'table8'))
  lpa_ms = 1000 * (time.perf_counter() - start) / len(probs)
  return {'training_s': train_s, 'inference_ms': infer_ms, 'poisoning_ms': lpa_ms,
          'samples': int(len(probs)), 'lpa_steps': int(config.lpa.steps),
          'lpa_batch_size': int(config.lpa.batch_size)}
