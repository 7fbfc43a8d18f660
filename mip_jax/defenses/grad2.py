"""GRAD²-style coordinated redirection (Mazeika et al., ICML 2022), for model inversion.

GRAD² perturbs the outputs of a model under stealing so that the thief's training gradients point
where the defender wants. It linearises the thief's gradient in the served vector and moves
probability mass greedily, which is optimal for a linear objective on the simplex under an L1
budget; the *coordinated* target (one parameter-space direction shared by every query) beat the
untargeted one at every budget it reports. Here, for the inversion attacker's decoder:

  d     the direction the defender wants the attacker's decoder to move, shared by all queries:
        LPA's defensive gradient g_t of `grad2.objective` (`lpa.defensive_gradient`; the default
        'decoy_class': reconstruct the next private class's mean image from private vectors);
  s     the score of each entry of a query's vector: s = grad_c <grad_theta R(I_sub(c), x), d>,
        one forward-over-reverse pass of the substitute decoder per batch (double backprop);
  move  eps/2 of probability mass (L1 distance eps) onto the entry with the largest score, taken
        from the entries with the smallest scores (greedy, as much as each holds), shortened where
        needed so that the argmax is kept (label preserving).

One step, no iterations: crafting costs one double-backprop per batch, so it serves online.
Entries emptied by the move become exactly 0 (a -1000 input to Yang's attacker; the `floor` attacker
is not fooled by it).
"""

import functools

import jax
import numpy as np

from mip_jax.defenses import artefact, lpa, protocol
from mip_jax.models.decoder import Decoder
from mip_jax.protocol import rules, substitute
from mip_jax.runtime import parallel

REPLACES_CLASSIFIER = False  # a post-processing unit (defenses.protocol)
LABEL_PRESERVING = True  # the move is shortened until the argmax is kept
MARGIN = 1e-5  # the top entry stays at least this far above every other
RULES = {
    'grad2.eps': (rules.within(0, 2, open_lo=True),),  # an L1 budget: at most 2 between vectors
    'grad2.objective': (rules.one_of(lpa.OBJECTIVES),),  # the direction: LPA's g_t of it
    'grad2.batch_size': (rules.at_least(1, integer=True),),
}


def scores(c, images, weights, *, params, target_grad, loss_fn):
  """s [B, m]: the derivative of <grad_theta R, d> in each entry of each vector (rows independent:
  the substitute runs with its running BatchNorm statistics)."""
  def inner(probs):
    directional = lambda p: loss_fn(p, probs, images, weights)
    return jax.jvp(directional, (params,), (target_grad,))[1]
  return jax.grad(inner)(c)


def greedy_move(c: np.ndarray, s: np.ndarray, budget: float) -> np.ndarray:
  """The L1-`budget` move of c [N, m] maximising s . c' on the simplex, label kept.

  `budget`/2 of mass goes to argmax s, taken from the lowest-scoring entries first; when that would
  change the argmax, the whole move is shortened to the largest fraction that keeps it.
  """
  c = np.asarray(c, np.float64)
  n, m = c.shape
  rows = np.arange(n)
  to = np.argmax(s, axis=1)
  order = np.argsort(s, axis=1, kind='stable')  # lowest score first
  take = np.zeros_like(c)
  left = np.full(n, budget / 2.0)
  for j in range(m):
    col = order[:, j]
    avail = np.where(col == to, 0.0, c[rows, col])
    got = np.minimum(avail, left)
    take[rows, col] += got
    left -= got
  delta = -take
  delta[rows, to] += take.sum(axis=1)
  top = np.argmax(c, axis=1)
  # Largest t in [0, 1] with c_top + t d_top >= c_j + t d_j + MARGIN for every j: the argmax is
  # kept with room for float32 rounding of the served vector.
  gap = c[rows, top][:, None] - c - MARGIN
  rise = delta - delta[rows, top][:, None]
  with np.errstate(divide='ignore', invalid='ignore'):
    limit = np.where(rise > 0, gap / np.where(rise > 0, rise, 1.0), np.inf)
  t = np.clip(limit.min(axis=1), 0.0, 1.0)[:, None]
  out = np.clip(c + t * delta, 0.0, 1.0)
  out /= out.sum(axis=1, keepdims=True)
  return out.astype(np.float32)


def fit(setup) -> dict:
  """The substitute (LPA's stage), the shared direction d and the jitted score function."""
  config = setup.config
  rules.enforce(RULES, config)
  check_batch(config.grad2.batch_size, setup.mesh)
  model, variables = substitute.train_substitute(setup)
  loss_fn = substitute.decoder_loss_fn(model, variables['batch_stats'],
                                       substitute.attack_config(config), config.lpa.loss)
  section = config.lpa.copy_and_resolve_references()
  section.objective = config.grad2.objective
  direction = lpa.defensive_gradient(loss_fn, variables['params'], setup, section)
  return make_state(config, model, variables, direction, setup.mesh)


def make_state(config, model, variables, direction, mesh) -> dict:
  """The jitted scores of the substitute (model, variables) along `direction`, and config.grad2."""
  loss_fn = substitute.decoder_loss_fn(model, variables['batch_stats'],
                                       substitute.attack_config(config), config.lpa.loss)
  fn = jax.jit(functools.partial(scores, loss_fn=loss_fn),
               out_shardings=parallel.replicated(mesh))
  return {'fn': fn, 'params': parallel.replicate(variables['params'], mesh),
          'direction': parallel.replicate(direction, mesh), 'eps': float(config.grad2.eps),
          'batch_size': int(config.grad2.batch_size), 'mesh': mesh,
          'model': model, 'variables': variables, 'host_direction': direction}


def export(state: dict) -> artefact.Artefact:
  """The substitute's architecture and variables and the shared direction d."""
  arrays = {**artefact.pack(state['variables'], 'substitute'),
            **artefact.pack(state['host_direction'], 'direction')}
  return artefact.Artefact(settings={'substitute': artefact.module_fields(state['model'])},
                           arrays=arrays)


def serve(served: artefact.Artefact, config, mesh) -> protocol.Backend:
  """Each request redirected as in `apply` (its scores need the queried images)."""
  model = artefact.rebuild(Decoder, served.settings['substitute'])
  state = make_state(config, model, artefact.unpack(served.arrays, 'substitute'),
                     artefact.unpack(served.arrays, 'direction'), mesh)
  return protocol.Backend(lambda probs, images: (apply(state, probs, images=images), None),
                          needs_images=True)


def check_batch(batch_size: int, mesh) -> None:
  if batch_size % mesh.devices.size:
    raise ValueError(f'grad2.batch_size={batch_size} must be a multiple of the '
                     f'{mesh.devices.size} devices')


def apply(state: dict, probs: np.ndarray, *, images: np.ndarray | None = None) -> np.ndarray:
  """Redirected vectors for clean `probs` of `images` (the scores need the queried images)."""
  if images is None:
    raise ValueError('grad2 needs the queried images: its scores are gradients of R(I(c), x)')
  probs = np.asarray(probs, np.float32)
  out = []
  batches = parallel.padded_batches((probs, np.asarray(images, np.float32)), state['batch_size'],
                                    mesh=state['mesh'])
  for start, n, (c, x, w) in batches:
    s = np.asarray(state['fn'](c, x, w, params=state['params'],
                               target_grad=state['direction']))[:n]
    out.append(greedy_move(probs[start:start + n], s, state['eps']))
  return np.concatenate(out) if out else probs.copy()
