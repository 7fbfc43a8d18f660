"""Numpy mini-batches: the only iterator the training loops need."""

from typing import Any, Iterator

import numpy as np

from mip_jax.data.arrays import ArraySplit


def batches(arrays: Any, batch_size: int, *,
            rng: np.random.Generator | int | None = None,
            drop_remainder: bool = False) -> Iterator[Any]:
  """Yields aligned mini-batches along the first axis.

  Args:
    arrays: an ArraySplit, one array, or a tuple/list/dict of arrays with the
      same length; each batch has the same structure.
    batch_size: examples per batch (the last one may be smaller).
    rng: if given (a Generator, or an int seed), examples are shuffled; pass
      the same Generator every epoch to get a new order each time.
    drop_remainder: drop the last batch if it is smaller than batch_size
      (keeps shapes static under jit).

  Yields:
    Batches with the structure of `arrays`.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  n = _length(arrays)
  order = np.arange(n)
  if rng is not None:
    order = np.random.default_rng(rng).permutation(n)
  stop = n - n % batch_size if drop_remainder else n
  for start in range(0, stop, batch_size):
    yield _take(arrays, order[start:start + batch_size])


def _length(arrays) -> int:
  if isinstance(arrays, (ArraySplit, np.ndarray)):
    return len(arrays)
  values = list(arrays.values() if isinstance(arrays, dict) else arrays)
  lengths = {len(v) for v in values}
  if len(lengths) != 1:
    raise ValueError(f'arrays must share their first dimension, got {lengths}')
  return lengths.pop()


def _take(arrays, idx: np.ndarray):
  if isinstance(arrays, ArraySplit):
    return arrays.take(idx)
  if isinstance(arrays, np.ndarray):
    return arrays[idx]
  if isinstance(arrays, dict):
    return {k: np.asarray(v)[idx] for k, v in arrays.items()}
  return tuple(np.asarray(v)[idx] for v in arrays)
