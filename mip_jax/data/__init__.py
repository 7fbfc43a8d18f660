"""Data: TFDS builders (digits, mnist5k, FaceScrub), class splits and numpy batches.

  splits = load_splits(config)          # see configs/common.py for the fields
  for images, labels in batches((splits.private_train.images,
                                 splits.private_train.labels), 128, rng=rng):
    ...

TensorFlow is never needed: datasets are read from array_record files.
"""

from mip_jax.data.arrays import ArraySplit, Splits
from mip_jax.data.batching import batches
from mip_jax.data.splits import KNOWN_DATASETS, QUERY_PARTS, data_fingerprint, load_splits, query_indices
from mip_jax.data.tfds_source import DatasetNotFoundError

__all__ = [
    'ArraySplit', 'DatasetNotFoundError', 'KNOWN_DATASETS', 'QUERY_PARTS', 'Splits',
    'batches', 'data_fingerprint', 'load_splits', 'query_indices',
]
