"""A generic optax training loop over jitted pure step functions, with stage checkpoints.

A step function has the signature `step(state, batch, rng) -> (state, metrics)`, where `batch` is a tuple
of arrays whose leading axis is the batch and `metrics['loss']` is a scalar. `fit` shuffles with a
per-epoch seed (so a resumed run sees the same batches as an uninterrupted one), shards each batch over
the 'data' mesh axis, shows a progress bar with the loss, saves after each epoch and stops with a clear
error when the loss stops being finite.

With several JAX processes (`parallel.initialize`) every process computes the same epoch order,
gathers only its own rows of each batch (`parallel.local_rows`) and the global batch is assembled
across processes; the state is replicated on every device, saved and restored by all processes
together (Orbax), and only process 0 shows the progress bar.

Inside `with load_only():` (or with `fit(..., load_only=True)`) `fit` only loads: a stage without a
finished checkpoint raises `StageNotTrainedError` instead of training. Serving (`mip_jax.serving.defender`)
builds everything through the same stage functions as an experiment, under this context, so it can
never start a training run by accident.
"""

import contextlib
import contextvars
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import struct
from tqdm import tqdm

from mip_jax.runtime import console, killpoints, parallel
from mip_jax.runtime.checkpoints import StageCheckpoint


class TrainState(struct.PyTreeNode):
  """Everything a stage needs to continue training; `tx` is static (not saved)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  @classmethod
  def create(cls, *, variables: dict, tx: optax.GradientTransformation) -> 'TrainState':
    params = variables['params']
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params), tx=tx)

  def apply_gradients(self, grads, batch_stats) -> 'TrainState':
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                        batch_stats=batch_stats, opt_state=opt_state)

  @property
  def variables(self) -> dict:
    return {'params': self.params, 'batch_stats': self.batch_stats}


class StageNotTrainedError(RuntimeError):
  """A stage was asked for in load-only mode but its workdir holds no finished checkpoint."""


_LOAD_ONLY = contextvars.ContextVar('mip_jax_load_only', default=False)


@contextlib.contextmanager
def load_only():
  """Within this block every `fit` loads finished stages and trains none (StageNotTrainedError)."""
  token = _LOAD_ONLY.set(True)
  try:
    yield
  finally:
    _LOAD_ONLY.reset(token)


StepFn = Callable[[TrainState, tuple, jax.Array], tuple[TrainState, dict]]


def epoch_batches(num_examples: int, batch_size: int, *, seed: int, epoch: int) -> list[np.ndarray]:
  """Index arrays of the shuffled full batches of one epoch (the remainder is dropped)."""
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  n = num_examples // batch_size
  return [perm[i * batch_size:(i + 1) * batch_size] for i in range(n)]


def _saved(state: TrainState) -> dict:
  """The checkpointed part of a state: a plain dict (the optimiser `tx` is code, not data)."""
  return {'step': state.step, 'params': state.params, 'batch_stats': state.batch_stats,
          'opt_state': state.opt_state}


def fit(state: TrainState, step_fn: StepFn, arrays: tuple[np.ndarray, ...], *, epochs: int,
        batch_size: int, seed: int, checkpoint: StageCheckpoint | None = None,
        mesh: jax.sharding.Mesh | None = None, desc: str = 'train',
        load_only: bool | None = None) -> TrainState:
  """Trains `state` for `epochs` epochs over `arrays`, resuming from `checkpoint` when it has progress.

  Args:
    state: the initial state (also the structure template for restoring).
    step_fn: pure step function; jitted here.
    arrays: training arrays with equal leading dimension.
    epochs: total epochs of the stage.
    batch_size: examples per step; clipped to the dataset size, must split over the mesh's devices.
    seed: data order and per-step rngs derive from it.
    checkpoint: where to save after each epoch / resume from; None trains without saving.
    mesh: device mesh ('data' axis); default all devices.
    desc: progress-bar label.
    load_only: True: load a finished stage or raise StageNotTrainedError, never train; None: the
      `load_only()` context decides (default off).

  Returns:
    The trained state (on host memory layout of the mesh, replicated).
  """
  mesh = mesh or parallel.data_mesh()
  num = len(arrays[0])
  if any(len(a) != num for a in arrays):
    raise ValueError(f'training arrays differ in length: {[len(a) for a in arrays]}')
  batch_size = min(batch_size, num)
  batch_size -= batch_size % mesh.devices.size
  if batch_size == 0:
    raise ValueError(f'{num} training examples cannot fill a batch on {mesh.devices.size} devices')

  start = 0
  meta = checkpoint.latest() if checkpoint is not None else None
  if (_LOAD_ONLY.get() if load_only is None else load_only) and (
      meta is None or meta['epoch'] < epochs):
    where = checkpoint.directory if checkpoint is not None else '(no checkpoint given)'
    found = 'nothing' if meta is None else f'epoch {meta["epoch"]}/{epochs}'
    raise StageNotTrainedError(
        f'stage {desc!r} is not trained: {where} holds {found}, and loading must not train. '
        f'Train it first with the same config and workdir (e.g. python -m launch.compare '
        f'--config=... --workdir=...).')
  if checkpoint is not None:
    if meta is not None:
      state = state.replace(**checkpoint.restore(_saved(state), sharding=parallel.replicated(mesh)))
      start = meta['epoch']
      if start >= epochs:
        console.say('%s: loaded (trained earlier, %s)', desc, checkpoint.directory)
        return parallel.replicate(state, mesh)
      logging.info('%s: resuming at epoch %d/%d from %s', desc, start + 1, epochs, checkpoint.directory)

  state = parallel.replicate(state, mesh)
  console.say('%s: training %d epochs on %d examples', desc, epochs - start, num)
  started = time.time()
  # Replicated outputs: every process can read the loss and, at the end, the parameters.
  step = jax.jit(step_fn, donate_argnums=0, out_shardings=parallel.replicated(mesh))
  key = jax.random.key(seed)
  rows = parallel.local_rows(batch_size, mesh)
  for epoch in range(start, epochs):
    killpoints.reached(f'{desc}:epoch:{epoch + 1}')
    batches = epoch_batches(num, batch_size, seed=seed, epoch=epoch)
    bar = tqdm(batches, desc=f'{desc} {epoch + 1}/{epochs}', leave=False,
               disable=None if parallel.is_main_process() else True)
    losses = []
    for idx in bar:
      # This process gathers its own rows only; the global batch is assembled across processes.
      batch = parallel.global_batch(tuple(a[idx[rows]] for a in arrays), mesh)
      state, metrics = step(state, batch, jax.random.fold_in(key, int(state.step)))
      loss = float(metrics['loss'])
      if not np.isfinite(loss):
        raise FloatingPointError(
            f'{desc}: loss became {loss} at epoch {epoch + 1}, step {int(state.step)}; the last good '
            f'checkpoint is kept. Lower the learning rate or check the inputs for NaN/inf.')
      losses.append(loss)
      bar.set_postfix(loss=f'{loss:.4f}')
    logging.info('%s epoch %d/%d: loss %.5f', desc, epoch + 1, epochs, np.mean(losses))
    if checkpoint is not None:
      checkpoint.save(epoch + 1, _saved(state), epochs=epochs, extra={'loss': float(np.mean(losses))})
  if epochs > start:
    console.say('%s: trained in %.0f s, final loss %.5f', desc, time.time() - started, np.mean(losses))
  return state
