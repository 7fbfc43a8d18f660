"""Several JAX processes on localhost (CPU, gloo collectives) against one process: same numbers, one
writer, checkpoints restored. Each process is `tests/scripts/multiprocess.py`."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from mip_jax.runtime import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join('tests', 'scripts', 'multiprocess.py')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def run_processes(task: str, out_dir, *, processes: int, devices: int, timeout: float = 480,
                  cache_dir=None) -> float:
  """Starts `processes` JAX processes with `devices` CPU devices each; returns the wall seconds.

  All are killed and the test fails with their logs when one fails or the whole run passes
  `timeout` (a hung rendezvous or collective must not hang CI).
  """
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES=str(devices))
  env.pop('XLA_FLAGS', None)  # a forced host device count would override JAX_NUM_CPU_DEVICES
  if cache_dir is not None:  # identical programs compile once across runs and processes
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  address = f'localhost:{_free_port()}' if processes > 1 else '-'
  logs = [open(os.path.join(out_dir, f'{task}_{processes}x{devices}_{i}.log'), 'w+')
          for i in range(processes)]
  start = time.time()
  procs = [subprocess.Popen([sys.executable, SCRIPT, task, str(out_dir), address, str(processes),
                             str(i)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
           for i, log in enumerate(logs)]
  try:
    for p in procs:
      p.wait(timeout=max(1.0, start + timeout - time.time()))
  except subprocess.TimeoutExpired:
    pass
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
  if failed:
    text = ''
    for i, log in enumerate(logs):
      log.seek(0)
      text += f'--- process {i} (exit {procs[i].returncode}):\n{log.read()[-3000:]}\n'
    pytest.fail(f'{task} on {processes} x {devices} devices failed or passed {timeout} s: {failed}\n'
                f'{text}')
  for log in logs:
    log.close()
  return time.time() - start


def test_two_processes_craft_and_train_like_one_process_with_four_devices(tmp_path):
  one, two = tmp_path / 'one', tmp_path / 'two'
  one.mkdir(), two.mkdir()
  run_processes('equality', one, processes=1, devices=4)
  seconds = run_processes('equality', two, processes=2, devices=2)
  print(f'2 processes x 2 devices: {seconds:.1f} s')
  a, b = dict(np.load(one / 'equality.npz')), dict(np.load(two / 'equality.npz'))
  assert (int(a['processes']), int(a['devices'])) == (1, 4)
  assert (int(b['processes']), int(b['devices'])) == (2, 4)
  assert sorted(a) == sorted(b)
  for key in sorted(set(a) - {'processes', 'devices'}):
    # float64 crafting; the decoder's BatchNorm statistics are float32: last-bit noise only.
    np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=1e-9, err_msg=key)
  # Both did something: crafting moved the vectors, the epoch moved the decoder.
  assert np.abs(a['defended'] - a['clean']).max() > 1e-4
  moved = [np.abs(a[k] - a[k.replace('decoder', 'initial')]).max() for k in a
           if k.startswith('decoder_')]
  assert max(moved) > 1e-5


def test_two_process_run_writes_each_file_once_and_restores_its_checkpoints(tmp_path):
  cache = tmp_path / 'jax_cache'
  run_processes('experiment', tmp_path, processes=2, devices=2, cache_dir=cache)
  writers = [json.load(open(tmp_path / f'writes_{i}.json')) for i in range(2)]
  results = [w for w in writers[0]['writes'] if not w.startswith('checkpoints' + os.sep)]
  files = sorted(os.path.relpath(os.path.join(d, f), tmp_path / 'run')
                 for d, _, fs in os.walk(tmp_path / 'run') for f in fs
                 if not os.path.relpath(d, tmp_path / 'run').startswith('checkpoints'))
  # Process 0 wrote every result file exactly once (write-then-rename: the name.tmp.ext is opened).
  assert sorted(w.replace('.tmp', '') for w in results) == files
  assert [f for f in files if f.startswith('perturbations')]  # LPA's crafted vectors
  cells = [f for f in files if f.startswith('cells')]  # the engine's cells: 2 defenses, configs
  assert len([f for f in cells if f.endswith('_none.json')]) == 2 and len(cells) == 6
  assert {'results.json', 'results.md', os.path.join('figures', 'reconstructions.png')} <= set(files)
  assert writers[1]['writes'] == []  # process 1 wrote nothing (Orbax's array data aside)
  strip = lambda rows: [{k: v for k, v in r.items() if k != 'defend_seconds'} for r in rows]
  assert strip(writers[1]['rows']) == strip(writers[0]['rows'])  # both processes saw the same

  # Again, in load-only mode: the classifiers come from their checkpoints (no training, no
  # checkpoint written), every cell from its file (nothing measured, no cell rewritten, no serving
  # artefact re-exported: those are written with the cell that crafts them); process 0 rewrites the
  # results, process 1 nothing.
  run_processes('reload', tmp_path, processes=2, devices=2, cache_dir=cache)
  assert [f for f in files if f.startswith('serving')]  # each defense's artefact, from the cell
  rewritten = [w for w in results if not w.startswith(('perturbations', 'cells', 'serving'))]
  for i in range(2):
    again = json.load(open(tmp_path / f'reload_{i}.json'))
    assert again['writes'] == (rewritten if i == 0 else [])
    assert strip(again['rows']) == strip(writers[0]['rows'])


def test_joining_a_cluster_needs_all_three_values_or_the_environment():
  assert parallel.initialize() is False  # nothing asked: one process, nothing initialised
  with pytest.raises(ValueError, match='--process_id missing'):
    parallel.initialize('localhost:1234', 2)
  with pytest.raises(ValueError, match=r'must lie in \[0, --num_processes=2\)'):
    parallel.initialize('localhost:1234', 2, 2)


def test_local_rows_and_shard_batch_check_the_batch():
  mesh = parallel.data_mesh()
  n = mesh.devices.size
  assert parallel.local_rows(4 * n, mesh) == slice(0, 4 * n)  # one process holds every row
  with pytest.raises(ValueError, match='differ in length'):
    parallel.shard_batch((np.zeros(2 * n), np.zeros(n)), mesh)


def test_scaling_benchmark_prints_ratios_on_fake_devices(tmp_path):
  """benchmarks/scaling.py on 2 fake CPU devices (they share cores: the figures test the script)."""
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  out = tmp_path / 'scaling.json'
  r = subprocess.run([sys.executable, '-m', 'benchmarks.scaling', '--config=configs/digits.py:tiny',
                      '--per_device_batch=16', '--repeats=1', f'--json_out={out}'], cwd=ROOT,
                     env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  doc = json.load(open(out))
  assert [(row['devices'], row['batch_size']) for row in doc['rows']] == [(1, 16), (2, 32)]
  first, second = doc['rows']
  assert first['speedup'] == 1.0 and first['efficiency'] == 1.0
  assert second['speedup'] == pytest.approx(second['vectors_per_s'] / first['vectors_per_s'])
  assert second['efficiency'] == pytest.approx(second['speedup'] / 2)
  assert all(row['vectors_per_s'] > 0 for row in doc['rows'])
  assert '| 2 | 32 |' in r.stdout and 'weak scaling' in r.stdout


def test_device_counts_double_up_to_what_is_there():
  from mip_jax.studies import benchmarking
  assert benchmarking.device_counts(1) == [1]
  assert benchmarking.device_counts(8) == [1, 2, 4, 8]
  assert benchmarking.device_counts(6) == [1, 2, 4, 6]
