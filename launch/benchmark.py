"""Times the decoder training step and the LPA alignment step; writes JSON and prints it.

Also the per-sample serving latency (Tables VIII, IX) of plain inference, LPA online crafting and the
VAE at batch sizes 1 and 256: fields `infer_ms_per_sample`, `lpa_online_ms_per_sample`,
`vae_ms_per_sample`, each a dict {"1": ms, "256": ms}. With --workdir they are also written to
`<workdir>/latency.json` and that workdir's results.md gains them in its Table IX.

With --serving_defenses (and --workdir, a run in which they were fitted) it also times serving each
of them at --serving_batch_size through `Defender` (the defense alone, and classifier + defense) and
through `launch.serve`'s HTTP endpoint: `serving` in the JSON, vectors/s. Per core:

  taskset -c 0 python -m launch.benchmark --workdir=runs/serve --serving_defenses=none,tailfloor

  python -m launch.benchmark --config=configs/mnist.py --json_out=bench.json
  python -m launch.benchmark --workdir=runs/digits   # its saved config; + Table IX time
  python -m launch.benchmark --config=configs/facescrub.py --config.decoder.batch_size=64
On a GPU machine: pip install -e '.[cuda12]' first; the same command then times the GPU.
"""

import json
import os

from absl import app, flags

from launch import common
from mip_jax.runtime import console
from mip_jax.studies import benchmarking, report

JSON_OUT = flags.DEFINE_string('json_out', None, 'Where to write the figures as JSON.')
REPEATS = flags.DEFINE_integer('repeats', 10, 'Timed repetitions per step (median reported).')
LATENCY_BATCH_SIZES = flags.DEFINE_list('latency_batch_sizes', ['1', '256'],
                                        'Batch sizes of the serving-latency figures.')
SERVING_DEFENSES = flags.DEFINE_list('serving_defenses', [], 'Defenses fitted in --workdir whose '
                                     'serving throughput to time (Defender and HTTP).')
SERVING_BATCH_SIZE = flags.DEFINE_integer('serving_batch_size', 256, 'Vectors per serving call.')
LPA_REPEATS = flags.DEFINE_integer('lpa_repeats', 2, 'Timed LPA online crafting calls per batch '
                                   'size (each runs config.lpa.steps rounds).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if common.WORKDIR.value:  # library records to <workdir>/log.txt, not the terminal
    console.say('log: %s', console.to_workdir(common.WORKDIR.value))
  else:
    console.to_terminal()
  common.log_devices()
  config = common.trained_config()
  result = benchmarking.run(config, repeats=REPEATS.value)
  latency = benchmarking.serving_latency(
      config, batch_sizes=[int(b) for b in LATENCY_BATCH_SIZES.value], repeats=REPEATS.value,
      lpa_repeats=LPA_REPEATS.value)
  result.update(latency)
  if SERVING_DEFENSES.value:
    if not common.WORKDIR.value:
      raise app.UsageError('--serving_defenses needs --workdir (a run in which they were fitted)')
    result['serving'] = benchmarking.serving_throughput(
        common.WORKDIR.value, config, SERVING_DEFENSES.value,
        batch_size=SERVING_BATCH_SIZE.value, repeats=REPEATS.value)
  if common.WORKDIR.value:
    report.write_latency(common.WORKDIR.value, latency)
    print(f'latency written to {os.path.join(common.WORKDIR.value, report.LATENCY_FILE)}')
  text = json.dumps(result, indent=2)
  print(text)
  if JSON_OUT.value:
    with open(JSON_OUT.value, 'w') as f:
      f.write(text + '\n')


if __name__ == '__main__':
  app.run(main)
