"""Serves a trained workdir's defended predictions over HTTP (Starlette + uvicorn).

  python -m launch.compare --config=configs/digits.py --workdir=runs/digits --defenses=none,lpa,vae
  python -m launch.serve --workdir=runs/digits --defense=vae --port=8000
  curl -s localhost:8000/health
  curl -s -X POST localhost:8000/defend -H 'content-type: application/json' \
       -d '{"images": [[[0.0, ...16 values], ...16 rows]]}'

Nothing is trained and no data is read here: the target classifier's checkpoint, the workdir's
config.json and the defense's serving artefact (written by launch.compare) are all it reads; a
missing one is an error naming what writes it. A --config given as well must match config.json (the
error names the fields that differ). --port=0 picks a free port; the
address is printed as `serving <defense> on http://HOST:PORT` once the server accepts requests.
"""

import sys

from absl import app, flags, logging

from launch import common

flags.mark_flags_as_required(['workdir'])
DEFENSE = flags.DEFINE_string('defense', 'vae', "Defense to serve: 'vae', 'lpa' (crafted online, "
                              'per example) or any registered defense.')
HOST = flags.DEFINE_string('host', '127.0.0.1', 'Address to listen on (loopback by default).')
PORT = flags.DEFINE_integer('port', 8000, 'TCP port; 0 picks a free one.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from mip_jax.runtime import checkpoints, console, train
  from mip_jax.serving import server as serving  # noqa: late import keeps `--help` fast
  from mip_jax.serving.defender import Defender
  console.to_terminal()  # the served address and warnings, not Orbax's records of the restore
  common.log_devices()
  config = common.trained_config()
  try:
    defender = Defender.from_workdir(common.WORKDIR.value, config, DEFENSE.value)
  except (ValueError, FileNotFoundError, train.StageNotTrainedError,
          checkpoints.StageMismatchError) as e:
    sys.exit(f'error: {e}')
  web_app = serving.make_app(defender, max_batch=config.serve.max_batch)
  sock = serving.bind(HOST.value, PORT.value)
  host, port = sock.getsockname()[:2]
  server = serving.make_server(web_app)
  # Printed once the socket listens: clients (and tests) read the real port from it.
  print(f'serving {defender.defense} on http://{host}:{port}', flush=True)
  logging.info('serving %s (%d classes, images %s) on http://%s:%d', defender.defense,
               defender.num_classes, defender.image_shape, host, port)
  server.run(sockets=[sock])


if __name__ == '__main__':
  app.run(main)
