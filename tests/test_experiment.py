"""The protocol end to end on tiny digits, the launcher's error paths, and stage reuse."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from mip_jax import defenses
from mip_jax.attacks import suite
from mip_jax.data import query_indices
from mip_jax.defenses import artefact, random_control
from mip_jax.protocol import experiment, metrics, run_config, stages
from mip_jax.studies import aggregate, compare, engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(*args, timeout=120):
  return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout)


def test_tiny_run_writes_sane_results_and_reuses_stages(tiny_config, tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  result = compare.run(tiny_config, workdir)
  doc = json.load(open(os.path.join(workdir, 'results.json')))
  assert doc['dataset'] == 'digits' and doc['config']['decoder']['width'] == 8
  (row,) = doc['rows']
  assert row['defense'] == 'none'
  assert 0.0 <= row['model_acc'] <= 1.0 and 0.0 <= row['attack_acc'] <= 1.0
  assert row['conf_dist'] == 0.0 and row['label_flip_rate'] == 0.0
  assert 0.0 < row['recon_error'] < 0.5
  fracs = [f for _, f in row['eps_eta']]
  assert fracs[0] == 1.0 and all(a >= b for a, b in zip(fracs, fracs[1:]))
  assert '| none |' in open(os.path.join(workdir, 'results.md')).read()
  assert os.path.getsize(os.path.join(workdir, 'figures', 'reconstructions.png')) > 1000
  assert os.path.getsize(os.path.join(workdir, 'figures', 'tradeoff.png')) > 1000
  assert run_config.differences(run_config.load(workdir).to_dict(), tiny_config.to_dict()) == []
  stages_dir = os.listdir(os.path.join(workdir, 'checkpoints'))
  assert {'classifier', 'eval_classifier'} <= set(stages_dir)
  assert len([s for s in stages_dir if s.startswith('attacker_none_')]) == 1
  assert result['rows'][0] == json.load(open(os.path.join(workdir, engine.CELLS_DIR, next(
      f for f in os.listdir(os.path.join(workdir, engine.CELLS_DIR)) if f.endswith('_none.json')))))

  # A rerun without the saved cells loads every stage: no training step may run.
  shutil.rmtree(os.path.join(workdir, engine.CELLS_DIR))
  monkeypatch.setattr(stages, 'classifier_step', None)
  monkeypatch.setattr(stages, 'decoder_step', None)
  again = compare.run(tiny_config, workdir)
  assert again['rows'][0]['recon_error'] == pytest.approx(row['recon_error'], abs=1e-6)
  assert again['rows'][0]['attack_acc'] == row['attack_acc']

  # The workdir's own config leaves a serving artefact per defense; a cell under overrides does not
  # (nothing would serve it: launch.serve serves the workdir's config).
  assert artefact.exists(workdir, 'none', tiny_config)
  runner = engine.Runner(tiny_config, workdir)
  cell = engine.Cell('none', (('noise.scale', 0.5),))
  runner.rows([cell])
  assert not artefact.exists(workdir, 'none', runner.cell_setup(cell.overrides).config)
  # A workdir measured before artefacts existed gets them on its next run, measuring nothing.
  shutil.rmtree(os.path.join(workdir, artefact.DIRECTORY))
  monkeypatch.setattr(experiment, 'evaluate_defense', None)
  assert compare.run(tiny_config, workdir)['rows'] == again['rows']
  assert artefact.exists(workdir, 'none', tiny_config)


def test_unknown_defense_fails_before_training(tiny_config, tmp_path):
  with pytest.raises(ValueError, match='known defenses.*none'):
    compare.run(tiny_config, str(tmp_path), defenses=('none', 'magic'))
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_figure_indices_cover_classes():
  labels = np.array([0, 0, 1, 1, 2, 2, 0])
  idx = experiment.figure_indices(labels, 4)
  assert list(labels[idx]) == [0, 1, 2, 0]


def test_defense_registry_lists_known_names():
  assert defenses.get('none').apply(None, np.eye(2)).tolist() == [[1, 0], [0, 1]]
  with pytest.raises(ValueError, match='known defenses'):
    defenses.get('nope')


def test_facescrub_without_data_fails_fast_with_instructions(tmp_path):
  start = time.time()
  r = launch('launch.attack', '--config=configs/facescrub.py', f'--config.data_dir={tmp_path}',
             f'--workdir={tmp_path / "w"}')
  assert r.returncode != 0
  assert '--config.manual_dir=' in r.stderr and '<manual_dir>/<Identity_Name>/' in r.stderr
  assert time.time() - start < 60


@pytest.mark.parametrize('verbose', [False, True])
def test_mnist_without_data_fails_fast(tmp_path, verbose):
  r = launch('launch.attack', '--config=configs/mnist.py', f'--config.data_dir={tmp_path}',
             f'--workdir={tmp_path / "w"}', *(['--verbosity=0'] if verbose else []))
  assert r.returncode != 0 and 'tfds build mnist' in r.stderr
  # Library INFO records (absl format 'I1129 12:00:00.000 ...') go to the workdir's log.txt; the
  # terminal gets them only when --verbosity is given.
  log = open(tmp_path / 'w' / 'log.txt').read()
  assert 'JAX ' in log and 'backend' in log
  assert bool(re.search(r'^I\d{4} .*JAX .*backend', r.stderr, re.M)) == verbose


def test_launcher_rejects_unknown_config_key(tmp_path):
  r = launch('launch.attack', '--config=configs/digits.py:tiny', '--config.no_such_field=1',
             f'--workdir={tmp_path}')
  assert r.returncode != 0 and 'no_such_field' in r.stderr


def test_unknown_dataset_and_wrong_image_shape_fail_clearly(tiny_config, tmp_path):
  tiny_config.dataset = 'imagenet'
  with pytest.raises(ValueError, match='digits'):
    experiment.prepare(tiny_config, str(tmp_path))
  tiny_config.dataset = 'digits'
  tiny_config.image_size = 20
  with pytest.raises(ValueError, match='image_size'):
    experiment.prepare(tiny_config, str(tmp_path))


# ---------------------------------------------------------------- what the attacker inverts


def flatten_half(probs, images=None):
  """A label-preserving stand-in defense: halfway to uniform (every vector moves)."""
  del images
  return (0.5 * np.asarray(probs) + 0.5 / probs.shape[1]).astype(np.float32)


@pytest.fixture
def inverted(tiny_setup, monkeypatch):
  """Every attacker input `evaluate_defense` reconstructs from, in order; no decoder is trained
  (the attacker's stage is stubbed), so the shared tiny workdir stays untouched."""
  seen = []
  monkeypatch.setattr(stages, 'train_attacker',
                      lambda config, z, images, **kw: (None, (None, None)))

  def reconstruct(model, variables, z):
    seen.append(np.asarray(z))
    return np.zeros((len(z),) + tiny_setup.splits.image_shape, np.float32)

  monkeypatch.setattr(stages, 'reconstruct', reconstruct)
  return seen


def register(monkeypatch, *, replaces: bool, apply=flatten_half, label_preserving: bool = False):
  module = types.SimpleNamespace(REPLACES_CLASSIFIER=replaces, LABEL_PRESERVING=label_preserving,
                                 fit=lambda setup: 'state',
                                 apply=lambda state, probs, images=None: apply(probs, images))
  monkeypatch.setitem(defenses.REGISTRY, 'stand_in', module)


@pytest.mark.parametrize('replaces, reconstruct_from, attackers, expected', [
    (False, 'clean', ['none'], ['clean']),                       # Definition 2: clean vectors
    (True, 'clean', ['none'], ['defended']),                     # a retrained model's own vectors
    (False, 'defended', ['none'], ['defended']),                 # config.attack.reconstruct_from
    (False, 'clean', ['floor', 'floor:defended'], ['clean', 'defended']),  # the ':defended' suffix
])
def test_which_private_vectors_the_attacker_inverts(tiny_setup, inverted, monkeypatch, replaces,
                                                    reconstruct_from, attackers, expected):
  register(monkeypatch, replaces=replaces)
  config = tiny_setup.config.copy_and_resolve_references()
  config.attack.reconstruct_from = reconstruct_from
  setup = dataclasses.replace(tiny_setup, config=config)
  rows = experiment.evaluate_defense(setup, 'stand_in', attackers=attackers)
  assert [r['attacker'] for r, _ in rows] == attackers
  clean = setup.clean['private_train']
  vectors = {'clean': clean, 'defended': flatten_half(clean)}
  assert len(inverted) == len(attackers)
  for z, name, which in zip(inverted, attackers, expected):
    want = suite.parse(name).inputs(vectors[which], config.attack)
    other = suite.parse(name).inputs(vectors[{'clean': 'defended', 'defended': 'clean'}[which]],
                                     config.attack)
    np.testing.assert_array_equal(z, want)
    assert np.abs(z - other).max() > 0.1  # the two sources really differ


def test_a_label_preserving_defense_that_flips_a_label_fails(tiny_setup, inverted, monkeypatch):
  def flip_first_row(probs, images=None):
    out = np.array(probs, np.float32)
    out[0] = np.roll(out[0], 1)  # one row's argmax moves to the next class
    return out

  clean = tiny_setup.clean['attack_train']
  assert np.argmax(flip_first_row(clean)[0]) != np.argmax(clean[0])
  monkeypatch.setattr(random_control, 'apply', lambda state, probs, images=None:
                      flip_first_row(probs))
  with pytest.raises(RuntimeError, match='random is declared label preserving'):
    experiment.evaluate_defense(tiny_setup, 'random')
  assert inverted == []  # it failed before any attacker ran
  # The same vectors from a defense that does not declare it: served, and the flips measured.
  register(monkeypatch, replaces=False, apply=flip_first_row)
  (row, _), = experiment.evaluate_defense(tiny_setup, 'stand_in')
  queries = query_indices(len(clean), tiny_setup.config.attack.data)
  assert row['label_flip_rate'] == pytest.approx(1 / len(queries))
  assert row['model_acc'] == metrics.accuracy(flip_first_row(tiny_setup.clean['private_test']),
                                              tiny_setup.splits.private_test.labels)


def _row(defense, acc, err):
  return {'defense': defense, 'attacker': 'none', 'model_acc': 1.0, 'conf_dist': 0.0,
          'attack_acc': acc, 'recon_error': err, 'label_flip_rate': 0.0, 'defend_seconds': 1.0,
          'eps_eta': [[0.0, 1.0], [0.1, err]]}


def test_mean_rows_averages_fields_and_curves():
  from mip_jax.studies import report
  rows = aggregate.mean_rows([[_row('none', 0.8, 0.2)], [_row('none', 0.6, 0.4)]])
  (r,) = rows
  assert r['attack_acc'] == pytest.approx(0.7) and r['attack_acc_std'] == pytest.approx(0.1)
  assert r['attack_acc_seeds'] == [0.8, 0.6]
  assert r['eps_eta'] == [[0.0, 1.0], [0.1, pytest.approx(0.3)]]
  assert r['eps_eta_std'] == [0.0, pytest.approx(0.1)]
  assert '70.00% ± 10.00' in report.markdown_table('digits', rows)
  with pytest.raises(ValueError, match='differ'):
    aggregate.mean_rows([[_row('none', 0.8, 0.2)], [_row('lpa', 0.6, 0.4)]])


def test_run_seeds_writes_per_seed_runs_and_their_mean(tiny_config, tmp_path):
  result = compare.run(tiny_config, str(tmp_path), seeds=[0, 1])
  doc = json.load(open(tmp_path / 'results.json'))
  assert doc['seeds'] == [0, 1]
  per_seed = [json.load(open(tmp_path / f'seed_{s}' / 'results.json')) for s in (0, 1)]
  assert [d['config']['seed'] for d in per_seed] == [0, 1]
  errs = [d['rows'][0]['recon_error'] for d in per_seed]
  assert errs[0] != errs[1]  # the seed reaches every stage
  assert doc['rows'][0]['recon_error'] == pytest.approx(np.mean(errs))
  assert result['rows'][0]['recon_error_std'] == pytest.approx(np.std(errs))


def test_old_config_json_gets_new_fields_from_defaults_and_unknown_fields_are_refused(tmp_path):
  # A workdir trained before a field existed: the field takes today's default (the behaviour that
  # existed before it); a field today's code does not know is refused with the path and the field.
  from configs import digits
  config = digits.get_config()
  workdir = str(tmp_path)
  run_config.save(workdir, config)
  path = os.path.join(workdir, run_config.CONFIG_FILE)
  old = json.load(open(path))
  del old['lpa']['objective'], old['substitute']
  old['decoder']['epochs'] = 3
  json.dump(old, open(path, 'w'))
  loaded = run_config.load(workdir)
  assert loaded.lpa.objective == config.lpa.objective == 'untargeted'
  assert loaded.substitute.extra_blocks == config.substitute.extra_blocks
  assert loaded.decoder.epochs == 3  # saved values win over defaults
  with pytest.raises(run_config.ConfigMismatchError, match='decoder.epochs'):
    run_config.check_matches(workdir, config)  # not the missing fields: the one that differs
  old['lpa']['retired_lever'] = 1
  json.dump(old, open(path, 'w'))
  with pytest.raises(run_config.ConfigMismatchError, match='lpa.retired_lever'):
    run_config.load(workdir)
