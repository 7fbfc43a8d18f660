"""One-axis device mesh ('data') over every process's devices, and the shardings every jitted step uses.

Batches are split over the 'data' axis; parameters and optimiser state are replicated. The same code
runs on one device, on many devices of one process, and on several JAX processes (hosts) joined by
`initialize`: `jax.devices()` then lists every process's devices and the mesh spans them all. We use
`jax.jit` with NamedSharding-placed inputs (GSPMD partitions the computation), not `pmap`
(maintenance mode).

With several processes each process holds the global batch's indices but contributes only the rows of
its own devices (`local_rows`); `jax.make_array_from_process_local_data` assembles the global batch.
Values every process must read (parameters, crafted vectors, losses) come out of jitted functions
replicated (`out_shardings=replicated(mesh)`) or through `to_host`. Files are written by process 0
only (`on_main_process`), the others wait for it.
"""

import logging as std_logging
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


# ---------------------------------------------------------------- joining a cluster

def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, from_environment: bool = False,
               timeout_s: int = 300) -> bool:
  """Joins a JAX cluster (`jax.distributed.initialize`); call it before any JAX work.

  Args:
    coordinator_address: 'host:port' of process 0; with num_processes and process_id.
    num_processes: how many processes take part.
    process_id: this process's index in [0, num_processes).
    from_environment: join with whatever JAX detects (SLURM, Open MPI, Cloud TPU,
      JAX_COORDINATOR_ADDRESS ...); the three values above, when given, take precedence.
    timeout_s: how long to wait for the other processes before failing (a missing peer or a wrong
      address ends in an error, not a hang).

  Returns:
    True when this process joined a cluster, False when nothing was asked (one process).
  """
  given = {'coordinator_address': coordinator_address, 'num_processes': num_processes,
           'process_id': process_id}
  if all(v is None for v in given.values()):
    if not from_environment:
      return False
  elif any(v is None for v in given.values()):
    missing = ', '.join(f'--{k}' for k, v in given.items() if v is None)
    raise ValueError(f'joining a cluster by hand needs --coordinator_address, --num_processes and '
                     f'--process_id together; {missing} missing (or pass none of them and '
                     f'--distributed to read them from SLURM / Cloud TPU / Open MPI)')
  elif num_processes < 1 or not 0 <= process_id < num_processes:
    raise ValueError(f'--process_id={process_id} must lie in [0, --num_processes={num_processes})')
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             initialization_timeout=timeout_s)
  _tag_logs()
  return True


class _ProcessTag(std_logging.Filter):
  """Prefixes every log record with the process that speaks: '[process 1/4] ...'."""

  def filter(self, record):
    if not getattr(record, '_mip_jax_tagged', False):
      record.msg = f'[process {jax.process_index()}/{jax.process_count()}] {record.msg}'
      record._mip_jax_tagged = True
    return True


def _tag_logs() -> None:
  if jax.process_count() > 1:
    logging.get_absl_handler().addFilter(_ProcessTag())


def is_main_process() -> bool:
  """Process 0: the one that writes files, prints tables and shows progress bars."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Every process waits here until all have arrived (a no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def on_main_process(write: Callable[[], Any], name: str) -> None:
  """Runs `write` (a file writer) on process 0 only, between two barriers.

  The barriers keep the processes' control flow equal around a cached file: the one before means no
  process can still be checking for the file (to decide whether to compute it) when process 0
  writes it; the one after means none checks before it is there.
  """
  barrier(f'mip_jax before write: {name}')
  if is_main_process():
    write()
  barrier(f'mip_jax write: {name}')


def main_process_first(fn: Callable[[], Any], name: str) -> Any:
  """`fn()` on every process, process 0 first: what it prepares on a shared disk (a dataset built on
  first use) is there before the others look, so they read it instead of building it at once."""
  result = fn() if is_main_process() else None
  barrier(f'mip_jax main first: {name}')
  return result if is_main_process() else fn()


# ---------------------------------------------------------------- mesh and shardings

def data_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices of all processes (all by default)."""
  devices = jax.devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f'asked for {num_devices} devices, have {len(devices)}')
    if jax.process_count() > 1 and num_devices != len(devices):
      raise ValueError(f'with {jax.process_count()} processes the mesh must span all '
                       f'{len(devices)} devices (every process takes part in every step); '
                       f'asked for {num_devices}')
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'; other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def local_rows(batch_size: int, mesh: Mesh) -> slice:
  """The rows of a global batch of `batch_size` that this process's devices hold.

  Raises ValueError when the batch does not split evenly over the mesh's devices: a silent
  remainder would change results between device counts.
  """
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(f'batch of {batch_size} does not split over {n} devices; '
                     f'use a batch size that is a multiple of {n}')
  blocks = sorted((idx[0].start or 0, idx[0].stop or batch_size) for idx in
                  batch_sharding(mesh).addressable_devices_indices_map((batch_size,)).values())
  if any(a[1] != b[0] for a, b in zip(blocks, blocks[1:])):
    raise ValueError(f'this process\'s devices hold rows {blocks}, not one block; build the mesh '
                     f'with parallel.data_mesh (devices in process order)')
  return slice(blocks[0][0], blocks[-1][1])


def global_batch(local_tree, mesh: Mesh):
  """Assembles the global batch from every process's `local_rows` (leaves: numpy, batch first)."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_tree)


def shard_batch(tree, mesh: Mesh):
  """Places every leaf of `tree` (the global batch, leading axis = batch) split over 'data'.

  Every process passes the same global batch and contributes only its own rows. The batch size must
  be a multiple of the device count: a silent remainder would change results between device counts,
  so it is an error.
  """
  leaves = jax.tree.leaves(tree)
  for leaf in leaves:
    if leaf.shape[0] != leaves[0].shape[0]:
      raise ValueError(f'batch leaves differ in length: {[l.shape[0] for l in leaves]}')
  if jax.process_count() == 1:  # all rows are local: one device_put, no host copy
    local_rows(leaves[0].shape[0], mesh)  # the divisibility check
    return jax.device_put(tree, batch_sharding(mesh))
  rows = local_rows(leaves[0].shape[0], mesh)
  return global_batch(jax.tree.map(lambda x: np.asarray(x)[rows], tree), mesh)


def replicate(tree, mesh: Mesh):
  """The same value on every device of the mesh (every process must pass the same value)."""
  return jax.device_put(tree, replicated(mesh))


def to_host(tree):
  """Numpy copies of (possibly multi-process, sharded) arrays, the whole global value on every
  process; an all-gather across processes only when a value is not already fully replicated."""
  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
      return np.asarray(x)
    return multihost_utils.process_allgather(x, tiled=True)
  return jax.tree.map(one, tree)


def bucket_size(n: int, *, multiple: int = 1) -> int:
  """The padded size of a chunk of n rows: the next power of two, rounded up to `multiple` (the
  device count). Serving pads every chunk to one of these, so any request size compiles at most
  log2(chunk) + 1 shapes of a jitted function."""
  size = 1 << max(n - 1, 0).bit_length()
  return -(-size // multiple) * multiple


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
