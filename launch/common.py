"""Flags every launcher shares: --config (ml_collections config file) and --workdir."""

import os
import sys

import jax
from absl import flags, logging
from ml_collections import config_flags

from mip_jax import validation

CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/digits.py or configs/digits.py:tiny; '
    'override fields with --config.field=value.', lock_config=True)
validation.install_flag_checks(CONFIG)  # unknown keys and bad values: one sentence, exit 1
WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, results.json/.md, figures. '
                              'Default: runs/<dataset>.')


SEEDS = flags.DEFINE_list('seeds', None, 'Run once per seed (in <workdir>/seed_<s>) and write the '
                          'mean and std over seeds, e.g. --seeds=0,1,2. Default: config.seed only.')


def workdir_for(config) -> str:
  return WORKDIR.value or os.path.join('runs', config.dataset)


def run_protocol(defenses, attackers=None) -> None:
  """Runs the protocol for `defenses` with the --config/--workdir flags and prints the table.

  A missing dataset ends the process with its instructions and a non-zero exit code.
  """
  from mip_jax import experiment  # noqa: late import keeps `--help` fast
  from mip_jax.data import DatasetNotFoundError
  log_devices()
  config = CONFIG.value
  workdir = workdir_for(config)
  try:
    if SEEDS.value:
      result = experiment.run_seeds(config, workdir, SEEDS.value, defenses_to_run=defenses,
                                    attackers=attackers)
    else:
      result = experiment.run(config, workdir, defenses_to_run=defenses, attackers=attackers)
  except (DatasetNotFoundError, validation.ConfigError) as e:
    sys.exit(f'error: {e}')
  print(result['table'])
  print(f'results written to {workdir}')


def log_devices() -> None:
  logging.info('JAX %s, backend %s, devices: %s', jax.__version__, jax.default_backend(),
               jax.devices())
