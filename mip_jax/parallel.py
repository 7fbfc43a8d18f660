"""One-axis device mesh ('data') and the shardings every jitted step uses.

Batches are split over the 'data' axis; parameters and optimiser state are replicated. The same code
runs on one device or many: with one device the shardings are trivial. We use `jax.jit` with
NamedSharding-placed inputs (GSPMD partitions the computation), not `pmap` (maintenance mode).
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def data_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (all by default)."""
  devices = jax.devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f'asked for {num_devices} devices, have {len(devices)}')
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'; other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(tree, mesh: Mesh):
  """Places every leaf of `tree` (leading axis = batch) split over the mesh's 'data' axis.

  The batch size must be a multiple of the device count: a silent remainder would change results
  between device counts, so it is an error.
  """
  n = mesh.devices.size
  for leaf in jax.tree.leaves(tree):
    if leaf.shape[0] % n:
      raise ValueError(f'batch of {leaf.shape[0]} does not split over {n} devices; '
                       f'use a batch size that is a multiple of {n}')
  return jax.device_put(tree, batch_sharding(mesh))


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))


def padded_batches(arrays, batch_size: int, *, mesh: Mesh | None = None, pad_to=None):
  """Fixed-shape batches of aligned arrays for a jitted function: chunk, pad, shard.

  Every batched loop of the defenses (LPA crafting, the adversarial ascent, the VAE generator,
  online serving) goes through here, so a jitted function sees a handful of shapes, not one per
  remainder.

  Args:
    arrays: a tuple of arrays with the same leading length N.
    batch_size: rows per chunk.
    mesh: when given, each padded batch is placed split over its 'data' axis.
    pad_to: `n -> rows` of a padded chunk of n real rows (default: batch_size, one shape for all).

  Yields:
    (start, n, batch): the chunk's first row, its number of real rows, and the tuple of the padded
    arrays followed by the weights [rows] float32 (1 for real rows, 0 for padding). Padding rows are
    copies of the chunk's first row (valid inputs, no NaN), to be dropped from the results.
  """
  arrays = tuple(arrays)
  total = len(arrays[0])
  if any(len(a) != total for a in arrays):
    raise ValueError(f'arrays differ in length: {[len(a) for a in arrays]}')
  for start in range(0, total, batch_size):
    chunk = [np.asarray(a[start:start + batch_size]) for a in arrays]
    n = len(chunk[0])
    size = batch_size if pad_to is None else pad_to(n)
    padded = tuple(np.concatenate([a, np.repeat(a[:1], size - n, 0)]) for a in chunk)
    weights = np.concatenate([np.ones(n), np.zeros(size - n)]).astype(np.float32)
    batch = padded + (weights,)
    yield start, n, (batch if mesh is None else shard_batch(batch, mesh))
