"""AdvExa: adversarial noise on the served vectors against a trained inversion model (after Wen et
al., "Defending Against Model Inversion Attack by Adversarial Examples", IEEE CSR 2021).

Wen et al. train an inversion model that mimics the attacker, craft a noise vector with a multi-step
optimiser that turns each output into an adversarial example maximising that model's reconstruction
error under a utility (distortion) constraint, then apply a label modifier so the label is kept.
Here: the inversion model is the defender's substitute decoder (shared with LPA); Adam steps
(lr = tau * eps) ascend its MSE of the queried image, each iterate kept a probability vector within
eps of c (labels free: `adversarial.project_ball`); the label modifier is `feasible.project`, which
moves a vector whose label changed back along the segment towards c until the label is c's again.
No randomness: deterministic.
"""

import functools

import numpy as np
import optax

from mip_jax.defenses import adversarial, feasible

REPLACES_CLASSIFIER = False  # a post-processing unit (defenses.protocol)
RULES = adversarial.section_rules('advexa')


def make_state(config, model, variables, mesh) -> adversarial.Ascender:
  """The compiled ascent of config.advexa against the substitute (model, variables)."""
  cfg = config.advexa
  eps = float(cfg.eps)
  return adversarial.Ascender(
      model, variables, config=config, mesh=mesh, opt=optax.adam(cfg.tau * eps),
      steps=int(cfg.steps), project=functools.partial(adversarial.project_ball, eps=eps),
      final=functools.partial(feasible.project, eps=eps), batch_size=cfg.batch_size)


def fit(setup) -> adversarial.Ascender:
  """Trains (or loads) the substitute and builds the compiled ascent."""
  return adversarial.fit(setup, 'advexa', make_state)


def apply(state: adversarial.Ascender, probs, *, images=None):
  """AdvExa vectors: label kept, within eps of the clean ones."""
  if images is None:
    raise ValueError('AdvExa needs the queried images: it maximises their reconstruction error')
  return state(np.asarray(probs, np.float32), images)


export = adversarial.export


def serve(served, config, mesh):
  return adversarial.serve(served, config, mesh, make_state)
