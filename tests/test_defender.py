"""The Defender API: serves a trained workdir from its classifier checkpoint and the defense's
serving artefact alone (no data, no evaluator, no training), never serves clean rows."""

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs import digits
from mip_jax import defenses
from mip_jax.defenses import artefact, lpa, vae
from mip_jax.protocol import experiment, metrics, run_config, stages
from mip_jax.runtime import parallel, train
from mip_jax.serving.defender import DefenseError, Defender

# Served in these tests, one of each kind: plain settings (none, onepara with noise keyed by the
# whole batch, tailfloor with its fitted floor, random), arrays (vae's generator, the purifier,
# the learned redactor, pgd's and grad2's substitute, lpa's substitute and target gradient) and a
# retrained classifier (mid).
SERVED = ('none', 'onepara', 'tailfloor', 'template', 'random', 'vae', 'lpa', 'purification',
          'learned', 'pgd', 'grad2', 'mid')


def tiny_serving_config(data_dir: str):
  c = digits.get_config('tiny')
  c.data_dir = data_dir
  return c


def trained_workdir(tmp_path_factory, data_dir: str) -> str:
  """A tiny workdir with every stage and serving artefact of SERVED, as launch.compare leaves it.

  Shared by this module and test_serve*.py: a later caller finds the finished stages and the
  artefacts and only loads the classifier stages.
  """
  workdir = str(tmp_path_factory.getbasetemp() / 'serving_workdir')
  config = tiny_serving_config(data_dir)
  setup = experiment.prepare(config, workdir)
  for name in SERVED:
    if not artefact.exists(workdir, name, config):
      experiment.export_defense(setup, name)
  run_config.save(workdir, config)  # as experiment.run does
  return workdir


@pytest.fixture(scope='module')
def workdir(tmp_path_factory, data_dir):
  return trained_workdir(tmp_path_factory, data_dir)


@pytest.fixture(scope='module')
def setup(workdir, data_dir):
  with train.load_only():
    return experiment.prepare(tiny_serving_config(data_dir), workdir)


@pytest.fixture(scope='module')
def vae_defender(workdir, data_dir):
  return Defender.from_workdir(workdir, tiny_serving_config(data_dir), 'vae')


def test_vae_defender_matches_the_defense_module(vae_defender, setup):
  images = setup.splits.private_test.images[:37]
  defended, labels = vae_defender.predict(images)
  # The defender's own clean vectors: its classifier runs at its bucket sizes, whose float32 results
  # may differ from another batch size's in the last bits, and a near-uniform tiny-model row near a
  # label tie then takes another branch of the feasible map. Same inputs must give the same rows.
  clean = vae_defender.classify(images)
  with train.load_only():
    state = vae.fit(setup)
  np.testing.assert_allclose(defended, vae.apply(state, clean), atol=1e-6)
  np.testing.assert_array_equal(labels, np.argmax(clean, 1))
  np.testing.assert_allclose(clean, stages.predict_probs(*setup.classifier, images), atol=1e-5)
  assert np.linalg.norm(defended - clean, axis=1).max() <= setup.config.vae.eps * (1 + 1e-5)
  assert np.all(np.any(defended != clean, axis=1))
  # defend() on vectors the caller computed gives the same rows; grey images may drop the C axis.
  np.testing.assert_allclose(vae_defender.defend(clean), defended, atol=1e-6)
  np.testing.assert_allclose(vae_defender(images[..., 0]), defended, atol=1e-6)
  assert vae_defender.num_classes == 5 and vae_defender.image_shape == (16, 16, 1)


def test_batches_are_padded_to_few_compiled_shapes(vae_defender, setup):
  images = setup.splits.private_test.images
  before = vae_defender._probs_fn._cache_size()
  for n in (1, 3, 4, 5, 7, 8):
    assert vae_defender(images[:n]).shape == (n, 5)
  assert vae_defender._probs_fn._cache_size() - before <= 4  # buckets 1, 4, 8 (2 maybe cached)
  alone = vae_defender(images[3:4])
  np.testing.assert_allclose(alone[0], vae_defender(images[:7])[3], atol=1e-6)


def test_lpa_online_and_post_processing_defenses(workdir, data_dir, setup):
  config = tiny_serving_config(data_dir)
  images = setup.splits.private_test.images[:6]
  clean = stages.predict_probs(*setup.classifier, images)
  lpa_defender = Defender.from_workdir(workdir, config, 'lpa')
  defended = lpa_defender(images)
  metrics.check_probability_vectors(defended)
  assert metrics.label_flip_rate(defended, clean) == 0.0
  assert np.linalg.norm(defended - clean, axis=1).max() <= config.lpa.eps * (1 + 1e-5)
  assert np.all(np.any(defended != clean, axis=1))
  assert config.lpa.mode == 'aggregate'  # the caller's config is left alone
  with pytest.raises(ValueError, match='needs the queried images'):
    lpa_defender.defend(clean)
  # Any registered post-processing defense goes through its own apply ('none': the clean vectors).
  plain = Defender.from_workdir(workdir, config, 'none')
  np.testing.assert_allclose(plain(images), clean, atol=1e-6)
  np.testing.assert_allclose(plain.defend(clean), clean, atol=1e-6)


def serving_parts(workdir: str, to) -> str:
  """A copy of only what serving may read: the classifier's checkpoint, artefacts and config."""
  os.makedirs(to / 'checkpoints')
  shutil.copytree(os.path.join(workdir, 'checkpoints', 'classifier'),
                  to / 'checkpoints' / 'classifier')
  shutil.copytree(os.path.join(workdir, artefact.DIRECTORY), to / artefact.DIRECTORY)
  shutil.copy(os.path.join(workdir, run_config.CONFIG_FILE), to / run_config.CONFIG_FILE)
  return str(to)


def test_serving_needs_no_data_no_evaluator_and_equals_the_defenses_own_apply(
    workdir, data_dir, setup, tmp_path, monkeypatch):
  """A workdir without its data folder and its evaluator (nor any other stage): every defense
  serves, and serves what its own `apply` gives on the same clean vectors."""
  served = serving_parts(workdir, tmp_path / 'served')
  assert not os.path.exists(os.path.join(served, 'checkpoints', 'eval_classifier'))
  config = tiny_serving_config(str(tmp_path / 'deleted_data'))  # a data folder that is gone
  monkeypatch.setattr(experiment, 'prepare', None)  # anything that loads data or the evaluator
  monkeypatch.setattr(stages, 'train_classifier', None)
  served_by = {name: Defender.from_workdir(served, config, name) for name in SERVED}
  monkeypatch.undo()  # the defenses' own fit (below) loads their stages through these
  images = setup.splits.private_test.images[:9]
  for name, defender in served_by.items():
    clean = defender.classify(images)
    np.testing.assert_allclose(clean, stages.predict_probs(*setup.classifier, images), atol=1e-5)
    if name == 'lpa':  # crafted online, per example: see test_lpa_serves_each_row_alone
      continue
    module = defenses.get(name)
    with train.load_only():
      state = module.fit(setup)
    # The tiny classifier's vectors are flat; sharpened (same labels) they have the small entries
    # some defenses act on (tailfloor).
    probs = np.asarray(jax.nn.softmax(8 * np.log(clean), axis=1), np.float32)
    expected = module.apply(state, probs, images=images)
    # Rows whose label the defense changes (an untrained-looking tiny purifier, MID's own
    # classifier) are refused, never served: the others are served exactly.
    flipped = np.flatnonzero(np.argmax(expected, 1) != np.argmax(probs, 1))
    try:
      served_rows = defender.defend(probs, images)
      assert not len(flipped), name
    except DefenseError as e:
      assert e.rows == flipped.tolist() and len(flipped), (name, e)
      served_rows = e.defended
      assert np.isnan(served_rows[flipped]).all()
      served_rows[flipped] = expected[flipped]
    np.testing.assert_allclose(served_rows, expected, atol=1e-6, err_msg=name)
    if name != 'none':
      assert np.abs(expected - probs).max() > 1e-4, name  # it defends: not a vacuous equality


def test_lpa_serves_each_row_alone_as_inside_a_request(workdir, data_dir, setup):
  """LPA crafts online per example: a row alone and inside a 7-row request (another padded
  bucket) come out the same, and they are LPA's own per-example crafting of that row."""
  config = tiny_serving_config(data_dir)
  defender = Defender.from_workdir(workdir, config, 'lpa')
  images = setup.splits.attack_train.images[:7]
  clean = defender.classify(images)
  together = defender.defend(clean, images)
  for row in (0, 3, 6):
    alone = defender.defend(clean[row:row + 1], images[row:row + 1])
    np.testing.assert_allclose(alone[0], together[row], atol=1e-6)
  # The lpa module's own crafting in per-example mode (its batch of lpa.batch_size rows).
  per_example = setup.config.copy_and_resolve_references()
  per_example.lpa.mode = 'per_example'
  with train.load_only():
    state = lpa.fit(dataclasses.replace(setup, config=per_example))
  np.testing.assert_allclose(together, lpa.apply(state, clean, images=images), atol=1e-6)
  assert np.all(np.linalg.norm(together - clean, axis=1) > 1e-4)


def test_untrained_workdirs_fail_clearly_and_train_nothing(workdir, data_dir, tmp_path):
  config = tiny_serving_config(data_dir)
  with pytest.raises(FileNotFoundError, match='no trained classifier'):
    Defender.from_workdir(str(tmp_path / 'empty'), config, 'vae')
  # The classifier and the config only: no artefact, and the command that writes it is named.
  partial = tmp_path / 'partial'
  shutil.copytree(os.path.join(workdir, 'checkpoints', 'classifier'),
                  partial / 'checkpoints' / 'classifier')
  shutil.copy(os.path.join(workdir, run_config.CONFIG_FILE), partial / run_config.CONFIG_FILE)
  with pytest.raises(artefact.MissingArtefactError) as err:
    Defender.from_workdir(str(partial), None, 'vae')
  message = str(err.value)
  assert 'no serving artefact of defense \'vae\'' in message and 'none was written' in message
  assert 'python -m launch.compare --config=' in message
  assert f'--workdir={partial} --defenses=vae' in message
  assert sorted(os.listdir(partial / 'checkpoints')) == ['classifier']  # nothing was trained
  with pytest.raises(ValueError, match='known defenses'):
    Defender.from_workdir(workdir, config, 'magic')


def test_an_artefact_of_another_config_is_never_served(workdir, tmp_path):
  """The workdir's config changed after the defense was fitted (here: a field of vae): the old
  artefact is not served, and the error says why."""
  served = serving_parts(workdir, tmp_path / 'changed')
  path = os.path.join(served, run_config.CONFIG_FILE)
  with open(path) as f:
    saved = json.load(f)
  saved['vae']['latent'] = 3
  with open(path, 'w') as f:
    json.dump(saved, f)
  for name in ('vae', 'onepara'):  # the whole config keys every artefact
    with pytest.raises(artefact.MissingArtefactError, match='only for another config'):
      Defender.from_workdir(served, None, name)
def test_the_workdir_remembers_its_config(workdir, data_dir, vae_defender):
  config = tiny_serving_config(data_dir)
  images = np.random.default_rng(0).uniform(size=(3, 16, 16, 1)).astype(np.float32)
  saved = Defender.from_workdir(workdir, None, 'vae')  # config.json of the workdir
  np.testing.assert_allclose(saved(images), vae_defender(images), atol=1e-6)
  # Serving limits may differ; a field a stage learned from may not, and the error names it.
  config.serve.max_batch = 4
  Defender.from_workdir(workdir, config, 'none')
  config.decoder.width = config.decoder.width + 1
  config.vae.latent = 3
  with pytest.raises(run_config.ConfigMismatchError,
                     match=r'decoder\.width: trained with 8, given 9; vae\.latent'):
    Defender.from_workdir(workdir, config, 'vae')


def test_invalid_inputs_are_value_errors(vae_defender):
  good = np.full((2, 16, 16, 1), 0.5, np.float32)
  bad_cases = {
      'shape': (np.zeros((2, 8, 8, 1)), 'must have shape'),
      'single image': (np.zeros((16, 16, 1)), 'must have shape'),
      'nan': (np.where(np.arange(2)[:, None, None, None] == 1, np.nan, good), r'images \[1\] hold NaN'),
      'range': (good * 255, r'\[0, 1\]'),
      'bool': (good > 0, 'numbers'),
      'ragged': ([[[0.5] * 16] * 16, [[0.5] * 15] * 16], 'rectangular|shape'),
  }
  for name, (images, message) in bad_cases.items():
    with pytest.raises(ValueError, match=message):
      vae_defender(images)
  with pytest.raises(ValueError, match='sums to'):
    vae_defender.defend(np.full((2, 5), 0.5, np.float32))
  with pytest.raises(ValueError, match='5 entries'):
    vae_defender.defend(np.full((2, 4), 0.25, np.float32))
  assert vae_defender(np.zeros((0, 16, 16, 1))).shape == (0, 5)


def test_a_failing_defense_raises_and_never_returns_clean_rows(vae_defender, setup):
  classifier = setup.classifier
  images = setup.splits.private_test.images[:6]
  clean = stages.predict_probs(*classifier, images)
  make = lambda backend, **kw: Defender(classifier=classifier, image_shape=(16, 16, 1),
                                        defense='broken', backend=backend, **kw)

  # A corrupted generator (NaN weight): the feasible map would quietly return c; it must not.
  with train.load_only():
    state = vae.fit(setup)
  params = jax.tree.map(lambda p: np.where(np.arange(p.size).reshape(p.shape) == 0, np.nan, p),
                        jax.device_get(state['params']))
  broken_vae = vae.make_state(state['model'], params, state['eps'], seed=state['seed'])
  d = make(lambda p, x: vae.generate(broken_vae, p), require_change=True)
  with pytest.raises(DefenseError, match='failed for 6 of 6 rows') as err:
    d(images)
  assert err.value.rows == list(range(6)) and np.isnan(err.value.defended).all()

  # Label flips in rows 1 and 4: exactly those rows fail, the others come back in .defended.
  def flip(p, x):
    out = p.copy()
    for r in (1, 4):  # swap the top entry with the next index: the label must change
      k = int(np.argmax(out[r]))
      j = (k + 1) % out.shape[1]
      out[r, [k, j]] = out[r, [j, k]]
    return out, None
  with pytest.raises(DefenseError, match=r'rows \[1, 4\]') as err:
    make(flip)(images)
  assert err.value.rows == [1, 4] and 'label changed' in err.value.reasons[1]
  assert np.isnan(err.value.defended[[1, 4]]).all()
  np.testing.assert_allclose(err.value.defended[[0, 2, 3, 5]], clean[[0, 2, 3, 5]], atol=1e-6)

  # Not probability vectors, non-finite, unchanged, a wrong shape, an exception.
  cases = [
      (lambda p, x: (p * 2, None), {}, 'not a probability vector'),
      (lambda p, x: (np.where(np.arange(len(p))[:, None] == 2, np.inf, p), None), {}, 'non-finite'),
      (lambda p, x: (p, None), {'require_change': True}, 'unchanged'),
      (lambda p, x: (p[:-1], None), {}, 'returned shape'),
      (lambda p, x: (p, np.arange(len(p)) != 3), {}, 'failed internally'),
  ]
  for backend, kw, message in cases:
    with pytest.raises(DefenseError, match=message):
      make(backend, **kw)(images)

  def boom(p, x):
    raise RuntimeError('substitute exploded')
  with pytest.raises(DefenseError, match='substitute exploded') as err:
    make(boom)(images)
  assert err.value.defended is None and isinstance(err.value.__cause__, RuntimeError)


def test_bucket_sizes():
  assert [parallel.bucket_size(n) for n in (1, 2, 3, 5, 256)] == [1, 2, 4, 8, 256]
  assert parallel.bucket_size(3, multiple=8) == 8
