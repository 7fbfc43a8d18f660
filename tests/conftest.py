"""Shared fixtures: a TFDS data_dir prepared once per session, tiny configs pointing at it, and one
prepared tiny digits run (classifier, evaluator, clean vectors) shared by every module."""

import dataclasses
import os
import shutil

import pytest

from configs import digits


def _memory_maps() -> int:
  try:
    with open('/proc/self/maps') as f:
      return sum(1 for _ in f)
  except OSError:  # not Linux: no such limit to watch
    return 0


@pytest.fixture(scope='module', autouse=True)
def _compiled_code_freed_when_it_piles_up():
  """Drops every compiled executable when a test module ends with many memory maps. XLA:CPU maps
  each executable's code into memory, and the suite compiles thousands (a model, a shape, a static
  setting each): kept for the whole session they reached the kernel's 65,530 maps per process
  (vm.max_map_count) two thirds of the way through, and XLA crashed compiling (SIGSEGV / SIGABRT
  in test_vae). Past 20,000 (room for any one module), the next modules recompile what they use."""
  yield
  if _memory_maps() > 20_000:
    import jax
    jax.clear_caches()


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A private TFDS data_dir (tests never touch ~/tensorflow_datasets)."""
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture
def tiny_config(data_dir):
  c = digits.get_config('tiny')
  c.data_dir = data_dir
  return c


def _listing(root: str) -> list[str]:
  return sorted(os.path.relpath(os.path.join(d, f), root)
                for d, _, names in os.walk(root) for f in names)


@pytest.fixture(scope='session')
def tiny_setup(data_dir, tmp_path_factory):
  """`experiment.prepare` of the tiny digits config, once per session. Read only: a test that
  trains, crafts or caches anything in a workdir takes `tiny_setup_copy` instead. The session fails
  at teardown if a file appeared in (or left) this workdir."""
  from mip_jax.protocol import experiment
  c = digits.get_config('tiny')
  c.data_dir = data_dir
  setup = experiment.prepare(c, str(tmp_path_factory.mktemp('tiny_shared')))
  files = _listing(setup.workdir)
  yield setup
  assert _listing(setup.workdir) == files, 'a test wrote into the shared tiny workdir'


@pytest.fixture(scope='session')
def tiny_setup_copy(tiny_setup, tmp_path_factory):
  """`tiny_setup_copy(name)`: the shared setup in a workdir of its own (a copy of the trained
  classifier and evaluator stages) with its own config copy, for tests that write."""

  def make(name: str):
    workdir = str(tmp_path_factory.mktemp(name))
    shutil.copytree(tiny_setup.workdir, workdir, dirs_exist_ok=True)
    return dataclasses.replace(tiny_setup, workdir=workdir, clean=dict(tiny_setup.clean),
                               config=tiny_setup.config.copy_and_resolve_references())

  return make
