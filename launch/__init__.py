"""Launchers: `python -m launch.<name> --config=configs/<dataset>.py --workdir=DIR`.

On Linux a launcher re-executes itself once with glibc malloc tuned for XLA:CPU (below) unless
GLIBC_TUNABLES is already set or MIP_JAX_MALLOC_TUNING=0. Without it every output buffer of 32 MB or
more is freshly mmap-ed on each step and first-touch page faults run at about 5 GB/s instead of
40 GB/s: a decoder training step took 82 ms instead of 60 ms and an alignment step 174 instead of
122 ms here. The cost: freed memory is kept by the process instead of being returned to the system.
glibc reads these settings only at process start, hence the re-exec.
"""

import os
import sys

MALLOC_TUNABLES = ('glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296:'
                   'glibc.malloc.arena_max=1')


def _maybe_reexec_with_malloc_tuning() -> None:
  argv = getattr(sys, 'orig_argv', [])
  launched = len(argv) >= 3 and argv[1] == '-m' and argv[2].startswith('launch.')
  if (not launched or not sys.platform.startswith('linux') or 'GLIBC_TUNABLES' in os.environ
      or os.environ.get('MIP_JAX_MALLOC_TUNING') == '0'):
    return
  env = dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES)
  os.execve(sys.executable, argv, env)


_maybe_reexec_with_malloc_tuning()
