"""The training loop and stage checkpoints: determinism, resume after a kill, reuse, NaN, mismatch."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mip_jax.runtime import checkpoints, train


class Tiny(nn.Module):
  @nn.compact
  def __call__(self, x, *, train: bool):
    x = nn.Dense(8)(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    return nn.Dense(1)(nn.relu(x))[:, 0]


MODEL = Tiny()


def step(state, batch, rng, *, fail_at=None):
  del rng
  x, y = batch

  def loss_fn(p):
    out, upd = MODEL.apply({'params': p, 'batch_stats': state.batch_stats}, x, train=True,
                           mutable=['batch_stats'])
    return jnp.mean((out - y) ** 2), upd['batch_stats']

  (loss, bs), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if fail_at is not None:  # a "kill" during the given step: poison the loss
    loss = jnp.where(state.step == fail_at, jnp.nan, loss)
  return state.apply_gradients(g, bs), {'loss': loss}


def data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 4)).astype(np.float32)
  return x, (x @ np.arange(1, 5, dtype=np.float32)).astype(np.float32)


def fresh_state():
  variables = MODEL.init(jax.random.key(0), np.zeros((1, 4), np.float32), train=False)
  return train.TrainState.create(variables=variables, tx=optax.adam(1e-2))


def run(tmp_path, epochs, step_fn=step, name='stage'):
  ckpt = checkpoints.StageCheckpoint(str(tmp_path), name, checkpoints.fingerprint({'a': 1}))
  try:
    return train.fit(fresh_state(), step_fn, data(), epochs=epochs, batch_size=16, seed=3,
                     checkpoint=ckpt)
  finally:
    ckpt.close()


def leaves_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_fit_is_deterministic_and_learns(tmp_path):
  a = train.fit(fresh_state(), step, data(), epochs=3, batch_size=16, seed=3)
  b = train.fit(fresh_state(), step, data(), epochs=3, batch_size=16, seed=3)
  assert leaves_equal(a.params, b.params)
  assert int(a.step) == 3 * 4
  x, y = data()
  pred = MODEL.apply(jax.device_get(a.variables), x, train=False)
  assert np.mean((pred - y) ** 2) < np.var(y)  # it learned something


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
  reference = train.fit(fresh_state(), step, data(), epochs=3, batch_size=16, seed=3)
  killed = lambda s, b, r: step(s, b, r, fail_at=9)  # dies in epoch 3 (steps 8-11)
  with pytest.raises(FloatingPointError, match='last good checkpoint'):
    run(tmp_path, 3, killed)
  meta = checkpoints.StageCheckpoint(str(tmp_path), 'stage', checkpoints.fingerprint({'a': 1}))
  assert meta.latest()['epoch'] == 2 and not meta.latest()['done']
  meta.close()
  resumed = run(tmp_path, 3)
  assert int(resumed.step) == 12
  assert leaves_equal(resumed.params, reference.params)
  assert leaves_equal(resumed.opt_state, reference.opt_state)


def test_finished_stage_is_loaded_not_retrained(tmp_path):
  first = run(tmp_path, 2)
  never = lambda s, b, r: (_ for _ in ()).throw(AssertionError('retrained a finished stage'))
  again = run(tmp_path, 2, never)
  assert leaves_equal(first.params, again.params)


def test_stage_from_another_config_is_refused(tmp_path):
  run(tmp_path, 1)
  other = checkpoints.StageCheckpoint(str(tmp_path), 'stage', checkpoints.fingerprint({'a': 2}))
  with pytest.raises(checkpoints.StageMismatchError, match='new --workdir'):
    other.latest()
  other.close()


def test_nan_loss_stops_with_clear_error():
  bad = lambda s, b, r: step(s, b, r, fail_at=0)
  with pytest.raises(FloatingPointError, match='loss became nan'):
    train.fit(fresh_state(), bad, data(), epochs=1, batch_size=16, seed=0)


def test_epoch_batches_cover_each_example_once():
  batches = train.epoch_batches(50, 16, seed=1, epoch=0)
  assert len(batches) == 3
  flat = np.concatenate(batches)
  assert len(np.unique(flat)) == 48
  assert not np.array_equal(flat, np.concatenate(train.epoch_batches(50, 16, seed=1, epoch=1)))


def validation_loss(state):
  """The training loss on held-out rows that follow another rule: it falls, then rises as the
  model fits the training rule (a stopping point exists)."""
  x, y = data()
  pred = MODEL.apply(jax.device_get(state.variables), x[:16] * 3, train=False)
  return float(np.mean((pred - y[:16]) ** 2))


def stopping_run(tmp_path, epochs, step_fn=step, patience=2):
  ckpt = checkpoints.StageCheckpoint(str(tmp_path), 'early', checkpoints.fingerprint({'a': 3}))
  early = train.EarlyStopping(validate=validation_loss, patience=patience)
  try:
    return train.fit(fresh_state(), step_fn, data(), epochs=epochs, batch_size=16, seed=3,
                     checkpoint=ckpt, early_stopping=early)
  finally:
    ckpt.close()


def test_early_stopping_keeps_the_best_epoch_and_resumes_with_its_patience(tmp_path):
  best = stopping_run(tmp_path / 'a', 40)
  meta = checkpoints.StageCheckpoint(str(tmp_path / 'a'), 'early', checkpoints.fingerprint({'a': 3}))
  record = meta.latest()
  meta.close()
  assert record['stopped'] and record['done'] and record['epoch'] < 40
  assert record['epoch'] == record['best_epoch'] + 2  # patience 2
  assert validation_loss(best) == pytest.approx(record['best_loss'], rel=1e-6)
  # A run killed after its best epoch resumes to the same stop and the same best state.
  killed = lambda s, b, r: step(s, b, r, fail_at=4 * (record['best_epoch'] + 1))
  with pytest.raises(FloatingPointError):
    stopping_run(tmp_path / 'b', 40, killed)
  resumed = stopping_run(tmp_path / 'b', 40)
  assert leaves_equal(resumed.params, best.params)
  # A finished stage is loaded: its best state, without training.
  never = lambda s, b, r: (_ for _ in ()).throw(AssertionError('retrained a finished stage'))
  assert leaves_equal(stopping_run(tmp_path / 'a', 40, never).params, best.params)


def test_a_step_compiles_once_for_equal_static_arguments():
  a = train.Step(step, fail_at=None)
  assert a == train.Step(step, fail_at=None) and hash(a) == hash(train.Step(step, fail_at=None))
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ('data',))
  assert train._jitted_step(a, mesh) is train._jitted_step(train.Step(step, fail_at=None), mesh)
  assert train._jitted_step(a, mesh) is not train._jitted_step(train.Step(step, fail_at=3), mesh)
