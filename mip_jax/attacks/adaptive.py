"""Attackers beside the paper's: adaptive ones (Table X) and zero-robust ones (the attribution controls).

Adaptive attackers know a defense is running and post-process every vector they receive, hoping to wash
the poison out: 'noise' adds Gaussian noise and renormalises, 'softmax' applies a softmax to the
probability vector. Zero-robust attackers change only how vectors become decoder inputs, so that exact
zeros are no trap: 'floor' clamps probabilities at `attack.floor` (1e-8) before Yang's log transform,
'prob' feeds the raw probabilities. 'none' is the paper's attacker (config.attack as it is).
Generative attackers (Table V, `attacks/diffusion.py`) replace the decoder with a conditional
diffusion model: 'diffusion' (Yang's log transform) and 'diffusion_floor' (the zero-robust one),
each at guidance config.diffusion.guidance, or at w when named 'diffusion@w' ('diffusion_floor@2').
Whatever an attacker does applies to every vector its decoder sees: its training queries and the
vectors it inverts.
"""

import numpy as np

from mip_jax.defenses.noise import gaussian_noise

ADAPTIVE = ('none', 'noise', 'softmax')          # Table X
ZERO_ROBUST = {'floor': 'floor', 'prob': 'prob'}  # attacker -> attack.transform it uses
DIFFUSION = {'diffusion': 'none', 'diffusion_floor': 'floor'}  # -> the attacker whose input it takes
ATTACKERS = ADAPTIVE + tuple(ZERO_ROBUST) + tuple(DIFFUSION)


def split_guidance(kind: str) -> tuple[str, float | None]:
  """'diffusion@0.5' -> ('diffusion', 0.5); any other name -> (name, None)."""
  base, at, w = kind.partition('@')
  if not at:
    return kind, None
  try:
    value = float(w)
  except ValueError:
    value = -1.0
  if base not in DIFFUSION or not value >= 0:
    raise ValueError(f'attacker {kind!r}: only diffusion attackers take a guidance, written '
                     f"'diffusion@w' with w >= 0 (e.g. diffusion@0.5)")
  return base, value


def check(kind: str) -> str:
  """Returns `kind` if it names an attacker, else raises ValueError listing the known ones."""
  if split_guidance(kind)[0] not in ATTACKERS:
    raise ValueError(f'unknown attacker {kind!r}; known: {", ".join(ATTACKERS)} '
                     f'(diffusion ones also as diffusion@w)')
  return kind


def is_diffusion(kind: str) -> bool:
  return split_guidance(check(kind))[0] in DIFFUSION


def attack_config(kind: str, attack_cfg):
  """config.attack as attacker `kind` uses it (the zero-robust ones change the transform)."""
  base = split_guidance(check(kind))[0]
  base = DIFFUSION.get(base, base)
  if base not in ZERO_ROBUST:
    return attack_cfg
  cfg = attack_cfg.copy_and_resolve_references()
  cfg.transform = ZERO_ROBUST[base]
  return cfg


def adapt(probs: np.ndarray, kind: str, *, noise_std: float = 1e-3, seed: int = 0) -> np.ndarray:
  """Applies attacker `kind`'s transform of received probability vectors [N, m]."""
  probs = np.asarray(probs, np.float32)
  if check(kind) not in ('noise', 'softmax'):
    return probs
  if kind == 'noise':  # the same transform as the `noise` defense, at the attacker's scale
    return gaussian_noise(probs, scale=noise_std, rng=np.random.default_rng(seed))
  e = np.exp(probs - probs.max(axis=1, keepdims=True))
  return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
