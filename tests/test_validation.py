"""Config validation: every shipped config passes, each bad value is one sentence naming its field,
unknown keys name the closest fields, launchers exit before reading data, and random overrides
never crash the check itself (hypothesis)."""

import fnmatch
import os
import subprocess
import sys

import ml_collections
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from configs import cifar10, digits, facescrub, fashion_mnist, mnist
from mip_jax import defenses
from mip_jax.protocol import validation
from mip_jax.protocol.validation import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny():
  return digits.get_config('tiny')


def overridden(overrides: dict):
  """The tiny config with `overrides` ({'lpa.eps': -1.0}) set without ConfigDict's type safety,
  as a config built in Python from plain dicts may hold them."""
  config = ml_collections.ConfigDict(tiny().to_dict(), type_safe=False)
  for path, value in overrides.items():
    section, _, key = path.rpartition('.')
    (config[section] if section else config)[key] = value
  return config


def check(config, **kwargs):
  validation.check(config, defaults=tiny(), **kwargs)


@pytest.mark.parametrize('module', [digits, mnist, fashion_mnist, cifar10, facescrub],
                         ids=lambda m: m.__name__.split('.')[-1])
@pytest.mark.parametrize('arg', ['', 'tiny'])
def test_every_shipped_config_is_valid(module, arg):
  config = module.get_config(arg)
  assert validation.problems(config, defaults=module.get_config(arg), devices=1) == []
  assert validation.problems(config, devices=8 if arg else 32) == []  # batches split evenly


BAD = [  # (field, value, words the sentence must hold)
    ('lpa.eps', -1.0, 'must be > 0'),
    ('vae.eps', 0.0, 'must be > 0'),
    ('lpa.steps', -3, 'must be >= 0'),
    ('lpa.restarts', 0, 'must be >= 1'),
    ('test_fraction', 1.0, 'must lie in (0, 1)'),
    ('lfp.budget', 0.0, 'must lie in (0, 1]'),
    ('lpa.milestones', (0.9, 0.5), 'ascending'),
    ('lpa.mode', 'per_exmaple', "did you mean 'per_example'"),
    ('lfp.distance', 'cosin', 'must be one of'),
    ('decoder.loss', 'l1', "'mse', 'psnr'"),
    ('attack.transform', 'logs', "did you mean 'log'"),
    ('attack.adaptive', 'nosie', "did you mean 'noise'"),
    ('lpa.space', 'logg', "did you mean 'log'"),
    ('substitute.blocks', 9, 'must be one of'),
    ('attack.floor', 0.0, 'must lie in (0, 1)'),
    ('attack.data', 'half3', 'must be one of'),
    ('decoder.impl', 'cudnn', 'must be one of'),
    ('dataset', 'mnits', "did you mean 'mnist'"),
    ('channels', 2, 'must be one of 1, 3'),
    ('classifier.channels', (8, 0), 'entry 0'),
    ('classifier.dropout', 1.0, 'must lie in [0, 1)'),
    ('serve.max_batch', 0, 'must be > 0'),
    ('bido.kernel_y', 'rbf', 'must be one of'),
    ('purification.reference', 'private', 'must be one of'),
    ('attack.log_floor', 5.0, 'must be < 0'),
    ('attack.top_k', 9, 'number of private classes'),
    ('topk.k', 6, 'must be <= 5'),
    ('decoder.blocks', 4, 'config.decoder.blocks=3'),
    ('private_classes', [0, 1, 12], 'in [0, 10)'),
    ('attack_classes', [4, 5, 6], 'disjoint'),
    ('attack_classes', [], 'must not be empty'),
    ('classifier.channels', (8, 8, 8, 8, 8), 'too many for image_size 16'),
    # Types, from the defaults: no rule names these.
    ('lpa.steps', 2.5, 'must be an integer'),
    ('lfp.swap', 1, 'must be True or False'),
    ('mid.sample_at_eval', 'yes', 'must be True or False'),
    ('vae.kl_weight', None, 'not None'),
    ('vae.hidden', (16, 'a'), 'int entries'),
    ('eval.eps_grid', 'abc', 'must be a list'),
    # Values `fit` refused after the classifiers had trained, refused here now.
    ('noise.scale', 0.0, 'must be > 0'),
    ('rounding.decimals', 0, 'must be >= 1'),
    ('diffusion.beta_start', 0.5, 'must be <= diffusion.beta_end=0.3'),
    ('tailfloor.floor', 0.05, 'must be < 0.01'),
    ('pgd.steps', 1.5, 'must be an integer'),
    ('poi_mse.distance', 'cosin', "did you mean 'cosine'"),
]


@pytest.mark.parametrize('field,value,words', BAD, ids=[f'{b[0]}={b[1]!r}' for b in BAD])
def test_each_bad_value_is_one_sentence_naming_the_field(field, value, words):
  with pytest.raises(ConfigError) as err:
    check(overridden({field: value}))
  message = str(err.value)
  assert words in message, message
  assert '\n' not in message and message.count('. ') == 0  # one sentence
  assert f'config.{field}' in message or 'decoder with blocks' in message, message


def test_several_problems_are_all_listed():
  with pytest.raises(ConfigError) as err:
    check(overridden({'lpa.eps': -1.0, 'lpa.steps': -1}))
  assert str(err.value).splitlines() == [
      'config.lpa.eps=-1.0 must be > 0: change --config.lpa.eps',
      'config.lpa.steps=-1 must be >= 0: change --config.lpa.steps']


def test_unknown_and_missing_keys():
  config = tiny()
  with config.unlocked():
    config.lpa.epz = 0.1
  with pytest.raises(ConfigError, match=r'config.lpa.epz is not a config field; did you mean '
                                        r'lpa.eps'):
    check(config)
  config = tiny()
  with config.unlocked():
    del config.vae['latent']
  with pytest.raises(ConfigError, match='config.vae.latent is missing'):
    check(config)


def test_a_new_field_without_a_rule_is_checked_against_its_default_type():
  """A field someone adds to configs/common.py (here `lpa.novel`) is typed from its default."""
  assert not any(fnmatch.fnmatch('lpa.novel', pattern) for pattern in validation.rules())
  defaults = tiny()
  with defaults.unlocked():
    defaults.lpa.novel = 'prob'
  config = ml_collections.ConfigDict(defaults.to_dict(), type_safe=False)
  validation.check(config, defaults=defaults)
  config.lpa.novel = 3
  with pytest.raises(ConfigError, match=r"config.lpa.novel=3 must be a string"):
    validation.check(config, defaults=defaults)


def test_batch_sizes_must_split_over_the_devices():
  config = tiny()
  check(config, devices=8)
  with pytest.raises(ConfigError) as err:
    check(config, devices=3)
  assert 'config.classifier.batch_size=32 must be a multiple of the 3 devices' in str(err.value)
  assert str(err.value).count('\n') >= 5  # every batch_size field is named


def test_rules_live_with_their_code_and_importing_validation_imports_none_of_it():
  """validation reads each owner's RULES when it checks, not when it is imported; the registry
  lists names without importing a defense."""
  code = ('import sys, mip_jax.protocol.validation\n'
          'from mip_jax import defenses\n'
          'names = list(defenses.REGISTRY); assert "lpa" in defenses.REGISTRY\n'
          'print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in '
          '("mip_jax", "jax", "flax", "tensorflow_datasets"))))')
  r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 0, r.stderr
  loaded = set(r.stdout.split())
  assert loaded == {'mip_jax', 'mip_jax.protocol', 'mip_jax.protocol.rules',
                    'mip_jax.protocol.validation', 'mip_jax.defenses',
                    'mip_jax.defenses.protocol'}, loaded
  # The rules themselves are the owners' own objects.
  from mip_jax.defenses import noise, tailfloor
  table = validation.rules()
  assert table['noise.scale'] == noise.RULES['noise.scale']
  assert tailfloor.below_the_threshold in validation.cross_checks()
  assert not hasattr(defenses, 'check_names')  # dead code removed


def test_names_come_from_the_registries(monkeypatch):
  assert validation.check_names('defense', ['none', 'lpa'], defenses.REGISTRY) == ['none', 'lpa']
  with pytest.raises(ConfigError, match="unknown defense 'lpz': did you mean lpa"):
    validation.check_names('defense', ['lpz'], defenses.REGISTRY)
  monkeypatch.setitem(defenses.REGISTRY, 'lpz', defenses.REGISTRY['lpa'])  # a new registration
  assert validation.check_names('defense', ['lpz'], defenses.REGISTRY) == ['lpz']


LEAVES = sorted(validation.flatten(tiny()))
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                   st.lists(st.one_of(st.integers(-3, 12), st.floats(-2, 2), st.text(max_size=2)),
                            max_size=4).map(tuple))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(LEAVES), VALUES, min_size=1, max_size=3))
def test_random_overrides_pass_or_fail_with_config_errors_only(overrides):
  config = overridden(overrides)
  for defaults in (tiny(), None):  # with and without the type check in front of the rules
    try:
      validation.check(config, defaults=defaults, devices=2)
    except ConfigError as e:
      assert str(e) and all(line.startswith(('config.', 'decoder with'))
                            for line in str(e).splitlines()), str(e)


def test_a_none_field_never_crashes_a_cross_field_check():
  """Rules skip None, so each owner's CHECKS must too: every leaf set to None, one at a time
  (tailfloor's noise fill as well, whose check reads tailfloor.low), fails with ConfigError
  sentences or passes, with and without the type check in front (topk.k, tailfloor.threshold and
  diffusion.beta_* once raised TypeError here)."""
  for base in ({}, {'tailfloor.fill': 'noise'}):
    for leaf in LEAVES:
      config = overridden({**base, leaf: None})
      for defaults in (tiny(), None):
        try:
          validation.check(config, defaults=defaults)
        except ConfigError as e:
          assert all(line.startswith('config.') for line in str(e).splitlines()), (leaf, str(e))


def run_launcher(args, tmp_path):
  workdir = tmp_path / 'run'
  r = subprocess.run([sys.executable, '-m', *args, f'--workdir={workdir}',
                      f'--config.data_dir={tmp_path / "tfds"}'], cwd=ROOT, capture_output=True,
                     text=True, timeout=120, env=dict(os.environ, MIP_JAX_MALLOC_TUNING='0'))
  return r, workdir


@pytest.mark.parametrize('override,message', [
    ('--config.lpa.eps=-1', 'config.lpa.eps=-1.0 must be > 0: change --config.lpa.eps'),
    ('--config.lpa.epz=0.1', 'config.lpa.epz is not a config field; did you mean lpa.eps'),
])
def test_launcher_exits_with_one_sentence_before_reading_data(tmp_path, override, message):
  r, workdir = run_launcher(['launch.lpa', '--config=configs/digits.py:tiny', override], tmp_path)
  assert r.returncode == 1
  assert f'FATAL Flags parsing error: {message}' in r.stderr, r.stderr
  assert 'Traceback' not in r.stderr
  assert not workdir.exists() and not (tmp_path / 'tfds').exists()


def test_config_variants_compose_and_unknown_ones_are_named():
  both = digits.get_config('tiny,attributed')
  assert (both.lpa.space, both.lpa.objective) == ('log', 'decoy_class')
  assert both.max_per_split == tiny().max_per_split  # tiny applied too
  plain = digits.get_config()
  assert (plain.lpa.space, plain.lpa.objective) == ('prob', 'untargeted')  # the paper's LPA
  with pytest.raises(ValueError, match="'fast'.*attributed"):
    digits.get_config('tiny,fast')
