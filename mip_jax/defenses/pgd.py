"""PGD on the substitute's reconstruction loss: the naive adversarial baseline of Table VII.

Signed gradient steps of size tau * eps per entry ascend the substitute decoder's MSE of the queried
images from their own vectors (Madry et al.'s PGD, zero start), projected after every step: onto
{label kept, probability vector, ||p - c|| <= eps} with `feasible.project` (pgd.keep_label,
default), or onto {probability vector, ||p - c|| <= eps} only (keep_label=False: labels may flip, as
the paper's PGD row, whose model accuracy drops, suggests). Deterministic.
"""

import functools

import numpy as np
import optax

from mip_jax.defenses import adversarial, feasible

REPLACES_CLASSIFIER = False  # a post-processing unit (defenses.protocol)
RULES = adversarial.section_rules('pgd')


def make_state(config, model, variables, mesh) -> adversarial.Ascender:
  """The compiled ascent of config.pgd against the substitute (model, variables)."""
  cfg = config.pgd
  eps = float(cfg.eps)
  project = functools.partial(feasible.project if cfg.keep_label else adversarial.project_ball,
                              eps=eps)
  signed = optax.chain(optax.scale_by_sign(), optax.scale(-cfg.tau * eps))
  identity = lambda c, p: p
  return adversarial.Ascender(model, variables, config=config, mesh=mesh, opt=signed,
                              steps=int(cfg.steps), project=project, final=identity,
                              batch_size=cfg.batch_size)


def fit(setup) -> adversarial.Ascender:
  """Trains (or loads) the substitute and builds the compiled ascent."""
  return adversarial.fit(setup, 'pgd', make_state)


def apply(state: adversarial.Ascender, probs, *, images=None):
  """PGD vectors within eps of the clean ones (labels kept unless pgd.keep_label is False)."""
  if images is None:
    raise ValueError('PGD needs the queried images: it maximises their reconstruction error')
  return state(np.asarray(probs, np.float32), images)


export = adversarial.export


def serve(served, config, mesh):
  return adversarial.serve(served, config, mesh, make_state)
