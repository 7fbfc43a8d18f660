"""Times the decoder training step and the LPA alignment step; writes JSON and prints it.

  python -m launch.benchmark --config=configs/mnist.py --json_out=bench.json
  python -m launch.benchmark --config=configs/facescrub.py --config.decoder.batch_size=64
On a GPU machine: pip install -e '.[cuda12]' first; the same command then times the GPU.
"""

import json

from absl import app, flags

from launch import common
from mip_jax import benchmarking

flags.mark_flags_as_required(['config'])
JSON_OUT = flags.DEFINE_string('json_out', None, 'Where to write the figures as JSON.')
REPEATS = flags.DEFINE_integer('repeats', 10, 'Timed repetitions per step (median reported).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  common.log_devices()
  result = benchmarking.run(common.CONFIG.value, repeats=REPEATS.value)
  text = json.dumps(result, indent=2)
  print(text)
  if JSON_OUT.value:
    with open(JSON_OUT.value, 'w') as f:
      f.write(text + '\n')


if __name__ == '__main__':
  app.run(main)
