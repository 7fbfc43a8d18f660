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
FORM_FIELDS = ('lpa.space', 'lpa.objective', 'lpa.steps', 'tailfloor.fill', 'grad2.objective')
ATTRIBUTED = (('lpa.space', 'log'), ('lpa.objective', 'decoy_class'))


def sweeps(config) -> list[Setting]:
  """Every defense of the registry over its knob (`default_grid`), restricted to the families of
  config.frontier.families and, for the families config.frontier.knobs names, to the knob values
  it lists ({'random': (0.01, 0.05)}): a larger dataset measures the budgets where a smaller one's
  front is decided, on the same grid points (so its cells are the grid's)."""
  grid = default_grid(config)
  wanted = [f for f in config.frontier.families if f]
  knobs = dict(config.frontier.get('knobs') or {})
  unknown = [f for f in wanted + list(knobs) if f not in grid]
  if unknown:
    raise ValueError(f'frontier.families/knobs name {unknown}, which the grid does not have; '
                     f'known: {", ".join(grid)}')
  if wanted:
    grid = {f: grid[f] for f in wanted}
  out = []
  for family, (defense, form, points) in grid.items():
    if family in knobs:
      points = _pick_points(family, points, knobs[family])
    for point in points:
      out.append(Setting(family, defense, tuple(form) + tuple(sorted(point.items()))))
  return out


def _pick_points(family: str, points: list, values) -> list:
  """The grid points of a one-knob family whose knob value is in `values` (ValueError naming the
  values the grid does not have)."""
  values = list(values)
  picked = [p for p in points if len(p) == 1 and next(iter(p.values())) in values]
  missing = [v for v in values if not any(next(iter(p.values())) == v for p in picked)]
  if missing:
    have = [next(iter(p.values())) for p in points if len(p) == 1]
    raise ValueError(f'frontier.knobs[{family!r}] lists {missing}, not on its grid; the grid has '
                     f'{have}')
  return picked


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
      # LPA at a serving budget: 10 crafting rounds instead of the paper's 240.
      'lpa:10 rounds': ('lpa', (('lpa.steps', 10),), eps(0.002, 0.01)),
      'poi_mse': ('poi_mse', (), eps(0.01, 0.05)),
      'noise': ('noise', (), [{'noise.scale': x} for x in (0.002, 0.01, 0.03, 0.1, 0.2)]),
      'onepara': ('onepara', (), [{'onepara.epsilon': x} for x in (200.0, 50.0, 10.0)]),
      'rounding': ('rounding', (), [{'rounding.decimals': x} for x in (1, 2, 3)]),
      'topk': ('topk', (), [{'topk.k': k} for k in range(1, m)]),
      'advexa': ('advexa', (), [{'advexa.eps': x} for x in (0.01, 0.05, 0.2)]),
      'pgd': ('pgd', (), [{'pgd.eps': x} for x in (0.01, 0.05, 0.2)]),
      'grad2': ('grad2', (), [{'grad2.eps': x} for x in (0.01, 0.03, 0.1, 0.3)]),
      # The same one-step move aimed at LPA's own untargeted direction (worse private
      # reconstructions) instead of a decoy.
      'grad2:untargeted': ('grad2', (('grad2.objective', 'untargeted'),),
                           [{'grad2.eps': x} for x in (0.01, 0.03, 0.1)]),
      'am': ('am', (), [{'am.threshold': x} for x in (0.7, 0.9, 0.99)]),
      'tailfloor': ('tailfloor', (('tailfloor.fill', 'floor'),), [{'tailfloor.threshold': x}
                                                                for x in (1e-3, 0.01, 0.05, 0.1, 0.2)]),
      'tailfloor:noise': ('tailfloor', (('tailfloor.fill', 'noise'),),
                          [{'tailfloor.threshold': x} for x in (1e-4, 1e-3, 0.01, 0.05, 0.2)]),
      'template': ('template', (), [{'template.confidence': x}
                                    for x in (0.5, 0.9, 0.99, 0.999)]),
      'learned': ('learned', (), [{'learned.distortion_weight': x} for x in (0.01, 0.03, 0.1, 0.3)]),
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

@dataclasses.dataclass(frozen=True)
class Measure:
  """A privacy measure the frontier ranks by: a row field, and whether more of it leaks more
  (attack accuracy) or less (reconstruction error of the very private image)."""
  field: str
  higher_leaks: bool
  title: str

  @property
  def effective(self) -> str:
    return f'effective_{self.field}'

  def leak(self, values):
    """Signed so that larger always means more leakage."""
    v = np.asarray(values, np.float64)
    return v if self.higher_leaks else -v


# Attack accuracy asks whether a reconstruction shows the right class, which the label alone often
# gives (every member of a class rebuilt as one class template); the reconstruction error of each
# private image against its own reconstruction asks how much of *that* image leaks beyond its class.
MEASURES = {
    'attack_acc': Measure('attack_acc', True, 'effective attack accuracy'),
    'recon_error': Measure('recon_error', False, 'effective reconstruction error'),
}


def effective(rows: list[dict], settings: list[Setting]) -> list[dict]:
  """One entry per setting: its utility, each attacker's results and, per measure, the effective
  value (per seed, the best attacker's: max accuracy, min error) with the attacker reaching it."""
  by = {}
  for r in rows:
    by.setdefault((r['family'], r['knob']), []).append(r)
  out = []
  for s in settings:
    mine = by.get((s.family, s.knob))
    if not mine:
      continue
    first = mine[0]
    entry = {'family': s.family, 'defense': s.defense, 'knob': s.knob,
             'overrides': {k: v for k, v in s.overrides},
             'attackers': {r['attacker']: {k: r.get(k) for k in
                                          ('attack_acc', 'attack_acc_std', 'recon_error',
                                           'recon_error_std', 'knn_dist')} for r in mine}}
    for measure in MEASURES.values():
      values = np.asarray([r[measure.field + '_seeds'] for r in mine])  # [attackers, seeds]
      best = measure.leak(values).argmax(axis=0)
      entry.update(aggregate.stats(measure.effective, values[best, np.arange(values.shape[1])]))
      entry[f'{measure.effective}_by'] = mine[int(np.bincount(best).argmax())]['attacker']
    for k in ('model_acc', 'conf_dist', 'conf_dist_l1', 'conf_dist_private',
              'conf_dist_private_l1', 'agreement', 'ece', 'evaluator_acc'):
      if k in first:
        entry.update({k: first[k], f'{k}_std': first.get(f'{k}_std', 0.0),
                      f'{k}_seeds': first.get(f'{k}_seeds', [first[k]])})
    knn = [r['knn_dist_seeds'] for r in mine if 'knn_dist_seeds' in r]
    if knn:
      entry.update(aggregate.stats('effective_knn_dist', np.min(knn, axis=0)))
    out.append(entry)
  return out


def label_floor(rows: list[dict], measure: Measure) -> np.ndarray | None:
  """Per seed: the `label` attacker's value on the undefended model (None when not measured)."""
  for r in rows:
    if r['family'] == UNDEFENDED and r['attacker'] == LABEL:
      return np.asarray(r[measure.field + '_seeds'])
  return None


def add_leakage(entries: list[dict], rows: list[dict]) -> None:
  """Per measure: leakage beyond labels (how much more the best attacker gets than the `label`
  attacker on the undefended model, per seed; in points of accuracy or of error) and the share of
  the none-to-label gap a setting closes."""
  none = next((e for e in entries if e['family'] == UNDEFENDED), None)
  for name, measure in MEASURES.items():
    floor = label_floor(rows, measure)
    if floor is None or none is None:
      continue
    gap = np.mean(measure.leak(none[measure.effective + '_seeds']) - measure.leak(floor))
    for e in entries:
      leak = measure.leak(e[measure.effective + '_seeds']) - measure.leak(floor)
      e.update(aggregate.stats(f'leakage_{name}', leak))
      e[f'gap_closed_{name}'] = float((gap - leak.mean()) / gap) if gap > 0 else None


def _key(e: dict, measure: Measure):
  """Lower leaks less: the measure, then the other measure (attack accuracy saturates at the
  label attacker's, where the error still tells settings apart)."""
  other = next(m for m in MEASURES.values() if m is not measure)
  return (float(measure.leak(e[measure.effective])), float(other.leak(e[other.effective])))


def front(entries: list[dict], axis: str = 'queries', measure: Measure = MEASURES['attack_acc']):
  """A family's Pareto front: by rising distortion, each entry that leaks less than every entry of
  smaller distortion."""
  field = AXES[axis][0]
  out, best = [], None
  for e in sorted(entries, key=lambda e: (e[field],) + _key(e, measure)):
    if best is None or _key(e, measure) < best:
      out.append(e)
      best = _key(e, measure)
  return out


def best_within(entries: list[dict], budget: float, axis: str = 'queries',
                measure: Measure = MEASURES['attack_acc']) -> dict | None:
  """The entry that leaks least with mean distortion <= budget (None: none fits)."""
  field = AXES[axis][0]
  fits = [e for e in entries if e[field] <= budget]
  return min(fits, key=lambda e: _key(e, measure) + (e[field],)) if fits else None


def by_budget(entries: list[dict], budgets, axis: str = 'queries',
              measure: Measure = MEASURES['attack_acc']) -> list[dict]:
  """For each budget: every family's best entry, paired with the control's best at that budget."""
  families = list(dict.fromkeys(e['family'] for e in entries))
  out = []
  for b in budgets:
    control = best_within([e for e in entries if e['family'] == CONTROL], b, axis, measure)
    for fam in families:
      best = best_within([e for e in entries if e['family'] == fam], b, axis, measure)
      if best is None:
        continue
      row = {'budget': b, 'axis': axis, 'measure': measure.field, 'family': fam, 'entry': best}
      if control is not None and fam not in (CONTROL, UNDEFENDED):
        row['vs_control'] = aggregate.paired(best[measure.effective + '_seeds'],
                                             control[measure.effective + '_seeds']).as_dict()
        row['control_knob'] = control['knob']
      out.append(row)
  return out


def recommended(table: list[dict]) -> list[dict]:
  """Per budget: the family whose best setting leaks least (ties: the smaller distortion)."""
  out = []
  for b in dict.fromkeys(r['budget'] for r in table):
    rows = [r for r in table if r['budget'] == b and r['family'] != UNDEFENDED]
    if not rows:
      continue
    measure = MEASURES[rows[0]['measure']]
    field = AXES[rows[0]['axis']][0]
    best = min(rows, key=lambda r: _key(r['entry'], measure) + (r['entry'][field],))
    e = best['entry']
    out.append({'budget': b, 'defense': e['defense'], 'family': e['family'],
                'overrides': e['overrides'], field: e[field],
                **{k: e[k] for k in ('effective_attack_acc', 'effective_attack_acc_std',
                                     'effective_recon_error', 'effective_recon_error_std')},
                'model_acc': e.get('model_acc'), 'agreement': e.get('agreement'),
                'attacker': e[measure.effective + '_by']})
  return out


def front_settings(entries: list[dict], settings: list[Setting], budgets) -> list[Setting]:
  """The settings some budget selects as a family's best, on either axis, by either measure."""
  keep = set()
  for fam in dict.fromkeys(e['family'] for e in entries):
    mine = [e for e in entries if e['family'] == fam]
    for axis in AXES:
      for measure in MEASURES.values():
        for b in budgets:
          best = best_within(mine, b, axis, measure)
          if best is not None:
            keep.add((fam, best['knob']))
  return [s for s in settings if (s.family, s.knob) in keep]


# ---------------------------------------------------------------- the study

def run(config, workdir: str, *, seeds, mesh=None, report_only: bool = False) -> dict:
  """The two-phase frontier (see the module docstring); writes frontier.md, .json and .png.

  `report_only`: measure nothing; report the cells saved for every seed (a setting whose cheap
  attackers are not all saved is left out, a front setting keeps the suite attackers it has)."""
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
    study = engine.Study('frontier', todo)
    if report_only:
      study = engine.measured_everywhere(study, config, workdir, seeds=seeds, mesh=mesh)
      todo = study.rows
      if not todo:
        return
    result = engine.run(study, config, workdir, seeds=seeds, mesh=mesh)
    for (lab, _), row, i in zip(todo, result.rows, range(len(todo))):
      rows_of[(lab['family'], lab['knob'], lab['attacker'])] = row
      per_seed[(lab['family'], lab['knob'], lab['attacker'])] = [s[i] for s in result.per_seed]

  measure(settings, cheap)
  if report_only:  # only settings with every cheap attacker saved
    have = {(f, k) for f, k, a in rows_of}
    settings = [s for s in settings if (s.family, s.knob) in have
                and all((s.family, s.knob, a) in rows_of for a in cheap)]
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
  add_leakage(entries, rows)
  for e in entries:
    e['suite'] = 'full' if (e['family'], e['knob']) in suited else 'cheap'
  tables = {f'{axis}/{name}': by_budget(entries, budgets, axis, measure)
            for name, measure in MEASURES.items() for axis in AXES}
  doc = {'dataset': config.dataset, 'seeds': [int(s) for s in seeds], 'budgets': budgets,
         'attackers': {'cheap': list(cheap), 'suite': list(full)}, 'settings': entries,
         'by_budget': tables,
         'recommended': recommended(tables['queries/attack_acc']),
         'recommended_by_error': recommended(tables['queries/recon_error']),
         'recommended_private': recommended(tables['private/attack_acc']),
         'label_floor': {name: _floor_stats(rows, m) for name, m in MEASURES.items()},
         'rows': rows, 'config': config.to_dict()}
  text = markdown(doc)
  files.write_json(os.path.join(workdir, 'frontier.json'), doc)
  files.write_text(os.path.join(workdir, 'frontier.md'), text)
  figure(os.path.join(workdir, 'frontier.png'), entries, doc['label_floor'],
         title=f'{config.dataset}, seeds {", ".join(map(str, doc["seeds"]))}')
  return {'markdown': text, **doc}


def _floor_stats(rows, measure: Measure) -> dict | None:
  floor = label_floor(rows, measure)
  return None if floor is None else aggregate.stats(measure.field, floor)


# ---------------------------------------------------------------- is the attacker converged?

def convergence(config, workdir: str, *, seeds, epochs=None, mesh=None) -> dict:
  """The undefended `floor` and `label` attackers trained for a fixed number of epochs each, next
  to the early-stopped one the frontier uses: attack accuracy and reconstruction error against
  epochs, so a reader sees whether the frontier's attackers are converged. `epochs` defaults to
  5, 10, 20, ... up to the frontier's own limit (config.frontier.max_epochs). Writes
  convergence.md / .json / .png in workdir (cells shared with the frontier's seeds)."""
  if epochs is None:
    epochs = [e for e in (5, 10, 20, 40, 80, 160, 320) if e <= config.frontier.max_epochs]
  fixed = lambda e: (('attack.patience', None), ('decoder.epochs', int(e)),
                     ('substitute.epochs', int(training_overrides(config)[2][1])))
  rows = [({'epochs': int(e), 'attacker': a}, engine.Cell(UNDEFENDED, fixed(e), a))
          for a in ('floor', 'label') for e in epochs]
  rows += [({'epochs': 'early stopping', 'attacker': a},
            engine.Cell(UNDEFENDED, training_overrides(config), a)) for a in ('floor', 'label')]
  result = engine.run(engine.Study('convergence', rows), config, workdir, seeds=seeds, mesh=mesh)
  lines = [f'# Is the attacker converged? Undefended {config.dataset}', '',
           f'Seeds {", ".join(map(str, result.seeds))}; the attacker trained for a fixed number of '
           f'epochs, and with early stopping (patience {config.frontier.patience}, at most '
           f'{config.frontier.max_epochs} epochs) as in the frontier. Mean ± std over seeds.', '',
           '| Attacker | Epochs | Attack acc. | Recon. error | KNN dist. |', '|---|---|---|---|---|']
  for r in result.rows:
    lines.append(f'| {r["attacker"]} | {r["epochs"]} | {_pct(r["attack_acc"], r["attack_acc_std"])} '
                 f'| {r["recon_error"]:.4f} ± {r["recon_error_std"]:.4f} | {r["knn_dist"]:.3f} |')
  text = '\n'.join(lines) + '\n'
  files.write_text(os.path.join(workdir, 'convergence.md'), text)
  files.write_json(os.path.join(workdir, 'convergence.json'),
                   {'dataset': config.dataset, 'seeds': result.seeds, 'rows': result.rows})
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for a in ('floor', 'label'):
    mine = [r for r in result.rows if r['attacker'] == a and r['epochs'] != 'early stopping']
    early = next(r for r in result.rows if r['attacker'] == a and r['epochs'] == 'early stopping')
    for ax, k, scale in ((axes[0], 'attack_acc', 100), (axes[1], 'recon_error', 1)):
      line = ax.errorbar([r['epochs'] for r in mine], [scale * r[k] for r in mine],
                         yerr=[scale * r[k + '_std'] for r in mine], marker='o', capsize=3,
                         label=f'{a} attacker')
      ax.axhline(scale * early[k], color=line[0].get_color(), ls=':',
                 label=f'{a}, early stopping')
  for ax, what in zip(axes, ('attack accuracy (%)', 'reconstruction error (MSE)')):
    ax.set_xscale('log')
    ax.set_xlabel('attacker epochs')
    ax.set_ylabel(what)
    ax.legend(fontsize=8)
  fig.suptitle(f'{config.dataset}: undefended attackers against training epochs')
  fig.tight_layout()
  files.write_with(os.path.join(workdir, 'convergence.png'), lambda tmp: fig.savefig(tmp, dpi=100))
  plt.close(fig)
  return {'markdown': text, 'rows': result.rows}


# ---------------------------------------------------------------- files

def _pct(v, std=None) -> str:
  if v is None:
    return '-'
  return f'{100 * v:.1f}%' + (f' ± {100 * std:.1f}' if std else '')


def _share(v) -> str:
  return '-' if v is None else f'{100 * v:.0f}%'


def markdown(doc: dict) -> str:
  entries = doc['settings']
  none = next((e for e in entries if e['family'] == UNDEFENDED), None)
  lines = [f'# Which defense to choose: the frontier on {doc["dataset"]}', '',
           f'Seeds {", ".join(map(str, doc["seeds"]))}; every stage retrained per seed. Effective: '
           'the best attacker of the suite, per seed (highest attack accuracy, lowest '
           'reconstruction error), then mean ± std over seeds. Cheap attackers (every setting): '
           f'{", ".join(doc["attackers"]["cheap"])}; the whole suite (settings some budget selects): '
           f'{", ".join(doc["attackers"]["suite"])}.', '']
  acc, err = doc['label_floor'].get('attack_acc'), doc['label_floor'].get('recon_error')
  if acc and err and none:
    lines += [f'Undefended: effective attack accuracy {_pct(none["effective_attack_acc"], none["effective_attack_acc_std"])}, '
              f'effective reconstruction error {none["effective_recon_error"]:.4f}. The `label` '
              'attacker on the undefended model, the floor of every label-preserving defense: '
              f'attack accuracy {_pct(acc["attack_acc"], acc["attack_acc_std"])}, reconstruction '
              f'error {err["recon_error"]:.4f} (one class template per label).', '']
  for key, table in doc['by_budget'].items():
    axis, name = key.split('/')
    measure = MEASURES[name]
    field, what = AXES[axis]
    value = (lambda e: _pct(e[measure.effective], e[measure.effective + '_std'])) if \
        measure.higher_leaks else (lambda e: f'{e[measure.effective]:.4f} ± {e[measure.effective + "_std"]:.4f}')
    delta = (lambda v: f'{100 * v:+.1f}') if measure.higher_leaks else (lambda v: f'{v:+.4f}')
    lines += [f'## {measure.title.capitalize()} at budget b ({what})', '',
              f'| Budget | Defense | Best setting | Distortion | {measure.title.capitalize()} | '
              'Leakage beyond labels | Gap closed | Model acc. | vs `random` at b (paired, 95% CI) |',
              '|---|---|---|---|---|---|---|---|---|']
    for r in table:
      e = r['entry']
      vs = r.get('vs_control')
      vs_text = '-'
      if vs is not None:
        vs_text = delta(vs['mean']) + (f' [{delta(vs["ci95"][0])}, {delta(vs["ci95"][1])}]'
                                       if vs['ci95'] else '') + (' settled' if vs['settled'] else '')
      leak = e.get(f'leakage_{name}')
      leak_text = '-' if leak is None else (delta(leak) if measure.higher_leaks else
                                            f'{leak:+.4f}')
      lines.append(f'| {r["budget"]:g} | {r["family"]} | {e["knob"]} | {e[field]:.4f} | '
                   f'{value(e)} ({e[measure.effective + "_by"]}) | {leak_text} | '
                   f'{_share(e.get(f"gap_closed_{name}"))} | {_pct(e.get("model_acc"))} | '
                   f'{vs_text} |')
    lines.append('')
  for title, key in (('attack accuracy', 'recommended'),
                     ('reconstruction error', 'recommended_by_error')):
    lines += [f'## Recommended by effective {title} (queries axis)', '',
              '| Budget | Defense | Overrides | Conf. dist. | Effective attack acc. | '
              'Effective recon. error | Model acc. |', '|---|---|---|---|---|---|---|']
    for r in doc[key]:
      over = ' '.join(f'--config.{k}={v}' for k, v in r['overrides'].items()) or '-'
      lines.append(f'| {r["budget"]:g} | {r["defense"]} ({r["family"]}) | `{over}` | '
                   f'{r["conf_dist"]:.4f} | '
                   f'{_pct(r["effective_attack_acc"], r["effective_attack_acc_std"])} | '
                   f'{r["effective_recon_error"]:.4f} | {_pct(r["model_acc"])} |')
    lines.append('')
  names = list(dict.fromkeys(a for e in entries for a in e['attackers']))
  lines += ['## Every setting', '', 'Attack accuracy / reconstruction error of each attacker.', '',
            '| Defense | Setting | Suite | Conf. dist. (queries) | Conf. dist. (private) | Model acc. '
            '| Agreement | ECE | Effective acc. | Effective error | Effective KNN dist. | '
            + ' | '.join(names) + ' |', '|' + '---|' * (11 + len(names))]
  for e in entries:
    cells = ' | '.join(f'{_pct(e["attackers"][a]["attack_acc"])} / '
                       f'{e["attackers"][a]["recon_error"]:.4f}' if a in e['attackers'] else '-'
                       for a in names)
    knn = e.get('effective_knn_dist')
    lines.append(f'| {e["family"]} | {e["knob"]} | {e["suite"]} | {e["conf_dist"]:.4f} | '
                 f'{e["conf_dist_private"]:.4f} | {_pct(e.get("model_acc"))} | '
                 f'{_pct(e.get("agreement"))} | {e.get("ece", float("nan")):.4f} | '
                 f'{_pct(e["effective_attack_acc"], e["effective_attack_acc_std"])} | '
                 f'{e["effective_recon_error"]:.4f} | {"-" if knn is None else f"{knn:.3f}"} | '
                 f'{cells} |')
  return '\n'.join(lines) + '\n'


def figure(path: str, entries: list[dict], floors: dict, *, title: str) -> None:
  """Per measure (rows) and axis (columns): each family's front as a line (error bars: std over
  seeds), its other settings as faint points, the label attacker's floor dashed."""
  fig, axes = plt.subplots(len(MEASURES), len(AXES), figsize=(7 * len(AXES), 5 * len(MEASURES)),
                           squeeze=False)
  families = list(dict.fromkeys(e['family'] for e in entries))
  for row, (name, measure) in enumerate(MEASURES.items()):
    scale = 100 if measure.higher_leaks else 1
    for ax, (axis, (field, what)) in zip(axes[row], AXES.items()):
      for i, fam in enumerate(families):
        mine = [e for e in entries if e['family'] == fam]
        color, marker = f'C{i % 10}', 'os^Dv<>ph*'[i // 10 % 10]
        pts = front(mine, axis, measure)
        ax.errorbar([max(e[field], 1e-4) for e in pts], [scale * e[measure.effective] for e in pts],
                    yerr=[scale * e[measure.effective + '_std'] for e in pts], color=color,
                    marker=marker, capsize=2, label=fam, lw=1.2, ms=4)
        ax.scatter([max(e[field], 1e-4) for e in mine],
                   [scale * e[measure.effective] for e in mine], color=color, marker=marker,
                   alpha=0.25, s=12)
      floor = floors.get(name)
      if floor:
        ax.axhline(scale * floor[measure.field], color='k', ls='--', lw=1,
                   label='label attacker, undefended')
      ax.set_xscale('log')
      ax.set_xlabel(f'{what} (log scale)')
      ax.set_ylabel(measure.title + (' (%)' if measure.higher_leaks else ' (MSE)'))
      ax.set_title(f'{title}: {axis}')
      ax.grid(alpha=0.3)
  axes[0][-1].legend(fontsize=7, loc='center left', bbox_to_anchor=(1.0, 0.5))
  fig.tight_layout()
  files.write_with(path, lambda tmp: fig.savefig(tmp, dpi=100))
  plt.close(fig)
