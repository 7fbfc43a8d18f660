"""Property-based fuzzing (hypothesis) of the serving boundaries: the HTTP API and Defender.defend.

HTTP: any body (random bytes, random JSON, arrays of random shapes with one bad value planted)
gets 200 with feasible defended rows when it is a valid batch, otherwise 4xx with a JSON `detail`;
5xx only as the documented fail-closed answer (`failed_rows`); the server answers /health after
every request. Defender.defend: any array (negative, unnormalised, NaN, wrong width or rank, other
dtypes) raises ValueError/DefenseError with a message or returns feasible, label-preserving rows
that moved, never an undefended one.
"""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mip_jax.serving.defender import DefenseError
from tests.test_serve import MAX_BATCH, defender, request, server, workdir  # noqa: F401 (fixtures)

FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
SHAPE = (16, 16, 1)
EPS = 0.01  # config.vae.eps of the tiny config


def assert_defended(defended, clean):
  """Feasible (probability vectors within EPS), label-preserving and moved: a defended answer."""
  d = np.asarray(defended, np.float64)
  assert d.shape == clean.shape
  assert np.all(np.isfinite(d)) and d.min() >= -1e-6 and d.max() <= 1 + 1e-6
  np.testing.assert_allclose(d.sum(1), 1, atol=1e-4)
  np.testing.assert_array_equal(np.argmax(d, 1), np.argmax(clean, 1))
  assert np.linalg.norm(d - clean, axis=1).max() <= EPS * (1 + 1e-5)
  assert np.all(np.max(np.abs(d - clean), 1) > 1e-6)


def assert_answer(server, defender, body: bytes, images: np.ndarray | None):
  """The property of one request; `images` is the batch when `body` is valid, else None."""
  status, doc = request(server + '/defend', body)
  if status == 200:
    assert images is not None, ('accepted a bad request', body[:200])
    assert_defended(doc['defended'], defender.classify(images))
    assert doc['labels'] == np.argmax(defender.classify(images), 1).tolist()
  elif status == 500:  # the documented fail-closed answer, never a crash
    assert doc.get('failed_rows'), doc
  else:
    assert status in (400, 413, 422), (status, doc)
    assert images is None, ('refused a valid batch', doc)
  assert isinstance(doc.get('detail', ''), str) and (status == 200 or doc['detail'])
  assert request(server + '/health')[0] == 200


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2**70) | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=24)


@settings(FUZZ, max_examples=60)
@given(st.one_of(st.binary(max_size=64), JSON.map(json.dumps).map(str.encode),
                 JSON.map(lambda x: json.dumps({'images': x}).encode())))
def test_random_bodies_get_json_errors_and_the_server_serves_on(server, defender, body):
  assert_answer(server, defender, body, None)


@settings(FUZZ, max_examples=50)
@given(batch=st.integers(0, MAX_BATCH + 2),
       shape=st.sampled_from([SHAPE, SHAPE[:2], (16, 16, 3), (16, 15, 1), (15, 16), (16,), (),
                              (1, 16, 16, 1)]),
       kind=st.sampled_from(['float', 'int01', 'float_wide']), seed=st.integers(0, 2**16))
def test_arrays_of_any_shape_and_range(server, defender, batch, shape, kind, seed):
  rng = np.random.default_rng(seed)
  size = (batch, *shape)
  x = {'float': lambda: rng.uniform(size=size), 'int01': lambda: rng.integers(0, 2, size),
       'float_wide': lambda: rng.uniform(-0.2, 1.2, size)}[kind]()
  valid = (len(shape) >= 2 and shape[:2] == SHAPE[:2] and shape[2:] in ((), (1,))
           and 0 < batch <= MAX_BATCH and x.min() >= 0 and x.max() <= 1)
  images = x.reshape(batch, *SHAPE).astype(np.float32) if valid else None
  assert_answer(server, defender, json.dumps({'images': x.tolist()}).encode(), images)


BAD_VALUES = [float('nan'), float('inf'), -0.01, 1.01, 2, -1, 'a', '0.5', None, True, False, [],
              {}, [0.5], 10**30, 'ragged']


@settings(FUZZ, max_examples=60)
@given(batch=st.integers(1, MAX_BATCH), grey=st.booleans(), bad=st.sampled_from(BAD_VALUES),
       at=st.tuples(*[st.integers(0, 15)] * 3), seed=st.integers(0, 2**16))
def test_one_bad_value_in_a_valid_batch(server, defender, batch, grey, bad, at, seed):
  """A valid batch with one value replaced (or one row of pixels cut short): always refused."""
  x = np.random.default_rng(seed).uniform(size=(batch, *SHAPE[:2], *([] if grey else [1])))
  nested = x.tolist()
  row = nested[at[0] % batch][at[1]]
  if bad == 'ragged':
    del row[-1]
  elif grey:
    row[at[2]] = bad
  else:
    row[at[2]][0] = bad
  assert_answer(server, defender, json.dumps({'images': nested}).encode(), None)


PROB_DTYPES = st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.bool_,
                               np.complex64, object])


@settings(FUZZ, max_examples=120)
@given(rows=st.integers(0, 6), width=st.sampled_from([5, 5, 5, 4, 6, 1]),
       rank=st.sampled_from([2, 2, 2, 1, 3]), dtype=PROB_DTYPES,
       damage=st.sampled_from(['none', 'none', 'negative', 'unnormalised', 'nan', 'inf', 'onehot',
                               'tie', 'uniform', 'logits', 'tiny']),
       seed=st.integers(0, 2**16))
def test_defend_raises_or_returns_defended_rows(defender, rows, width, rank, dtype, damage, seed):
  rng = np.random.default_rng(seed)
  p = rng.dirichlet(np.full(width, 0.3), size=rows)
  if rows:
    i = rng.integers(rows)
    if damage == 'negative':
      p[i, 0] -= 0.2
    elif damage == 'unnormalised':
      p[i] *= 1.5
    elif damage in ('nan', 'inf'):
      p[i, -1] = float(damage)
    elif damage == 'onehot':
      p[i] = np.eye(width)[rng.integers(width)]
    elif damage == 'tie':
      p[i] = 0
      p[i, :2] = 0.5
    elif damage == 'uniform':
      p[i] = 1 / width
    elif damage == 'logits':
      p[i] = rng.normal(size=width) * 3
    elif damage == 'tiny':
      p[i] = np.full(width, 1e-30)
      p[i, 0] = 1 - 1e-30 * (width - 1)
  p = p[None] if rank == 3 else p.reshape(-1) if rank == 1 else p
  probs = p.astype(dtype) if dtype is not object else p.astype(object)
  try:
    defended = defender.defend(probs)
  except (ValueError, DefenseError) as e:
    assert str(e)
    return
  # Returned: the input must have been valid real probability vectors of the right width.
  assert rank == 2 and width == 5 and np.dtype(dtype).kind in 'fiu', (probs, defended)
  clean = np.asarray(probs, np.float32)
  if rows:
    assert np.all(np.isfinite(clean)) and clean.min() >= 0
    np.testing.assert_allclose(clean.sum(1), 1, atol=5e-4)
    assert_defended(defended, clean)
  else:
    assert defended.shape == (0, 5)


@settings(FUZZ, max_examples=30)
@given(shape=st.sampled_from([(3, 16, 16, 1), (3, 16, 16), (2, 16, 16, 1), (3, 8, 8, 1), (3,)]),
       value=st.sampled_from([0.5, float('nan'), -1.0, 2.0]))
def test_defend_checks_images_when_given(defender, shape, value):
  probs = np.random.default_rng(0).dirichlet(np.ones(5), size=3).astype(np.float32)
  images = np.full(shape, value, np.float32)
  if shape in ((3, 16, 16, 1), (3, 16, 16)) and value == 0.5:
    assert_defended(defender.defend(probs, images), probs)
  else:
    with pytest.raises(ValueError, match=r'images|vectors'):
      defender.defend(probs, images)
