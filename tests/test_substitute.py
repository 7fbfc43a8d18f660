"""The substitute decoder as its own configurable thing (config.substitute, mip_jax/protocol/substitute.py)."""

import dataclasses
import os

import jax
import numpy as np
import pytest

from mip_jax.data import query_indices
from mip_jax.models import make_decoder
from mip_jax.protocol import substitute


def num_params(variables) -> int:
  return int(sum(p.size for p in jax.tree.leaves(variables['params'])))


@pytest.fixture(scope='module')
def setup(tiny_setup_copy):
  return tiny_setup_copy('substitute')  # its own workdir: substitutes are trained there


def with_substitute(setup, **fields):
  config = setup.config.copy_and_resolve_references()
  config.substitute.update(fields)
  return dataclasses.replace(setup, config=config)


def test_default_substitute_is_the_attackers_decoder(setup):
  dec = substitute.decoder_section(setup.config)
  assert dec.to_dict() == setup.config.decoder.to_dict()
  assert substitute.stage_name(setup.config).startswith('substitute_')
  # The same resolved substitute has the same stage, however it is spelled.
  spelled = with_substitute(setup, width=setup.config.decoder.width, loss='mse').config
  assert substitute.stage_name(spelled) == substitute.stage_name(setup.config)


def test_configured_substitute_differs_in_parameters_loss_and_stage(setup):
  config = setup.config
  wide = with_substitute(setup, width=16, extra_blocks=1, loss='psnr')
  dec = substitute.decoder_section(wide.config)
  assert (dec.width, dec.extra_blocks, dec.loss) == (16, 1, 'psnr')
  assert config.decoder.width == 8 and config.decoder.loss == 'mse'  # the attacker is untouched
  model, variables = substitute.train_substitute(wide)
  attacker = make_decoder(config, 5)
  att_vars = attacker.init(jax.random.key(0), np.zeros((1, 5), np.float32), train=False)
  assert 'extra_0' in variables['params'] and 'extra_0' not in att_vars['params']
  assert num_params(variables) > 2 * num_params(att_vars)
  # Its own stage: the default substitute's stage is left alone.
  name = substitute.stage_name(wide.config)
  assert name.startswith('substitute_') and name != substitute.stage_name(config)
  assert os.path.isdir(os.path.join(setup.workdir, 'checkpoints', name))
  # Another seed (an ensemble member) is yet another stage.
  assert substitute.stage_name(config, seed=config.seed + 10) not in (
      substitute.stage_name(config), name)


def test_psnr_and_mse_substitute_losses_differ(setup):
  model, variables = substitute.train_substitute(setup)
  probs = setup.clean['attack_train'][:8]
  images = setup.splits.attack_train.images[:8]
  w = np.ones(8, np.float32)
  mse = substitute.decoder_loss_fn(model, variables['batch_stats'], setup.config.attack, 'mse')
  psnr = substitute.decoder_loss_fn(model, variables['batch_stats'], setup.config.attack, 'psnr')
  m, p = float(mse(variables['params'], probs, images, w)), float(psnr(variables['params'], probs,
                                                                      images, w))
  recon = np.asarray(model.apply(variables, np.asarray(
      substitute.transforms.attacker_input(probs, setup.config.attack)), train=False))
  per_image = np.mean((recon - images) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(m, per_image.mean(), rtol=1e-4)
  np.testing.assert_allclose(p, np.mean(-10 * np.log10(per_image)), rtol=1e-4)  # PSNR in dB
  with pytest.raises(ValueError, match='substitute.loss'):
    substitute.decoder_section(with_substitute(setup, loss='l1').config)


def test_query_halves_are_disjoint_and_cover_everything():
  a, b = query_indices(11, 'half1'), query_indices(11, 'half2')
  assert len(a) == 6 and len(b) == 5 and not set(a) & set(b)
  assert sorted(np.concatenate([a, b])) == list(range(11))
  np.testing.assert_array_equal(query_indices(4, 'all'), np.arange(4))
  with pytest.raises(ValueError, match='half1'):
    query_indices(4, 'half3')
