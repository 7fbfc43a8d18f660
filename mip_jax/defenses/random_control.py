"""The `random` control: LPA's random start at LPA's radius, without any optimisation.

It uses config.lpa as it is (crafting space, eps, batch size, seed): its vectors are exactly those of
`lpa` with `lpa.steps=0` and one restart (tested). Whatever protection it shows is what LPA gets from
its feasible map and radius alone; LPA protects through gradient alignment only as far as it beats
this row at the same confidence distortion, against an attacker that is not fooled by exact zeros.
"""

import functools

import jax
import numpy as np

from mip_jax.defenses import lpa
from mip_jax.defenses import space as _space
from mip_jax.protocol import rules
from mip_jax.runtime import parallel

REPLACES_CLASSIFIER = False  # a post-processing unit (defenses.protocol)
LABEL_PRESERVING = True  # its feasible map keeps every argmax (defenses.protocol)
# The config.lpa fields it reads, under LPA's own rules.
RULES = {path: lpa.RULES[path] for path in ('lpa.eps', 'lpa.space', 'lpa.log_bound',
                                            'lpa.batch_size')}


def fit(setup) -> dict:
  """Nothing is trained: LPA's radius, space and batch shape, and its crafting seed (plain
  settings: served through `apply` as they are)."""
  rules.enforce(RULES, setup.config)
  cfg = setup.config.lpa
  return {'eps': float(cfg.eps), 'space': cfg.space, 'log_bound': float(cfg.log_bound),
          'batch_size': int(cfg.batch_size), 'seed': _space.crafting_seed(setup.config)}


@functools.lru_cache(maxsize=8)
def _compiled(eps: float, space: str, log_bound: float):
  return jax.jit(functools.partial(random_vectors, eps=eps, space=space, log_bound=log_bound))


def random_vectors(c, key, *, eps, space: str, log_bound: float):
  """The first restart's start of `lpa.craft_batch` for one batch of clean vectors `c`."""
  where = dict(space=space, log_bound=log_bound)
  v = _space.init(_space.restart_keys(key, 1)[0], c, eps, **where)
  return _space.defended(c, v, eps, **where)


def apply(state: dict, probs: np.ndarray, *, images: np.ndarray | None = None) -> np.ndarray:
  """Random feasible vectors for `probs`, batch by batch with LPA's key and batch shape."""
  del images
  probs = np.asarray(probs, np.float32)
  key = jax.random.key(state['seed'])
  fn = _compiled(state['eps'], state['space'], state['log_bound'])
  out = [np.asarray(fn(c, key))[:n]  # LPA's batch shape: one compilation
         for _, n, (c, _) in parallel.padded_batches((probs,), state['batch_size'])]
  return np.concatenate(out) if out else np.zeros_like(probs)
