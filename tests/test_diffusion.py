"""The diffusion attacker (Table V): schedule closed forms, training, guidance, sampling, table5."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import digits
from mip_jax.attacks import diffusion, suite
from mip_jax.runtime import train
from mip_jax.studies import paper
from mip_jax.studies.paper import experiments


def small_cfg(**kw):
  c = dict(timesteps=20, beta_start=1e-3, beta_end=0.2, features=8, drop_prob=0.1, epochs=1,
           batch_size=16, learning_rate=3e-3, guidance=0.5, guidances=(0.0, 0.5, 2.0),
           sample_batch_size=8)
  c.update(kw)
  return ml_collections.ConfigDict(c)


def test_closed_forms_of_q_match_the_step_by_step_chain():
  s = diffusion.Schedule.linear(50, 1e-3, 0.2)
  betas = np.asarray(s.betas, np.float64)
  coef, var = 1.0, 0.0  # x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps, from x_{-1} = x_0
  for t, b in enumerate(betas):
    coef, var = np.sqrt(1 - b) * coef, (1 - b) * var + b
    np.testing.assert_allclose(float(s.q_mean_coef(t)), coef, rtol=1e-5)
    np.testing.assert_allclose(float(s.q_var(t)), var, rtol=1e-5)
  # The chain simulated: 20,000 draws from x_0 = 0.7 against the closed form at t = 9 and t = 49.
  n, x0 = 20_000, 0.7
  x, key = np.full(n, x0), jax.random.key(0)
  for t, b in enumerate(betas):
    key, sub = jax.random.split(key)
    x = np.sqrt(1 - b) * x + np.sqrt(b) * np.asarray(jax.random.normal(sub, (n,)))
    if t in (9, 49):
      assert abs(x.mean() - float(s.q_mean_coef(t)) * x0) < 0.02
      assert abs(x.var() - float(s.q_var(t))) < 0.03
  # q_sample is that closed form.
  noise = jnp.ones((2, 4, 4, 1))
  xt = s.q_sample(jnp.full((2, 4, 4, 1), x0), jnp.array([0, 49]), noise)
  np.testing.assert_allclose(np.asarray(xt[1, 0, 0, 0]),
                             float(s.q_mean_coef(49)) * x0 + np.sqrt(float(s.q_var(49))), rtol=1e-5)


def toy_data(n=64):
  """Two classes of 8x8 images (a bright top half or left half) and their one-hot conditions."""
  labels = np.arange(n) % 2
  images = np.zeros((n, 8, 8, 1), np.float32)
  images[labels == 0, :4] = 1.0
  images[labels == 1, :, :4] = 1.0
  return np.eye(2, dtype=np.float32)[labels], images


def init_state(cfg, cond, images):
  model = diffusion.make_model(cfg, 1)
  v = model.init(jax.random.key(0), jnp.zeros((1,) + images.shape[1:]), jnp.zeros((1,), jnp.int32),
                 jnp.asarray(cond[:1]), jnp.ones((1,)))
  return model, train.TrainState.create(variables=v, tx=optax.adam(cfg.learning_rate))


def test_training_loss_falls():
  cfg = small_cfg()
  cond, images = toy_data()
  model, state = init_state(cfg, cond, images)
  step = jax.jit(lambda s, b, r: diffusion.diffusion_step(
      s, b, r, model=model, schedule=diffusion.schedule_of(cfg), drop_prob=cfg.drop_prob))
  losses = []
  for i in range(60):
    idx = np.random.default_rng(i).choice(len(cond), 16, replace=False)
    state, m = step(state, (cond[idx], images[idx]), jax.random.key(i))
    losses.append(float(m['loss']))
  # The zero-initialised output predicts eps = 0 (loss ~ 1); the trained one much better.
  assert np.mean(losses[:5]) > 0.8
  assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5])


@pytest.fixture(scope='module')
def random_model():
  """An untrained U-Net with a random (not zero) output layer, so outputs depend on everything."""
  cfg = small_cfg()
  cond, images = toy_data(8)
  model, state = init_state(cfg, cond, images)
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: (jax.random.normal(jax.random.key(1), x.shape) * 0.1
                    if 'Conv_' in jax.tree_util.keystr(p) and x.ndim == 4 and not x.any() else x),
      state.params)
  return cfg, model, params, cond, images


def test_guidance_zero_is_the_conditional_model(random_model):
  cfg, model, params, cond, images = random_model
  x = jax.random.normal(jax.random.key(2), images.shape)
  t = jnp.arange(8) % cfg.timesteps
  apply = jax.jit(lambda keep: model.apply({'params': params}, x, t, cond, keep))
  guided = jax.jit(lambda w: diffusion.guided_eps(model, params, x, t, cond, w), static_argnums=0)
  conditional, unconditional = apply(jnp.ones((8,))), apply(jnp.zeros((8,)))
  assert float(jnp.abs(conditional - unconditional).max()) > 1e-3  # the condition matters
  np.testing.assert_array_equal(guided(0.0), conditional)
  np.testing.assert_allclose(guided(2.0), 3 * conditional - 2 * unconditional, atol=1e-5)


def test_sampling_is_deterministic_in_range_and_independent_of_the_batch(random_model):
  cfg, model, params, cond, images = random_model
  gen = lambda seed, batch, w=0.5: diffusion.generate(
      model, params, small_cfg(sample_batch_size=batch), cond, image_shape=(8, 8, 1), seed=seed,
      guidance=w)
  a = gen(0, 8)
  assert a.shape == (8, 8, 8, 1) and a.dtype == np.float32
  assert a.min() >= 0.0 and a.max() <= 1.0 and a.std() > 0.05
  np.testing.assert_array_equal(gen(0, 8), a)
  np.testing.assert_allclose(gen(0, 4), a, atol=1e-5)  # other batch mates, same image
  assert np.abs(gen(1, 8) - a).max() > 0.1
  assert np.abs(gen(0, 8, w=0.0) - a).max() > 1e-3


def test_attacker_names():
  assert suite.split_guidance('diffusion_floor@2') == ('diffusion_floor', 2.0)
  assert suite.parse('diffusion_floor@2').attack_config(digits.get_config().attack).transform == 'floor'
  assert suite.is_diffusion('diffusion') and not suite.is_diffusion('floor')
  for bad in ('noise@1', 'diffusion@x', 'diffusion@-1'):
    with pytest.raises(ValueError, match='diffusion@w'):
      suite.check(bad)


def test_table5_on_tiny_writes_its_rows(tmp_path, data_dir, monkeypatch):
  """One guidance, Yang's attacker only, no control row, the ensemble row folded into the
  single-substitute one (size 1: the same cell), to stay short; the full table runs in
  docs/results/."""
  monkeypatch.setattr(experiments, 'ZERO_ROBUST', ())
  monkeypatch.setattr(experiments, 'ENSEMBLE', (('lpa.ensemble_size', 1),))
  monkeypatch.setattr(experiments, 'CONTROL', 'no such defense')  # has_control() -> False
  c = digits.get_config('tiny')
  c.data_dir = data_dir
  c.diffusion.guidances = (2.0,)
  result = paper.run('table5', c, str(tmp_path))
  doc = json.load(open(tmp_path / 'table5.json'))
  rows = [(r['architecture'], r['guidance'], r['defense']) for r in doc['rows']]
  defenses = ['w/o', 'w/', 'w/ ensemble of 3']
  assert rows == ([('conditional diffusion', 2.0, d) for d in defenses]
                  + [('3-TCNNs', '-', d) for d in defenses])
  by = {(r['architecture'], r['defense']): r for r in doc['rows']}
  w, wo = by[('conditional diffusion', 'w/')], by[('conditional diffusion', 'w/o')]
  assert 0 < w['conf_dist'] <= c.lpa.eps + 1e-6 and wo['conf_dist'] == 0
  assert 0 <= w['attack_acc'] <= 1 and 0 < w['recon_error'] < 1
  # Size 1 makes the ensemble cell the single-substitute cell: the same vectors, the same attacker,
  # the same numbers, and no second substitute is trained for it.
  measured = lambda r: {k: v for k, v in r.items() if k not in ('defense', 'label')}
  for arch in ('conditional diffusion', '3-TCNNs'):
    assert measured(by[(arch, 'w/ ensemble of 3')]) == measured(by[(arch, 'w/')])
  stages_dir = tmp_path / f'seed_{c.seed}' / 'checkpoints'
  assert len([s for s in os.listdir(stages_dir) if s.startswith('substitute')]) == 1
  # The paper's guidance-2.0 numbers sit beside ours.
  assert '83.21%' in result['markdown'] and '72.84%' in result['markdown']
  assert os.path.getsize(tmp_path / 'table5_fig6.png') > 1000
