"""Flags every launcher shares: --config (ml_collections config file) and --workdir."""

import os

import jax
from absl import flags, logging
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/digits.py or configs/digits.py:tiny; '
    'override fields with --config.field=value.', lock_config=True)
WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, results.json/.md, figures. '
                              'Default: runs/<dataset>.')


def workdir_for(config) -> str:
  return WORKDIR.value or os.path.join('runs', config.dataset)


def log_devices() -> None:
  logging.info('JAX %s, backend %s, devices: %s', jax.__version__, jax.default_backend(),
               jax.devices())
