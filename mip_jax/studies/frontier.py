"""Which defense to choose: the privacy/utility frontier against the strongest black-box attacker.

  result = frontier.run(config, workdir, seeds=[0, 1, 2])   # frontier.md / .json / .png in workdir

Every defense of the registry is swept over its knob (`sweeps`), each setting is attacked by the
attacker suite (`attacks.suite`), and a setting's **effective attack accuracy** is the best
attacker's, per seed (the attacker picks its best). Distortion is measured on two axes: the
attacker's queries (out of distribution: classes the model never learned) and the private test set
(what legitimate users get). For each axis and budget b the frontier lists, per defense, the
setting of lowest effective attack accuracy among those with mean distortion <= b, paired seed by
seed against the `random` control's best setting at the same budget.

Leakage beyond labels: a label-preserving defense serves the argmax, so the `label` attacker (who
sees only the one-hot label) is a floor no such defense can push the strongest attacker below.
Each row reports its effective accuracy minus the `label` attacker's on the undefended model, and
the share of the none-to-label gap it closes.

Two phases keep the grid inside a CPU budget: every setting against the `cheap` attackers, then the
settings on a defense's front (at any budget, either axis) against the whole suite; fronts are
recomputed and the second phase repeats until no new front point lacks the suite. Attackers train
with early stopping (`attack.patience`); every cell is saved as it is measured (`studies.engine`),
so a killed sweep resumes.
"""

import dataclasses
import os

import matplotlib

matplotlib.use('Agg')  # files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mip_jax import defenses as registry  # noqa: E402
from mip_jax.runtime import console, files  # noqa: E402
from mip_jax.studies import aggregate, engine  # noqa: E402

CONTROL = 'random'
UNDEFENDED = 'none'
LABEL = 'label'
# Distortion axes: (row field, what it measures).
AXES = {'queries': ('conf_dist', "mean L2 distortion of the attacker's queries"),
        'private': ('conf_dist_private', 'mean L2 distortion of the private test vectors')}


@dataclasses.dataclass(frozen=True)
class Setting:
  """One point of a defense's sweep: a family name (a defense, or a defense in one form such as
  'lpa:attributed'), the registered defense it runs and the config overrides of the point."""
  family: str
  defense: str
  overrides: tuple

  @property
  def knob(self) -> str:
    """The swept overrides, readable: 'lpa.eps=0.01'."""
    return ', '.join(f'{k}={v}' for k, v in self.overrides if k not in FORM_FIELDS) or '-'


# Fields that name a defense's form rather than its knob (shown in the family name).
FORM_FIELDS = ('lpa.space', 'lpa.objective')
ATTRIBUTED = (('lpa.space', 'log'), ('lpa.objective', 'decoy_class'))


def sweeps(config) -> list[Setting]:
  """Every defense of the registry over its knob, from config.frontier.grid (a dict of
  family -> list of {field: value}) when set, else `default_grid`."""
  grid = default_grid(config)
  wanted = [f for f in config.frontier.families if f]
  if wanted:
    unknown = [f for f in wanted if f not in grid]
    if unknown:
      raise ValueError(f'frontier.families names {unknown}, which the grid does not have; known: '
                       f'{", ".join(grid)}')
    grid = {f: grid[f] for f in wanted}
  out = []
  for family, (defense, form, points) in grid.items():
    for point in points:
      out.append(Setting(family, defense, tuple(form) + tuple(sorted(point.items()))))
  return out


def default_grid(config) -> dict:
  """family -> (defense, form overrides, [knob overrides, ...]): post-processing defenses over
  their knob from about 0.002 to 0.3 conf. dist., retraining ones at a few knob values."""
  m = len(config.private_classes)
  eps = lambda *v: [{'lpa.eps': x} for x in v]
  grid = {
      UNDEFENDED: ('none', (), [{}]),
      CONTROL: ('random', (), eps(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)),
      'random:log': ('random', (('lpa.space', 'log'),), eps(0.005, 0.02, 0.05, 0.2)),
      'lpa': ('lpa', (), eps(0.002, 0.01, 0.05, 0.2)),
      'lpa:attributed': ('lpa', ATTRIBUTED, eps(0.01, 0.05, 0.2)),
      'poi_mse': ('poi_mse', (), eps(0.01, 0.05)),
      'noise': ('noise', (), [{'noise.scale': x} for x in (0.002, 0.01, 0.03, 0.1, 0.2)]),
      'onepara': ('onepara', (), [{'onepara.epsilon': x} for x in (200.0, 50.0, 10.0)]),
      'rounding': ('rounding', (), [{'rounding.decimals': x} for x in (1, 2, 3)]),
      'topk': ('topk', (), [{'topk.k': k} for k in range(1, m)]),
      'advexa': ('advexa', (), [{'advexa.eps': x} for x in (0.01, 0.05, 0.2)]),
      'pgd': ('pgd', (), [{'pgd.eps': x} for x in (0.01, 0.05, 0.2)]),
      'grad2': ('grad2', (), [{'grad2.eps': x} for x in (0.01, 0.03, 0.1, 0.3)]),
      'am': ('am', (), [{'am.threshold': x} for x in (0.7, 0.9, 0.99)]),
      'lfp': ('lfp', (), [{'lfp.budget': x} for x in (0.05, 0.2)]),
      'vae': ('vae', (), [{'vae.eps': x} for x in (0.01, 0.05)]),
      'mid': ('mid', (), [{'mid.beta': x} for x in (0.001, 0.01, 0.1)]),
      'bido_coco': ('bido_coco', (), [{}]),
      'bido_hsic': ('bido_hsic', (), [{}]),
      'purification': ('purification', (), [{}]),
  }
  for name in registry.REGISTRY:  # a defense registered later still takes part, at its defaults
    if not any(defense == name for defense, _, _ in grid.values()):
      grid[name] = (name, (), [{}])
  return grid


def attackers(config, phase: str) -> tuple:
  """The attackers of a phase: config.frontier.cheap, or every attacker of config.frontier.suite."""
  cheap = tuple(config.frontier.cheap)
  if phase == 'cheap':
    return cheap
  return cheap + tuple(a for a in config.frontier.suite if a not in cheap)


def training_overrides(config) -> tuple:
  """Overrides every frontier cell runs under: attackers trained to convergence (early stopping,
  at most config.frontier.max_epochs) while the defender's substitute keeps the base epochs. They
  are part of every cell's key, so a frontier shares a workdir with the paper's experiments without
  taking their cells."""
  sub_epochs = config.substitute.epochs if config.substitute.epochs is not None \
      else config.decoder.epochs
  return (('attack.patience', int(config.frontier.patience)),
          ('decoder.epochs', int(config.frontier.max_epochs)),
          ('substitute.epochs', int(sub_epochs)))


def cells_of(config, settings, attacker_names) -> list[tuple[dict, engine.Cell]]:
  extra = training_overrides(config)
  rows = []
  for s in settings:
    for a in attacker_names:
      rows.append(({'family': s.family, 'defense': s.defense, 'knob': s.knob, 'attacker': a},
                   engine.Cell(s.defense, s.overrides + extra, a)))
  return rows


# ---------------------------------------------------------------- from rows to the frontier

def effective(rows: list[dict], settings: list[Setting]) -> list[dict]:
  """One entry per setting: its utility, each attacker's accuracy and the effective accuracy (the
  per-seed maximum over the attackers measured), with the attacker that reached it most often."""
  by = {}
  for r in rows:
    by.setdefault((r['family'], r['knob']), []).append(r)
  out = []
  for s in settings:
    mine = by.get((s.family, s.knob))
    if not mine:
      continue
    acc = np.asarray([r['attack_acc_seeds'] for r in mine])  # [attackers, seeds]
    best = acc.argmax(axis=0)
    eff = acc.max(axis=0)
    first = mine[0]
    entry = {'family': s.family, 'defense': s.defense, 'knob': s.knob,
             'overrides': {k: v for k, v in s.overrides},
             'attackers': {r['attacker']: {'attack_acc': r['attack_acc'],
                                          'attack_acc_std': r['attack_acc_std'],
                                          'knn_dist': r.get('knn_dist'),
                                          'recon_error': r['recon_error']} for r in mine},
             'strongest': mine[int(np.bincount(best).argmax())]['attacker'],
             **aggregate.stats('effective_attack_acc', eff)}
    for k in ('model_acc', 'conf_dist', 'conf_dist_l1', 'conf_dist_private',
              'conf_dist_private_l1', 'agreement', 'ece', 'evaluator_acc'):
      if k in first:
        entry.update({k: first[k], f'{k}_std': first.get(f'{k}_std', 0.0),
                      f'{k}_seeds': first.get(f'{k}_seeds', [first[k]])})
    strongest = next(r for r in mine if r['attacker'] == entry['strongest'])
    entry['knn_dist'] = strongest.get('knn_dist')
    entry['recon_error'] = strongest['recon_error']
    out.append(entry)
  return out


def label_floor(rows: list[dict]) -> np.ndarray | None:
  """Per seed: the `label` attacker's accuracy on the undefended model (None when not measured)."""
  for r in rows:
    if r['family'] == UNDEFENDED and r['attacker'] == LABEL:
      return np.asarray(r['attack_acc_seeds'])
  return None


def add_leakage(entries: list[dict], floor: np.ndarray | None) -> None:
  """leakage beyond labels (effective minus the undefended `label` attacker, per seed) and the
  share of the none-to-label gap a setting closes."""
  none = next((e for e in entries if e['family'] == UNDEFENDED), None)
  if floor is None or none is None:
    return
  gap = np.asarray(none['effective_attack_acc_seeds']) - floor
  for e in entries:
    eff = np.asarray(e['effective_attack_acc_seeds'])
    e.update(aggregate.stats('leakage', eff - floor))
    e['gap_closed'] = float(np.mean(gap - (eff - floor)) / np.mean(gap)) if np.mean(gap) else None


def front(entries: list[dict], axis: str = 'queries') -> list[dict]:
  """A family's Pareto front: by rising distortion, each entry that leaks less than every entry of
  smaller distortion."""
  field = AXES[axis][0]
  out, best = [], np.inf
  for e in sorted(entries, key=lambda e: (e[field], e['effective_attack_acc'])):
    if e['effective_attack_acc'] < best:
      out.append(e)
      best = e['effective_attack_acc']
  return out


def best_within(entries: list[dict], budget: float, axis: str = 'queries') -> dict | None:
  """The entry of lowest effective attack accuracy with mean distortion <= budget (None: none)."""
  field = AXES[axis][0]
  fits = [e for e in entries if e[field] <= budget]
  return min(fits, key=lambda e: e['effective_attack_acc']) if fits else None


def by_budget(entries: list[dict], budgets, axis: str = 'queries') -> list[dict]:
  """For each budget: every family's best entry, paired with the control's best at that budget."""
  families = list(dict.fromkeys(e['family'] for e in entries))
  out = []
  for b in budgets:
    control = best_within([e for e in entries if e['family'] == CONTROL], b, axis)
    for fam in families:
      best = best_within([e for e in entries if e['family'] == fam], b, axis)
      if best is None:
        continue
      row = {'budget': b, 'axis': axis, 'family': fam, 'entry': best}
      if control is not None and fam not in (CONTROL, UNDEFENDED):
        row['vs_control'] = aggregate.paired(best['effective_attack_acc_seeds'],
                                             control['effective_attack_acc_seeds']).as_dict()
        row['control_knob'] = control['knob']
      out.append(row)
  return out


def recommended(table: list[dict], *, label_preserving_only: bool = False) -> list[dict]:
  """Per budget: the family whose best setting leaks least (ties: the smaller distortion)."""
  out = []
  for b in dict.fromkeys(r['budget'] for r in table):
    rows = [r for r in table if r['budget'] == b and r['family'] != UNDEFENDED]
    if label_preserving_only:
      rows = [r for r in rows if r['entry'].get('agreement', 0) >= 1.0]
    if not rows:
      continue
    axis_field = AXES[rows[0]['axis']][0]
    best = min(rows, key=lambda r: (r['entry']['effective_attack_acc'], r['entry'][axis_field]))
    e = best['entry']
    out.append({'budget': b, 'defense': e['defense'], 'family': e['family'],
                'overrides': e['overrides'], axis_field: e[axis_field],
                'effective_attack_acc': e['effective_attack_acc'],
                'effective_attack_acc_std': e['effective_attack_acc_std'],
                'model_acc': e.get('model_acc'), 'strongest': e['strongest']})
  return out


def front_settings(entries: list[dict], settings: list[Setting], budgets) -> list[Setting]:
  """The settings on some family's front, on either axis, that some budget selects."""
  keep = set()
  for fam in dict.fromkeys(e['family'] for e in entries):
    mine = [e for e in entries if e['family'] == fam]
    for axis in AXES:
      for b in budgets:
        best = best_within(mine, b, axis)
        if best is not None:
          keep.add((fam, best['knob']))
  return [s for s in settings if (s.family, s.knob) in keep]


# ---------------------------------------------------------------- the study

def run(config, workdir: str, *, seeds, mesh=None) -> dict:
  """The two-phase frontier (see the module docstring); writes frontier.md, .json and .png."""
  settings = sweeps(config)
  budgets = [float(b) for b in config.frontier.budgets]
  cheap, full = attackers(config, 'cheap'), attackers(config, 'full')
  console.say('frontier: %d settings of %d families, %d cheap attackers, %d in the suite',
              len(settings), len(dict.fromkeys(s.family for s in settings)), len(cheap), len(full))
  rows_of = {}  # (family, knob, attacker) -> aggregated row
  per_seed = {}

  def measure(chosen, names):
    todo = [(lab, cell) for lab, cell in cells_of(config, chosen, names)
            if (lab['family'], lab['knob'], lab['attacker']) not in rows_of]
    if not todo:
      return
    result = engine.run(engine.Study('frontier', todo), config, workdir, seeds=seeds, mesh=mesh)
    for (lab, _), row, i in zip(todo, result.rows, range(len(todo))):
      rows_of[(lab['family'], lab['knob'], lab['attacker'])] = row
      per_seed[(lab['family'], lab['knob'], lab['attacker'])] = [s[i] for s in result.per_seed]

  measure(settings, cheap)
  suited = set()
  for _ in range(len(settings)):  # fronts can move as attackers are added; each pass adds some
    entries = effective(list(rows_of.values()), settings)
    todo = [s for s in front_settings(entries, settings, budgets) if (s.family, s.knob) not in suited]
    if not todo or set(full) == set(cheap):
      break
    console.say('frontier: the whole suite on %d front settings', len(todo))
    measure(todo, full)
    suited.update((s.family, s.knob) for s in todo)
  rows = list(rows_of.values())
  entries = effective(rows, settings)
  add_leakage(entries, label_floor(rows))
  for e in entries:
    e['suite'] = 'full' if (e['family'], e['knob']) in suited else 'cheap'
  tables = {axis: by_budget(entries, budgets, axis) for axis in AXES}
  doc = {'dataset': config.dataset, 'seeds': [int(s) for s in seeds], 'budgets': budgets,
         'attackers': {'cheap': list(cheap), 'suite': list(full)}, 'settings': entries,
         'by_budget': tables, 'recommended': recommended(tables['queries']),
         'recommended_private': recommended(tables['private']),
         'label_floor': _floor_stats(rows), 'rows': rows, 'config': config.to_dict()}
  text = markdown(doc)
  files.write_json(os.path.join(workdir, 'frontier.json'), doc)
  files.write_text(os.path.join(workdir, 'frontier.md'), text)
  figure(os.path.join(workdir, 'frontier.png'), entries, doc['label_floor'],
         title=f'{config.dataset}, seeds {", ".join(map(str, doc["seeds"]))}')
  return {'markdown': text, **doc}


def _floor_stats(rows) -> dict | None:
  floor = label_floor(rows)
  return None if floor is None else aggregate.stats('attack_acc', floor)


# ---------------------------------------------------------------- files

def _pct(v, std=None) -> str:
  if v is None:
    return '-'
  return f'{100 * v:.1f}%' + (f' ± {100 * std:.1f}' if std else '')


def _share(v) -> str:
  return '-' if v is None else f'{100 * v:.0f}%'


def markdown(doc: dict) -> str:
  entries = doc['settings']
  floor = doc['label_floor']
  none = next((e for e in entries if e['family'] == UNDEFENDED), None)
  lines = [f'# Which defense to choose: the frontier on {doc["dataset"]}', '',
           f'Seeds {", ".join(map(str, doc["seeds"]))}; every stage retrained per seed. Effective '
           'attack accuracy: the best attacker of the suite, per seed, then mean ± std over seeds. '
           f'Cheap attackers (every setting): {", ".join(doc["attackers"]["cheap"])}; the whole '
           f'suite (settings on a front): {", ".join(doc["attackers"]["suite"])}.', '']
  if floor and none:
    lines += [f'Undefended: effective attack accuracy {_pct(none["effective_attack_acc"], none["effective_attack_acc_std"])}; '
              f'the `label` attacker on the undefended model (the floor of every label-preserving '
              f'defense): {_pct(floor["attack_acc"], floor["attack_acc_std"])}.', '']
  for axis, (field, what) in AXES.items():
    lines += [f'## At budget b ({what})', '',
              '| Budget | Defense | Best setting | Distortion | Effective attack acc. | '
              'Leakage beyond labels | Gap closed | Model acc. | vs `random` at b (paired, 95% CI) |',
              '|---|---|---|---|---|---|---|---|---|']
    for r in doc['by_budget'][axis]:
      e = r['entry']
      vs = r.get('vs_control')
      vs_text = '-' if vs is None else (
          f'{100 * vs["mean"]:+.1f} [{100 * vs["ci95"][0]:+.1f}, {100 * vs["ci95"][1]:+.1f}]'
          if vs['ci95'] else f'{100 * vs["mean"]:+.1f}') + (' settled' if vs and vs['settled'] else '')
      lines.append(f'| {r["budget"]:g} | {r["family"]} | {e["knob"]} | {e[field]:.4f} | '
                   f'{_pct(e["effective_attack_acc"], e["effective_attack_acc_std"])} '
                   f'({e["strongest"]}) | {_pct(e.get("leakage"), e.get("leakage_std"))} | '
                   f'{_share(e.get("gap_closed"))} | '
                   f'{_pct(e.get("model_acc"))} | {vs_text} |')
    lines.append('')
  lines += ['## Recommended (queries axis)', '', '| Budget | Defense | Overrides | Conf. dist. | '
            'Effective attack acc. | Model acc. |', '|---|---|---|---|---|---|']
  for r in doc['recommended']:
    over = ' '.join(f'--config.{k}={v}' for k, v in r['overrides'].items()) or '-'
    lines.append(f'| {r["budget"]:g} | {r["defense"]} ({r["family"]}) | `{over}` | '
                 f'{r["conf_dist"]:.4f} | {_pct(r["effective_attack_acc"], r["effective_attack_acc_std"])} | '
                 f'{_pct(r["model_acc"])} |')
  names = list(dict.fromkeys(a for e in entries for a in e['attackers']))
  lines += ['', '## Every setting', '',
            '| Defense | Setting | Suite | Conf. dist. (queries) | Conf. dist. (private) | Model acc. '
            '| Agreement | ECE | Effective | ' + ' | '.join(names) + ' | KNN dist. | Recon. error |',
            '|' + '---|' * (12 + len(names))]
  for e in entries:
    accs = ' | '.join(_pct(e['attackers'][a]['attack_acc']) if a in e['attackers'] else '-'
                      for a in names)
    lines.append(f'| {e["family"]} | {e["knob"]} | {e["suite"]} | {e["conf_dist"]:.4f} | '
                 f'{e["conf_dist_private"]:.4f} | {_pct(e.get("model_acc"))} | '
                 f'{_pct(e.get("agreement"))} | {e.get("ece", float("nan")):.4f} | '
                 f'{_pct(e["effective_attack_acc"], e["effective_attack_acc_std"])} | {accs} | '
                 f'{e["knn_dist"]:.3f} | {e["recon_error"]:.4f} |')
  return '\n'.join(lines) + '\n'


def figure(path: str, entries: list[dict], floor: dict | None, *, title: str) -> None:
  """Effective attack accuracy against distortion, one panel per axis: each family's front as a
  line (error bars: std over seeds), its other settings as faint points, the label floor dashed."""
  fig, axes = plt.subplots(1, len(AXES), figsize=(7 * len(AXES), 5.5), squeeze=False)
  families = list(dict.fromkeys(e['family'] for e in entries))
  for ax, (axis, (field, what)) in zip(axes[0], AXES.items()):
    for i, fam in enumerate(families):
      mine = [e for e in entries if e['family'] == fam]
      color = f'C{i % 10}'
      marker = 'os^Dv<>ph*'[i // 10 % 10]
      pts = front(mine, axis)
      x = [max(e[field], 1e-4) for e in pts]
      ax.errorbar(x, [100 * e['effective_attack_acc'] for e in pts],
                  yerr=[100 * e['effective_attack_acc_std'] for e in pts], color=color,
                  marker=marker, capsize=2, label=fam, lw=1.2, ms=4)
      ax.scatter([max(e[field], 1e-4) for e in mine], [100 * e['effective_attack_acc'] for e in mine],
                 color=color, marker=marker, alpha=0.25, s=12)
    if floor:
      ax.axhline(100 * floor['attack_acc'], color='k', ls='--', lw=1,
                 label='label attacker, undefended')
    ax.set_xscale('log')
    ax.set_xlabel(f'{what} (log scale)')
    ax.set_ylabel('effective attack accuracy (%)')
    ax.set_title(f'{title}: {axis}')
    ax.grid(alpha=0.3)
  axes[0][-1].legend(fontsize=7, loc='center left', bbox_to_anchor=(1.0, 0.5))
  fig.tight_layout()
  files.write_with(path, lambda tmp: fig.savefig(tmp, dpi=100))
  plt.close(fig)
