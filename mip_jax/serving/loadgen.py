"""A bounded load test of `launch.serve` on loopback: concurrent clients, latency figures, memory.

  with serve_process(['--config=configs/digits.py', '--workdir=runs/digits'], 'vae') as server:
    stats = load(server.url, bodies, clients=4, requests=200, max_seconds=60, check=check)
    print(stats['p50_ms'], stats['p99_ms'], stats['requests_per_s'], server.rss_bytes())

Every client keeps one HTTP/1.1 connection (as a real client library would) and sends POST /defend
bodies round-robin until `requests` answers came back or `max_seconds` passed, whichever is first.
A request fails when the status is not 200, the body is not JSON, or `check` raises; failures are
counted and the first few kept, never raised from a client thread. Latency is measured per request
from send to the parsed answer. Figures are reported, never asserted as timings (they depend on the
machine and its load); `benchmarks/serve_load.py` prints them as a table.
"""

import contextlib
import dataclasses
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from typing import Callable

import numpy as np

from mip_jax.protocol import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository


def load(url: str, bodies: list[bytes], *, clients: int, requests: int, max_seconds: float,
         check: Callable[[int, dict], None] | None = None, timeout: float = 120,
         content_type: str = 'application/json') -> dict:
  """Sends `requests` POST /defend requests from `clients` threads; returns the figures.

  Args:
    url: the server's base URL (http://127.0.0.1:PORT).
    bodies: request bodies, sent round-robin (request i sends bodies[i % len(bodies)]).
    clients: concurrent connections.
    requests: total requests (the bound); fewer are sent if `max_seconds` runs out first.
    max_seconds: wall-clock bound of the whole test.
    check: `check(body_index, answer)` raises when a 200 answer is wrong (a failed request).
    timeout: socket timeout of one request.
    content_type: of the bodies: JSON, or `server.NPY` for .npy batches.

  Returns:
    {'requests', 'failed', 'errors' (first 5 messages), 'clients', 'wall_s', 'requests_per_s',
     'p50_ms', 'p90_ms', 'p99_ms', 'max_ms'}.
  """
  parts = urllib.parse.urlsplit(url)
  counter = iter(range(requests))
  lock = threading.Lock()
  latencies, errors = [], []
  deadline = time.perf_counter() + max_seconds

  def client():
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
      while time.perf_counter() < deadline:
        with lock:
          i = next(counter, None)
        if i is None:
          return
        k = i % len(bodies)
        start = time.perf_counter()
        try:
          conn.request('POST', '/defend', body=bodies[k],
                       headers={'content-type': content_type})
          response = conn.getresponse()
          text = response.read()
          elapsed = time.perf_counter() - start
          if response.status != 200:
            raise RuntimeError(f'status {response.status}: {text[:200]!r}')
          if check is not None:
            check(k, json.loads(text))
          with lock:
            latencies.append(elapsed)
        except Exception as e:  # noqa: BLE001 (counted and reported, a load test must not stop)
          conn.close()  # a broken connection is reopened by the next request
          with lock:
            errors.append(f'request {i}: {type(e).__name__}: {e}')
    finally:
      conn.close()

  start = time.perf_counter()
  threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=max_seconds + timeout)
  wall = time.perf_counter() - start
  ms = np.asarray(latencies) * 1e3
  pct = lambda q: float(np.percentile(ms, q)) if len(ms) else float('nan')
  return {'requests': len(latencies) + len(errors), 'failed': len(errors), 'errors': errors[:5],
          'clients': clients, 'wall_s': wall, 'requests_per_s': len(latencies) / wall,
          'p50_ms': pct(50), 'p90_ms': pct(90), 'p99_ms': pct(99),
          'max_ms': float(ms.max()) if len(ms) else float('nan')}


def answer_check(clean: list[np.ndarray], *, eps: float) -> Callable[[int, dict], None]:
  """A `check` for `load`: every served row feasible, label-preserving and actually defended.

  Args:
    clean: the clean vectors [B, m] of each body's images (body k -> clean[k]).
    eps: the defense's L2 radius (config.vae.eps or config.lpa.eps).
  """
  def check(k: int, answer: dict) -> None:
    c = clean[k]
    d = np.asarray(answer['defended'], np.float64)
    if d.shape != c.shape:
      raise ValueError(f'defended shape {d.shape} != {c.shape}')
    metrics.check_probability_vectors(d, name='served vectors')
    labels = np.argmax(c, axis=1)
    if answer['labels'] != labels.tolist() or np.any(np.argmax(d, axis=1) != labels):
      raise ValueError(f'labels changed: {answer["labels"]} vs {labels.tolist()}')
    dist = np.linalg.norm(d - c, axis=1)
    if dist.max() > eps * (1 + 1e-5):
      raise ValueError(f'a row moved {dist.max():.6g} > eps {eps}')
    if np.any(np.max(np.abs(d - c), axis=1) <= 1e-6):
      raise ValueError('a row came back undefended')
  return check


def rss_bytes(pid: int) -> int:
  """Resident memory of process `pid` (Linux /proc; the figure `top` shows as RES)."""
  with open(f'/proc/{pid}/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


@dataclasses.dataclass
class Server:
  """A running `launch.serve` process."""
  process: subprocess.Popen
  url: str

  def rss_bytes(self) -> int:
    return rss_bytes(self.process.pid)


@contextlib.contextmanager
def serve_process(args: list[str], defense: str, *, env: dict | None = None,
                  startup_timeout: float = 300):
  """Starts `python -m launch.serve <args> --defense=<defense> --port=0` on 127.0.0.1.

  Yields a `Server` once it printed its address; stops the process (SIGTERM, then SIGKILL) after.
  Raises RuntimeError with the server's last output when it exits before serving.
  """
  cmd = [sys.executable, '-m', 'launch.serve', *args, f'--defense={defense}', '--host=127.0.0.1',
         '--port=0']
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env)
  try:
    timer = threading.Timer(startup_timeout, proc.kill)  # bounds readline() below
    timer.start()
    line = proc.stdout.readline()
    timer.cancel()
    if not line.startswith('serving '):
      proc.kill()
      raise RuntimeError(f'launch.serve did not start: {line!r} {proc.stderr.read()[-2000:]}')
    # Drain stderr so a chatty server never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    yield Server(process=proc, url=line.split()[-1])
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
