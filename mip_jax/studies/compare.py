"""Defenses side by side against attackers, over seeds: `launch.compare`, `make demo`, the Table I layout.

  result = compare.run(config, workdir, defenses=['none', 'random', 'lpa'], attackers=['none', 'floor'])
  result = compare.run(config, workdir, ..., seeds=[0, 1, 2])   # seed_<s>/ each, then mean ± std

One seed writes `results.json`, `results.md` (the paper's Table I layout), `figures/reconstructions.png`
and `figures/tradeoff.png` in `workdir`; several seeds write each seed's files in `<workdir>/seed_<s>`
and the mean rows (and their trade-off figure) in `workdir`. A study on the engine: every cell is
saved as it is measured, so a rerun reuses the measured rows and a killed run resumes.
"""

import os

from mip_jax import defenses as registry
from mip_jax.attacks import suite
from mip_jax.protocol import run_config, validation
from mip_jax.studies import engine, report

# Figures every run writes, relative to its workdir (with several seeds: the trade-off of the mean
# rows in the top workdir, reconstructions per seed in seed_<s>/).
FIGURES = {'reconstructions': os.path.join('figures', 'reconstructions.png'),
           'tradeoff': os.path.join('figures', 'tradeoff.png')}


def study(defenses, attackers=None) -> engine.Study:
  """Every defense against every attacker, defense-major (the row order of results.md)."""
  names = validation.check_names('defense', defenses, registry.REGISTRY)
  attackers = list(attackers or ['none'])
  for a in attackers:
    try:
      suite.check(a)
    except ValueError as e:
      raise validation.ConfigError(str(e)) from None
  return engine.Study('compare', [({'defense': d, 'attacker': a}, engine.Cell(d, (), a))
                                  for d in names for a in attackers])


def run(config, workdir: str, *, defenses=('none',), attackers=None, seeds=None,
        mesh=None) -> dict:
  """Measures the defenses (against the attackers) and writes the results files; returns
  {'dataset', 'rows', 'table'} (and 'per_seed' with several seeds)."""
  spec = study(defenses, attackers)
  # serve/benchmark/Defender read it when given no --config.
  run_config.save(workdir, config)
  if seeds is None:  # one run in workdir itself
    runner = engine.Runner(config, workdir, mesh=mesh)
    rows = runner.rows(spec.cells)
    return {'dataset': config.dataset, 'rows': rows,
            'table': _write_seed(runner, spec, rows, workdir)}

  def each_seed(runner, rows):
    run_config.save(runner.workdir, runner.config)
    _write_seed(runner, spec, rows, runner.workdir)

  result = engine.run(spec, config, workdir, seeds=seeds, mesh=mesh, each_seed=each_seed)
  rows = result.rows
  table = report.write_results(workdir, dataset=config.dataset, config=config.to_dict(), rows=rows,
                               extra={'seeds': result.seeds})
  report.save_tradeoff(os.path.join(workdir, FIGURES['tradeoff']), config.dataset, rows)
  return {'dataset': config.dataset, 'rows': rows, 'table': table, 'per_seed': result.per_seed}


def _write_seed(runner, spec, rows, workdir) -> str:
  table = report.write_results(workdir, dataset=runner.config.dataset,
                               config=runner.config.to_dict(), rows=rows)
  recons = {report.row_label(row): runner.reconstructions(cell)
            for row, cell in zip(rows, spec.cells)}
  report.save_reconstructions(os.path.join(workdir, FIGURES['reconstructions']),
                              runner.figure_images(), recons)
  report.save_tradeoff(os.path.join(workdir, FIGURES['tradeoff']), runner.config.dataset, rows)
  return table
