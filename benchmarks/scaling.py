"""LPA crafting throughput (vectors/s) on 1, 2, 4, ... devices of this machine, in one run, with the
scaling ratios (speedup and efficiency against one device).

  python -m benchmarks.scaling --config=configs/mnist.py --json_out=scaling.json       # weak scaling
  python -m benchmarks.scaling --config=configs/mnist.py --global_batch=512            # strong scaling
  XLA_FLAGS=--xla_force_host_platform_device_count=4 \
    python -m benchmarks.scaling --config=configs/digits.py:tiny   # CPU, fake devices: a smoke test
On a GPU machine: pip install -e '.[cuda12]' first (benchmarks/gpu_check.sh runs this script).
Fake CPU devices share the same cores: their figures test the script, not the scaling.
"""

import json

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mip_jax.studies import benchmarking

CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/mnist.py.',
                                         lock_config=True)
PER_DEVICE_BATCH = flags.DEFINE_integer('per_device_batch', None, 'Weak scaling: vectors per device '
                                        '(default config.lpa.batch_size).')
GLOBAL_BATCH = flags.DEFINE_integer('global_batch', None, 'Strong scaling: one batch size split '
                                    'over every device count instead.')
MAX_DEVICES = flags.DEFINE_integer('max_devices', None, 'Largest device count (default: all).')
REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed crafting calls per device count (median).')
JSON_OUT = flags.DEFINE_string('json_out', None, 'Where to write the figures as JSON.')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  available = min(jax.device_count(), MAX_DEVICES.value or jax.device_count())
  logging.info('JAX %s, backend %s, devices: %s', jax.__version__, jax.default_backend(),
               jax.devices())
  result = benchmarking.craft_scaling(CONFIG.value, counts=benchmarking.device_counts(available),
                                      per_device_batch=PER_DEVICE_BATCH.value,
                                      global_batch=GLOBAL_BATCH.value, repeats=REPEATS.value)
  print(benchmarking.scaling_table(result))
  if JSON_OUT.value:
    with open(JSON_OUT.value, 'w') as f:
      json.dump(result, f, indent=2)
      f.write('\n')


if __name__ == '__main__':
  app.run(main)
