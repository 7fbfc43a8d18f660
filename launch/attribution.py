"""Does LPA protect through gradient alignment? Controls and zero-robust attackers in one table.

  python -m launch.attribution --config=configs/digits.py --seeds=0,1,2 --workdir=runs/attribution
  python -m launch.attribution --config=configs/digits.py --seeds=0,1,2 --table=ablation \\
      --attackers=floor,none --workdir=runs/attribution   # the levers of gradient matching
Writes <workdir>/<table>.md and .json (rows none, random and lpa in the paper's and the zero-free
crafting space; attack accuracy and reconstruction error per attacker; paired lpa - random).
"""

import os

from absl import app, flags

from launch import common
from mip_jax.attacks import suite
from mip_jax.studies import attribution

flags.mark_flags_as_required(['config'])
TABLE = flags.DEFINE_enum('table', 'attribution', list(attribution.TABLES),
                          'attribution: none / random / lpa in both spaces; ablation: the levers.')
ROWS = flags.DEFINE_list('rows', None, "Only these rows of the table, by label (e.g. 'none,random "
                        "(zero-free),lpa (zero-free)'); default: all.")
ATTACKERS = flags.DEFINE_list('attackers', list(attribution.ATTACKERS),
                              'Attackers (columns), of the suite: ' + ','.join(suite.BASES))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  for kind in ATTACKERS.value:
    suite.check(kind)
  from mip_jax.runtime import console, parallel  # noqa: late import keeps `--help` fast
  common.join_cluster()
  config = common.CONFIG.value
  workdir = common.workdir_for(config)
  log_file = console.to_workdir(workdir)  # library records to <workdir>/log.txt, not the terminal
  common.log_devices()
  seeds = common.SEEDS.value or [config.seed]
  rows = attribution.select(attribution.TABLES[TABLE.value], ROWS.value)
  result = attribution.run(config, workdir, seeds=seeds, rows=rows,
                           attackers=tuple(ATTACKERS.value), name=TABLE.value)
  if parallel.is_main_process():
    print(result['table'])
    for path in (f'{TABLE.value}.md', f'{TABLE.value}.png', log_file):
      print(os.path.join(workdir, path))


if __name__ == '__main__':
  app.run(main)
