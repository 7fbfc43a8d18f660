"""The `random` control: LPA's random start at LPA's radius, without any optimisation.

It uses config.lpa as it is (crafting space, eps, batch size, seed): its vectors are exactly those of
`lpa` with `lpa.steps=0` and one restart (tested). Whatever protection it shows is what LPA gets from
its feasible map and radius alone; LPA protects through gradient alignment only as far as it beats
this row at the same confidence distortion, against an attacker that is not fooled by exact zeros.
"""

import functools

import jax
import numpy as np

from mip_jax.defenses import space as _space
from mip_jax.runtime import parallel

REPLACES_CLASSIFIER = False  # a post-processing unit (defenses.protocol)
LABEL_PRESERVING = True  # its feasible map keeps every argmax (defenses.protocol)


def fit(setup) -> dict:
  """Nothing is trained; checks config.lpa's crafting space."""
  cfg = setup.config.lpa
  _space.check(cfg.space)
  if not cfg.eps > 0:
    raise ValueError(f'lpa.eps is the L2 radius of the perturbation and must be > 0; got {cfg.eps}')
  where = dict(space=cfg.space, log_bound=cfg.log_bound)
  fn = jax.jit(functools.partial(random_vectors, eps=cfg.eps, **where))
  return {'fn': fn, 'batch_size': cfg.batch_size, 'seed': _space.crafting_seed(setup.config)}


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
  out = [np.asarray(state['fn'](c, key))[:n]  # LPA's batch shape: one compilation
         for _, n, (c, _) in parallel.padded_batches((probs,), state['batch_size'])]
  return np.concatenate(out)
