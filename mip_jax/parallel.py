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
