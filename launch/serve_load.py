"""Load test of `launch.serve` on loopback: p50/p99 latency, requests/s and server memory, per defense.

  python -m launch.compare --config=configs/digits.py --workdir=runs/digits --defenses=none,lpa,vae
  python -m launch.serve_load --config=configs/digits.py --workdir=runs/digits --defenses=vae,lpa \
      --clients=1,4 --batch_sizes=1,8 --requests=200 --max_seconds=60 --json_out=load.json

For each defense a `launch.serve` process is started on 127.0.0.1 (same --config, overrides and
--workdir as this command), warmed up (every batch size compiled), then loaded by 1, 4, ...
keep-alive clients with `--requests` requests per cell, or fewer when `--max_seconds` runs out
(LPA crafts online: each request runs config.lpa.steps second-order rounds). Every vae and lpa
answer is checked (feasible, label-preserving, moved) against the clean vectors; failed requests are
counted. The server's resident memory is sampled after warm-up and after the last cell. Figures are
for comparing settings on one machine; nothing here asserts a timing.
"""

import json
import sys

import numpy as np
from absl import app, flags

from launch import common

flags.mark_flags_as_required(['config', 'workdir'])
DEFENSES = flags.DEFINE_list('defenses', ['vae', 'lpa'], 'Defenses to serve, one server each.')
CLIENTS = flags.DEFINE_list('clients', ['1', '4'], 'Concurrent clients of each cell.')
BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['1', '8'], 'Images per request of each cell.')
REQUESTS = flags.DEFINE_integer('requests', 200, 'Requests per cell (the bound).')
MAX_SECONDS = flags.DEFINE_float('max_seconds', 60.0, 'Wall-clock bound per cell.')
JSON_OUT = flags.DEFINE_string('json_out', None, 'Where to write the figures as JSON.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from mip_jax.runtime import console
  from mip_jax.serving import loadgen  # noqa: late import keeps `--help` fast
  from mip_jax.serving.defender import Defender
  console.to_terminal()  # the table and warnings, not Orbax's records of the restore
  config = common.CONFIG.value
  workdir = common.workdir_for(config)
  classifier = Defender.from_workdir(workdir, config, 'none')  # clean vectors for the checks
  # The server gets this command's config file, overrides and workdir.
  server_args = [a for a in sys.argv[1:] if a.startswith(('--config', '--workdir'))]
  rng = np.random.default_rng(0)
  rows = []
  for defense in DEFENSES.value:
    checked = defense in ('vae', 'lpa')  # the others need not move or keep every vector
    with loadgen.serve_process(server_args, defense) as server:
      cells = []
      for b in map(int, BATCH_SIZES.value):
        images = [rng.uniform(size=(b, *classifier.image_shape)).astype(np.float32)
                  for _ in range(4)]
        bodies = [json.dumps({'images': x.tolist()}).encode() for x in images]
        check = (loadgen.answer_check([classifier.classify(x) for x in images],
                                      eps=config[defense].eps) if checked else None)
        loadgen.load(server.url, bodies, clients=1, requests=len(bodies), max_seconds=600,
                     check=check)  # warm-up: compiles this batch size
        cells.append((b, bodies, check))
      rss_warm = server.rss_bytes()
      for b, bodies, check in cells:
        for c in map(int, CLIENTS.value):
          stats = loadgen.load(server.url, bodies, clients=c, requests=REQUESTS.value,
                               max_seconds=MAX_SECONDS.value, check=check)
          stats.update(defense=defense, batch_size=b, images_per_s=stats['requests_per_s'] * b)
          rows.append(stats)
          print(f'{defense} b={b} clients={c}: {stats["requests"]} requests, '
                f'{stats["failed"]} failed, p50 {stats["p50_ms"]:.1f} ms, '
                f'p99 {stats["p99_ms"]:.1f} ms, {stats["requests_per_s"]:.1f} req/s', flush=True)
          for e in stats['errors']:
            print(f'  {e}')
      rss_end = server.rss_bytes()
      for row in rows:
        if row['defense'] == defense:
          row.update(rss_warm_mb=rss_warm / 2**20, rss_end_mb=rss_end / 2**20)
  print(table(rows))
  if JSON_OUT.value:
    with open(JSON_OUT.value, 'w') as f:
      json.dump(rows, f, indent=2)
  if any(r['failed'] for r in rows):
    sys.exit('error: some requests failed (see above)')


def table(rows: list[dict]) -> str:
  lines = ['| defense | batch | clients | requests | failed | p50 ms | p99 ms | req/s | images/s '
           '| server RSS MB (warm -> end) |', '|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f'| {r["defense"]} | {r["batch_size"]} | {r["clients"]} | {r["requests"]} | '
                 f'{r["failed"]} | {r["p50_ms"]:.1f} | {r["p99_ms"]:.1f} | '
                 f'{r["requests_per_s"]:.1f} | {r["images_per_s"]:.1f} | '
                 f'{r["rss_warm_mb"]:.0f} -> {r["rss_end_mb"]:.0f} |')
  return '\n'.join(lines)


if __name__ == '__main__':
  app.run(main)
