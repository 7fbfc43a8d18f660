"""An experiment's rows over seeds as `<name>.md` (the paper's layout, the paper's numbers beside
ours) and `<name>.json`, and the figures (PNG) where the paper has one."""

import os

import matplotlib

matplotlib.use('Agg')  # files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mip_jax import reference  # noqa: E402
from mip_jax.runtime import files  # noqa: E402

METRICS = ('model_acc', 'conf_dist', 'attack_acc', 'recon_error')
# Diagnostics some rows carry (issue 9): shown when present.
OPTIONAL = ('zero_fraction', 'input_shift', 'evaluator_acc')
HEADERS = {'model_acc': 'Model Acc.', 'conf_dist': 'Conf. Dist.', 'attack_acc': 'Attack Acc.',
           'recon_error': 'Recon. Error', 'zero_fraction': 'Zero frac.',
           'input_shift': 'Input shift', 'evaluator_acc': 'E on real images',
           'atta_loss': 'Atta. loss', 'defe_loss': 'Defe. loss',
           'atta_data': 'Atta. data', 'defe_data': 'Defe. data', 'eps': 'eps',
           'attacker': 'Attacker', 'defense': 'Defense', 'substitute': 'Substitute',
           'architecture': 'Architecture', 'relation': 'Attacker vs substitute', 'param': 'Parameter',
           'value': 'Value', 'guidance': 'Guidance'}
PERCENT = ('model_acc', 'attack_acc', 'zero_fraction', 'evaluator_acc')


def _fmt(row: dict, k: str) -> str:
  if k not in row:
    return '-'
  if k == 'conf_dist' and row.get('cell_defense') == 'none' and row.get('attacker') == 'none':
    return '-'  # no defense, no adaptive transform: the vectors are the clean ones
  std = row.get(k + '_std')
  if k in PERCENT:
    return f'{100 * row[k]:.2f}%' + (f' ± {100 * std:.2f}' if std else '')
  return f'{row[k]:.5f}' + (f' ± {std:.5f}' if std else '')


def paper_match(spec, row: dict, paper_rows: list[dict]) -> dict | None:
  """The paper's row with the same labels in `spec.paper_keys` (None when the paper has none)."""
  for p in paper_rows:
    if all(str(p.get(k)) == str(row.get(k)) for k in spec.paper_keys):
      return p
  return None


def markdown(spec, rows: list[dict], *, dataset: str, seeds: list[int], claims: list[str],
             figures: list[str]) -> str:
  """The experiment's table (labels, our metrics, the paper's attack acc. and recon. error)."""
  paper_rows = reference.paper_rows(spec.paper) if spec.paper else []
  datasets = list(dict.fromkeys(p['dataset'] for p in paper_rows))
  paper_dataset = 'mnist' if 'mnist' in datasets else (datasets[0] if datasets else None)
  paper_rows = [p for p in paper_rows if p['dataset'] == paper_dataset]
  optional = [k for k in OPTIONAL if any(k in r for r in rows)]
  metrics = list(METRICS) + optional
  head = [HEADERS.get(c, c) for c in spec.columns] + [HEADERS[m] for m in metrics]
  if paper_rows:
    head += [f'Paper Attack Acc. ({paper_dataset})', f'Paper Recon. Error ({paper_dataset})']
  lines = [f'# {spec.title}', '',
           f'{dataset}, {len(seeds)} seed(s) {seeds}: mean ± standard deviation over seeds.', '']
  if spec.note:
    lines += [spec.note, '']
  lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    cells = [str(r.get(c, '')) for c in spec.columns] + [_fmt(r, m) for m in metrics]
    if paper_rows:
      same_attacker = r.get('attacker', 'none') == 'none' or 'attacker' in spec.paper_keys
      p = paper_match(spec, r, paper_rows) if same_attacker else None
      cells += [f'{100 * p["attack_acc"]:.2f}%' if p and p.get('attack_acc') is not None else '-',
                f'{p["recon_error"]:.5f}' if p and p.get('recon_error') is not None else '-']
    lines.append('| ' + ' | '.join(cells) + ' |')
  if claims:
    lines += ['', '## What holds', ''] + [f'- {c}' for c in claims]
  if figures:
    lines += [''] + [f'![{f}]({f})' for f in figures]
  return '\n'.join(lines) + '\n'


def write(workdir: str, spec, rows: list[dict], *, dataset: str, seeds: list[int], config: dict,
          claims: list[str], figures: list[str]) -> str:
  """Writes `<name>.md` and `<name>.json` in workdir; returns the markdown."""
  text = markdown(spec, rows, dataset=dataset, seeds=seeds, claims=claims, figures=figures)
  doc = {'experiment': spec.name, 'title': spec.title, 'dataset': dataset, 'seeds': seeds,
         'columns': list(spec.columns), 'paper_table': spec.paper, 'rows': rows,
         'claims': claims, 'config': config}
  files.write_json(os.path.join(workdir, f'{spec.name}.json'), doc)
  files.write_text(os.path.join(workdir, f'{spec.name}.md'), text)
  return text


# ---------------------------------------------------------------- figures

def _per_attacker_figure(path: str, rows: list[dict], attackers: list[str], draw, *,
                         xlabel: str, ylabel: str) -> None:
  """One panel per attacker: `draw(ax, that attacker's rows)`, then labels, legend, save."""
  fig, axes = plt.subplots(1, len(attackers), figsize=(5.5 * len(attackers), 4.2), squeeze=False)
  for ax, attacker in zip(axes[0], attackers):
    draw(ax, [r for r in rows if r['attacker'] == attacker])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f'attacker: {attacker}')
    ax.legend(fontsize=8)
  fig.tight_layout()
  files.write_with(path, lambda tmp: fig.savefig(tmp, dpi=100))
  plt.close(fig)


def tradeoff_figure(path: str, rows: list[dict], *, attackers: list[str]) -> None:
  """Figure 8: per defense, conf dist (x) against attack acc (y), error bars over seeds; one panel
  per attacker."""

  def draw(ax, mine):
    for defense in dict.fromkeys(r['defense'] for r in mine):
      pts = sorted((r for r in mine if r['defense'] == defense), key=lambda r: r['conf_dist'])
      ax.errorbar([max(r['conf_dist'], 1e-6) for r in pts], [100 * r['attack_acc'] for r in pts],
                  xerr=[r['conf_dist_std'] for r in pts],
                  yerr=[100 * r['attack_acc_std'] for r in pts],
                  marker='o', capsize=3, label=defense)
    ax.set_xscale('log')

  _per_attacker_figure(path, rows, attackers, draw,
                       xlabel='confidence distortion (L2, log scale)', ylabel='attack accuracy (%)')


def eps_eta_figure(path: str, rows: list[dict], *, attackers: list[str]) -> None:
  """Figure 10: eta (fraction of reconstructions with error > eps) over eps, one curve per defense."""

  def draw(ax, mine):
    for r in mine:
      curve = np.asarray(r['eps_eta'])
      std = np.asarray(r['eps_eta_std'])
      ax.plot(curve[:, 0], curve[:, 1], label=r['defense'])
      ax.fill_between(curve[:, 0], curve[:, 1] - std, curve[:, 1] + std, alpha=0.2)

  _per_attacker_figure(path, rows, attackers, draw,
                       xlabel='reconstruction error threshold epsilon',
                       ylabel='fraction with error > epsilon (1 - eta)')
