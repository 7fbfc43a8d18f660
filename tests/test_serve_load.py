"""A small, bounded load test of `python -m launch.serve` (vae and lpa) on 127.0.0.1.

Concurrent keep-alive clients; no request fails, every answer is a feasible, label-preserving,
actually defended vector of its own images, and the server's resident memory stays flat once warm.
Latency and requests/s are printed, not asserted: `benchmarks/serve_load.py` reports them.
"""

import json
import os

import numpy as np
import pytest

from mip_jax.serving import loadgen
from mip_jax.serving.defender import Defender
from tests.test_defender import tiny_serving_config, trained_workdir

# Growth allowed between the warm server and the end of the test: allocator noise, not a leak (a
# leak of one request's JSON body per request would add > 50 MB over the vae rounds).
RSS_GROWTH_LIMIT = 32 * 2**20


@pytest.fixture(scope='module')
def workdir(tmp_path_factory, data_dir):
  return trained_workdir(tmp_path_factory, data_dir)


@pytest.fixture(scope='module')
def classifier(workdir, data_dir):
  return Defender.from_workdir(workdir, tiny_serving_config(data_dir), 'none')


def bodies_and_clean(classifier, sizes, seed=0):
  rng = np.random.default_rng(seed)
  images = [rng.uniform(size=(n, 16, 16, 1)).astype(np.float32) for n in sizes]
  bodies = [json.dumps({'images': x.tolist()}).encode() for x in images]
  return bodies, [classifier.classify(x) for x in images]


# LPA crafts online (a second-order step per round), so it gets small batches: each new padded size
# (1, 2, 4, 8) is one more compilation of the crafting loop.
@pytest.mark.parametrize('defense,sizes,clients,rounds,per_round', [
    ('vae', (1, 2, 3, 4, 8, 5, 7, 1), 4, 3, 40), ('lpa', (1, 2, 2, 1), 2, 2, 6)])
def test_concurrent_load_never_fails_and_memory_stays_flat(workdir, data_dir, classifier, tmp_path,
                                                          defense, sizes, clients, rounds,
                                                          per_round):
  config = tiny_serving_config(data_dir)
  eps = config[defense].eps
  bodies, clean = bodies_and_clean(classifier, sizes)
  check = loadgen.answer_check(clean, eps=eps)
  args = ['--config=configs/digits.py:tiny', f'--config.data_dir={data_dir}',
          f'--workdir={workdir}']
  env = dict(os.environ, MIP_JAX_MALLOC_TUNING='1', JAX_COMPILATION_CACHE_DIR=str(
      tmp_path.parent / 'load_jax_cache'))
  with loadgen.serve_process(args, defense, env=env) as server:
    # Round 0 warms up: every batch size compiles once.
    warm = loadgen.load(server.url, bodies, clients=1, requests=len(bodies), max_seconds=300,
                        check=check)
    assert warm['failed'] == 0, warm['errors']
    rss = [server.rss_bytes()]
    for _ in range(rounds):
      stats = loadgen.load(server.url, bodies, clients=clients, requests=per_round,
                           max_seconds=300, check=check)
      assert stats['failed'] == 0 and stats['requests'] == per_round, stats['errors']
      rss.append(server.rss_bytes())
    print(f'\n{defense}: {clients} clients, p50 {stats["p50_ms"]:.1f} ms, p99 '
          f'{stats["p99_ms"]:.1f} ms, {stats["requests_per_s"]:.1f} requests/s, RSS MB '
          f'{[round(r / 2**20) for r in rss]}')
    assert rss[-1] - rss[0] < RSS_GROWTH_LIMIT, rss
    assert server.process.poll() is None  # still serving


def test_serving_throughput_reports_each_path_and_fails_loudly(workdir, data_dir):
  """launch.benchmark --serving_defenses: a figure per path for each defense (served answers
  checked by Defender on the way); a defense that was not fitted in the workdir is an error naming
  it, not a row of zeros."""
  from mip_jax.studies import benchmarking
  config = tiny_serving_config(data_dir)
  out = benchmarking.serving_throughput(workdir, config, ['none'], batch_size=8, repeats=2,
                                        http_requests=2)
  assert out['serving_batch_size'] == 8
  assert set(out['none']) == {'defend_vectors_per_s', 'defender_vectors_per_s',
                              'http_json_vectors_per_s', 'http_npy_vectors_per_s'}
  assert all(np.isfinite(v) and v > 0 for v in out['none'].values())
  with pytest.raises(FileNotFoundError, match='topk'):  # not in SERVED
    benchmarking.serving_throughput(workdir, config, ['topk'], batch_size=8, repeats=1)
