"""Flags every launcher shares: --config (ml_collections config file) and --workdir."""

import os
import sys

import jax
from absl import flags, logging
from ml_collections import config_flags

from mip_jax.protocol import validation

CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/digits.py or configs/digits.py:tiny; '
    'override fields with --config.field=value.', lock_config=True)
validation.install_flag_checks(CONFIG)  # unknown keys and bad values: one sentence, exit 1
WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, results.json/.md, figures. '
                              'Default: runs/<dataset>.')


SEEDS = flags.DEFINE_list('seeds', None, 'Run once per seed (in <workdir>/seed_<s>) and write the '
                          'mean and std over seeds, e.g. --seeds=0,1,2. Default: config.seed only.')


# Several JAX processes (hosts): every process runs the same command with its own --process_id.
COORDINATOR = flags.DEFINE_string('coordinator_address', None, "Join a JAX cluster: process 0's "
                                  'host:port (with --num_processes and --process_id).')
NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Join a JAX cluster: how many processes.')
PROCESS_ID = flags.DEFINE_integer('process_id', None, "Join a JAX cluster: this process's index.")
DISTRIBUTED = flags.DEFINE_bool('distributed', False, 'Join the JAX cluster the environment '
                                'describes (SLURM, Open MPI, Cloud TPU, JAX_COORDINATOR_ADDRESS).')


def join_cluster() -> None:
  """`jax.distributed.initialize` from the flags above when asked; must run before any JAX work."""
  from mip_jax.runtime import parallel
  try:
    parallel.initialize(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value,
                        from_environment=DISTRIBUTED.value)
  except ValueError as e:
    sys.exit(f'error: {e}')


def workdir_for(config) -> str:
  return WORKDIR.value or os.path.join('runs', config.dataset)


def trained_config():
  """--config, checked against the one saved in --workdir; or, without --config, the saved one.

  Ends the process with a one-line error when neither is usable (launchers that use a trained
  workdir: serve, benchmark).
  """
  from mip_jax.protocol import run_config  # noqa: late import keeps `--help` fast
  if CONFIG.value is None and WORKDIR.value is None:
    sys.exit('error: give --workdir=DIR (a trained run directory; its config.json is used) or '
             '--config=configs/<dataset>.py')
  try:
    if CONFIG.value is None:
      return run_config.load(WORKDIR.value)
    if WORKDIR.value:
      run_config.check_matches(WORKDIR.value, CONFIG.value)
  except (FileNotFoundError, run_config.ConfigMismatchError) as e:
    sys.exit(f'error: {e}')
  return CONFIG.value


def run_protocol(defenses, attackers=None) -> None:
  """Runs the protocol for `defenses` with the --config/--workdir flags and prints the table and
  where its files are; library log records go to <workdir>/log.txt (`mip_jax.runtime.console`).

  A missing dataset ends the process with its instructions and a non-zero exit code.
  """
  from mip_jax.data import DatasetNotFoundError
  from mip_jax.runtime import console, parallel  # noqa: late import keeps `--help` fast
  from mip_jax.studies import compare
  join_cluster()
  config = CONFIG.value
  workdir = workdir_for(config)
  log_file = console.to_workdir(workdir)
  log_devices()
  try:
    result = compare.run(config, workdir, defenses=defenses, attackers=attackers,
                         seeds=SEEDS.value)
  except (DatasetNotFoundError, validation.ConfigError) as e:
    sys.exit(f'error: {e}')
  if parallel.is_main_process():  # process 0 wrote the files; the others would print the same
    print(result['table'])
    for name, path in [('results', 'results.md'), *compare.FIGURES.items(), ('log', log_file)]:
      print(f'{name}: {os.path.join(workdir, path)}')


def log_devices() -> None:
  logging.info('JAX %s, backend %s, process %d of %d, devices: %s (local: %d)', jax.__version__,
               jax.default_backend(), jax.process_index(), jax.process_count(), jax.devices(),
               jax.local_device_count())
