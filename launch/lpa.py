"""LPA against the undefended baseline: rows `none` and `lpa` (the paper's Table I, Algorithm 1).

  python -m launch.lpa --config=configs/digits.py --workdir=runs/digits
  python -m launch.lpa --config=configs/facescrub.py --config.lpa.eps=0.002   # Table VI sweep point
  python -m launch.lpa --config=configs/digits.py --config.lpa.mode=per_example
"""

import sys

from absl import app, flags

from launch import common
from mip_jax import experiment
from mip_jax.data import DatasetNotFoundError

flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  common.log_devices()
  config = common.CONFIG.value
  try:
    result = experiment.run(config, common.workdir_for(config), defenses_to_run=('none', 'lpa'))
  except DatasetNotFoundError as e:
    sys.exit(f'error: {e}')
  print(result['table'])
  print(f'results written to {common.workdir_for(config)}')


if __name__ == '__main__':
  app.run(main)
