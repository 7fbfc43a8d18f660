"""Confidence template: every confident vector is served one fixed vector per label; the others pass.

Where does an inversion attacker's signal beyond the label lie? The private data's own vectors are
confident (top probability ~0.99-0.9999), and what tells one confident "3" from another is its top
value and its tail, both far below what a user would notice. The attacker's decoder learns to read
them from its own queries, and its confident queries are the ones that teach it what confident
vectors of a class look like. This defense serves every vector whose top probability is at least
`template.confidence` (h) as the label's template

  T_k = (f, ..., 1 - (m - 1) f, ..., f)      (1 - (m - 1) f at the label k, f elsewhere)

and every other vector unchanged. f is `template.floor`, or (None) the geometric mean of the
non-top entries of the private training vectors, fitted once, so a clean private vector's tail sits
where the served templates put theirs in the log space decoders read (a decoder trained on served
vectors has seen nothing near a clean private vector but the template of its label).

What it costs: a confident vector moves by about its own non-top mass (<= (1 - h) * sqrt(2)), a
vector below h not at all, so confident in-distribution vectors (what legitimate users mostly get)
move by ~1e-3 and out-of-distribution queries by their share above h times a few hundredths. The
argmax is kept (1 - (m - 1) f > f for f < 1/m), no entry is ever 0 (no attacker is trapped by
Yang's -1000 floor), and the served value of a confident vector depends on its label alone: the
tests check that two confident vectors of one label are served the same vector.

What it leaves: vectors below h are served as they are, so an attacker who drops the templates
(`looks_defended`) still learns from its unconfident queries, and must extrapolate from them to the
confident private vectors; the frontier measures how far that gets it (the `drop` attacker).

Served in one numpy pass.
"""

import numpy as np

from mip_jax.defenses import tailfloor
from mip_jax.protocol import rules

REPLACES_CLASSIFIER = False  # a post-processing unit (defenses.protocol)
LABEL_PRESERVING = True  # the template's top entry sits at the label
RULES = {
    'template.confidence': (rules.UNIT_OPEN,),  # top probability from which a vector is templated
    'template.floor': (rules.optional(rules.UNIT_OPEN),),  # None: fitted
}


def below_one_over_m(config) -> list[str]:
  """A given floor lies below 1/m (m where the config tells it): the label must stay on top."""
  from mip_jax.data.splits import private_class_count  # noqa: late import: data loading code
  cfg = config.template
  m = private_class_count(config)
  if cfg.floor is not None and m and not cfg.floor < 1.0 / m:
    return [rules.problem('template.floor', cfg.floor, f'must be < 1/{m}, one over the number of '
                          'private classes (the label keeps the largest entry)')]
  return []


CHECKS = (below_one_over_m,)


def fit(setup) -> dict:
  """Checks config.template; fits the floor on the private training vectors when it is None."""
  rules.enforce(RULES, setup.config, checks=CHECKS)
  cfg = setup.config.template
  m = setup.clean['private_train'].shape[1]
  floor = tailfloor.fitted_floor(setup.clean['private_train']) if cfg.floor is None \
      else float(cfg.floor)
  if not 0 < floor < 1.0 / m:  # m from the data (FaceScrub's identities)
    raise ValueError(f'template.floor must lie in (0, 1/{m}); got {floor:.4g} '
                     f'({"fitted" if cfg.floor is None else "given"})')
  return {'confidence': float(cfg.confidence), 'floor': floor}


def templates(labels: np.ndarray, m: int, floor: float) -> np.ndarray:
  """[N, m] the template of each label: 1 - (m - 1) floor at the label, floor elsewhere."""
  out = np.full((len(labels), m), floor, np.float64)
  out[np.arange(len(labels)), labels] = 1.0 - (m - 1) * floor
  return out


def apply(state: dict, probs: np.ndarray, *, images: np.ndarray | None = None) -> np.ndarray:
  """Confident rows (top >= template.confidence) as their label's template; the others as given."""
  del images
  p = np.asarray(probs, np.float32)
  confident = p.max(axis=1) >= state['confidence']
  served = templates(np.argmax(p, axis=1), p.shape[1], state['floor']).astype(np.float32)
  return np.where(confident[:, None], served, p)


def looks_defended(state: dict, probs: np.ndarray) -> np.ndarray:
  """Served vectors equal to a template (float32): the rows the gate templated."""
  p = np.asarray(probs, np.float32)
  return np.sum(np.isclose(p, np.float32(state['floor']), rtol=1e-5, atol=0), axis=1) \
      == p.shape[1] - 1
