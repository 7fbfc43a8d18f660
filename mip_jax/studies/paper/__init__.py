"""Every experiment of the paper as one function call (`python -m launch.paper --experiment=NAME`).

  result = paper.run('table6', config, 'runs/paper', seeds=[0, 1, 2])

Writes `<workdir>/<name>.md` (the paper's layout, the paper's numbers beside ours), `<name>.json` and
`<name>*.png` where the paper has a figure. Each seed runs in `<workdir>/seed_<s>`, shared by all
experiments: the classifier, evaluator, substitutes, crafted vectors and every measured cell are
reused across experiments and reruns (`studies.engine`), so a killed run resumes where it stopped.
"""

import os

from mip_jax.runtime import files
from mip_jax.studies import aggregate, engine
from mip_jax.studies.paper import claims, experiments, extras, render

EXPERIMENTS = tuple(experiments.CELL_EXPERIMENTS) + ('fig3', 'table8')


def check_name(name: str) -> str:
  if name not in EXPERIMENTS:
    raise ValueError(f'unknown experiment {name!r}; known: {", ".join(EXPERIMENTS)}')
  return name


seed_config = engine.seed_config


def run(name: str, config, workdir: str, *, seeds=None, mesh=None) -> dict:
  """Runs experiment `name` for each seed and writes its files; returns {'markdown', 'rows', ...}."""
  check_name(name)
  seeds = [int(s) for s in (seeds or [config.seed])]
  if name == 'fig3':
    return _fig3(config, workdir, seeds, engine.runners(config, workdir, seeds, mesh=mesh))
  if name == 'table8':
    return _table8(config, workdir, seeds, engine.runners(config, workdir, seeds, mesh=mesh))

  spec = experiments.CELL_EXPERIMENTS[name](config)
  study = engine.Study(name, [(dict(lab, cell_defense=cell.defense), cell) for lab, cell in spec.rows])
  figures = []

  def first_seed_figures(runner, rows):
    if not figures and runner.config.seed == seeds[0]:
      figures.extend(_figures(name, spec, runner, workdir))

  rows = engine.run(study, config, workdir, seeds=seeds, mesh=mesh, each_seed=first_seed_figures).rows
  attackers = list(dict.fromkeys(r['attacker'] for r in rows))
  if name == 'fig8':
    render.tradeoff_figure(os.path.join(workdir, 'fig8.png'), rows, attackers=attackers)
    figures.append('fig8.png')
  if name == 'fig10':
    render.eps_eta_figure(os.path.join(workdir, 'fig10.png'), rows, attackers=attackers)
    figures.append('fig10.png')
  text = render.write(workdir, spec, rows, dataset=config.dataset, seeds=seeds,
                      config=config.to_dict(), claims=claims.CLAIMS[name](rows), figures=figures)
  return {'markdown': text, 'rows': rows, 'files': [f'{name}.md', f'{name}.json'] + figures}


def _figures(name, spec, runner, workdir) -> list[str]:
  """Reconstruction grids of the first seed: Figure 5 (table4) and Figure 7 (table6)."""
  if name not in ('table4', 'table5', 'table6'):
    return []
  # Figure 6 (table5): the diffusion attacker at the config's guidance (the paper's 0.5).
  shown = ('none',) if name != 'table5' else (f'diffusion@{float(runner.config.diffusion.guidance)}',)
  grid = {}
  for lab, cell in spec.rows:
    if cell.attacker not in shown:
      continue
    title = ' '.join(str(lab[c]) for c in spec.columns if c not in ('attacker', 'substitute'))
    grid[title] = runner.reconstructions(cell)
  fname = {'table4': 'table4_fig5.png', 'table5': 'table5_fig6.png',
           'table6': 'table6_fig7.png'}[name]
  from mip_jax.studies import report
  report.save_reconstructions(os.path.join(workdir, fname), runner.figure_images(), grid)
  return [fname]


def _fig3(config, workdir, seeds, runners) -> dict:
  spec = experiments.Spec('fig3', 'Figure 3: poisoned vs clean query vectors', ('defense',), [])
  per_seed = []
  for i, runner in enumerate(runners):
    fig = os.path.join(workdir, 'fig3.png') if i == 0 else None
    per_seed.append(extras.fig3_seed(runner, with_figure=fig))
  rows = aggregate.mean_rows(per_seed, [{'defense': r['defense']} for r in per_seed[0]],
                            metrics=('l2_probs', 'l2_features', 'probe_acc'))
  lines = [f'# {spec.title}', '', f'{config.dataset}, {len(seeds)} seed(s) {seeds}: mean ± std.', '',
           '| Defense | L2 (probabilities) | L2 (attacker input features) | '
           'Linear probe accuracy clean vs poisoned |', '|---|---|---|---|']
  for r in rows:
    lines.append(f'| {r["defense"]} | {r["l2_probs"]:.5f} ± {r["l2_probs_std"]:.5f} | '
                 f'{r["l2_features"]:.3f} ± {r["l2_features_std"]:.3f} | '
                 f'{100 * r["probe_acc"]:.1f}% ± {100 * r["probe_acc_std"]:.1f} |')
  lines += ['', 'The paper shows (Fig. 3) that poisoned and clean vectors overlap under PCA and '
            't-SNE. Probe accuracy 50% = indistinguishable to a linear classifier on the '
            "attacker's input features (Yang's log transform).", '', '![fig3.png](fig3.png)']
  text = '\n'.join(lines) + '\n'
  files.write_text(os.path.join(workdir, 'fig3.md'), text)
  files.write_json(os.path.join(workdir, 'fig3.json'),
                   {'experiment': 'fig3', 'seeds': seeds, 'rows': rows, 'per_seed': per_seed})
  return {'markdown': text, 'rows': rows, 'files': ['fig3.md', 'fig3.json', 'fig3.png']}


def _table8(config, workdir, seeds, runners) -> dict:
  from mip_jax import reference
  per_seed = [extras.table8_seed(r) for r in runners]
  stats = aggregate.mean_rows([[p] for p in per_seed], [{}],
                              metrics=('training_s', 'inference_ms', 'poisoning_ms'))[0]
  lines = ['# Table VIII: time of classifier training, inference and LPA crafting', '',
           f'{config.dataset}, {len(seeds)} seed(s) {seeds}: mean (standard deviation); this '
           f'machine: CPU, LPA {per_seed[0]["lpa_steps"]} rounds, batches of '
           f'{per_seed[0]["lpa_batch_size"]}, {per_seed[0]["samples"]} private test vectors.', '',
           '| Dataset | Training | Inference | Poisoning |', '|---|---|---|---|',
           f'| {config.dataset} (ours) | {stats["training_s"]:.1f}s ({stats["training_s_std"]:.2f}) '
           f'| {stats["inference_ms"]:.3f}ms ({stats["inference_ms_std"]:.3f}) '
           f'| {stats["poisoning_ms"]:.2f}ms ({stats["poisoning_ms_std"]:.2f}) |']
  for p in reference.paper_rows('table8'):
    lines.append(f'| {p["label"]} (paper) | {p["training_s"]}s ({p["training_s_std"]}) | '
                 f'{p["inference_ms"]}ms ({p["inference_ms_std"]}) | '
                 f'{p["poisoning_ms"]}ms ({p["poisoning_ms_std"]}) |')
  text = '\n'.join(lines) + '\n'
  files.write_text(os.path.join(workdir, 'table8.md'), text)
  files.write_json(os.path.join(workdir, 'table8.json'),
                   {'experiment': 'table8', 'seeds': seeds, 'stats': stats, 'per_seed': per_seed})
  return {'markdown': text, 'rows': [stats], 'files': ['table8.md', 'table8.json']}
