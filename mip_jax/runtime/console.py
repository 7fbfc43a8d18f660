"""What a run shows on the terminal: stage names, progress bars, warnings and the table.

  console.say('%s: trained in %.0f s', stage, seconds)   # a line a user wants to see
  console.to_workdir(workdir)                             # launchers: the rest goes to the log file

Library code logs with absl as usual (per-epoch losses, checkpoint paths; Orbax and TFDS add
thousands of INFO records of their own). `to_workdir` keeps all of those in `<workdir>/log.txt`
and lets only `say` lines and warnings (Orbax's own: errors only) reach the terminal. Without `to_workdir` (tests, notebooks)
`say` is an ordinary absl INFO record. `--verbosity` (or `--logtostderr`) on the command line
brings every record back to the terminal.
"""

import logging as py_logging
import os
import sys

from absl import flags, logging

LOG_FILE = 'log.txt'
_SAY = 'mip_jax_say'   # attribute `say` sets on its records


def say(msg: str, *args) -> None:
  """Logs `msg % args` at INFO and marks it for the terminal."""
  logging.info(msg, *args, extra={_SAY: True})


# Libraries whose warnings are about their own bookkeeping, not the user's run (Orbax: "Waiting for
# previous save to complete took 1.1 seconds" on every epoch of a loaded machine): log file only.
_LOG_FILE_ONLY_WARNINGS = (os.sep + 'orbax' + os.sep,)


class _TerminalFilter(py_logging.Filter):
  """Keeps warnings and worse for absl's stderr handler; `say` lines get their own handler."""

  def filter(self, record):
    if record.levelno < py_logging.WARNING:
      return False
    quiet = any(part in record.pathname for part in _LOG_FILE_ONLY_WARNINGS)
    return record.levelno >= py_logging.ERROR or not quiet


class _SayFilter(py_logging.Filter):

  def filter(self, record):
    return getattr(record, _SAY, False) and record.levelno < py_logging.WARNING


def _verbose_requested() -> bool:
  """True when the command line asked for library records on the terminal."""
  names = ('verbosity', 'v', 'logtostderr', 'alsologtostderr')
  return any(name in flags.FLAGS and flags.FLAGS[name].present for name in names)


def to_workdir(workdir: str) -> str:
  """Writes every absl/Python log record to `<workdir>/log.txt`; the terminal keeps `say` lines
  and warnings (everything with --verbosity). Idempotent. Returns the log file's path."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.abspath(os.path.join(workdir, LOG_FILE))
  root = py_logging.getLogger()
  if not any(getattr(h, 'baseFilename', None) == path for h in root.handlers):
    to_file = py_logging.FileHandler(path)
    to_file.setFormatter(logging.PythonFormatter())
    root.addHandler(to_file)
  to_terminal()
  return path


def to_terminal() -> None:
  """Lets only `say` lines and warnings reach the terminal (everything with --verbosity); the other
  records go where `to_workdir` sends them, or nowhere (a launcher with no workdir). Idempotent."""
  absl_handler = logging.get_absl_handler()
  if _verbose_requested() or any(isinstance(f, _TerminalFilter) for f in absl_handler.filters):
    return
  absl_handler.addFilter(_TerminalFilter())
  terminal = py_logging.StreamHandler(sys.stderr)
  terminal.addFilter(_SayFilter())
  terminal.setFormatter(py_logging.Formatter('%(message)s'))
  py_logging.getLogger().addHandler(terminal)
