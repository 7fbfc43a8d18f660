"""Results of a run: `results.json`, `results.md` (the paper's Table I layout, with the paper's own
rows beside ours where it has them) and figures (reconstructions, the privacy/utility trade-off)."""

import json
import os

import matplotlib

matplotlib.use('Agg')  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mip_jax import reference  # noqa: E402
from mip_jax.runtime import files  # noqa: E402

ROW_FIELDS = ('defense', 'model_acc', 'conf_dist', 'attack_acc', 'recon_error', 'label_flip_rate',
              'eps_eta')




def write_results(workdir: str, *, dataset: str, config: dict, rows: list[dict],
                  extra: dict | None = None) -> str:
  """Writes results.json and results.md; returns the markdown table."""
  for row in rows:
    missing = [f for f in ROW_FIELDS if f not in row]
    if missing:
      raise ValueError(f'result row {row.get("defense")!r} lacks {missing}')
  doc = {'dataset': dataset, 'config': config, **(extra or {}), 'rows': rows}
  paper_dataset, paper = reference.paper_rows_for('table1', dataset)
  if paper:
    doc['paper_table1'] = {'dataset': paper_dataset, 'rows': paper}
  files.write_json(os.path.join(workdir, 'results.json'), doc, indent=2)
  table = markdown_table(dataset, rows)
  table += table_ix_section(workdir, rows)
  files.write_text(os.path.join(workdir, 'results.md'), table)
  return table


def markdown_table(dataset: str, rows: list[dict]) -> str:
  """Table I layout: utility (model acc, conf dist) then privacy (attack acc, recon error).

  Under each undefended-attacker row of a defense the paper reports for this dataset (Table I,
  `mip_jax.reference`), a `paper:` row with the paper's numbers.
  """
  paper_dataset, paper = reference.paper_rows_for('table1', dataset)
  paper = {r['defense']: r for r in paper}
  lines = [f'# {dataset}', '',
           '| Method | Model Acc. | Conf. Dist. | Attack Acc. | Recon. Error | Label flips '
           '| Zero frac. | Input shift |',
           '|---|---|---|---|---|---|---|---|']
  for r in rows:
    label = row_label(r)
    pct = lambda k: f'{100 * r[k]:.2f}%' + (f' ± {100 * r[k + "_std"]:.2f}' if k + '_std' in r else '')
    num = lambda k: f'{r[k]:.5f}' + (f' ± {r[k + "_std"]:.5f}' if k + '_std' in r else '')
    opt = lambda k, f: f(k) if k in r else '-'
    dist = '-' if r['defense'] == 'none' else num('conf_dist')  # undefended: nothing moved
    lines.append(f'| {label} | {pct("model_acc")} | {dist} | {pct("attack_acc")} | '
                 f'{num("recon_error")} | {pct("label_flip_rate")} | {opt("zero_fraction", pct)} '
                 f'| {opt("input_shift", lambda k: f"{r[k]:.3g}")} |')
    if r.get('attacker', 'none') == 'none' and r['defense'] in paper:
      lines.append(_paper_line(paper[r['defense']], paper_dataset))
  ceiling = [r['evaluator_acc'] for r in rows if 'evaluator_acc' in r]
  if ceiling:
    lines += ['', f'Evaluation classifier on the real private images (the ceiling of attack '
              f'accuracy): {100 * np.mean(ceiling):.2f}%. Zero frac.: exactly-zero entries of the served '
              "query vectors; input shift: mean L2 distance between the attacker's decoder inputs of "
              'clean and defended queries.']
  if any('model_acc_std' in r for r in rows):
    lines += ['', 'Mean ± standard deviation over seeds.']
  if any(r['defense'] in paper for r in rows):
    lines += ['', f'*paper*: the paper\'s Table I row for {paper_dataset}'
              + (f' ({dataset} is a subset of it)' if paper_dataset != dataset else '')
              + ', GPU-scale models and epochs. Its Recon. Error is on another scale than ours '
              '(per-pixel MSE of images in [0, 1]): compare errors within a column, not across.']
  return '\n'.join(lines) + '\n'


def _paper_line(p: dict, paper_dataset: str) -> str:
  fmt = lambda v, f: '-' if v is None else f(v)
  pct = lambda v: f'{100 * v:.2f}%'
  return (f'| *paper: {p["label"]} ({paper_dataset})* | {fmt(p["model_acc"], pct)} | '
          f'{fmt(p["conf_dist"], lambda v: f"{v:.5f}")} | {fmt(p["attack_acc"], pct)} | '
          f'{fmt(p["recon_error"], lambda v: f"{v:.5f}")} | - | - | - |')


def row_label(row: dict) -> str:
  """'lpa', or 'lpa / softmax attacker' for another attacker's row (Table X); a row's `label`
  (one defense under several configs) stands for its defense name."""
  kind, name = row.get('attacker', 'none'), row.get('label', row['defense'])
  return name if kind == 'none' else f'{name} / {kind} attacker'


def save_reconstructions(path: str, ground_truth: np.ndarray, rows: dict[str, np.ndarray]) -> None:
  """A grid: private ground truth in the first row, one row of reconstructions per entry of `rows`
  (drawn and written by process 0 only when several JAX processes run)."""
  files.write_with(path, lambda tmp: _draw_reconstructions(tmp, ground_truth, rows))


def _draw_reconstructions(path: str, ground_truth: np.ndarray, rows: dict[str, np.ndarray]) -> None:
  names = ['ground truth'] + list(rows)
  images = [ground_truth] + list(rows.values())
  n = len(ground_truth)
  fig, axes = plt.subplots(len(images), n, figsize=(n * 1.0, len(images) * 1.1), squeeze=False)
  for r, (name, imgs) in enumerate(zip(names, images)):
    for c in range(n):
      ax = axes[r][c]
      img = np.clip(imgs[c], 0, 1)
      ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap='gray', vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
    axes[r][0].set_ylabel(name, rotation=0, ha='right', va='center', fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def save_tradeoff(path: str, dataset: str, rows: list[dict]) -> None:
  """The privacy/utility trade-off: Conf. Dist. (x) against Attack Acc. (y), one point per row
  (defense, attacker), error bars = std over seeds where rows carry `<metric>_std`; the paper's
  Table I points for this dataset, where it has them, as hollow grey markers. Drawn and written by
  process 0 only when several JAX processes run."""
  files.write_with(path, lambda tmp: _draw_tradeoff(tmp, dataset, rows))


def _draw_tradeoff(path: str, dataset: str, rows: list[dict]) -> None:
  fig, ax = plt.subplots(figsize=(6.4, 4.8))
  for i, r in enumerate(rows):
    ax.errorbar(r['conf_dist'], 100 * r['attack_acc'], xerr=r.get('conf_dist_std'),
                yerr=100 * r['attack_acc_std'] if 'attack_acc_std' in r else None,
                fmt='o', color=f'C{i % 10}', capsize=3, label=row_label(r))
    ax.annotate(row_label(r), (r['conf_dist'], 100 * r['attack_acc']), fontsize=8,
                xytext=(4, 4), textcoords='offset points')
  paper_dataset, paper = reference.paper_rows_for('table1', dataset)
  if paper:
    ax.scatter([p['conf_dist'] or 0.0 for p in paper], [100 * p['attack_acc'] for p in paper],
               facecolors='none', edgecolors='grey', label=f'paper, Table I ({paper_dataset})')
    for p in paper:
      ax.annotate(p['label'], (p['conf_dist'] or 0.0, 100 * p['attack_acc']), fontsize=7,
                  color='grey', xytext=(4, -10), textcoords='offset points')
  ax.set_xlabel('Conf. Dist. (mean L2 between defended and clean vectors; lower = more utility)')
  ax.set_ylabel('Attack Acc. (%; lower = more privacy)')
  ax.set_title(f'{dataset}: privacy/utility trade-off')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc='best')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


# ---------------------------------------------------------------- Table IX (VAE vs optimised LPA)

LATENCY_FILE = 'latency.json'  # per-sample serving latency written by `launch.benchmark --workdir`


def write_latency(workdir: str, latency: dict) -> None:
  """Saves `benchmarking.serving_latency` figures in the workdir; refreshes results.md if present."""
  files.write_json(os.path.join(workdir, LATENCY_FILE), latency, indent=2)
  results = os.path.join(workdir, 'results.json')
  if os.path.exists(results):
    with open(results) as f:
      doc = json.load(f)
    extra = {k: v for k, v in doc.items() if k not in ('dataset', 'config', 'rows')}
    write_results(workdir, dataset=doc['dataset'], config=doc['config'], rows=doc['rows'],
                  extra=extra)


def table_ix_section(workdir: str, rows: list[dict]) -> str:
  """The Table IX block of results.md ('' unless both an `lpa` and a `vae` row are present)."""
  path = os.path.join(workdir, LATENCY_FILE)
  latency = None
  if os.path.exists(path):
    with open(path) as f:
      latency = json.load(f)
  return table_ix(rows, latency)


def table_ix(rows: list[dict], latency: dict | None = None) -> str:
  """The paper's Table IX layout: No-def. / Opti. (LPA) / VAE, utility, privacy, time per sample.

  Args:
    rows: result rows (attacker 'none' rows of defenses 'none', 'lpa' and 'vae' are used).
    latency: `benchmarking.serving_latency` output, or None (time columns then show '-').

  Returns:
    Markdown (starting with a blank line), or '' when the rows lack `lpa` or `vae`.
  """
  by_name = {r['defense']: r for r in rows if r.get('attacker', 'none') == 'none'}
  if 'lpa' not in by_name or 'vae' not in by_name:
    return ''
  sizes = [str(b) for b in (latency or {}).get('latency_batch_sizes', [1, 256])]
  times = {'lpa': (latency or {}).get('lpa_online_ms_per_sample', {}),
           'vae': (latency or {}).get('vae_ms_per_sample', {})}
  head = ' | '.join(f'Time b={b} (ms/sample)' for b in sizes)
  lines = ['', '## Table IX: VAE vs optimised LPA', '',
           f'| Method | Model Acc. | Conf. Dist. | Attack Acc. | Recon. Error | {head} |',
           '|---|---|---|---|---|' + '---|' * len(sizes)]
  for name, label in (('none', 'No-def.'), ('lpa', 'Opti. (LPA)'), ('vae', 'VAE')):
    if name not in by_name:
      continue
    r = by_name[name]
    dist = '-' if name == 'none' else f'{r["conf_dist"]:.5f}'
    cells = ' | '.join(f'{times[name][b]:.3g}' if b in times.get(name, {}) else '-'
                       for b in sizes)
    lines.append(f'| {label} | {100 * r["model_acc"]:.2f}% | {dist} | {100 * r["attack_acc"]:.2f}% '
                 f'| {r["recon_error"]:.5f} | {cells} |')
  if latency:
    infer = latency.get('infer_ms_per_sample', {})
    lines += ['', "Time: the defense's own work per sample (LPA crafted online, per-example mode, "
              f'{latency.get("lpa_online_steps")} rounds; VAE: one forward pass + the feasible map), '
              'plain inference ' + ', '.join(f'{infer[b]:.3g} ms (b={b})' for b in sizes if b in infer)
              + '. Privacy columns: this run\'s rows (LPA as configured here, c.lpa.mode).']
  else:
    lines += ['', 'Time: run `python -m launch.benchmark --config=... --workdir=<this workdir>` to '
              'fill in the per-sample latency.']
  return '\n'.join(lines) + '\n'
