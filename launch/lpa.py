"""LPA against the undefended baseline: rows `none` and `lpa` (the paper's Table I, Algorithm 1).

  python -m launch.lpa --config=configs/digits.py --workdir=runs/digits
  python -m launch.lpa --config=configs/facescrub.py --config.lpa.eps=0.002   # Table VI sweep point
  python -m launch.lpa --config=configs/digits.py --config.lpa.mode=per_example
"""

from absl import app, flags

from launch import common

flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  common.run_protocol(('none', 'lpa'))


if __name__ == '__main__':
  app.run(main)
