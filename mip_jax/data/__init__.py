"""Data: TFDS builders (digits, mnist5k, FaceScrub) and class splits.

  splits = load_splits(config)          # see configs/common.py for the fields
  images, labels = splits.private_train.images, splits.private_train.labels

Batches are cut where they are used: `runtime.train.epoch_batches` (training) and
`runtime.parallel.padded_batches` (every jitted batched loop).

TensorFlow is never needed: datasets are read from array_record files.
"""

from mip_jax.data.arrays import ArraySplit, Splits
from mip_jax.data.splits import KNOWN_DATASETS, QUERY_PARTS, data_fingerprint, load_splits, query_indices
from mip_jax.data.tfds_source import DatasetNotFoundError

__all__ = [
    'ArraySplit', 'DatasetNotFoundError', 'KNOWN_DATASETS', 'QUERY_PARTS', 'Splits',
    'data_fingerprint', 'load_splits', 'query_indices',
]
