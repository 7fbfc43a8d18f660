"""The HTTP endpoint: a real uvicorn server on a loopback port, a real HTTP client (urllib).

Correct vectors for valid batches (equal to the Defender called directly), 4xx with a clear message
for bad requests and serving on after each, concurrent clients, and `python -m launch.serve` as a
process. All traffic goes to 127.0.0.1; every loop is bounded.
"""

import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mip_jax.serving import server as serving
from mip_jax.serving.defender import Defender
from tests.test_defender import tiny_serving_config, trained_workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_BATCH = 8


@pytest.fixture(scope='module')
def workdir(tmp_path_factory, data_dir):
  return trained_workdir(tmp_path_factory, data_dir)


@pytest.fixture(scope='module')
def defender(workdir, data_dir):
  return Defender.from_workdir(workdir, tiny_serving_config(data_dir), 'vae')


@pytest.fixture(scope='module')
def server(defender):
  """A uvicorn server thread on a free loopback port; yields its base URL, stops it afterwards."""
  sock = serving.bind('127.0.0.1', 0)
  port = sock.getsockname()[1]
  srv = serving.make_server(serving.make_app(defender, max_batch=MAX_BATCH), log_level='warning')
  thread = threading.Thread(target=srv.run, kwargs={'sockets': [sock]}, daemon=True)
  thread.start()
  url = f'http://127.0.0.1:{port}'
  wait_healthy(url, timeout=30)
  yield url
  srv.should_exit = True
  thread.join(timeout=10)
  sock.close()


def request(url: str, body: bytes | None = None, timeout: float = 60,
            content_type: str = 'application/json') -> tuple[int, dict]:
  """(status, JSON body) of a GET (body None) or a POST; HTTP errors are returned, not raised."""
  req = urllib.request.Request(url, data=body, method='GET' if body is None else 'POST',
                               headers={'content-type': content_type})
  try:
    with urllib.request.urlopen(req, timeout=timeout) as r:
      return r.status, json.loads(r.read())
  except urllib.error.HTTPError as e:
    text = e.read()
    try:
      return e.code, json.loads(text)
    except ValueError:  # Starlette's own 404 / 405 answers are plain text
      return e.code, {'detail': text.decode()}


def wait_healthy(url: str, *, timeout: float) -> dict:
  deadline = time.time() + timeout
  while True:
    try:
      status, doc = request(url + '/health', timeout=5)
      if status == 200:
        return doc
    except (urllib.error.URLError, ConnectionError):
      pass
    if time.time() > deadline:
      raise TimeoutError(f'{url} did not become healthy within {timeout} s')
    time.sleep(0.2)


def images_body(images) -> bytes:
  return json.dumps({'images': np.asarray(images).tolist()}).encode()


def npy_body(images) -> bytes:
  buffer = io.BytesIO()
  np.save(buffer, images)
  return buffer.getvalue()


def batch(n: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).uniform(size=(n, 16, 16, 1)).astype(np.float32)


def test_health_and_a_valid_batch_equal_the_defender(server, defender):
  status, doc = request(server + '/health')
  assert status == 200
  assert doc == {'status': 'ok', 'defense': 'vae', 'image_shape': [16, 16, 1], 'num_classes': 5,
                 'max_batch': MAX_BATCH}
  images = batch(5, 0)
  status, doc = request(server + '/defend', images_body(images))
  assert status == 200 and doc['defense'] == 'vae'
  expected, labels = defender.predict(images)
  np.testing.assert_allclose(np.asarray(doc['defended']), expected, atol=1e-7)
  assert doc['labels'] == labels.tolist()
  # Grey images without the channel axis are the same request.
  status, doc2 = request(server + '/defend', images_body(images[..., 0]))
  assert status == 200 and doc2['defended'] == doc['defended']


BAD_REQUESTS = [
    ('malformed JSON', b'{"images": [[[0.5', 400, 'malformed JSON'),
    ('not an object', b'[1, 2, 3]', 400, '"images"'),
    ('no images field', b'{"pixels": []}', 400, '"images"'),
    ('empty batch', b'{"images": []}', 422, 'empty'),
    ('not a list', b'{"images": 3}', 422, 'must be a list'),
    ('wrong shape', images_body(np.zeros((2, 8, 8, 1))), 422, 'must have shape [B, 16, 16, 1]'),
    ('unbatched image', images_body(np.zeros((16, 16, 1))), 422, 'must have shape'),
    ('ragged', json.dumps({'images': [[[0.5] * 16] * 16, [[0.5] * 15] * 16]}).encode(), 422,
     'rectangular'),
    ('strings', json.dumps({'images': [[['a'] * 16] * 16]}).encode(), 422, 'numbers'),
    ('booleans', json.dumps({'images': [[[True] * 16] * 16]}).encode(), 422, 'numbers'),
    ('NaN', b'{"images": [[' + b','.join([b'[' + b','.join([b'[NaN]'] * 16) + b']'] * 16) + b']]}',
     422, 'NaN'),
    ('out of range', images_body(np.full((1, 16, 16, 1), 1.5)), 422, '[0, 1]'),
    ('negative', images_body(np.full((1, 16, 16), -0.1)), 422, '[0, 1]'),
    ('oversized batch', images_body(np.zeros((MAX_BATCH + 1, 16, 16, 1))), 413, 'at most 8 images'),
    # Above the 8-image body limit (69,632 bytes), small enough to be sent before the answer.
    ('oversized body', b'{"images": [' + b'0.0,' * 25_000 + b'0.0]}', 413, 'exceeds the limit'),
]


@pytest.mark.parametrize('name,body,status,message', BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_4xx_with_a_message_and_the_server_serves_on(server, defender, name, body,
                                                                      status, message):
  got, doc = request(server + '/defend', body)
  assert got == status, (name, doc)
  assert message in doc['detail'], doc['detail']
  # Still serving, and still right.
  images = batch(2, 1)
  got, doc = request(server + '/defend', images_body(images))
  assert got == 200
  np.testing.assert_allclose(np.asarray(doc['defended']), defender(images), atol=1e-7)


def test_an_npy_batch_is_the_same_request_as_its_json(server, defender):
  images = batch(5, 3)
  _, from_json = request(server + '/defend', images_body(images))
  for sent in (images, images[..., 0], images.astype(np.float64)):
    status, doc = request(server + '/defend', npy_body(sent), content_type=serving.NPY)
    assert status == 200 and doc == from_json


NPY_BAD_REQUESTS = [
    ('not npy', b'{"images": []}', 400, 'malformed .npy'),
    ('truncated', npy_body(batch(2, 0))[:-7], 400, 'malformed .npy'),
    ('pickled objects', npy_body(np.array([{'a': 1}], dtype=object)), 400, 'malformed .npy'),
    ('wrong shape', npy_body(np.zeros((2, 8, 8, 1), np.float32)), 422, 'must have shape'),
    ('booleans', npy_body(np.zeros((1, 16, 16, 1), bool)), 422, 'real numbers'),
    ('NaN', npy_body(np.full((1, 16, 16, 1), np.nan, np.float32)), 422, 'NaN'),
    ('out of range', npy_body(np.full((1, 16, 16, 1), 2.0, np.float32)), 422, '[0, 1]'),
    ('oversized batch', npy_body(np.zeros((MAX_BATCH + 1, 16, 16, 1), np.float32)), 413,
     'at most 8 images'),
]


@pytest.mark.parametrize('name,body,status,message', NPY_BAD_REQUESTS,
                         ids=[b[0] for b in NPY_BAD_REQUESTS])
def test_bad_npy_requests_get_4xx_with_a_message(server, name, body, status, message):
  got, doc = request(server + '/defend', body, content_type=serving.NPY)
  assert got == status, (name, doc)
  assert message in doc['detail'], doc['detail']


def test_concurrent_clients_get_their_own_results(server, defender):
  jobs = [batch(1 + i % MAX_BATCH, seed=100 + i) for i in range(12)]
  expected = [defender(images) for images in jobs]
  with ThreadPoolExecutor(max_workers=6) as pool:
    answers = list(pool.map(lambda images: request(server + '/defend', images_body(images)), jobs))
  for (status, doc), want in zip(answers, expected):
    assert status == 200
    np.testing.assert_allclose(np.asarray(doc['defended']), want, atol=1e-7)


def test_unknown_routes_and_methods(server):
  assert request(server + '/health', b'{}')[0] == 405
  with pytest.raises(urllib.error.HTTPError) as err:
    urllib.request.urlopen(server + '/nope', timeout=10)
  assert err.value.code == 404


def test_launch_serve_process(workdir, data_dir, defender):
  # No --config: the workdir's config.json is used.
  cmd = [sys.executable, '-m', 'launch.serve', f'--workdir={workdir}', '--defense=vae', '--port=0']
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True)
  try:
    line = proc.stdout.readline()  # printed once the socket listens (or EOF if it died)
    assert line.startswith('serving vae on http://127.0.0.1:'), line
    url = line.split()[-1]
    assert wait_healthy(url, timeout=60)['defense'] == 'vae'
    images = batch(3, 7)
    status, doc = request(url + '/defend', images_body(images))
    assert status == 200
    np.testing.assert_allclose(np.asarray(doc['defended']), defender(images), atol=1e-6)
  finally:
    proc.terminate()
    proc.wait(timeout=30)


def test_launch_serve_refuses_an_untrained_workdir(tmp_path, data_dir):
  r = subprocess.run([sys.executable, '-m', 'launch.serve', '--config=configs/digits.py:tiny',
                      f'--config.data_dir={data_dir}', f'--workdir={tmp_path}', '--port=0'],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode != 0 and 'no trained classifier' in r.stderr
