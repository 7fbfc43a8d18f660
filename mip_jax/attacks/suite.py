"""The attacker suite: every black-box attacker a careful adversary would try, by name.

  attacker = suite.parse('topk@2:defended')
  received = attacker.receive(defended_vectors, config=config)   # what it makes of served vectors
  z = attacker.inputs(received, config.attack)                    # its decoder's inputs

An attacker queries the defended model with its own images, post-processes every vector it receives
(`receive`: all of them, its training queries and the vectors it inverts alike), turns them into
decoder inputs with an input transform (`attacks.transforms`: Yang's log, `floor`, raw `prob`), trains
a fresh decoder (or a conditional diffusion model) on the pairs, and inverts the private data's
vectors. The **effective attack accuracy** of a defense setting is the best attacker's: the maximum
over the suite.

Names (`base`, `base@param`, and any of them with `:defended`):
  none             Yang et al.'s attacker, the paper's: log transform, exact zeros at -1000.
  floor            the same after clamping probabilities at attack.floor (1e-8): exact zeros are just
                   tiny numbers (the control for every defense that creates zeros).
  prob             raw probabilities as inputs.
  noise, softmax   Table X's adaptive attackers: Gaussian noise, a re-softmax of received vectors.
  label            only the argmax, one-hot: what labels alone leak. A label-preserving defense cannot
                   push the strongest attacker below this one (it always serves the labels).
  topk@k           Yang et al.'s truncation alignment: every vector truncated to its own top k (then
                   `floor`); k in 1..m. Undoes defenses that hide their signal in the tail.
  rank             the rank order of the entries alone (values dropped): undoes any defense that
                   moves values but keeps their order (noise below the gaps, rounding, templates).
  temp@T           vectors re-sharpened (T < 1) or flattened (T > 1): softmax(log p / T), then
                   `floor`; against defenses that change confidence levels (MID, purification).
  drop             trains only on received vectors that do not look defended (the defense's own
                   `looks_defended`, Kerckhoffs: the attacker knows the algorithm); against a gate that
                   defends some queries only, it learns from the ones served clean. Without such a
                   signature, or with fewer than a batch served clean, it keeps all (it is `floor`).
  diffusion, diffusion_floor, diffusion@w
                   Table V's conditional DDPM with classifier-free guidance (Yang's / floor inputs),
                   at guidance config.diffusion.guidance or w.
  <any>:defended   inverts the private data's *defended* vectors instead of the clean ones (Definition
                   2 inverts clean ones): trains the same model, so it costs one inversion more.
"""

import dataclasses

import numpy as np

from mip_jax.defenses.noise import gaussian_noise
from mip_jax.protocol import rules

DIFFUSION = {'diffusion': None, 'diffusion_floor': 'floor'}  # -> the input transform it uses
# base -> (input transform or None for config.attack.transform, parameter kind or None)
BASES = {
    'none': (None, None), 'floor': ('floor', None), 'prob': ('prob', None),
    'noise': (None, None), 'softmax': (None, None),
    'label': ('prob', None), 'topk': ('floor', int), 'rank': ('prob', None),
    'temp': ('floor', float), 'drop': ('floor', None),
    'diffusion': (None, float), 'diffusion_floor': ('floor', float),
}
DEFENDED = ':defended'
# Attackers of the first waves, by their old names (attack.adaptive, --attackers).
ADAPTIVE = ('none', 'noise', 'softmax')
ZERO_ROBUST = ('floor', 'prob')
RULES = {
    'attack.adaptive': (rules.one_of(ADAPTIVE + ZERO_ROBUST),),
    'attack.adaptive_noise_std': (rules.NON_NEGATIVE,),  # the `noise` attacker's std
}


@dataclasses.dataclass(frozen=True)
class Attacker:
  """One attacker of the suite (see the module docstring); build it with `parse`."""
  name: str
  base: str
  param: float | int | None = None
  defended: bool = False   # inverts the private data's defended vectors

  @property
  def is_diffusion(self) -> bool:
    return self.base in DIFFUSION

  @property
  def training_name(self) -> str:
    """What decides the trained model: the name without ':defended' (and without a diffusion
    model's guidance, which only changes sampling)."""
    return self.base if self.is_diffusion else self.name.removesuffix(DEFENDED)

  def attack_config(self, attack_cfg):
    """config.attack as this attacker uses it: its transform, and top_k for `topk@k`."""
    transform = BASES[self.base][0]
    if transform is None and self.base != 'topk':
      return attack_cfg
    cfg = attack_cfg.copy_and_resolve_references()
    cfg.transform = transform or cfg.transform
    cfg.top_k = int(self.param) if self.base == 'topk' else (
        None if self.base in ('label', 'rank') else cfg.top_k)
    return cfg

  def receive(self, probs: np.ndarray, *, noise_std: float = 1e-3, seed: int = 0) -> np.ndarray:
    """What the attacker makes of received probability vectors [N, m] before its input transform."""
    probs = np.asarray(probs, np.float32)
    if self.base == 'noise':  # the same transform as the `noise` defense, at the attacker's scale
      return gaussian_noise(probs, scale=noise_std, rng=np.random.default_rng(seed))
    if self.base == 'softmax':
      return softmax(probs)
    if self.base == 'label':
      return one_hot_labels(probs)
    if self.base == 'rank':
      return rank_features(probs)
    if self.base == 'temp':
      return temperature(probs, float(self.param))
    return probs

  def inputs(self, received: np.ndarray, attack_cfg) -> np.ndarray:
    """Decoder inputs of received (post-processed) vectors."""
    from mip_jax.attacks import transforms  # jax: imported when inputs are made
    return np.asarray(transforms.attacker_input(received, self.attack_config(attack_cfg)))

  def keep(self, received: np.ndarray, defense, state, *, min_kept: int = 1) -> np.ndarray:
    """Which received training vectors it trains on (`drop`: those that do not look defended, by
    the defense module's `looks_defended(state, vectors)`).

    Where fewer than `min_kept` (the protocol passes a decoder batch) do not look defended, there is
    too little to learn from apart from the rest: it trains on them all (it is then `floor`). A tail
    floor at 0.1 leaves 2-3 of mnist5k's 2,000 queries untouched; a decoder of 1 held-out and 1-2
    training pairs is no attacker.
    """
    keep = np.ones(len(received), bool)
    if self.base == 'drop' and hasattr(defense, 'looks_defended'):
      keep = ~np.asarray(defense.looks_defended(state, received), bool)
    return keep if keep.sum() >= max(1, min_kept) else np.ones(len(received), bool)


def parse(name: str) -> Attacker:
  """The attacker called `name`; ValueError naming the known ones otherwise."""
  if not isinstance(name, str):
    raise ValueError(f'an attacker is named by a string, got {name!r}')
  defended = name.endswith(DEFENDED)
  stem = name.removesuffix(DEFENDED)
  base, at, value = stem.partition('@')
  if base not in BASES:
    raise ValueError(f'unknown attacker {name!r}; known: {", ".join(BASES)} (topk@k, temp@T, '
                     f'diffusion@w take a parameter; any of them with {DEFENDED!r} inverts the '
                     f'defended private vectors)')
  kind = BASES[base][1]
  param = None
  if at:
    if kind is None:
      raise ValueError(f'attacker {name!r}: {base!r} takes no parameter (only topk@k, temp@T and '
                       f'diffusion@w do)')
    try:
      param = kind(value)
    except ValueError:
      param = None
    if param is None or (kind is int and str(param) != value) or not param >= 0 or (
        base in ('topk', 'temp') and not param > 0):
      what = {'topk': 'an integer k >= 1', 'temp': 'a temperature T > 0'}.get(base,
                                                                               'a guidance w >= 0')
      raise ValueError(f'attacker {name!r}: the parameter after @ must be {what} (topk@k, temp@T, '
                       f'diffusion@w)')
  elif base == 'topk':
    raise ValueError(f'attacker {name!r}: write topk@k with the number of entries kept (topk@1)')
  elif base == 'temp':
    raise ValueError(f'attacker {name!r}: write temp@T with the temperature (temp@0.5)')
  return Attacker(name=name, base=base, param=param, defended=defended)


def check(name: str) -> str:
  """`name` if it names an attacker (ValueError otherwise)."""
  parse(name)
  return name


def check_classes(attacker: Attacker, num_classes: int) -> None:
  if attacker.base == 'topk' and attacker.param > num_classes:
    raise ValueError(f'attacker {attacker.name!r}: k={attacker.param} exceeds the '
                     f'{num_classes} classes of the vectors')


def is_diffusion(name: str) -> bool:
  return parse(name).is_diffusion


def split_guidance(name: str) -> tuple[str, float | None]:
  """'diffusion@0.5' -> ('diffusion', 0.5); 'floor' -> ('floor', None)."""
  a = parse(name)
  return a.base, (float(a.param) if a.is_diffusion and a.param is not None else None)


# ---------------------------------------------------------------- received-vector transforms

def softmax(probs: np.ndarray) -> np.ndarray:
  e = np.exp(probs - probs.max(axis=1, keepdims=True))
  return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def one_hot_labels(probs: np.ndarray) -> np.ndarray:
  """The argmax of each row, one-hot (first index on ties, as np.argmax)."""
  return np.eye(probs.shape[1], dtype=np.float32)[np.argmax(probs, axis=1)]


def rank_features(probs: np.ndarray) -> np.ndarray:
  """Each entry's rank, scaled to [0, 1]: 1 for the largest, 0 for the smallest (ties: the lower
  index ranks higher). A function of the order of the entries alone."""
  m = probs.shape[1]
  order = np.argsort(-probs, axis=1, kind='stable')
  ranks = np.empty_like(order)
  np.put_along_axis(ranks, order, np.arange(m)[None, :].repeat(len(probs), 0), axis=1)
  return ((m - 1 - ranks) / max(m - 1, 1)).astype(np.float32)


def temperature(probs: np.ndarray, t: float, floor: float = 1e-8) -> np.ndarray:
  """softmax(log(max(p, floor)) / t): re-sharpened (t < 1) or flattened (t > 1) vectors."""
  logits = np.log(np.maximum(np.asarray(probs, np.float64), floor)) / t
  e = np.exp(logits - logits.max(axis=1, keepdims=True))
  return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
