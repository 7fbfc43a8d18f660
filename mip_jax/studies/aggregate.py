"""Rows over seeds: means, spreads and paired differences, for every study.

  rows = aggregate.mean_rows(per_seed, labels)   # one row per position, metrics as mean/std/seeds
  d = aggregate.paired(a['attack_acc_seeds'], control['attack_acc_seeds'])

A study measures the same list of rows once per seed (every stage retrained per seed), so row i of
every seed is the same setting. `mean_rows` keeps each row's labels and gives every metric its mean
(`<metric>`), standard deviation over seeds (`<metric>_std`, population: numpy's default) and the
per-seed values (`<metric>_seeds`). Attack accuracy varies far more between seeds than between
defenses of one seed, so comparisons pair by seed (`paired`): the same seed shares the data, the
classifier and the attacker's initialisation, and the difference cancels most of that variance.
"""

import dataclasses
import math

import numpy as np

# Numeric fields of a result row that are measurements (averaged over seeds); any other field is a
# label and must agree across seeds.
METRICS = ('model_acc', 'conf_dist', 'attack_acc', 'recon_error', 'label_flip_rate',
           'zero_fraction', 'input_shift', 'evaluator_acc', 'defend_seconds', 'knn_dist',
           'conf_dist_l1', 'conf_dist_private', 'conf_dist_private_l1', 'agreement', 'ece',
           'train_epochs', 'kept_fraction', 'effective_attack_acc')
CURVES = ('eps_eta',)  # [[eps, eta], ...]: averaged pointwise, with the std of eta
# Result-row fields that name what was measured (kept from the first seed's row).
IDENTITY = ('defense', 'label', 'attacker', 'guidance', 'space', 'eps')


def mean_rows(per_seed: list[list[dict]], labels: list[dict] | None = None, *,
              metrics=METRICS) -> list[dict]:
  """One row per position: `labels[i]` (default: the identity fields of the first seed's row i) and
  each of `metrics` present in every seed's row i as mean, `_std` and `_seeds`.

  Raises ValueError when the seeds' rows differ in what they measured (defense or attacker).
  """
  if not per_seed:
    raise ValueError('no seeds to aggregate')
  n = len(per_seed[0])
  if any(len(rows) != n for rows in per_seed):
    raise ValueError(f'seeds measured different numbers of rows: {[len(r) for r in per_seed]}')
  out = []
  for i in range(n):
    group = [rows[i] for rows in per_seed]
    ident = [tuple(r.get(k) for k in ('defense', 'label', 'attacker')) for r in group]
    if any(x != ident[0] for x in ident):
      raise ValueError(f'row {i} differs between seeds: {ident}')
    if labels is None:
      row = {k: group[0][k] for k in IDENTITY if k in group[0]}
      row.setdefault('attacker', 'none')
    else:
      row = dict(labels[i])
    for k in metrics:
      if all(k in r and r[k] is not None for r in group):
        row.update(stats(k, [r[k] for r in group]))
    for k in CURVES:
      if all(k in r for r in group):
        curves = np.asarray([r[k] for r in group], np.float64)
        row[k] = curves.mean(axis=0).tolist()
        row[k + '_std'] = curves[:, :, 1].std(axis=0).tolist()
    out.append(row)
  return out


def stats(name: str, values) -> dict:
  """{name: mean, name_std: std, name_seeds: [values]}."""
  v = np.asarray(values, np.float64)
  return {name: float(v.mean()), f'{name}_std': float(v.std()), f'{name}_seeds': v.tolist()}


# Two-sided 97.5% quantiles of Student's t for n - 1 = 1 .. 30 degrees of freedom (beyond: 1.96).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042)


@dataclasses.dataclass(frozen=True)
class Paired:
  """a - b per seed: mean, std (population), the per-seed values, a 95% t-interval of the mean
  (None with one seed) and which sign the differences take."""
  mean: float
  std: float
  per_seed: tuple
  ci95: tuple | None
  sign: str

  @property
  def settled(self) -> bool:
    """Whether the 95% interval excludes 0: the sign of the effect is settled by these seeds."""
    return self.ci95 is not None and (self.ci95[0] > 0 or self.ci95[1] < 0)

  def as_dict(self) -> dict:
    return dataclasses.asdict(self) | {'settled': self.settled}


def paired(a, b) -> Paired:
  """Paired differences a - b (same seeds, same order)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1 or not len(a):
    raise ValueError(f'paired differences need equally many seeds, got {a.shape} and {b.shape}')
  d = a - b
  n = len(d)
  ci = None
  if n > 1:
    half = (_T975[n - 2] if n - 1 <= len(_T975) else 1.96) * d.std(ddof=1) / math.sqrt(n)
    ci = (float(d.mean() - half), float(d.mean() + half))
  if n < 2:
    sign = 'one seed'
  elif (d < 0).all():
    sign = 'lower on every seed'
  elif (d > 0).all():
    sign = 'higher on every seed'
  elif (d == 0).all():
    sign = 'equal on every seed'
  else:
    sign = 'not the same sign on every seed'
  return Paired(float(d.mean()), float(d.std()), tuple(float(x) for x in d), ci, sign)
