"""Every random stream of a run derives from the run's seed and the name of what uses it.

  seed = keys.stage_seed(config.seed, 'eval_classifier')   # an int for jax.random.key / numpy

Integer offsets (seed + 1 for the evaluator, + 2 for the attacker, ...) made seed s's evaluator and
seed s + 1's classifier share an initialisation and a batch order inside a study over seeds. A
SeedSequence of (seed, name) gives every (seed, stage) pair a stream of its own instead.
"""

import numpy as np

from mip_jax.protocol import rules

RULES = {'seed': (rules.at_least(0, integer=True),)}

# The names the protocol uses (tests check that no two of them share a seed for seeds 0..9).
STAGES = ('classifier', 'eval_classifier', 'attacker', 'attacker_sampling', 'substitute',
          'purification', 'vae', 'vae_serving', 'lpa', 'lfp', 'mid', 'bido', 'noise', 'onepara',
          'table8', 'tailfloor')


def stage_seed(seed: int, name: str) -> int:
  """A 31-bit seed for `name` in the run of `seed` (non-negative: jax and numpy take it alike)."""
  if int(seed) < 0:
    raise ValueError(f'seeds must be >= 0, got {seed}')
  entropy = [int(seed), *name.encode()]
  return int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0] >> 1)
