"""Does LPA protect through gradient alignment? Controls and zero-robust attackers in one table.

  python -m launch.attribution --config=configs/digits.py --seeds=0,1,2 --workdir=runs/attribution
  python -m launch.attribution --config=configs/digits.py --seeds=0,1,2 --table=ablation \\
      --attackers=floor,none --workdir=runs/attribution   # the levers of gradient matching
Writes <workdir>/<table>.md and .json (rows none, random and lpa in the paper's and the zero-free
crafting space; attack accuracy and reconstruction error per attacker; paired lpa - random).
"""

from absl import app, flags

from launch import common
from mip_jax import attribution
from mip_jax.attacks import adaptive

flags.mark_flags_as_required(['config'])
TABLE = flags.DEFINE_enum('table', 'attribution', list(attribution.TABLES),
                          'attribution: none / random / lpa in both spaces; ablation: the levers.')
ROWS = flags.DEFINE_list('rows', None, "Only these rows of the table, by label (e.g. 'none,random "
                        "(zero-free),lpa (zero-free)'); default: all.")
ATTACKERS = flags.DEFINE_list('attackers', list(attribution.ATTACKERS),
                              'Attackers (columns): ' + ','.join(adaptive.ATTACKERS))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  for kind in ATTACKERS.value:
    adaptive.check(kind)
  common.join_cluster()
  common.log_devices()
  config = common.CONFIG.value
  workdir = common.workdir_for(config)
  seeds = common.SEEDS.value or [config.seed]
  rows = attribution.select(attribution.TABLES[TABLE.value], ROWS.value)
  result = attribution.run(config, workdir, seeds=seeds, rows=rows,
                           attackers=tuple(ATTACKERS.value), name=TABLE.value)
  if common.is_main_process():
    print(result['table'])
    print(f'{TABLE.value}.md and .json written to {workdir}')


if __name__ == '__main__':
  app.run(main)
