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
finished checkpoint raises `StageNotTrainedError` instead of training. `load` restores a finished
stage without its training data and never trains (serving restores the target classifier with it,
`stages.load_classifier`).
"""

import contextlib
import contextvars
import dataclasses
import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import struct
from tqdm import tqdm

from mip_jax.protocol import rules
from mip_jax.runtime import console, killpoints, parallel
from mip_jax.runtime.checkpoints import StageCheckpoint

# Every trained stage's section (classifier, decoder, vae, diffusion, ...) gives the loop these.
RULES = {'*.epochs': (rules.NON_NEGATIVE,), '*.batch_size': (rules.POSITIVE,),
         '*.learning_rate': (rules.POSITIVE,)}


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


@dataclasses.dataclass(frozen=True)
class Step:
  """A step function with its static arguments (the model, loss settings), hashable: `fit` compiles
  one step per distinct Step and mesh and reuses it, so the hundreds of attacker decoders of a study
  with one architecture share one compilation.

    step = train.Step(decoder_step, model=model, loss='mse')   # step(state, batch, rng)
  """
  fn: Callable
  static: tuple

  def __init__(self, fn: Callable, **static):
    object.__setattr__(self, 'fn', fn)
    object.__setattr__(self, 'static', tuple(sorted(static.items())))

  def __call__(self, state, batch, rng):
    return self.fn(state, batch, rng, **dict(self.static))


@functools.lru_cache(maxsize=64)
def _compiled(step_fn, mesh):
  # Replicated outputs: every process can read the loss and, at the end, the parameters.
  return jax.jit(step_fn, donate_argnums=0, out_shardings=parallel.replicated(mesh))


def _jitted_step(step_fn, mesh):
  try:
    return _compiled(step_fn, mesh)
  except TypeError:  # an unhashable step (a lambda's closure is fine; a Step of a list is not)
    return jax.jit(step_fn, donate_argnums=0, out_shardings=parallel.replicated(mesh))


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
  """Stop when the validation loss has not improved for `patience` epochs; keep the best epoch.

  Attributes:
    validate: `validate(state) -> float`, the loss on held-out data (lower is better).
    patience: epochs without improvement before stopping.
  """
  validate: Callable[[TrainState], float]
  patience: int


def _not_trained(desc: str, checkpoint, meta, epochs) -> StageNotTrainedError:
  where = checkpoint.directory if checkpoint is not None else '(no checkpoint given)'
  found = 'nothing' if meta is None else f'epoch {meta["epoch"]}/{epochs}'
  return StageNotTrainedError(
      f'stage {desc!r} is not trained: {where} holds {found}, and loading must not train. '
      f'Train it first with the same config and workdir (e.g. python -m launch.compare '
      f'--config=... --workdir=...).')


def load(state, checkpoint: StageCheckpoint, *, mesh: jax.sharding.Mesh | None = None,
         desc: str = 'load') -> TrainState:
  """The state of a finished stage, restored without its training data and never trained.

  Args:
    state: the structure to restore into (concrete or `jax.eval_shape`d; e.g. the state `fit`
      would start from).
    checkpoint: the stage's checkpoint, made with the config fingerprint it was trained under
      (another one raises `checkpoints.StageMismatchError`).

  Raises:
    StageNotTrainedError: the checkpoint holds no finished stage.
  """
  mesh = mesh or parallel.data_mesh()
  meta = checkpoint.latest()
  if meta is None or not meta.get('done'):
    raise _not_trained(desc, checkpoint, meta, meta['epochs'] if meta else '?')
  stopping = 'best_epoch' in meta  # saved by early stopping: {'current': ..., 'best': ...}
  target = {'current': _saved(state), 'best': _saved(state)} if stopping else _saved(state)
  restored = checkpoint.restore(target, sharding=parallel.replicated(mesh))
  return state.replace(**(restored['best'] if stopping else restored))


def fit(state: TrainState, step_fn: StepFn, arrays: tuple[np.ndarray, ...], *, epochs: int,
        batch_size: int, seed: int, checkpoint: StageCheckpoint | None = None,
        mesh: jax.sharding.Mesh | None = None, desc: str = 'train',
        load_only: bool | None = None, early_stopping: EarlyStopping | None = None) -> TrainState:
  """Trains `state` for `epochs` epochs over `arrays`, resuming from `checkpoint` when it has progress.

  Args:
    state: the initial state (also the structure template for restoring).
    step_fn: pure step function (a `Step` compiles once per model and mesh); jitted here.
    arrays: training arrays with equal leading dimension.
    epochs: total epochs of the stage (the most, with early stopping).
    batch_size: examples per step; clipped to the dataset size, must split over the mesh's devices.
    seed: data order and per-step rngs derive from it.
    checkpoint: where to save after each epoch / resume from; None trains without saving.
    mesh: device mesh ('data' axis); default all devices.
    desc: progress-bar label.
    load_only: True: load a finished stage or raise StageNotTrainedError, never train; None: the
      `load_only()` context decides (default off).
    early_stopping: validate after every epoch and stop when it stops improving; the returned (and
      saved) state is the best epoch's. The checkpoint then holds the current and the best state,
      so a killed run resumes with its patience count intact.

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

  stopping = early_stopping
  track = {'best_epoch': 0, 'best_loss': float('inf'), 'bad_epochs': 0}
  best = state
  saved = lambda s, b: {'current': _saved(s), 'best': _saved(b)} if stopping else _saved(s)
  start = 0
  meta = checkpoint.latest() if checkpoint is not None else None
  finished = lambda meta: meta is not None and (meta['epoch'] >= epochs or meta.get('stopped'))
  if (_LOAD_ONLY.get() if load_only is None else load_only) and not finished(meta):
    raise _not_trained(desc, checkpoint, meta, epochs)
  if checkpoint is not None and meta is not None:
    restored = checkpoint.restore(saved(state, best), sharding=parallel.replicated(mesh))
    if stopping:
      state, best = state.replace(**restored['current']), state.replace(**restored['best'])
      track = {k: meta[k] for k in track}
    else:
      state = state.replace(**restored)
    start = meta['epoch']
    if finished(meta):
      console.say('%s: loaded (trained earlier, %s)', desc, checkpoint.directory)
      return parallel.replicate(best if stopping else state, mesh)
    logging.info('%s: resuming at epoch %d/%d from %s', desc, start + 1, epochs,
                 checkpoint.directory)

  state = parallel.replicate(state, mesh)
  console.say('%s: training %d epochs on %d examples%s', desc, epochs - start, num,
              ' (at most: early stopping)' if stopping else '')
  started = time.time()
  step = _jitted_step(step_fn, mesh)
  key = jax.random.key(seed)
  rows = parallel.local_rows(batch_size, mesh)
  mean_loss, stopped = float('nan'), False
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
      losses.append(metrics['loss'])  # on device: no host sync inside the epoch
    losses = np.asarray(jax.device_get(losses), np.float64)
    if not np.isfinite(losses).all():
      bad = int(np.flatnonzero(~np.isfinite(losses))[0])
      raise FloatingPointError(
          f'{desc}: loss became {losses[bad]} at epoch {epoch + 1}, step {bad + 1} of the epoch; the '
          f'last good checkpoint (epoch {epoch}) is kept. Lower the learning rate or check the '
          f'inputs for NaN/inf.')
    mean_loss = float(losses.mean())
    extra = {'loss': mean_loss}
    if stopping:
      val = float(stopping.validate(state))
      if val < track['best_loss']:
        track = {'best_epoch': epoch + 1, 'best_loss': val, 'bad_epochs': 0}
        best = jax.tree.map(lambda x: x.copy(), state)  # the next step donates `state`'s buffers
      else:
        track['bad_epochs'] += 1
      stopped = track['bad_epochs'] >= stopping.patience
      extra.update(track, val_loss=val, stopped=stopped)
      logging.info('%s epoch %d/%d: loss %.5f, validation %.5f (best %.5f at epoch %d)', desc,
                   epoch + 1, epochs, mean_loss, val, track['best_loss'], track['best_epoch'])
    else:
      logging.info('%s epoch %d/%d: loss %.5f', desc, epoch + 1, epochs, mean_loss)
    if checkpoint is not None:
      checkpoint.save(epoch + 1, saved(state, best), epochs=epochs, extra=extra)
    if stopped:
      break
  if epochs > start:
    what = (f', best validation loss {track["best_loss"]:.5f} at epoch {track["best_epoch"]}'
            + (' (stopped early)' if stopped else '')) if stopping else ''
    console.say('%s: trained in %.0f s, final loss %.5f%s', desc, time.time() - started,
                mean_loss, what)
  return parallel.replicate(best, mesh) if stopping else state
