"""LPA crafting: labels kept, radius kept, alignment improves, one compilation, same on 1 and 8
devices, each row's lowest-loss restart; the target gradient compiles once for any data size."""

import functools
import os
import subprocess
import sys
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mip_jax.defenses import lpa, space
from mip_jax.losses import alignment
from mip_jax.protocol import metrics, substitute
from mip_jax.runtime import parallel
from tests.scripts import craft_lpa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(tmp_path, devices: int, mode: str) -> dict:
  out = tmp_path / f'{mode}_{devices}.npz'
  env = dict(os.environ, PYTHONPATH=ROOT)
  r = subprocess.run([sys.executable, 'tests/scripts/craft_lpa.py', str(out), mode, str(devices)],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  return dict(np.load(out))


@pytest.mark.parametrize('mode', ['aggregate', 'per_example'])
def test_crafting_is_the_same_on_one_and_eight_devices(tmp_path, mode):
  one, eight = run_script(tmp_path, 1, mode), run_script(tmp_path, 8, mode)
  assert int(one['devices']) == 1 and int(eight['devices']) == 8
  assert int(one['compiles']) == 1 and int(eight['compiles']) == 1  # 3 batches, one compilation
  chex.assert_trees_all_close({k: eight[k] for k in ('defended', 'losses')},
                              {k: one[k] for k in ('defended', 'losses')}, atol=1e-9, rtol=0)
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


@pytest.mark.parametrize('mode', ['aggregate', 'per_example'])
def test_each_row_keeps_its_lowest_loss_restart(mode):
  """restarts=3 (vmapped in one program) against the three restarts run one by one: each row gets
  the restart whose per-row loss is lowest; in aggregate mode that loss is the batch's."""
  with jax.enable_x64(True):  # sign(grad) must not flip on last-bit noise between the programs
    c, model, variables, g_t, probs, images = craft_lpa.problem(mode)
    # Log space: its random start lies inside the feasible map's smooth region. A 'prob' start lies
    # on the radius, where the map has a kink, and a last-bit difference between the vmapped and
    # the single program may take the other side of it (both are valid crafts, not equal ones).
    c.lpa.space, c.lpa.restarts = 'log', 3
    crafter = lpa.Crafter(model=model, variables=variables, target_grad=g_t, config=c)
    best, best_loss = crafter(probs, images, seed=0)
    one = jax.jit(functools.partial(lpa.craft_restart, loss_fn=crafter.loss_fn, cfg=crafter.cfg))
    keys = space.restart_keys(jax.random.key(0), 3)  # the Crafter's key for seed 0
    vectors, losses = [], []
    for _, n, (p, x, w) in parallel.padded_batches((probs, images), c.lpa.batch_size):
      runs = [one(p, x, w, k, params=crafter.params, target_grad=crafter.target_grad) for k in keys]
      vectors.append(np.stack([np.asarray(v)[:n] for v, _ in runs], axis=1))
      losses.append(np.stack([np.asarray(l)[:n] for _, l in runs], axis=1))
  vectors, losses = np.concatenate(vectors), np.concatenate(losses)  # [N, R, m], [N, R]
  assert vectors.shape == (40, 3, 5) and best.shape == (40, 5)
  assert np.abs(vectors[:, 0] - vectors[:, 1]).max() > 1e-4  # the restarts differ
  pick = losses.argmin(axis=1)
  np.testing.assert_allclose(best, vectors[np.arange(40), pick], rtol=0, atol=1e-9)
  np.testing.assert_allclose(best_loss, losses.min(axis=1), rtol=1e-6)  # float32 params: a loss ulp
  if mode == 'per_example':
    assert len(set(pick.tolist())) > 1  # rows of one batch keep different restarts
  else:
    for start in range(0, 40, c.lpa.batch_size):  # one loss per batch: one restart per batch
      assert len(set(pick[start:start + c.lpa.batch_size].tolist())) == 1


def test_best_restart_is_per_row_first_on_ties_and_never_nan():
  nan = float('nan')
  losses = jnp.array([[0.5, 0.2, nan, 0.3],   # restart 0, rows 0..3
                      [0.4, 0.2, 0.1, nan],   # restart 1
                      [0.4, 0.9, 0.1, 0.3]])  # restart 2
  vectors = jnp.arange(3 * 4 * 2, dtype=jnp.float32).reshape(3, 4, 2)
  best, best_loss = lpa.best_restart(vectors, losses)
  pick = np.array([1, 0, 1, 0])  # row 0: 0.4 first at restart 1; row 3: restart 1 is NaN
  np.testing.assert_array_equal(best, np.asarray(vectors)[pick, np.arange(4)])
  np.testing.assert_array_equal(best_loss, np.asarray(losses)[pick, np.arange(4)])


def test_target_gradient_pads_the_last_chunk_and_compiles_once():
  c, model, variables, _, probs, images = craft_lpa.problem('aggregate')
  loss_fn = substitute.decoder_loss_fn(model, variables['batch_stats'], c.attack)
  p, x, params = probs.astype(np.float32), images.astype(np.float32), variables['params']
  before = lpa._chunk_target_gradient._cache_size()
  g40 = lpa.target_gradient(loss_fn, params, p, x, chunk=16)            # 16 + 16 + 8 padded
  g24 = lpa.target_gradient(loss_fn, params, p[:24], x[:24], chunk=16)  # 16 + 8 padded
  assert lpa._chunk_target_gradient._cache_size() == before + 1
  for got, n in ((g40, 40), (g24, 24)):  # the mean over every real row, padding rows weigh 0
    want = alignment.target_gradient(loss_fn, params, p[:n], x[:n])
    scale = max(float(jnp.abs(l).max()) for l in jax.tree.leaves(want))
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-6 * scale)


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
  # Attacker stages are named by the attacker and a hash of what they learn from
  # (`stages.train_attacker`): the paper's attacker trained once on each defense's vectors.
  assert len([s for s in stages if s.startswith('attacker_none_')]) == 2, stages
  assert len([s for s in stages if s.startswith('substitute_')]) == 1, stages
