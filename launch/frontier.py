"""Which defense to choose: every defense over its knob against the attacker suite, over seeds.

  python -m launch.frontier --config=configs/mnist5k.py --seeds=0,1,2 --workdir=runs/frontier
  python -m launch.frontier --config=configs/digits.py --seeds=0,1,2 --workdir=runs/frontier_digits
  python -m launch.frontier --config=configs/digits.py:tiny --workdir=/tmp/f   # seconds
  python -m launch.frontier --config=configs/mnist5k.py --seeds=0 --workdir=runs/frontier --convergence
  python -m launch.frontier --config=configs/digits.py --families=none,random,topk --attackers=floor,label
Writes <workdir>/frontier.md (the best setting of each defense at each budget, on the attacker's
queries and on the private test set, paired against the `random` control), frontier.json (with
`recommended`: per budget the defense and the overrides that reproduce it with launch.compare) and
frontier.png. Seeds run in <workdir>/seed_<s>; every measured cell is saved, so a killed sweep
resumes where it stopped.
"""

import sys

from absl import app, flags

from launch import common

flags.mark_flags_as_required(['config'])
FAMILIES = flags.DEFINE_list('families', None, 'Only these families of the grid (e.g. none,random,topk; '
                             'default: config.frontier.families, all).')
CONVERGENCE = flags.DEFINE_bool('convergence', False, 'Instead: the undefended floor and label '
                                 'attackers against training epochs (convergence.md / .png).')
REPORT = flags.DEFINE_bool('report_only', False, 'Measure nothing: write the frontier of the cells '
                           'saved for every seed so far (a sweep still running, or cut short).')
ATTACKERS = flags.DEFINE_list('attackers', None, 'Attackers of the suite (mip_jax/attacks/suite.py) '
                              'to run on every setting, in one phase (default: config.frontier.cheap '
                              'everywhere, then config.frontier.suite on the front settings).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from mip_jax.data import DatasetNotFoundError  # noqa: late import keeps `--help` fast
  from mip_jax.runtime import console, parallel
  from mip_jax.studies import frontier
  common.join_cluster()
  config = common.CONFIG.value
  with config.unlocked():
    if FAMILIES.value:
      config.frontier.families = tuple(FAMILIES.value)
    if ATTACKERS.value:
      config.frontier.cheap = config.frontier.suite = tuple(ATTACKERS.value)
  workdir = common.workdir_for(config)
  log_file = console.to_workdir(workdir)  # library records to <workdir>/log.txt, not the terminal
  common.log_devices()
  seeds = common.SEEDS.value or [config.seed]
  try:
    if CONVERGENCE.value:
      result = frontier.convergence(config, workdir, seeds=seeds)
    else:
      result = frontier.run(config, workdir, seeds=seeds, report_only=REPORT.value)
  except (DatasetNotFoundError, ValueError) as e:
    sys.exit(f'error: {e}')
  if parallel.is_main_process():
    name = 'convergence' if CONVERGENCE.value else 'frontier'
    print(result['markdown'])
    print(f'written to {workdir}: {name}.md, {name}.json, {name}.png; log: {log_file}')


if __name__ == '__main__':
  app.run(main)
