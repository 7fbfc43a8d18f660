"""The learned post-processor (defenses/learned.py): the redactor keeps the argmax by construction
for any weights, starts at the identity, and its min-max step computes what its docstring says."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mip_jax.attacks import transforms
from mip_jax.defenses import learned
from mip_jax.models import make_decoder
from mip_jax.models.redactor import Redactor
from mip_jax.runtime import train


def dirichlet(n, m, seed, alpha=0.3):
  return np.random.default_rng(seed).dirichlet([alpha] * m, size=n).astype(np.float32)


def random_weights(model, probs, seed, scale):
  """The model's parameters with every leaf redrawn ~ N(0, scale^2) (the zero-initialised last
  layer included): any weights training could reach."""
  params = model.init(jax.random.key(0), probs[:1])['params']
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return {'params': jax.tree.unflatten(
      tree, [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])}


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_any_weights_keep_the_label_and_serve_probability_vectors(seed):
  model = Redactor(num_classes=7, hidden=(16, 16))
  probs = dirichlet(500, 7, seed)
  variables = random_weights(model, probs, seed, scale=3.0)  # large: the MLP dominates z
  logits = model.apply(variables, probs)
  served = np.asarray(jax.nn.softmax(logits, axis=-1))
  np.testing.assert_array_equal(served.argmax(1), probs.argmax(1))
  np.testing.assert_allclose(served.sum(1), 1.0, atol=1e-5)
  assert served.min() > 0
  # The top entry is at least exp(margin) times every other (in logits: by margin).
  top = np.take_along_axis(np.asarray(logits), probs.argmax(1)[:, None], 1)[:, 0]
  others = np.where(np.eye(7, dtype=bool)[probs.argmax(1)], -np.inf, np.asarray(logits)).max(1)
  assert np.all(top - others >= model.margin - 1e-6)
  assert np.all(np.asarray(logits).min(1) >= top - model.spread - 1e-3)  # no underflow to 0
  # Weights this large move vectors: the construction, not the weights, kept the labels.
  assert np.linalg.norm(served - probs, axis=1).mean() > 0.1


def test_at_initialisation_it_serves_the_clean_vectors():
  model = Redactor(num_classes=5, hidden=(8,))
  probs = dirichlet(200, 5, 3, alpha=1.0)  # entries well above the floor, no ties
  variables = model.init(jax.random.key(1), probs[:1])
  served = np.asarray(jax.nn.softmax(model.apply(variables, probs), axis=-1))
  # The top logit is raised only where it leads by less than the margin (0.01 in log-probability).
  gap = np.sort(np.log(probs), axis=1)
  close = gap[:, -1] - gap[:, -2] < model.margin
  np.testing.assert_allclose(served[~close], probs[~close], rtol=1e-5, atol=1e-7)


def test_a_wrong_shape_is_refused():
  with pytest.raises(ValueError, match=r'confidence vectors \[B, 5\]'):
    Redactor(num_classes=5).init(jax.random.key(0), jnp.zeros((2, 4)))


def test_the_step_reports_the_distortion_and_the_inversion_error_and_trains_both(tiny_config):
  m, n = 5, 16
  probs = dirichlet(n, m, 4)
  images = np.random.default_rng(5).uniform(size=(n, 16, 16, 1)).astype(np.float32)
  redactor = Redactor(num_classes=m, hidden=(8,))
  inverter = make_decoder(tiny_config, m)
  red = random_weights(redactor, probs, 6, scale=0.5)
  inv = inverter.init(jax.random.key(7), transforms.attacker_input(probs[:1], tiny_config.attack),
                      train=False)
  import optax
  state = train.TrainState.create(
      variables={'params': {'redactor': red['params'], 'inverter': inv['params']},
                 'batch_stats': {'inverter': inv['batch_stats']}},
      tx=optax.sgd(0.1))
  new, metrics = learned.redactor_step(state, (probs, images), jax.random.key(0),
                                       redactor=redactor, inverter=inverter,
                                       attack_cfg=tiny_config.attack, distortion_weight=2.0)
  served = np.asarray(jax.nn.softmax(redactor.apply(red, probs), axis=-1), np.float64)
  dist = np.linalg.norm(served - probs, axis=1).mean()
  recon, _ = inverter.apply(inv, transforms.attacker_input(served.astype(np.float32),
                                                           tiny_config.attack),
                            train=True, mutable=['batch_stats'])
  mse = float(np.mean(np.square(np.asarray(recon) - images)))
  np.testing.assert_allclose(float(metrics['distortion']), dist, rtol=1e-4)
  np.testing.assert_allclose(float(metrics['inversion']), mse, rtol=1e-4)
  np.testing.assert_allclose(float(metrics['loss']), 2.0 * dist - mse, rtol=1e-4, atol=1e-6)
  for part in ('redactor', 'inverter'):  # both players moved
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new.params[part],
                         state.params[part])
    assert max(jax.tree.leaves(moved)) > 0


def test_fit_serves_labelled_probability_vectors_and_the_adversary_moves_them(tiny_setup_copy):
  setup = tiny_setup_copy('learned')
  # Weight 0: nothing holds the redactor near the clean vectors but its zero start.
  setup.config.learned.distortion_weight = 0.0
  state = learned.fit(setup)
  probs = setup.clean['attack_train']
  served = learned.apply(state, probs)
  assert served.shape == probs.shape and served.dtype == np.float32
  np.testing.assert_array_equal(served.argmax(1), probs.argmax(1))
  np.testing.assert_allclose(served.sum(1), 1.0, atol=1e-5)
  assert np.linalg.norm(served - probs, axis=1).mean() > 1e-3
  # Loaded, not retrained: the same stage gives the same vectors.
  with train.load_only():
    again = learned.apply(learned.fit(setup), probs)
  np.testing.assert_array_equal(again, served)
  # Another weight is another stage (its own checkpoint), not the first one's weights.
  other = dataclasses.replace(setup, config=setup.config.copy_and_resolve_references())
  other.config.learned.distortion_weight = 5.0
  with pytest.raises(train.StageNotTrainedError):
    with train.load_only():
      learned.fit(other)
