"""Every experiment of the paper as one command: the paper's tables and figures.

  python -m launch.paper --experiment=table6 --config=configs/digits.py --seeds=0,1,2 --workdir=runs/paper
  python -m launch.paper --experiment=table2 --config=configs/digits.py:tiny --workdir=/tmp/p  # seconds
Experiments: table2 (losses), table3 (attack data), table4 (architectures, Figure 5), table5
(diffusion attackers and an ensemble of substitutes, Figure 6), table6
(perturbation radius, Figure 7), table8 (time), table10 (adaptive attackers), fig3 (poisoned vs clean
vectors), fig8 (privacy/utility trade-off), fig10 (epsilon-eta curves). Writes <workdir>/<name>.md,
.json and PNGs; every seed runs in <workdir>/seed_<s>, shared by all experiments, so stages and
measured cells are reused and a killed run resumes.
"""

import sys

from absl import app, flags

from launch import common

flags.mark_flags_as_required(['config'])
EXPERIMENT = flags.DEFINE_string('experiment', None, 'table2, table3, table4, table5, table6, table8, '
                                 'table10, fig3, fig8 or fig10.', required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from mip_jax.data import DatasetNotFoundError
  from mip_jax.runtime import console, parallel
  from mip_jax.studies import paper  # noqa: late import keeps `--help` fast
  try:
    paper.check_name(EXPERIMENT.value)
  except ValueError as e:
    raise app.UsageError(str(e))
  common.join_cluster()
  config = common.CONFIG.value
  workdir = common.workdir_for(config)
  log_file = console.to_workdir(workdir)  # library records to <workdir>/log.txt, not the terminal
  common.log_devices()
  try:
    result = paper.run(EXPERIMENT.value, config, workdir, seeds=common.SEEDS.value)
  except DatasetNotFoundError as e:
    sys.exit(f'error: {e}')
  if parallel.is_main_process():
    print(result['markdown'])
    print(f'written to {workdir}: {", ".join(result["files"])}; log: {log_file}')


if __name__ == '__main__':
  app.run(main)
