"""The terminal of a launcher: `say` lines and warnings, not library INFO records."""

import subprocess
import sys

PROGRAM = '''
from absl import app, logging
from mip_jax.runtime import console
def main(_):
  {setup}
  logging.info('a library record')
  console.say('stage: done in %d s', 3)
  logging.warning('a warning')
app.run(main)
'''


def _stderr(setup: str, *flags: str) -> str:
  r = subprocess.run([sys.executable, '-c', PROGRAM.format(setup=setup), *flags],
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  return r.stderr


def test_to_terminal_keeps_say_lines_and_warnings_only():
  err = _stderr('console.to_terminal()')
  assert 'stage: done in 3 s' in err and 'a warning' in err
  assert 'a library record' not in err


def test_without_it_or_with_verbosity_every_record_reaches_the_terminal():
  """The control: absl prints INFO records by default, and --verbosity brings them back."""
  assert 'a library record' in _stderr('pass')
  assert 'a library record' in _stderr('console.to_terminal()', '--verbosity=0')


def test_to_workdir_keeps_every_record_in_the_log_file(tmp_path):
  err = _stderr(f'print(console.to_workdir({str(tmp_path)!r}))')
  assert 'a library record' not in err and 'stage: done in 3 s' in err
  log = (tmp_path / 'log.txt').read_text()
  assert 'a library record' in log and 'stage: done in 3 s' in log and 'a warning' in log
