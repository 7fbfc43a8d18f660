"""The undefended model-inversion attack end to end (protocol steps 1-3, 6, 7).

  python -m launch.attack --config=configs/digits.py --workdir=runs/digits
"""

from absl import app, flags

from launch import common

flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  common.run_protocol(('none',))


if __name__ == '__main__':
  app.run(main)
