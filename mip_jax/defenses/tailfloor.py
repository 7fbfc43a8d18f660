"""Tail floor: entries below a threshold are served as one fixed value (or as noise); the rest keep
their ratios.

What an inversion attacker learns from is the fine structure of the small entries: Yang's log
transform (and any zero-robust variant of it) turns probabilities of 1e-3 .. 1e-8 into well-separated
inputs, and the private data's own vectors are confident, so *all* they carry beyond the label lies
in entries far below any threshold a user would notice. This defense removes exactly that:

  S     the non-top entries below `tailfloor.threshold` (tau);
  f     one fixed value for them: `tailfloor.floor`, or (None) the geometric mean of the non-top
        entries of the private training vectors, fitted once, so that a clean private vector's tail
        sits where the decoder has seen served tails (a decoder trained on served vectors learns
        nothing about values around f it could read back from clean ones);
  c'    c'_j = f for j in S; the other entries (the top one included) are rescaled by one common
        factor so the row sums to 1. Their ratios, hence their order and the argmax, are kept.
  fill  `tailfloor.fill='noise'` serves S's entries as log-uniform noise on [tailfloor.low, tau]
        instead, drawn per row from a hash of the row's own values (a repeated query gets the same
        vector, so repeating it averages nothing away). A fixed value leaves the attacker's decoder
        free to extrapolate what it learned from entries >= tau down to the clean private tails
        (Definition 2 inverts clean vectors); noise over the whole range where private tails lie
        teaches it that values there carry nothing, so it learns to ignore them.

Served vectors then depend on the query only through the entries >= tau (and which ones they are):
a vector whose non-top entries are all below tau (nearly every in-distribution vector) is served as
the constant (1 - (m - 1) f, f, ..., f) up to the label's position, which is what the `label` attacker
sees. The L2 cost is at most about twice the mass below tau: tiny on confident (in-distribution)
vectors, larger on out-of-distribution queries with a heavy tail. No entry is ever exactly 0, so no
attacker is trapped by Yang's -1000 floor either.

Served in one numpy pass: thousands of vectors per millisecond, online.
"""

import numpy as np

from mip_jax.protocol import rules
from mip_jax.runtime import keys

FILLS = ('floor', 'noise')
REPLACES_CLASSIFIER = False  # a post-processing unit (defenses.protocol)
LABEL_PRESERVING = True  # the entries above the floor keep their ratios, so the argmax is kept
RULES = {
    'tailfloor.threshold': (rules.UNIT_OPEN,),
    'tailfloor.floor': (rules.optional(rules.UNIT_OPEN),),  # None: fitted
    'tailfloor.fill': (rules.one_of(FILLS),),
    'tailfloor.low': (rules.UNIT_OPEN,),
}


def below_the_threshold(config) -> list[str]:
  """A given floor lies below the threshold and 1/m (m where the config tells it), and noise's
  lower end below the threshold."""
  from mip_jax.data.splits import private_class_count  # noqa: late import: data loading code
  cfg, found = config.tailfloor, []
  if cfg.threshold is None:  # a placeholder: the type check (or fit) reports it, not this one
    return found
  m = private_class_count(config)
  top = min(cfg.threshold, 1.0 / m) if m else cfg.threshold
  if cfg.floor is not None and not cfg.floor < top:
    found.append(rules.problem('tailfloor.floor', cfg.floor, f'must be < {top:.4g}, the smaller '
                               'of tailfloor.threshold and 1/(number of private classes)'))
  if cfg.fill == 'noise' and cfg.low is not None and not cfg.low < cfg.threshold:
    found.append(rules.problem('tailfloor.low', cfg.low, f'must be < tailfloor.threshold='
                               f'{cfg.threshold} (noise fills [low, threshold])'))
  return found


CHECKS = (below_the_threshold,)


def fit(setup) -> dict:
  """Checks config.tailfloor; fits the floor on the private training vectors when it is None."""
  rules.enforce(RULES, setup.config, checks=CHECKS)
  cfg = setup.config.tailfloor
  m = setup.clean['private_train'].shape[1]
  if cfg.floor is None:  # fitted, and never above the entries it stands for
    floor = min(fitted_floor(setup.clean['private_train']), 0.5 * float(cfg.threshold))
  else:
    floor = float(cfg.floor)
  if not 0 < floor < min(1.0 / m, cfg.threshold):  # m from the data (FaceScrub's identities)
    raise ValueError(f'tailfloor.floor must lie in (0, min(1/m, tailfloor.threshold)) = '
                     f'(0, {min(1.0 / m, cfg.threshold):.4g}); got {cfg.floor}')
  return {'threshold': float(cfg.threshold), 'floor': floor, 'fill': cfg.fill,
          'low': float(cfg.low), 'seed': keys.stage_seed(setup.config.seed, 'tailfloor')}


def fitted_floor(private_probs: np.ndarray, lowest: float = 1e-12) -> float:
  """The geometric mean of the non-top entries of the private vectors (clamped at `lowest`)."""
  p = np.asarray(private_probs, np.float64)
  rest = np.sort(p, axis=1)[:, :-1]
  return float(np.exp(np.mean(np.log(np.maximum(rest, lowest)))))


def floored(probs: np.ndarray, threshold: float, fill) -> np.ndarray:
  """The vectors of `probs` [N, m] with their small non-top entries replaced by `fill` (a number,
  or an [N, m] array of values below the threshold) and the others rescaled to sum 1."""
  p = np.asarray(probs, np.float64)
  rows = np.arange(len(p))
  top = np.argmax(p, axis=1)
  small = p < threshold
  small[rows, top] = False
  fill = np.broadcast_to(np.asarray(fill, np.float64), p.shape)
  kept_mass = np.where(small, 0.0, p).sum(axis=1, keepdims=True)
  target = 1.0 - np.where(small, fill, 0.0).sum(axis=1, keepdims=True)  # what kept entries sum to
  out = np.where(small, fill, p * target / kept_mass)
  # A filled entry never reaches the rescaled top entry (only possible for a threshold near 1/m).
  out = np.where(small, np.minimum(out, 0.5 * out[rows, top][:, None]), out)
  return (out / out.sum(axis=1, keepdims=True)).astype(np.float32)


def row_noise(probs: np.ndarray, seed: int, low: float, high: float) -> np.ndarray:
  """[N, m] log-uniform values on [low, high], a function of `seed` and each row's values (rounded
  like `runtime.row_keys`: float32 noise in the clean vector does not change its draw)."""
  grid = np.round(np.log(np.maximum(np.asarray(probs, np.float64), 1e-30)) * 16).astype(np.int64)
  h = np.full(len(grid), np.uint64(1469598103934665603) ^ np.uint64(seed))
  with np.errstate(over='ignore'):
    for j in range(grid.shape[1]):
      h = (h ^ grid[:, j].astype(np.uint64)) * np.uint64(1099511628211)
    counters = h[:, None] + np.arange(grid.shape[1], dtype=np.uint64)[None, :]
    u = _splitmix64(counters)
  u = (u >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # uniform on [0, 1)
  return np.exp(np.log(low) + u * (np.log(high) - np.log(low)))


def _splitmix64(x: np.ndarray) -> np.ndarray:
  x = x + np.uint64(0x9E3779B97F4A7C15)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def apply(state: dict, probs: np.ndarray, *, images: np.ndarray | None = None) -> np.ndarray:
  del images
  fill = state['floor']
  if state['fill'] == 'noise':
    fill = row_noise(probs, state['seed'], state['low'], state['threshold'])
  return floored(probs, state['threshold'], fill)


def looks_defended(state: dict, probs: np.ndarray) -> np.ndarray:
  """Served vectors with an entry at the floor (float32 equality): the defense touched them. Noise
  fill leaves no such signature: no vector looks defended."""
  p = np.asarray(probs, np.float32)
  if state['fill'] == 'noise':
    return np.zeros(len(p), bool)
  return np.any(np.isclose(p, np.float32(state['floor']), rtol=1e-5, atol=0), axis=1)
