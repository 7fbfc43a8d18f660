"""Resume at any point: `launch.compare` killed (SIGKILL, no cleanup) during a classifier stage, in
the middle of a decoder checkpoint's write and between LPA's temporary file and its rename, then
rerun; its results.json equals an uninterrupted run's and nothing half-written is left behind.

The kill points are `mip_jax.runtime.killpoints` markers, not sleeps: each process dies exactly there.
Every process shares one JAX persistent compilation cache, so only the uninterrupted run compiles
(about 27 s of CPU here, then 2-6 s per killed or resumed process instead of 8-22 s).
"""

import json
import os
import signal
import subprocess
import sys

from mip_jax.runtime import killpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# In run order: mid classifier stage, mid decoder checkpoint write, crafted but not yet in place.
KILL_POINTS = ('classifier:epoch:2', 'substitute*:save:1', 'lpa:write')
TIMING = ('defend_seconds',)  # wall-clock fields differ between any two runs


def compare(workdir, data_dir, cache, kill_at=None) -> subprocess.CompletedProcess:
  env = dict(os.environ, MIP_JAX_MALLOC_TUNING='0', JAX_COMPILATION_CACHE_DIR=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  env.pop(killpoints.ENV, None)
  if kill_at:
    env[killpoints.ENV] = kill_at
  return subprocess.run(
      [sys.executable, '-m', 'launch.compare', '--config=configs/digits.py:tiny',
       f'--config.data_dir={data_dir}', f'--workdir={workdir}', '--defenses=lpa'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def results(workdir) -> dict:
  with open(os.path.join(workdir, 'results.json')) as f:
    doc = json.load(f)
  for row in doc['rows']:
    for key in TIMING:
      row.pop(key)
  return doc


def half_written(workdir) -> list[str]:
  """Temporary files and directories: Orbax's `*.orbax-checkpoint-tmp*`, our `*.tmp*`."""
  return sorted(os.path.join(d, n) for d, dirs, files in os.walk(workdir) for n in dirs + files
                if 'tmp' in n)


def test_a_run_killed_at_any_point_resumes_to_an_uninterrupted_runs_results(tmp_path, data_dir):
  cache, reference = tmp_path / 'jax_cache', tmp_path / 'uninterrupted'
  r = compare(reference, data_dir, cache)
  assert r.returncode == 0, r.stderr[-3000:]
  workdir = tmp_path / 'killed'
  left = {}
  for point in KILL_POINTS:
    r = compare(workdir, data_dir, cache, kill_at=point)
    assert r.returncode == -signal.SIGKILL, (point, r.returncode, r.stderr[-2000:])
    assert not (workdir / 'results.json').exists()
    left[point] = half_written(workdir)
  # The kills really hit the middle of a write: a checkpoint and a perturbation file half done.
  assert any('substitute' in p and 'tmp' in p for p in left['substitute*:save:1']), left
  assert any(p.endswith('.tmp.npz') for p in left['lpa:write']), left
  r = compare(workdir, data_dir, cache)
  assert r.returncode == 0, r.stderr[-3000:]
  log = (workdir / 'log.txt').read_text()  # library records go to the workdir's log (console)
  assert 'resuming' in log or 'finished stage found' in log
  assert results(workdir) == results(reference)
  assert half_written(workdir) == []
