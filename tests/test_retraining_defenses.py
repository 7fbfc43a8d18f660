"""MID, BiDO (COCO, HSIC) and prediction purification on tiny digits: valid vectors, their own
checkpointed stages reused on a second fit, determinism given the seed, and their models."""

import copy
import dataclasses
import os

import jax
import numpy as np
import optax
import pytest

from mip_jax import defenses
from mip_jax.attacks import transforms
from mip_jax.defenses import bido, mid, purification
from mip_jax.models import Classifier
from mip_jax.models.feature_classifier import FeatureClassifier
from mip_jax.models.vib_classifier import VIBClassifier
from mip_jax.protocol import experiment, metrics, stages
from mip_jax.runtime import train

NAMES = ('mid', 'bido_coco', 'bido_hsic', 'purification')
STAGES = {'mid': 'classifier_mid_beta0.01', 'bido_coco': 'classifier_bido_coco',
          'bido_hsic': 'classifier_bido_hsic', 'purification': 'purifier'}
# The step function each stage trains with: patched to None to prove a second fit trains nothing.
STEPS = {'mid': (mid, 'mid_step'), 'bido_coco': (bido, 'bido_step'),
         'bido_hsic': (bido, 'bido_step'), 'purification': (purification, 'purifier_step')}


@pytest.fixture(scope='module')
def setup(tiny_setup_copy):
  return tiny_setup_copy('retraining')  # its own workdir: the retrained stages go there


def served(setup, name, state=None):
  module = defenses.get(name)
  state = module.fit(setup) if state is None else state
  return state, {split: module.apply(state, setup.clean[split],
                                     images=getattr(setup.splits, split).images)
                 for split in ('attack_train', 'private_test')}


@pytest.fixture(scope='module')
def fitted(setup):
  """Each defense fitted once in the shared workdir: {name: (state, {split: defended vectors})}."""
  return {name: served(setup, name) for name in NAMES}


def with_config(setup, workdir, **overrides):
  """A copy of `setup` with another workdir and config fields 'section.field' overridden."""
  config = copy.deepcopy(setup.config)
  for key, value in overrides.items():
    section, field = key.split('.')
    config[section][field] = value
  return dataclasses.replace(setup, config=config, workdir=str(workdir))


# ---------------------------------------------------------------- every defense


@pytest.mark.parametrize('name', NAMES)
def test_rows_are_probability_vectors_for_every_query(setup, fitted, name):
  _, out = fitted[name]
  for split, vectors in out.items():
    clean = setup.clean[split]
    assert vectors.shape == clean.shape and vectors.dtype == np.float32
    metrics.check_probability_vectors(vectors, name=f'{name} {split}')
    assert metrics.confidence_distortion(vectors, clean) > 0  # another model / a purifier


@pytest.mark.parametrize('name', NAMES)
def test_stage_is_checkpointed_and_reused_on_a_second_fit(setup, fitted, name, monkeypatch):
  stage_dirs = [d for d in os.listdir(os.path.join(setup.workdir, 'checkpoints'))
                if d == STAGES[name] or d.startswith(STAGES[name] + '_')]  # purifier_<hash>
  assert len(stage_dirs) == 1
  assert os.listdir(os.path.join(setup.workdir, 'checkpoints', stage_dirs[0]))
  module, step = STEPS[name]
  monkeypatch.setattr(module, step, None)        # any training step would now fail
  monkeypatch.setattr(stages, 'classifier_step', None)
  _, again = served(setup, name)
  for split, vectors in fitted[name][1].items():
    np.testing.assert_array_equal(again[split], vectors)


@pytest.mark.parametrize('name', NAMES)
def test_deterministic_given_the_seed(setup, fitted, name, tmp_path):
  _, again = served(with_config(setup, tmp_path / 'same'), name)
  for split, vectors in fitted[name][1].items():
    np.testing.assert_allclose(again[split], vectors, atol=1e-6)


def test_the_attacker_inverts_the_retrained_models_own_vectors(setup, fitted, monkeypatch):
  """REPLACES_CLASSIFIER: the private vectors the attacker inverts are the deployed (retrained)
  model's own, not the undefended classifier's, which it never serves."""
  inverted, real = [], stages.reconstruct
  monkeypatch.setattr(stages, 'reconstruct', lambda model, variables, z: inverted.append(
      np.asarray(z)) or real(model, variables, z))
  (row, recon), = experiment.evaluate_defense(setup, 'bido_hsic')
  state, out = fitted['bido_hsic']
  private, attack = setup.splits.private_train, setup.config.attack
  own = bido.HSIC.apply(state, setup.clean['private_train'], images=private.images)
  (z,) = inverted
  np.testing.assert_allclose(z, transforms.attacker_input(own, attack), rtol=1e-6, atol=1e-6)
  undefended = np.asarray(transforms.attacker_input(setup.clean['private_train'], attack))
  assert np.abs(z - undefended).max() > 0.1
  assert recon.shape == private.images.shape
  # The row measures those same vectors: utility on the retrained model's private test vectors,
  # privacy on the reconstructions of its private training vectors.
  test = setup.splits.private_test
  assert row['model_acc'] == metrics.accuracy(out['private_test'], test.labels)
  assert row['conf_dist'] == pytest.approx(
      metrics.confidence_distortion(out['attack_train'], setup.clean['attack_train']), rel=1e-6)
  assert row['attack_acc'] == metrics.accuracy(stages.predict_probs(*setup.evaluator, recon),
                                               private.labels)


def test_purifier_compiles_once_for_any_number_of_vectors(setup, fitted):
  state, out = fitted['purification']
  clean = setup.clean['attack_train']
  purification.purify(state, clean[:10], batch_size=4)
  before = purification._purified._cache_size()
  a = purification.purify(state, clean[:7], batch_size=4)
  b = purification.purify(state, clean[:5], batch_size=4)
  assert purification._purified._cache_size() == before  # 4-row batches, the last one padded
  np.testing.assert_allclose(b, a[:5], atol=1e-6)  # rows are independent of their batch
  np.testing.assert_allclose(a, out['attack_train'][:7], atol=1e-6)


def test_retrained_classifiers_say_they_replace_the_classifier():
  assert mid.REPLACES_CLASSIFIER and bido.COCO.REPLACES_CLASSIFIER and bido.HSIC.REPLACES_CLASSIFIER
  assert purification.REPLACES_CLASSIFIER is False


# ---------------------------------------------------------------- per defense


def test_mid_sampling_at_inference_is_seeded_and_noisy(setup, fitted):
  state, out = fitted['mid']
  sampled_state = dict(state, sample=True)
  images = setup.splits.private_test.images
  a = mid.apply(sampled_state, setup.clean['private_test'], images=images)
  b = mid.apply(sampled_state, setup.clean['private_test'], images=images)
  metrics.check_probability_vectors(a)
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - out['private_test']).max() > 0  # z is sampled, not the mean


def test_adversarial_purifier_is_its_own_stage(setup, fitted, tmp_path):
  def purifiers():
    return {d for d in os.listdir(os.path.join(setup.workdir, 'checkpoints'))
            if d.startswith('purifier_')}
  before = purifiers()
  adv = with_config(setup, setup.workdir, **{'purification.adversarial': True})
  _, out = served(adv, 'purification')
  assert len(purifiers() - before) == 1  # a stage of its own, beside the plain purifier's
  metrics.check_probability_vectors(out['attack_train'])
  assert np.abs(out['attack_train'] - fitted['purification'][1]['attack_train']).max() > 1e-5


def test_bido_step_without_regularisers_is_the_plain_classifier_step(setup):
  cfg = setup.config
  m = setup.splits.num_private_classes
  model = FeatureClassifier(num_classes=m, channels=tuple(cfg.classifier.channels),
                            hidden_mult=cfg.classifier.hidden_mult)
  x, y = setup.splits.private_train.images[:16], setup.splits.private_train.labels[:16]
  state = train.TrainState.create(variables=model.init(jax.random.key(0), x, train=False),
                                  tx=optax.adam(1e-3))
  rng = jax.random.key(1)
  plain, _ = jax.jit(lambda s, b, r: stages.classifier_step(s, b, r, model=model))(
      state, (x, y), rng)
  ours, logs = jax.jit(lambda s, b, r: bido.bido_step(
      s, b, r, model=model, measure='hsic', lambda_x=0.0, lambda_y=0.0, cfg=cfg.bido))(
          state, (x, y), rng)
  for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(ours.params)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  # The terms are still measured: one per hidden layer, each in [0, m - 1] for the labels.
  assert np.isfinite(float(logs['dep_x'])) and 0 < float(logs['dep_y']) <= 3 * (m - 1)


def test_bad_settings_fail_with_the_config_field(setup, tmp_path):
  with pytest.raises(ValueError, match='mid.beta'):
    mid.fit(with_config(setup, tmp_path, **{'mid.beta': -1.0}))
  with pytest.raises(ValueError, match='purification.reference'):
    purification.fit(with_config(setup, tmp_path, **{'purification.reference': 'everything'}))
  with pytest.raises(ValueError, match='bido.kernel_y'):
    bido.COCO.fit(with_config(setup, tmp_path, **{'bido.kernel_y': 'rbf'}))
  with pytest.raises(ValueError, match='pass images'):
    mid.apply({'num_classes': 5}, np.full((2, 5), 0.2, np.float32))
  with pytest.raises(ValueError, match=r'\[3, 5\]'):
    bido.HSIC.apply({'num_classes': 5}, np.full((2, 5), 0.2), images=np.zeros((3, 16, 16, 1)))


# ---------------------------------------------------------------- models


def test_feature_classifier_shares_the_classifier_parameters():
  x = np.random.default_rng(0).uniform(size=(4, 16, 16, 1)).astype(np.float32)
  plain = Classifier(num_classes=5, channels=(4, 8), hidden_mult=5)
  feats = FeatureClassifier(num_classes=5, channels=(4, 8), hidden_mult=5)
  variables = plain.init(jax.random.key(0), x, train=False)
  logits, hidden = feats.apply(variables, x, train=False, return_hidden=True)
  np.testing.assert_allclose(logits, plain.apply(variables, x, train=False), atol=1e-6)
  assert [h.shape for h in hidden] == [(4, 8, 8, 4), (4, 4, 4, 8), (4, 25)]


def test_vib_classifier_bottleneck_is_half_the_feature_width():
  x = np.random.default_rng(0).uniform(size=(3, 16, 16, 1)).astype(np.float32)
  model = VIBClassifier(num_classes=5, channels=(4, 8), hidden_mult=5)
  variables = model.init(jax.random.key(0), x, train=False)
  assert model.bottleneck_width == 12
  assert variables['params']['fc_bottleneck']['kernel'].shape == (25, 24)
  logits, (mu, std, log_std) = model.apply(variables, x, train=False, return_stats=True)
  assert logits.shape == (3, 5) and mu.shape == std.shape == (3, 12)
  np.testing.assert_allclose(np.log(std), log_std, rtol=1e-5)
  # Eval mode serves the mean: deterministic, and equal to the logits of z = mu.
  np.testing.assert_array_equal(model.apply(variables, x, train=False), logits)
