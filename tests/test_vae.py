"""The VAE generator (Table IX): feasible one-pass vectors, alignment training, its stage, Table IX."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import digits
from mip_jax.defenses import feasible, lpa, vae
from mip_jax.models import make_decoder
from mip_jax.models import vae as vae_model
from mip_jax.protocol import experiment, metrics, substitute
from mip_jax.runtime import train
from mip_jax.studies import compare, report


def vectors(n: int, m: int = 5, seed: int = 0, max_scale: float = 200) -> np.ndarray:
  """Softmax vectors from flat to saturated (with max_scale 200 a few have entries that underflow
  to exactly 0)."""
  rng = np.random.default_rng(seed)
  scale = np.geomspace(0.5, max_scale, n)[:, None]
  return np.array(jax.nn.softmax(rng.normal(size=(n, m)) * scale, -1), np.float32)


def small_generator(eps=0.01, seed=0):
  model = vae_model.PerturbationVAE(num_classes=5, latent=4, hidden=(16, 16), eps=eps)
  flat = jnp.ones((1, 5)) / 5
  params = model.init(jax.random.key(seed), flat, flat, sample=False)['params']
  return model, params


def serve(model, eps=0.02):
  """The jitted serving pass (eager op-by-op dispatch would dominate these tests' time)."""
  return jax.jit(lambda p, c, key: vae_model.defended_vectors(model, p, c, eps, key))


def test_generator_vectors_are_feasible_for_any_weights():
  c = vectors(64)
  assert np.any(c == 0)  # saturated rows: the log features must stay finite
  for seed in range(2):
    model, params = small_generator(eps=0.02, seed=seed)
    # Large weights: the raw perturbation saturates, the feasible map must still hold.
    params = jax.tree.map(lambda p: p * 30, params)
    out = serve(model)(params, jnp.asarray(c), jax.random.key(seed))
    d = np.asarray(out['defended'])
    metrics.check_probability_vectors(d)
    assert np.asarray(out['finite']).all()
    assert metrics.label_flip_rate(d, c) == 0.0
    assert np.linalg.norm(d - c, axis=1).max() <= 0.02 * (1 + 1e-5)
    assert np.asarray(feasible.is_feasible(jnp.asarray(c), out['defended'], 0.02)).all()
    assert np.abs(d - c).max() > 1e-3  # it does move the vectors


def test_serving_is_deterministic_and_ignores_batch_mates():
  model, params = small_generator()
  state = vae.make_state(model, params, 0.01, seed=0)
  c = vectors(37)
  full, finite = vae.generate(state, c)
  assert finite.all() and full.shape == c.shape
  again, _ = vae.generate(state, c)
  np.testing.assert_array_equal(again, full)
  alone = np.concatenate([vae.generate(state, c[i:i + 1])[0] for i in (0, 5, 36)])
  np.testing.assert_allclose(alone, full[[0, 5, 36]], atol=1e-7)
  chunked, _ = vae.generate(state, c, chunk=8)  # 5 chunks padded to powers of two
  np.testing.assert_allclose(chunked, full, atol=1e-7)
  assert state['fn']._cache_size() <= 6  # 37, 1 and 8-row chunks: a handful of padded shapes


def test_latents_are_a_function_of_the_vector_and_the_key():
  c = vectors(6)
  c[4] = c[1]  # a repeated query
  key = jax.random.key(0)
  z = np.asarray(vae_model.prior_latents(jnp.asarray(c), key, 8))
  np.testing.assert_array_equal(z[4], z[1])
  assert len({tuple(row) for row in z}) == 5  # every other vector its own draw
  np.testing.assert_array_equal(np.asarray(vae_model.prior_latents(jnp.asarray(c[::-1]), key, 8)),
                                z[::-1])
  other = np.asarray(vae_model.prior_latents(jnp.asarray(c), jax.random.key(1), 8))
  assert np.abs(other - z).min() > 0
  assert abs(float(z.mean())) < 0.5 and 0.5 < float(z.std()) < 1.5  # N(0, 1) draws


def test_projection_gradient_is_finite_for_one_hot_vectors():
  c = jnp.asarray([[0.0, 0.0, 1.0, 0.0], [0.1, 0.2, 0.6, 0.1]])
  delta = jnp.asarray([[-0.01, -0.02, 0.005, -0.01], [0.01, -0.02, 0.005, 0.01]])
  loss = lambda d, f: jnp.sum(jnp.log(jnp.maximum(f(c, d, 0.05), 1e-30)) * jnp.arange(4.0))
  plain = jax.jit(jax.grad(loss), static_argnums=1)(
      delta, lambda c, d, e: feasible.project(c, c + d, e))
  assert np.isfinite(np.asarray(plain)).all()  # feasible's norm is safe at q == c
  safe = np.asarray(jax.jit(jax.grad(loss), static_argnums=1)(delta, vae.project_with_finite_grad))
  assert np.isfinite(safe).all() and np.all(safe[0] == 0)
  np.testing.assert_array_equal(safe[1], np.asarray(plain[1]))  # other rows: the same gradient
  np.testing.assert_array_equal(np.asarray(vae.project_with_finite_grad(c, delta, 0.05)),
                                np.asarray(feasible.project(c, c + delta, 0.05)))


def test_kl_is_zero_at_the_prior():
  assert float(vae_model.kl_divergence(jnp.zeros((3, 4)), jnp.zeros((3, 4))).max()) == 0.0
  assert float(vae_model.kl_divergence(jnp.ones((1, 4)), jnp.zeros((1, 4)))[0]) == pytest.approx(2.0)


def test_non_finite_network_output_is_flagged_not_hidden():
  model, params = small_generator()
  params = jax.tree.map(lambda p: p.at[(0,) * p.ndim].set(jnp.nan), params)
  c = vectors(4)
  out = serve(model, 0.01)(params, jnp.asarray(c), jax.random.key(0))
  # The feasible map quietly returns c (renormalised) for a NaN candidate: only the flag tells.
  assert not np.asarray(out['finite']).any()
  np.testing.assert_allclose(np.asarray(out['defended']), c, atol=1e-6)
  with pytest.raises(FloatingPointError, match='NaN/inf'):
    vae.apply(vae.make_state(model, params, 0.01, seed=0), c)


def training_problem():
  """A random substitute, its g_t, queries and target vectors (random feasible moves)."""
  c = digits.get_config('tiny')
  c.decoder.width = 4
  c.vae.learning_rate = 3e-3
  c.vae.eps = 0.05
  rng = np.random.default_rng(0)
  probs = vectors(64, seed=1, max_scale=2)
  # Multiplicative moves: no entry becomes exactly 0, where the log features have no gradient.
  targets = np.asarray(feasible.project(probs, probs * np.exp(rng.uniform(-0.5, 0.5, probs.shape)),
                                        0.05))
  images = rng.uniform(size=(64, 16, 16, 1)).astype(np.float32)
  dec = make_decoder(c, 5)
  dec_vars = dec.init(jax.random.key(0), jnp.asarray(probs[:1]), train=False)
  loss_fn = substitute.decoder_loss_fn(dec, dec_vars['batch_stats'], c.attack)
  g_t = lpa.target_gradient(loss_fn, dec_vars['params'], vectors(16, seed=2), images[:16])
  return c, probs, targets, images, loss_fn, dec_vars['params'], g_t


def train_and_measure(c, probs, targets, images, loss_fn, sub_params, g_t, epochs):
  """(metrics of the initial generator, metrics after `epochs`), measured on the training batch."""
  model = vae.make_generator(c.vae, 5)
  state = train.TrainState.create(
      variables=model.init(jax.random.key(3), probs[:1], probs[:1], sample=False),
      tx=optax.adam(c.vae.learning_rate))
  step = functools.partial(vae.generator_step, model=model, loss_fn=loss_fn, sub_params=sub_params,
                           target_grad=g_t, cfg=c.vae)
  measure = lambda s: {k: float(v) for k, v in jax.jit(step)(
      s, (probs, targets, images), jax.random.key(9))[1].items()}
  before = measure(state)
  state = train.fit(state, step, (probs, targets, images), epochs=epochs, batch_size=32, seed=0)
  return before, measure(state)


@pytest.mark.parametrize('mode', ['per_example', 'aggregate'])
def test_a_gradient_step_lowers_the_alignment_loss_as_first_order_predicts(mode):
  c, probs, targets, images, loss_fn, sub_params, g_t = training_problem()
  c.vae.alignment = mode
  c.vae.recon_weight = c.vae.kl_weight = 0.0  # the alignment term alone
  model = vae.make_generator(c.vae, 5)
  state = train.TrainState.create(
      variables=model.init(jax.random.key(3), probs[:1], probs[:1], sample=False),
      tx=optax.sgd(1.0))
  batch = (probs[:32], targets[:32], images[:32])
  step = functools.partial(vae.generator_step, model=model, loss_fn=loss_fn,
                           sub_params=sub_params, target_grad=g_t, cfg=c.vae)
  metrics_at = jax.jit(lambda p: step(state.replace(params=p), batch, jax.random.key(9))[1])
  loss_at = lambda p: metrics_at(p)['loss']
  before = metrics_at(state.params)
  assert float(before['loss']) == pytest.approx(float(before['alignment']))
  grads = jax.grad(loss_at)(state.params)
  sq_norm = float(optax.tree.norm(grads, squared=True))
  # A step sized so that the first-order decrease lr * |g|^2 is 1e-4 of the loss: ~1,000 times the
  # float32 rounding of the loss (and ~50 times the 2e-6 by which it moves under steps far too small
  # to matter), yet small enough for the linear prediction to hold. (One SGD step of a fixed lr
  # 1e-3 moved the loss by less than its rounding: the gradient's norm is ~1e-2 here.)
  lr = 1e-4 * float(before['loss']) / sq_norm
  moved = optax.apply_updates(state.params, optax.tree.scale(-lr, grads))
  decrease = float(before['loss']) - float(loss_at(moved))
  assert decrease == pytest.approx(lr * sq_norm, rel=0.3), (decrease, lr * sq_norm)


def test_reconstruction_training_fits_the_target_vectors():
  c, *problem = training_problem()
  c.vae.align_weight = 0.0
  before, after = train_and_measure(c, *problem, epochs=15)
  assert after['recon'] < 0.3 * before['recon'], (before, after)


def test_bad_vae_config_is_rejected():
  c = digits.get_config('tiny')
  c.vae.alignment = 'sometimes'
  with pytest.raises(ValueError, match='vae.alignment'):
    vae.check_config(c.vae)
  c.vae.alignment = 'per_example'
  c.vae.eps = 0.0
  with pytest.raises(ValueError, match='vae.eps'):
    vae.check_config(c.vae)


def test_tiny_run_with_lpa_and_vae_writes_table_ix_and_reuses_the_stage(tiny_config, tmp_path):
  workdir = str(tmp_path / 'run')
  result = compare.run(tiny_config, workdir, defenses=('lpa', 'vae'))
  rows = {r['defense']: r for r in result['rows']}
  assert rows['vae']['label_flip_rate'] == 0.0
  assert 0.0 < rows['vae']['conf_dist'] <= tiny_config.vae.eps * (1 + 1e-5)
  assert len([d for d in os.listdir(os.path.join(workdir, 'checkpoints'))
              if d.startswith('vae_')]) == 1  # the generator's stage, named by its settings
  md = open(os.path.join(workdir, 'results.md')).read()
  assert '## Table IX' in md and '| VAE |' in md and '| Opti. (LPA) |' in md
  assert 'launch.benchmark' in md  # no latency measured yet

  # The benchmark's figures fill the time columns of the same results.md.
  latency = {'latency_batch_sizes': [1, 256], 'lpa_online_steps': 4,
             'infer_ms_per_sample': {'1': 0.5, '256': 0.01},
             'lpa_online_ms_per_sample': {'1': 90.0, '256': 4.0},
             'vae_ms_per_sample': {'1': 0.2, '256': 0.002}}
  report.write_latency(workdir, latency)
  md = open(os.path.join(workdir, 'results.md')).read()
  vae_line = next(l for l in md.splitlines() if l.startswith('| VAE |'))
  assert vae_line.endswith('| 0.2 | 0.002 |')
  assert '| vae |' in md  # the Table I rows are still there

  # Loading only: the finished stage is reused, nothing trains.
  setup = experiment.prepare(tiny_config, workdir)
  with train.load_only():
    state = vae.fit(setup)
  d = vae.apply(state, setup.clean['attack_train'])
  assert metrics.label_flip_rate(d, setup.clean['attack_train']) == 0.0


def test_table_ix_needs_both_rows():
  row = dict(model_acc=1.0, conf_dist=0.01, attack_acc=0.5, recon_error=0.04)
  assert report.table_ix([dict(row, defense='lpa')]) == ''
  text = report.table_ix([dict(row, defense='lpa'), dict(row, defense='vae'),
                          dict(row, defense='vae', attacker='noise')])
  assert text.count('| VAE |') == 1 and '| - | - |' in text
