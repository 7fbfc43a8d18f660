"""LFP against the undefended baseline: rows `none` and `lfp` (the paper's Table I, Algorithms 2-3).

  python -m launch.lfp --config=configs/digits.py --workdir=runs/digits
  python -m launch.lfp --config=configs/digits.py --config.lfp.swap=True   # Discussion 3 variant
  python -m launch.lfp --config=configs/mnist.py --config.lfp.budget=0.1 --config.lfp.steps=0
"""

from absl import app, flags

from launch import common

flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  common.run_protocol(('none', 'lfp'))


if __name__ == '__main__':
  app.run(main)
