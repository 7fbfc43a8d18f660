"""One line per claim of the paper an experiment tests, computed from the measured rows.

Attack accuracy is the privacy metric compared (lower = more private); a difference counts only
when it exceeds the spread over seeds (|diff| > std_a + std_b), otherwise it reads 'within noise'.
Every defended row is also compared with the `random` control of its group seed by seed (`_paired`):
the protection attributable to the defense's mechanism is that paired difference, not the drop from
no defense.
"""

import numpy as np


def _find(rows, **labels):
  for r in rows:
    if all(str(r.get(k)) == str(v) for k, v in labels.items()):
      return r
  return None


def _cmp(a: dict, b: dict, metric: str = 'attack_acc') -> str:
  """'41.2% lower than 80.3%' / '... higher than ...' / '... within noise of ...', a against b."""
  d = a[metric] - b[metric]
  noise = a.get(metric + '_std', 0) + b.get(metric + '_std', 0)
  word = 'within noise of' if abs(d) <= noise else ('lower than' if d < 0 else 'higher than')
  f = (lambda v: f'{100 * v:.1f}%') if metric.endswith('acc') else (lambda v: f'{v:.4f}')
  return f'{f(a[metric])}, {word} {f(b[metric])}'


def _paired(a: dict, control: dict, metric: str = 'attack_acc') -> str:
  """a minus the control, per seed (same seed = same data, classifier and attacker seed): mean ±
  std in points, the per-seed values and whether the sign holds on every seed."""
  d = 100 * (np.asarray(a[metric + '_seeds']) - np.asarray(control[metric + '_seeds']))
  if len(d) < 2:
    sign = 'one seed'
  elif (d < 0).all():
    sign = 'lower on every seed'
  elif (d > 0).all():
    sign = 'higher on every seed'
  elif (d == 0).all():
    sign = 'equal on every seed'
  else:
    sign = 'not the same sign on every seed'
  return (f'{d.mean():+.1f} ± {d.std():.1f} points (per seed {" / ".join(f"{x:+.1f}" for x in d)}'
          f'; {sign})')


def _vs_control(where: str, name: str, r: dict, control: dict | None) -> list[str]:
  if control is None or r is control:
    return []
  return [f'{where}: {name} minus the random control, paired: {_paired(r, control)}']


def _vs_baseline(rows, group_keys, defense_key, baseline, defended, control='random control'):
  """Lines comparing each defended row with the baseline row of the same group, and with the
  group's `control` row seed by seed."""
  lines = []
  groups = []
  for r in rows:
    g = tuple((k, r.get(k)) for k in group_keys)
    if g not in groups:
      groups.append(g)
  for g in groups:
    base = _find(rows, **dict(g), **{defense_key: baseline})
    if base is None:
      continue
    ctl = _find(rows, **dict(g), **{defense_key: control})
    for name in defended:
      r = _find(rows, **dict(g), **{defense_key: name})
      if r is not None:
        where = ', '.join(f'{k}={v}' for k, v in g)
        lines.append(f'{where}: {name} attack accuracy {_cmp(r, base)} ({baseline})')
        lines += _vs_control(where, name, r, ctl)
  return lines


def table2(rows):
  return _vs_baseline(rows, ('atta_loss', 'attacker'), 'defe_loss', 'No-defense',
                      ('MSE', 'PSNR', 'random control'))


def table3(rows):
  return _vs_baseline(rows, ('atta_data', 'attacker'), 'defe_data', 'No-defense',
                      ('D1', 'D2', 'random control'))


def table4(rows):
  return _vs_baseline(rows, ('architecture', 'attacker'), 'defense', 'w/o',
                      ('w/', 'random control'))


def table5(rows):
  lines = _vs_baseline(rows, ('architecture', 'guidance', 'attacker'), 'defense', 'w/o',
                       ('w/', 'w/ ensemble of 3', 'random control'))
  for r in rows:
    if r['defense'] != 'w/ ensemble of 3':
      continue
    g = {k: r[k] for k in ('architecture', 'guidance', 'attacker')}
    single = _find(rows, **g, defense='w/')
    if single is not None:
      where = ', '.join(f'{k}={v}' for k, v in g.items())
      lines.append(f'{where}: the ensemble substitute {_cmp(r, single)} (one substitute); conf '
                   f'dist {r["conf_dist"]:.5f} vs {single["conf_dist"]:.5f}')
  return lines


def table6(rows):
  lines = []
  for attacker in dict.fromkeys(r['attacker'] for r in rows):
    lpa = [r for r in rows if r['attacker'] == attacker and r['defense'] == 'lpa']
    accs = [f'{r["eps"]}: {100 * r["attack_acc"]:.1f}%' for r in lpa]
    mono = all(b['attack_acc'] <= a['attack_acc'] + a['attack_acc_std'] + b['attack_acc_std']
               for a, b in zip(lpa, lpa[1:]))
    lines.append(f'attacker {attacker}: LPA attack accuracy over eps ({"; ".join(accs)}) '
                 f'{"falls (within noise) as eps grows" if mono else "does not fall monotonically"}')
    for r in lpa:
      ctl = _find(rows, attacker=attacker, eps=r['eps'], defense='random control')
      if ctl is not None:
        where = f'attacker {attacker}, eps {r["eps"]}'
        lines.append(f'{where}: LPA attack accuracy {_cmp(r, ctl)} '
                     f'(the random control at the same radius)')
        lines += _vs_control(where, 'LPA', r, ctl)
  return lines


def table10(rows):
  lines = []
  for attacker in dict.fromkeys(r['attacker'] for r in rows):
    base = _find(rows, defense='none', attacker=attacker)
    ctl = _find(rows, defense='random', attacker=attacker)
    for name in ('lpa', 'random'):
      r = _find(rows, defense=name, attacker=attacker)
      if r is not None and base is not None:
        lines.append(f'attacker {attacker}: {name} attack accuracy {_cmp(r, base)} '
                     f'(no defense, same attacker)')
        lines += _vs_control(f'attacker {attacker}', name, r, ctl)
  return lines


def fig8(rows):
  lines = []
  for attacker in dict.fromkeys(r['attacker'] for r in rows):
    for name in dict.fromkeys(r['defense'] for r in rows if r['defense'] != 'none'):
      pts = [r for r in rows if r['attacker'] == attacker and r['defense'] == name]
      best = min(pts, key=lambda r: r['attack_acc'])
      lines.append(f'attacker {attacker}, {name}: lowest attack accuracy '
                   f'{100 * best["attack_acc"]:.1f}% at {best["param"]}={best["value"]} '
                   f'(conf. dist. {best["conf_dist"]:.4f}, model acc. '
                   f'{100 * best["model_acc"]:.1f}%)')
    for r in rows:
      if r['attacker'] == attacker and r['defense'] == 'lpa':
        ctl = _find(rows, attacker=attacker, defense='random', value=r['value'])
        lines += _vs_control(f'attacker {attacker}, {r["param"]}={r["value"]}', 'lpa', r, ctl)
  return lines


def fig10(rows):
  lines = []
  for attacker in dict.fromkeys(r['attacker'] for r in rows):
    mine = [r for r in rows if r['attacker'] == attacker]
    area = {r['defense']: sum(p[1] for p in r['eps_eta']) / len(r['eps_eta']) for r in mine}
    order = sorted(area, key=area.get, reverse=True)
    lines.append(f'attacker {attacker}: mean fraction of reconstructions with error > eps over the '
                 f'grid, best defense first: ' + ', '.join(f'{d} {area[d]:.3f}' for d in order))
  return lines


CLAIMS = {'table2': table2, 'table3': table3, 'table4': table4, 'table5': table5,
          'table6': table6,
          'table10': table10, 'fig8': fig8, 'fig10': fig10}
