"""Adversarial perturbation of served vectors against the defender's substitute decoder.

The engine behind the `advexa` and `pgd` baselines (the paper's Table VII): starting from the clean
vector c, iterate p <- project(c, p + update(grad_p R(I_sub(p), x))) to *maximise* the substitute's
reconstruction error R (MSE through the attacker's input transform) of the queried image x, then map
the result with a final projection. Unlike LPA these are first-order attacks on one trained decoder:
they do not anticipate the attacker's training on the vectors (the paper's Section VII-B6).
The gradient is taken at p itself, not through the projection (no 0/0 at p = c).

One jitted function per batch shape (a `fori_loop` over steps); batches are padded with zero-weight
rows and split over the 'data' mesh axis, as in `lpa.Crafter`.
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mip_jax.defenses import artefact, feasible, protocol
from mip_jax.models.decoder import Decoder
from mip_jax.protocol import rules, substitute
from mip_jax.runtime import parallel

# Relative slack on the radius (float32 rounding), as in `feasible`.
_SLACK = 1e-6


def project_ball(c: jnp.ndarray, q_raw: jnp.ndarray, eps) -> jnp.ndarray:
  """Probability vectors within eps of c, labels free: normalise q, then shrink q - c to radius eps.

  The simplex is convex and holds c, so every point of the segment [c, q] is a probability vector.
  """
  q = feasible.normalize(q_raw)
  dist = jnp.linalg.norm(q - c, axis=-1, keepdims=True)
  t = jnp.minimum(1.0, eps * (1 - _SLACK) / jnp.where(dist > 0, dist, 1.0))
  return c + jnp.where(dist > 0, t, 0.0) * (q - c)


def ascend(c: jnp.ndarray, images: jnp.ndarray, weights: jnp.ndarray, *, params: Any, loss_fn,
           opt: optax.GradientTransformation, steps: int, project: Callable,
           final: Callable) -> jnp.ndarray:
  """Projected gradient ascent of the reconstruction loss on one batch (pure; jit it).

  Args:
    c: clean vectors [B, m]; images: the queried images; weights: 1 real rows, 0 padding [B].
    params: substitute decoder params; loss_fn: `substitute.decoder_loss_fn(...)` (weighted mean loss).
    opt: the optax update rule (it minimises, so it is given the gradient of -R).
    steps: iterations; project: (c, candidate) -> feasible point after each step;
    final: (c, p) -> served vector (e.g. AdvExa's label modifier).

  Returns:
    Defended vectors [B, m].
  """
  neg_loss = lambda p: -loss_fn(params, p, images, weights)

  def body(_, carry):
    p, state = carry
    updates, state = opt.update(jax.grad(neg_loss)(p), state, p)
    return project(c, optax.apply_updates(p, updates)), state

  p, _ = jax.lax.fori_loop(0, steps, body, (c, opt.init(c)))
  return final(c, p)


class Ascender:
  """Runs `ascend` over any number of queries with one compiled batch function.

  Args:
    model / variables: the substitute decoder (Flax module, its variables).
    config: the run config (the substitute reads vectors through its attack transform).
    mesh: 'data' mesh; each batch is split over it.
    opt / steps / project / final: as in `ascend`; batch_size: rows per compiled batch.
  """

  def __init__(self, model, variables, *, config, mesh, opt, steps: int, project, final,
               batch_size: int):
    self.mesh = mesh
    check_batch(batch_size, mesh)
    self.model, self.variables = model, variables
    loss_fn = substitute.decoder_loss_fn(model, variables['batch_stats'],
                                         substitute.attack_config(config))
    self.batch_size = batch_size
    self.params = parallel.replicate(variables['params'], self.mesh)
    # Replicated output: with several processes every one of them reads the whole batch.
    self.fn = jax.jit(functools.partial(ascend, loss_fn=loss_fn, opt=opt, steps=steps,
                                        project=project, final=final),
                      out_shardings=parallel.replicated(self.mesh))

  def __call__(self, probs: np.ndarray, images: np.ndarray) -> np.ndarray:
    out = []
    arrays = (probs, np.asarray(images, np.float32))
    for _, n, batch in parallel.padded_batches(arrays, self.batch_size, mesh=self.mesh):
      out.append(np.asarray(self.fn(*batch, params=self.params))[:n])
    return np.concatenate(out) if out else probs.copy()


def section_rules(name: str) -> rules.Table:
  """The limits of an ascent's section (config.advexa, config.pgd): radius, steps, step size."""
  return {f'{name}.eps': (rules.POSITIVE,),  # the L2 radius of the perturbation
          f'{name}.steps': (rules.at_least(0, integer=True),),
          f'{name}.tau': (rules.POSITIVE,),  # step = tau * eps
          f'{name}.batch_size': (rules.at_least(1, integer=True),)}


def check_batch(batch_size: int, mesh) -> None:
  """A batch the mesh's devices split evenly; ValueError otherwise."""
  if batch_size < 1 or batch_size % mesh.devices.size:
    raise ValueError(f'batch_size={batch_size} must be a positive multiple of the '
                     f'{mesh.devices.size} devices')


def fit(setup, name: str, make):
  """The ascent of config.<name>: its rules checked before any training, then the substitute
  trained (or loaded) and `make(config, model, variables, mesh)` -> Ascender."""
  rules.enforce(section_rules(name), setup.config)
  check_batch(setup.config[name].batch_size, setup.mesh)
  return make(setup.config, *substitute.train_substitute(setup), setup.mesh)


def export(state: Ascender) -> artefact.Artefact:
  """The substitute's architecture and variables (the ascent's settings are the config's)."""
  return artefact.Artefact(settings={'substitute': artefact.module_fields(state.model)},
                           arrays=artefact.pack(state.variables, 'substitute'))


def serve(served: artefact.Artefact, config, mesh, make) -> protocol.Backend:
  """The ascent rebuilt from the artefact's substitute (`make` as in `fit`); it needs the images."""
  model = artefact.rebuild(Decoder, served.settings['substitute'])
  state = make(config, model, artefact.unpack(served.arrays, 'substitute'), mesh)
  return protocol.Backend(lambda probs, images: (state(np.asarray(probs, np.float32), images),
                                                 None), needs_images=True)
