"""Shared fixtures: a TFDS data_dir prepared once per session, tiny configs pointing at it."""

import pytest

from configs import digits


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A private TFDS data_dir (tests never touch ~/tensorflow_datasets)."""
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture
def tiny_config(data_dir):
  c = digits.get_config('tiny')
  c.data_dir = data_dir
  return c
