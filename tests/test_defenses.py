"""LFP and the post-processing baselines: valid vectors, labels, budgets, determinism, errors.

One tiny digits setup (classifier, evaluator, substitute decoder) is shared by the whole module; the
vectors defended are hand-made, paired with real query images where a defense needs images.
"""

import dataclasses
import fnmatch

import numpy as np
import pytest

from mip_jax import defenses
from mip_jax.defenses import lfp
from configs import digits
from mip_jax.protocol import metrics, rules, validation
from mip_jax.runtime import train

N, M = 40, 5
MINE = ('none', 'lfp', 'noise', 'onepara', 'rounding', 'topk', 'advexa', 'pgd', 'poi_mse')
LABEL_PRESERVING = ('none', 'onepara', 'rounding', 'topk', 'advexa', 'pgd', 'poi_mse')
WITHIN_EPS = {'advexa': 'advexa', 'pgd': 'pgd', 'poi_mse': 'lpa'}  # defense -> its radius section


def hand_made_probs(n: int = N, m: int = M, seed: int = 0) -> np.ndarray:
  """Confident and unsure rows with distinct entries and a top-2 margin of at least 0.01."""
  rng = np.random.default_rng(seed)
  rows = []
  while len(rows) < n:
    p = rng.dirichlet(np.full(m, 0.3 if len(rows) % 2 else 3.0))
    top2 = np.sort(p)[-2:]
    if top2[1] - top2[0] > 0.01 and np.min(np.diff(np.sort(p))) > 1e-4:
      rows.append(p)
  return np.asarray(rows, np.float32)


@pytest.fixture(scope='module')
def setup(tiny_setup_copy):
  return tiny_setup_copy('defenses')  # its own workdir: the defenses train substitutes there


@pytest.fixture(scope='module')
def fitted(setup):
  """name -> (module, state), each defense fitted once on the shared setup."""
  return {name: (defenses.get(name), defenses.get(name).fit(setup)) for name in MINE}


def with_config(setup, **sections):
  """The shared setup under a config copy with fields changed: with_config(s, topk={'k': 2})."""
  config = setup.config.copy_and_resolve_references()
  for section, fields in sections.items():
    config[section].update(fields)
  return dataclasses.replace(setup, config=config)


def query_images(setup, n: int = N) -> np.ndarray:
  return setup.splits.attack_train.images[:n]


@pytest.mark.parametrize('name', MINE)
def test_outputs_are_probability_vectors_and_deterministic(fitted, setup, name):
  module, state = fitted[name]
  probs, images = hand_made_probs(), query_images(setup)
  out = module.apply(state, probs, images=images)
  assert out.shape == probs.shape and out.dtype == np.float32
  metrics.check_probability_vectors(out, name=name, atol=1e-5)
  np.testing.assert_array_equal(module.apply(state, probs, images=images), out)
  if name in LABEL_PRESERVING:
    assert metrics.label_flip_rate(out, probs) == 0.0
  if name in WITHIN_EPS:
    eps = setup.config[WITHIN_EPS[name]].eps
    assert np.linalg.norm(out - probs, axis=1).max() <= eps * (1 + 1e-5)
  if name != 'none':
    assert np.abs(out - probs).max() > 1e-4  # it did something


def test_noise_is_arts_gaussian_noise(setup):
  probs = hand_made_probs(400)
  small = defenses.noise.fit(with_config(setup, noise={'scale': 1e-3}))
  out = defenses.noise.apply(small, probs)
  assert 0 < np.abs(out - probs).max() < 0.01 and metrics.label_flip_rate(out, probs) == 0.0
  # ART's default scale flips labels (not label preserving); huge noise zeroes whole rows: uniform.
  default = defenses.noise.apply(defenses.noise.fit(setup), probs)
  assert metrics.label_flip_rate(default, probs) > 0.05
  huge = defenses.noise.apply(defenses.noise.fit(with_config(setup, noise={'scale': 100.0})), probs)
  metrics.check_probability_vectors(huge)
  assert np.any(np.all(huge == np.float32(1 / M), axis=1))
  other_seed = with_config(setup, noise={'scale': 1e-3})
  other_seed.config.seed += 1
  assert not np.array_equal(defenses.noise.apply(defenses.noise.fit(other_seed), probs), out)


def test_onepara_keeps_the_rank_order_and_distorts_more_for_smaller_budgets(setup):
  probs = hand_made_probs(200)
  dist = {}
  for epsilon in (0.5, 2.0, 50.0):
    state = defenses.onepara.fit(with_config(setup, onepara={'epsilon': epsilon}))
    out = defenses.onepara.apply(state, probs)
    np.testing.assert_array_equal(np.argsort(out, 1), np.argsort(probs, 1))
    dist[epsilon] = metrics.confidence_distortion(out, probs)
  assert dist[0.5] > dist[2.0] > dist[50.0]


def test_rounding_rounds_renormalises_and_falls_back_to_one_hot(setup):
  probs = hand_made_probs()
  out = defenses.rounding.apply(defenses.rounding.fit(with_config(setup, rounding={'decimals': 1})),
                                probs)
  grid = np.around(probs.astype(np.float64), 1)
  np.testing.assert_allclose(out, grid / grid.sum(1, keepdims=True), atol=1e-6)
  # 30 classes, every entry < 0.05: rounds to all zeros, served as the one-hot label.
  flat = np.full((1, 30), 0.6 / 29, np.float32)
  flat[0, 7] = 0.04
  state = defenses.rounding.fit(with_config(setup, rounding={'decimals': 1}))
  np.testing.assert_array_equal(defenses.rounding.apply(state, flat / flat.sum())[0], np.eye(30)[7])


def test_topk_keeps_exactly_k_scores_in_proportion(setup):
  probs = hand_made_probs()
  out = defenses.topk.apply(defenses.topk.fit(with_config(setup, topk={'k': 2})), probs)
  assert np.all(np.sum(out > 0, 1) == 2)
  top = np.argsort(-probs, 1)[:, :2]
  kept = np.take_along_axis(probs, top, 1)
  np.testing.assert_allclose(np.take_along_axis(out, top, 1), kept / kept.sum(1, keepdims=True),
                             rtol=1e-5)


def test_pgd_without_label_constraint_may_flip_but_stays_in_the_ball(setup):
  state = defenses.pgd.fit(with_config(setup, pgd={'keep_label': False, 'eps': 0.3}))
  probs = hand_made_probs()
  out = defenses.pgd.apply(state, probs, images=query_images(setup))
  metrics.check_probability_vectors(out)
  assert np.linalg.norm(out - probs, axis=1).max() <= 0.3 * (1 + 1e-5)


# ---------------------------------------------------------------- LFP

def true_labels(probs: np.ndarray) -> np.ndarray:
  """Ground truth of a typical classifier: confident rows right, half the unsure rows' truth is
  their 2nd class (the other half right)."""
  order = np.argsort(-probs, 1)
  wrong = (probs.max(1) < 0.9) & (np.arange(len(probs)) % 4 < 2)
  return np.where(wrong, order[:, 1], order[:, 0])


def test_lfp_pick_spreads_over_classes_and_prefers_unsure_vectors():
  probs = hand_made_probs(200)
  unsure = probs.max(1) < 0.6
  for budget in (0.1, 0.9):
    mask = lfp.pick(probs, budget=budget, threshold=0.6, seed=3)
    assert mask.sum() == int(budget * len(probs))
    if mask.sum() <= unsure.sum():
      assert np.all(unsure[mask])
      counts = np.bincount(probs[mask].argmax(1), minlength=M)
      available = np.bincount(probs[unsure].argmax(1), minlength=M)
      assert np.all((counts >= min(counts.max() - 1, *available)) | (counts == available))
    else:
      assert np.all(mask[unsure])
  np.testing.assert_array_equal(lfp.pick(probs, budget=0.3, threshold=0.6, seed=3),
                                lfp.pick(probs, budget=0.3, threshold=0.6, seed=3))


def test_lfp_reversal_is_a_rank_reversing_permutation():
  p = np.array([[0.5, 0.3, 0.15, 0.05], [0.1, 0.6, 0.2, 0.1]], np.float32)
  expected = np.array([[0.05, 0.15, 0.3, 0.5], [0.2, 0.1, 0.1, 0.6]], np.float32)
  np.testing.assert_array_equal(lfp.reverse(p), expected)
  expected = np.array([[0.05, 0.5, 0.15, 0.3], [0.1, 0.1, 0.6, 0.2]], np.float32)
  np.testing.assert_array_equal(lfp.swap_reverse(p), expected)
  probs = hand_made_probs()
  for fn in (lfp.reverse, lfp.swap_reverse):
    out = fn(probs)
    np.testing.assert_array_equal(np.sort(out, 1), np.sort(probs, 1))
  np.testing.assert_array_equal(np.argsort(lfp.reverse(probs), 1), np.argsort(-probs, 1))


def test_lfp_flips_at_most_the_budget_and_swap_costs_fewer_true_labels(setup):
  probs = hand_made_probs(200)
  truth = true_labels(probs)
  out = {}
  for swap in (False, True):
    state = lfp.fit(with_config(setup, lfp={'steps': 0, 'budget': 0.1, 'threshold': 0.9,
                                            'swap': swap}))
    out[swap] = lfp.apply(state, probs)
    picked = np.any(out[swap] != probs, 1)
    assert picked.sum() <= 20 and metrics.label_flip_rate(out[swap], probs) <= 0.1
    np.testing.assert_array_equal(out[swap][~picked], probs[~picked])
  # Both flip every picked vector w.r.t. the served label; against the truth, the swap variant
  # turns unsure (often wrong) vectors to their 2nd class and so costs fewer correct labels.
  assert metrics.label_flip_rate(out[True], probs) == metrics.label_flip_rate(out[False], probs)
  np.testing.assert_array_equal(out[True].argmax(1)[picked], np.argsort(-probs, 1)[picked, 1])
  clean, plain, swap = (metrics.accuracy(p, truth) for p in (probs, out[False], out[True]))
  assert plain < clean and plain < swap


def test_lfp_fine_tuning_stays_near_the_reversed_vectors(setup, fitted, tmp_path):
  module, state = fitted['lfp']
  cfg = setup.config.lfp
  probs, images = hand_made_probs(), query_images(setup)
  out = module.apply(state, probs, images=images)
  # The rows apply picks: with its seed (`space.crafting_seed`, shared with LPA).
  mask = lfp.pick(probs, budget=cfg.budget, threshold=cfg.threshold, seed=state['seed'])
  assert 0 < mask.sum() <= int(cfg.budget * N)
  reversed_ = lfp.reverse(probs[mask])
  assert np.all(out[mask].argmax(1) == reversed_.argmax(1))
  assert np.linalg.norm(out[mask] - reversed_, axis=1).max() <= cfg.eps * (1 + 1e-5)
  assert np.abs(out[mask] - reversed_).max() > 1e-5  # fine-tuned, not only reversed
  np.testing.assert_array_equal(out[~mask], probs[~mask])
  # Deterministic: crafted afresh (no cache in another workdir), the same vectors come out.
  again = module.apply(dict(state, workdir=str(tmp_path)), probs, images=images)
  np.testing.assert_allclose(again, out, atol=1e-7)


# ---------------------------------------------------------------- parameter errors

@pytest.mark.parametrize('name, section, fields, match', [
    ('noise', 'noise', {'scale': 0.0}, 'noise.scale'),
    ('onepara', 'onepara', {'epsilon': -1.0}, 'onepara.epsilon'),
    ('rounding', 'rounding', {'decimals': 0}, 'rounding.decimals'),
    ('topk', 'topk', {'k': 0}, 'topk.k'),
    ('lfp', 'lfp', {'budget': 1.5}, 'lfp.budget'),
    ('lfp', 'lfp', {'threshold': -0.1}, 'lfp.threshold'),
    ('advexa', 'advexa', {'eps': 0.0}, 'advexa.eps'),
    ('pgd', 'pgd', {'steps': -1}, 'pgd.steps'),
    ('poi_mse', 'poi_mse', {'colour': 'red'}, 'unknown lpa fields'),
])
def test_bad_parameters_raise_clear_errors(setup, name, section, fields, match):
  bad = with_config(setup)
  with bad.config.unlocked():
    for key, value in fields.items():
      bad.config[section][key] = value
  with pytest.raises(ValueError, match=match):
    defenses.get(name).fit(bad)


def test_topk_larger_than_the_classes_is_an_error(setup):
  state = defenses.topk.fit(with_config(setup, topk={'k': M + 1}))
  with pytest.raises(ValueError, match='exceeds the 5 classes'):
    defenses.topk.apply(state, hand_made_probs())


def test_registry_follows_the_protocol_and_a_module_without_it_is_refused():
  import types
  from mip_jax.defenses import protocol
  assert all(isinstance(d, protocol.Defense) for d in defenses.REGISTRY.values())
  assert [n for n, d in defenses.REGISTRY.items() if d.REPLACES_CLASSIFIER] == [
      'mid', 'bido_coco', 'bido_hsic']
  half = types.SimpleNamespace(fit=lambda setup: None, apply=lambda s, p, images=None: p)
  with pytest.raises(TypeError, match='lacks REPLACES_CLASSIFIER'):
    protocol.check('half', half)


# ---------------------------------------------------------------- rules: validation agrees with fit

def rule_edges(defense, config):
  """(path, value, whether the rule accepts it) at both sides of every limit of every rule the
  defense declares, for each config field its patterns match."""
  values = rules.flatten(config)
  for pattern, declared in getattr(defense, 'RULES', {}).items():
    paths = fnmatch.filter(values, pattern)
    assert paths, f'{pattern!r} matches no config field'
    for path in paths:
      for rule in declared:
        for value, accepted in rule.edges(values[path]):
          yield path, value, accepted


def fit_accepts(defense, setup) -> bool:
  """Whether `fit` gets past its argument checks: it returns, or it reaches a stage to train (in a
  workdir without any, load-only). A ValueError (ConfigError) is a refusal; it must come before
  any training, since no stage could be loaded."""
  try:
    with train.load_only():
      defense.fit(setup)
  except train.StageNotTrainedError:
    return True
  except ValueError:
    return False
  return True


@pytest.mark.parametrize('name', list(defenses.REGISTRY))
def test_what_validation_accepts_fit_accepts_and_what_it_refuses_fit_refuses(setup, name,
                                                                            tmp_path):
  """Every registered defense, at the edges of each of its rules: validation's verdict (with the
  cross-field checks) is fit's verdict, and a value a rule refuses is refused before training."""
  defense = defenses.get(name)
  defaults = digits.get_config('tiny')
  cases = [(None, None, True)] + list(rule_edges(defense, setup.config))
  assert name in ('none', 'poi_mse') or len(cases) > 3  # the others declare rules
  for path, value, rule_accepts in cases:
    config = setup.config.copy_and_resolve_references()
    if path is not None:
      section, _, field = path.rpartition('.')
      (config[section] if section else config)[field] = value
    accepted = not validation.problems(config, defaults=defaults, devices=1)
    if path is None:  # the shipped config
      assert accepted, validation.problems(config, defaults=defaults, devices=1)
    if not rule_accepts:
      assert not accepted, (path, value)
    # A fresh workdir: no stage can be loaded, so nothing refused may get as far as training.
    fresh = dataclasses.replace(setup, config=config, workdir=str(tmp_path / 'empty'))
    assert fit_accepts(defense, fresh) == accepted, (name, path, value, accepted)


def test_the_disagreements_are_gone(setup):
  """Values validation used to accept and fit refused after the classifiers had trained."""
  for section, fields, module in [('noise', {'scale': 0.0}, defenses.noise),
                                  ('rounding', {'decimals': 0}, defenses.rounding),
                                  ('lfp', {'budget': 0.0}, lfp)]:
    bad = with_config(setup, **{section: fields})
    assert validation.problems(bad.config, devices=1)
    with pytest.raises(ValueError, match=f'{section}.{next(iter(fields))}'):
      module.fit(bad)
  # LFP without fine-tuning (eps 0: reversal only) is valid for both.
  assert not validation.problems(with_config(setup, lfp={'eps': 0.0}).config, devices=1)
  lfp.fit(with_config(setup, lfp={'eps': 0.0}))
