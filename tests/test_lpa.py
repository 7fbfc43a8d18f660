"""LPA crafting: labels kept, radius kept, alignment improves, one compilation, same on 1 and 8 devices."""

import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from mip_jax.defenses import lpa
from mip_jax.protocol import metrics
from tests.scripts import craft_lpa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(tmp_path, devices: int, mode: str) -> dict:
  out = tmp_path / f'{mode}_{devices}.npz'
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             PYTHONPATH=ROOT)
  r = subprocess.run([sys.executable, 'tests/scripts/craft_lpa.py', str(out), mode], cwd=ROOT,
                     env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  return dict(np.load(out))


@pytest.mark.parametrize('mode', ['aggregate', 'per_example'])
def test_crafting_is_the_same_on_one_and_eight_devices(tmp_path, mode):
  one, eight = run_script(tmp_path, 1, mode), run_script(tmp_path, 8, mode)
  assert int(one['devices']) == 1 and int(eight['devices']) == 8
  assert int(one['compiles']) == 1 and int(eight['compiles']) == 1  # 3 batches, one compilation
  np.testing.assert_allclose(eight['defended'], one['defended'], atol=1e-9)
  assert np.abs(one['defended'] - craft_lpa.problem(mode)[4]).max() > 1e-4  # it did move


@pytest.mark.parametrize('mode', ['aggregate', 'per_example'])
def test_crafted_vectors_are_feasible_and_better_aligned(mode):
  c, model, variables, g_t, probs, images = craft_lpa.problem(mode)
  c.lpa.restarts = 1
  c.lpa.steps = 30
  crafter = lpa.Crafter(model=model, variables=variables, target_grad=g_t, config=c)
  probs32, images32 = probs.astype(np.float32), images.astype(np.float32)
  defended, losses = crafter(probs32, images32, seed=1)
  metrics.check_probability_vectors(defended)
  assert metrics.label_flip_rate(defended, probs32) == 0.0
  assert np.linalg.norm(defended - probs32, axis=1).max() <= c.lpa.eps * (1 + 1e-5)
  c.lpa.steps = 0  # the random start, not optimised
  _, start_losses = lpa.Crafter(model=model, variables=variables, target_grad=g_t, config=c)(
      probs32, images32, seed=1)
  assert losses.mean() < start_losses.mean() - 0.01
  assert crafter.craft_fn._cache_size() == 1


def test_per_example_vectors_do_not_depend_on_batch_mates():
  c, model, variables, g_t, probs, images = craft_lpa.problem('per_example')
  c.lpa.restarts = 1
  crafter = lpa.Crafter(model=model, variables=variables, target_grad=g_t, config=c)
  p, x = probs.astype(np.float32), images.astype(np.float32)
  full, _ = crafter(p[:16], x[:16], seed=0)
  # Same first row, other batch-mates: with per-example alignment row 0 must come out the same.
  other = np.concatenate([p[:1], p[20:35]]), np.concatenate([x[:1], x[20:35]])
  mixed, _ = crafter(*other, seed=0)
  np.testing.assert_allclose(mixed[0], full[0], atol=1e-6)


def test_bad_mode_and_batch_size_are_rejected():
  c, model, variables, g_t, *_ = craft_lpa.problem('aggregate')
  c.lpa.mode = 'sometimes'
  with pytest.raises(ValueError, match='per_example'):
    lpa.Crafter(model=model, variables=variables, target_grad=g_t, config=c)


def test_crafting_errors_name_the_section_they_come_from():
  """LFP crafts with config.lfp: its errors name lfp.*, not lpa.* (on a 3-device mesh)."""
  c, model, variables, g_t, *_ = craft_lpa.problem('aggregate')
  three = types.SimpleNamespace(devices=np.empty(3))
  for name in ('lpa', 'lfp'):
    cfg = c.lpa.copy_and_resolve_references()
    cfg.batch_size = 4
    with pytest.raises(ValueError, match=f'^{name}.batch_size=4 must be a multiple of the 3'):
      lpa.check_crafting(cfg, three, name)
    cfg.mode = 'sometimes'
    with pytest.raises(ValueError, match=f'^{name}.mode must be one of'):
      lpa.check_crafting(cfg, three, name)
  c.lfp.mode = 'sometimes'
  with pytest.raises(ValueError, match='^lfp.mode must be one of'):
    lpa.Crafter(model=model, variables=variables, target_grad=g_t, config=c, section=c.lfp,
                name='lfp')


def test_lpa_launcher_on_a_facescrub_style_folder(tmp_path):
  """The paper-scale FaceScrub config (tiny variant: same 64x64 geometry, 5 decoder blocks)."""
  from tests.test_data import _write_faces
  _write_faces(tmp_path / 'faces', identities=4, per_identity=6)
  env = dict(os.environ, PYTHONPATH=ROOT)
  r = subprocess.run(
      [sys.executable, '-m', 'launch.lpa', '--config=configs/facescrub.py:tiny',
       f'--config.manual_dir={tmp_path / "faces"}', f'--config.data_dir={tmp_path / "tfds"}',
       f'--workdir={tmp_path / "run"}'], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  import json
  doc = json.load(open(tmp_path / 'run' / 'results.json'))
  assert doc['dataset'] == 'facescrub'
  assert [row['defense'] for row in doc['rows']] == ['none', 'lpa']
  lpa_row = doc['rows'][1]
  assert lpa_row['label_flip_rate'] == 0.0 and 0 < lpa_row['conf_dist'] <= 0.01 + 1e-6
  assert os.listdir(tmp_path / 'run' / 'perturbations')
  stages = os.listdir(tmp_path / 'run' / 'checkpoints')
  assert {'classifier', 'eval_classifier'} <= set(stages)
  # The paper's attacker once per row: two decoders named by what they learn from.
  assert len([s for s in stages if s.startswith('attacker_none_')]) == 2
  assert [d for d in os.listdir(tmp_path / 'run' / 'checkpoints') if d.startswith('substitute')]
