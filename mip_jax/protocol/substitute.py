"""The defender's substitute decoder I_sub: its config section, its training stage, its loss.

The defender cannot see the attacker's decoder, so it trains its own on clean (T(x), x) pairs of the
queries it anticipates (design section 2, step 4). `config.substitute` describes that decoder apart
from the attacker's `config.decoder`: every field left None takes the attacker's setting, so by
default I_sub is the attacker's architecture and loss trained on all of the attacker's queries. The
paper's experiments vary it: Table II the loss, Table III the half of the query data it sees,
Table IV its depth and width (`extra_blocks` adds stride-1 blocks: depth not tied to image size).

  model, variables = train_substitute(setup)                  # stage 'substitute_<hash>'
  model, variables = train_substitute(setup, section, seed=7) # another member, its own stage
  loss_fn = decoder_loss_fn(model, variables['batch_stats'], config.attack, 'mse')

`train_substitute` is a function of (setup, section, seed) so that several substitutes (an ensemble
over seeds / widths / depths) are several calls, each its own cached stage.
"""

import jax.numpy as jnp
import ml_collections
import numpy as np

from mip_jax.attacks import transforms
from mip_jax.data import data_fingerprint, query_indices
from mip_jax.losses import reconstruction
from mip_jax.protocol import rules, stages
from mip_jax.runtime import checkpoints, keys

# Fields of config.substitute that override the attacker's config.decoder when not None.
DECODER_FIELDS = ('width', 'blocks', 'extra_blocks', 'loss', 'epochs', 'batch_size',
                  'learning_rate')
# How the substitute's BatchNorm runs inside the defender's losses (lpa.batchnorm, lfp.batchnorm).
BATCHNORMS = ('eval', 'train')

# Limits of config.substitute (None: the attacker's setting); blocks, epochs, batch_size,
# learning_rate and data follow the patterns of the decoder, the training loop and the data.
RULES = {
    'substitute.width': (rules.POSITIVE,),
    'substitute.loss': (rules.one_of(lambda: reconstruction.LOSSES),),
    'substitute.transform': (rules.one_of(lambda: transforms.TRANSFORMS),),
}


def decoder_section(config, section=None) -> ml_collections.ConfigDict:
  """config.decoder with the substitute's overrides: I_sub's architecture, loss and training."""
  section = config.substitute if section is None else section
  dec = ml_collections.ConfigDict(config.decoder.to_dict())
  for key in DECODER_FIELDS:
    value = section.get(key)
    if value is not None:
      dec[key] = value
  if dec.loss not in reconstruction.LOSSES:
    raise ValueError(f'substitute.loss must be one of {sorted(reconstruction.LOSSES)}, '
                     f'got {dec.loss!r}')
  return dec


def attack_config(config, section=None) -> ml_collections.ConfigDict:
  """config.attack as the substitute reads vectors: `section.transform` when set (a defender that
  anticipates a zero-robust attacker uses 'floor'), else the attacker's own transform."""
  section = config.substitute if section is None else section
  transform = section.get('transform')
  if transform is None:
    return config.attack
  if transform not in transforms.TRANSFORMS:
    raise ValueError(f'substitute.transform must be one of {", ".join(transforms.TRANSFORMS)} '
                     f'(or None: the attacker\'s), got {transform!r}')
  cfg = config.attack.copy_and_resolve_references()
  cfg.transform = transform
  return cfg


def default_seed(config, member: int = 0) -> int:
  """The seed of the defender's substitute (`member` k > 0: the k-th extra member of an ensemble)."""
  return keys.stage_seed(config.seed, 'substitute' if member == 0 else f'substitute:{member}')


def stage_name(config, section=None, seed: int | None = None) -> str:
  """'substitute_<hash>' of what defines I_sub (resolved architecture, loss, training, data, seed):
  equal substitutes share a stage whichever cell asks for them, different ones never clash, so
  several substitutes (the cells of Tables II-IV, an ensemble) live in one workdir."""
  section = config.substitute if section is None else section
  seed = default_seed(config) if seed is None else int(seed)
  attack = attack_config(config, section)  # how it reads vectors (not the attacker's other fields)
  reads = {k: attack[k] for k in ('transform', 'top_k', 'log_floor', 'floor') if k in attack}
  key = [decoder_section(config, section).to_dict(), section.data, seed, reads]
  return f'substitute_{checkpoints.fingerprint(key)[:8]}'


def train_substitute(setup, section=None, *, seed: int | None = None):
  """Trains (or loads) the substitute decoder on clean attack-data vectors; (model, variables).

  Args:
    setup: the run's `experiment.Setup` (splits, clean vectors, workdir, mesh).
    section: a config section with the fields of `config.substitute` (default: that section).
    seed: init and data-order seed (default `default_seed(config)`).
  """
  config = setup.config
  section = config.substitute if section is None else section
  seed = default_seed(config) if seed is None else int(seed)
  queries = setup.splits.attack_train
  idx = query_indices(len(queries.labels), section.data)
  z = np.asarray(transforms.attacker_input(setup.clean['attack_train'][idx],
                                           attack_config(config, section)))
  return stages.train_decoder(config, z, queries.images[idx], section=decoder_section(config, section),
                              workdir=setup.workdir, stage=stage_name(config, section, seed),
                              seed=seed, mesh=setup.mesh,
                              fingerprint_extra=['substitute', data_fingerprint(config)])


def decoder_loss_fn(model, batch_stats, attack_cfg, loss: str = 'mse', batchnorm: str = 'eval'):
  """`loss_fn(params, probs, images, weights)`: a decoder's weighted reconstruction loss on probs.

  batchnorm='eval' (default): running BatchNorm statistics, so the loss of a batch is the mean of
  per-example losses and per-example gradients are well defined. 'train': batch statistics, as the
  attacker's decoder sees them while it trains (a lever of the attribution ablation; in per-example
  mode each example is then normalised over its own spatial positions only).
  """
  if batchnorm not in BATCHNORMS:
    raise ValueError(f"lpa.batchnorm must be 'eval' or 'train', got {batchnorm!r}")
  per_example = {'mse': reconstruction.per_example_mse,
                 'psnr': lambda r, x: -10.0 * jnp.log10(reconstruction.per_example_mse(r, x) + 1e-10)}
  if loss not in per_example:
    raise ValueError(f'unknown reconstruction loss {loss!r}; known: {sorted(per_example)}')

  def loss_fn(params, probs, images, weights):
    z = transforms.attacker_input(probs, attack_cfg)
    variables = {'params': params, 'batch_stats': batch_stats}
    if batchnorm == 'train':
      recon, _ = model.apply(variables, z, train=True, mutable=['batch_stats'])
    else:
      recon = model.apply(variables, z, train=False)
    errors = per_example[loss](recon, images)
    return jnp.sum(errors * weights) / jnp.maximum(jnp.sum(weights), 1e-12)

  return loss_fn
