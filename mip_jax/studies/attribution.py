"""Does a defense protect through its mechanism? Rows against their controls, attackers against the artefact.

On digits, LPA in the paper's crafting space protects mostly through exact zeros (Yang's log
transform sends them to -1000 and shifts the whole row), not through gradient alignment. This module
runs the comparison that tells the two apart, for any config:

  rows       none; `random` (LPA's start at LPA's radius, no optimisation) and `lpa`, each in the
             paper's space ('prob': entries can hit exactly 0) and in the zero-free space ('log');
  attackers  the paper's (log transform, floor -1000), `floor` (probabilities clamped at 1e-8 first:
             an exact 0 is just tiny) and `prob` (raw probabilities);
  seeds      every stage retrained per seed; means, standard deviations and the paired difference
             lpa - random of each space (per seed, then mean and std), which cancels the large
             seed-to-seed variance of attack accuracy.

Alignment carries the protection only where lpa beats random of its own space, at the same
distortion, against the attackers that do not fall for zeros. `ABLATION` holds the levers of the
gradient-matching literature, each a row against the same controls.

  result = attribution.run(config, workdir, seeds=(0, 1, 2))   # attribution.md / .json in workdir
"""

import dataclasses
import os

import numpy as np

from mip_jax.runtime import files
from mip_jax.studies import aggregate, engine


@dataclasses.dataclass(frozen=True)
class Row:
  """One row: a registered defense under config overrides ({'lpa.space': 'log', ...})."""
  label: str
  defense: str
  overrides: tuple = ()


def row(label: str, defense: str, **overrides) -> Row:
  """row('lpa (zero-free)', 'lpa', lpa__space='log'): `a__b` stands for the field `a.b`."""
  return Row(label, defense, tuple(sorted((k.replace('__', '.'), v) for k, v in overrides.items())))


MAIN = (
    row('none', 'none'),
    row('random', 'random', lpa__space='prob'),
    row('lpa', 'lpa', lpa__space='prob'),
    row('random (zero-free)', 'random', lpa__space='log'),
    row('lpa (zero-free)', 'lpa', lpa__space='log'),
)
ATTACKERS = ('none', 'floor', 'prob')
ATTACKER_NAMES = {'none': 'paper (log)', 'floor': 'floor', 'prob': 'prob'}

# Levers, each changed alone from `lpa (zero-free)` (its control and `none` come along; the rows
# shared with MAIN reuse its stages in the same workdir). Restarts 4, not Witches' Brew's 8, and one
# ensemble row: crafting cost grows with them and 2 CPU cores are the budget here.
ABLATION = (
    row('none', 'none'),
    row('random (zero-free)', 'random', lpa__space='log'),
    row('lpa (zero-free)', 'lpa', lpa__space='log'),
    row('decoy: next private class', 'lpa', lpa__space='log', lpa__objective='decoy_class'),
    row('decoy: mean query image', 'lpa', lpa__space='log', lpa__objective='decoy_mean'),
    row('substitute reads floor', 'lpa', lpa__space='log', substitute__transform='floor'),
    row('BatchNorm as in training', 'lpa', lpa__space='log', lpa__batchnorm='train'),
    row('random eps 0.03', 'random', lpa__space='log', lpa__eps=0.03),
    row('lpa eps 0.03', 'lpa', lpa__space='log', lpa__eps=0.03),
    row('step tau 0.3', 'lpa', lpa__space='log', lpa__tau=0.3),
    row('per-example', 'lpa', lpa__space='log', lpa__mode='per_example'),
    row('ensemble 3 (widths and depths)', 'lpa', lpa__space='log', lpa__ensemble_size=3,
        lpa__ensemble_vary='arch'),
    row('restarts 4', 'lpa', lpa__space='log', lpa__restarts=4),
)
def select(rows, labels=None) -> tuple:
  """The rows of `rows` whose label is in `labels` (all when None); an unknown label is an error."""
  if labels is None:
    return tuple(rows)
  known = [r.label for r in rows]
  unknown = [l for l in labels if l not in known]
  if unknown:
    raise ValueError(f'unknown rows {unknown}; this table has: {", ".join(known)}')
  return tuple(r for r in rows if r.label in labels)


TABLES = {'attribution': MAIN, 'ablation': ABLATION}


def study(config, rows=MAIN, attackers=ATTACKERS) -> engine.Study:
  """Every row against every attacker (row-major); lpa and random rows carry the crafting space and
  radius they run at, which pair a row with its control."""
  out = []
  for r in rows:
    labels = {'label': r.label, 'defense': r.defense}
    if r.defense in ('lpa', 'random'):
      rc = engine.apply_overrides(config, r.overrides)
      labels.update(space=rc.lpa.space, eps=rc.lpa.eps)
    out += [(dict(labels, attacker=a), engine.Cell(r.defense, r.overrides, a)) for a in attackers]
  return engine.Study('attribution', out)


def run(config, workdir: str, *, seeds=(0,), rows=MAIN, attackers=ATTACKERS,
        name: str = 'attribution', mesh=None) -> dict:
  """Every row against every attacker, once per seed in `<workdir>/seed_<s>`; writes <name>.md/.json.

  A study on the engine: stages shared by rows (classifiers, substitute, the undefended attacker)
  train once per seed, and every measured cell is reused by reruns and by the paper's experiments.
  """
  result = engine.run(study(config, rows, attackers), config, workdir, seeds=seeds, mesh=mesh)
  mean = result.rows
  paired = paired_differences(mean)
  doc = {'dataset': config.dataset, 'seeds': result.seeds, 'attackers': list(attackers),
         'rows': mean, 'paired': paired, 'per_seed': result.per_seed, 'config': config.to_dict()}
  text = markdown(config.dataset, mean, paired, attackers, result.seeds)
  files.write_json(os.path.join(workdir, f'{name}.json'), doc, indent=2)
  files.write_text(os.path.join(workdir, f'{name}.md'), text)
  save_figure(os.path.join(workdir, f'{name}.png'), mean, attackers,
              title=f'{config.dataset}, seeds {", ".join(map(str, result.seeds))}')
  return {'rows': mean, 'paired': paired, 'table': text}


def save_figure(path: str, rows: list[dict], attackers, *, title: str) -> None:
  """Attack accuracy and reconstruction error per row, one bar per attacker, std over seeds."""
  import matplotlib.pyplot as plt  # report sets the Agg backend
  labels = list(dict.fromkeys(r.get('label', r['defense']) for r in rows))
  by = {(r.get('label', r['defense']), r['attacker']): r for r in rows}
  fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.3 * len(labels) * 2), 4.2))
  width = 0.8 / len(attackers)
  for ax, metric, scale, name in ((axes[0], 'attack_acc', 100, 'attack accuracy (%)'),
                                  (axes[1], 'recon_error', 1, 'reconstruction error (MSE)')):
    for i, a in enumerate(attackers):
      vals = [scale * by[(l, a)][metric] for l in labels]
      errs = [scale * by[(l, a)].get(metric + '_std', 0.0) for l in labels]
      xs = np.arange(len(labels)) + (i - (len(attackers) - 1) / 2) * width
      ax.bar(xs, vals, width, yerr=errs, capsize=2, label=f'{ATTACKER_NAMES.get(a, a)} attacker')
    ax.set_xticks(np.arange(len(labels)), labels, rotation=30, ha='right', fontsize=8)
    ax.set_ylabel(name)
  ceiling = np.mean([r['evaluator_acc'] for r in rows if 'evaluator_acc' in r])
  axes[0].axhline(100 * ceiling, color='grey', ls=':', lw=1, label='evaluator on real images')
  axes[0].legend(fontsize=7, loc='lower left', bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False)
  fig.suptitle(title, x=0.75)
  fig.tight_layout()
  files.write_with(path, lambda tmp: fig.savefig(tmp, dpi=100))
  plt.close(fig)


def paired_differences(rows: list[dict]) -> list[dict]:
  """lpa rows minus the `random` row of their space and eps (the control at its radius), per
  attacker: the per-seed differences, their mean ± std and 95% interval (`aggregate.paired`)."""
  controls = {(r.get('space'), r.get('eps'), r['attacker']): r
              for r in rows if r['defense'] == 'random'}
  out = []
  for r in rows:
    control = controls.get((r.get('space'), r.get('eps'), r['attacker']))
    if r['defense'] != 'lpa' or control is None:
      continue
    diffs = {}
    for metric in ('attack_acc', 'recon_error', 'conf_dist'):
      d = aggregate.paired(r[metric + '_seeds'], control[metric + '_seeds'])
      diffs.update({metric: d.mean, metric + '_std': d.std, metric + '_per_seed': list(d.per_seed),
                    metric + '_ci95': d.ci95})
    out.append({'row': r.get('label', r['defense']), 'control': control.get('label', 'random'),
                'attacker': r['attacker'], **diffs})
  return out


def markdown(dataset: str, rows: list[dict], paired: list[dict], attackers, seeds) -> str:
  """One line per row: utility and zero fraction, then attack acc and recon error per attacker."""
  by = {}
  for r in rows:
    by.setdefault(r.get('label', r['defense']), {})[r['attacker']] = r
  head = ' | '.join(f'Attack acc. ({ATTACKER_NAMES.get(a, a)}) | Recon. ({ATTACKER_NAMES.get(a, a)})'
                    for a in attackers)
  lines = [f'# Attribution: {dataset}, seeds {", ".join(map(str, seeds))}', '',
           f'| Row | Model Acc. | Conf. Dist. | Zero frac. | {head} |',
           '|---|---|---|---|' + '---|---|' * len(attackers)]
  for label, cells in by.items():
    base = cells[attackers[0]]
    dist = '-' if base['defense'] == 'none' else _num(base, 'conf_dist')
    parts = ' | '.join(f'{_pct(cells[a], "attack_acc")} | {_num(cells[a], "recon_error")}'
                       for a in attackers)
    lines.append(f'| {label} | {_pct(base, "model_acc")} | {dist} | {_pct(base, "zero_fraction")} '
                 f'| {parts} |')
  ceiling = [r['evaluator_acc'] for r in rows if 'evaluator_acc' in r]
  lines += ['', f'Evaluation classifier on the real private images (ceiling of attack acc.): '
            f'{100 * np.mean(ceiling):.2f}%. Mean ± std over seeds; every stage retrained per seed.']
  if paired:
    lines += ['', '## Paired: lpa minus random of the same space and eps (per seed, then mean ± std)',
              '', '| Row | Attacker | Δ Attack acc. | Δ Recon. error | Δ Conf. dist. |',
              '|---|---|---|---|---|']
    for p in paired:
      lines.append(f'| {p["row"]} vs {p["control"]} | {ATTACKER_NAMES.get(p["attacker"], p["attacker"])} '
                   f'| {100 * p["attack_acc"]:+.2f} ± {100 * p["attack_acc_std"]:.2f} pts '
                   f'| {p["recon_error"]:+.5f} ± {p["recon_error_std"]:.5f} '
                   f'| {p["conf_dist"]:+.5f} |')
    lines += ['', 'Negative Δ attack acc. and positive Δ recon. error mean the optimisation (gradient '
              'alignment) adds protection beyond its random start at the same radius.']
  input_shift = {(r.get('label', r['defense']), r['attacker']): r.get('input_shift') for r in rows}
  lines += ['', "Input shift (mean L2 distance between the attacker's decoder inputs of clean and "
            'defended queries): ' + '; '.join(
                f'{label} / {ATTACKER_NAMES.get(a, a)} {v:.3g}'
                for (label, a), v in input_shift.items() if v is not None and label != 'none')]
  return '\n'.join(lines) + '\n'


def _pct(r, k):
  std = f' ± {100 * r[k + "_std"]:.1f}' if k + '_std' in r else ''
  return f'{100 * r[k]:.1f}%{std}'


def _num(r, k):
  std = f' ± {r[k + "_std"]:.4f}' if k + '_std' in r else ''
  return f'{r[k]:.4f}{std}'
