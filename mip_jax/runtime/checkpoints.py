"""Orbax checkpoints of training stages: `<workdir>/checkpoints/<stage>`.

A stage (classifier, eval_classifier, attacker_none, ...) is saved after every epoch, with a small JSON
record of its progress and of the config it was trained with. A rerun with the same workdir loads a
finished stage instead of training it again, and resumes an unfinished one from its last epoch. A stage
trained under another config is refused (not silently reused): results would otherwise mix configs.

With several JAX processes every process constructs the same `StageCheckpoint` and calls `save` and
`restore` together (Orbax synchronises them; the primary process writes the metadata and the
replicated arrays once); `restore(..., sharding=...)` places the arrays on the global mesh.
"""

import hashlib
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mip_jax.runtime import killpoints


def fingerprint(cfg: Any) -> str:
  """Stable short hash of the config fields a stage depends on (a dict / ConfigDict / JSON-able)."""
  if hasattr(cfg, 'to_dict'):
    cfg = cfg.to_dict()
  text = json.dumps(cfg, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def array_fingerprint(array) -> str:
  """Hash of an array's float32 values rounded to 6 decimals (stable across devices' last-bit noise)."""
  data = np.round(np.asarray(array, np.float64), 6).astype(np.float32)
  return hashlib.sha256(data.tobytes() + str(data.shape).encode()).hexdigest()[:16]


def exact_fingerprint(*trees) -> str:
  """Hash of the exact bytes of every array leaf of `trees` (cache keys of crafted vectors, which
  depend on entries far below array_fingerprint's 6 decimals)."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(trees):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(str((a.dtype, a.shape)).encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


class StageMismatchError(RuntimeError):
  pass


class StageCheckpoint:
  """Save / restore one stage's training state, epoch by epoch.

  Args:
    workdir: run directory; the stage lives in `<workdir>/checkpoints/<stage>`.
    stage: stage name.
    config_hash: `fingerprint(...)` of the config that defines this stage.
  """

  def __init__(self, workdir: str, stage: str, config_hash: str):
    self.stage = stage
    self.config_hash = config_hash
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints', stage))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
        item_names=('state', 'meta'))

  def latest(self) -> dict | None:
    """The progress record of the newest checkpoint ({'epoch', 'epochs', 'done', ...}) or None."""
    step = self._manager.latest_step()
    if step is None:
      return None
    meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    if meta.get('config_hash') != self.config_hash:
      raise StageMismatchError(
          f'{self.directory} holds stage {self.stage!r} trained with another config '
          f'({meta.get("config_hash")} != {self.config_hash}); use a new --workdir or delete that folder')
    return meta

  def save(self, epoch: int, state: Any, *, epochs: int, extra: dict | None = None) -> None:
    meta = dict(extra or {}, epoch=epoch, epochs=epochs, done=epoch >= epochs or bool((extra or {}).get('stopped')),
                config_hash=self.config_hash, stage=self.stage)
    self._manager.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(jax.device_get(state)), meta=ocp.args.JsonSave(meta)))
    killpoints.reached(f'{self.stage}:save:{epoch}')
    self._manager.wait_until_finished()

  def restore(self, abstract_state: Any, *, sharding: jax.sharding.Sharding | None = None) -> Any:
    """Newest saved state, with the structure (and optax NamedTuples) of `abstract_state`.

    `sharding` places every restored array (e.g. `parallel.replicated(mesh)`); with several
    processes it must be given, since each process then restores only its devices' part.
    """
    step = self._manager.latest_step()
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          abstract_state)
    return self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))['state']

  def close(self):
    self._manager.close()
