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

from mip_jax.defenses import feasible
from mip_jax.protocol import substitute
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
    setup: the run's `experiment.Setup` (its substitute decoder is trained or loaded here).
    opt / steps / project / final: as in `ascend`; batch_size: rows per compiled batch.
  """

  def __init__(self, setup, *, opt, steps: int, project, final, batch_size: int):
    self.mesh = setup.mesh
    if batch_size < 1 or batch_size % self.mesh.devices.size:
      raise ValueError(f'batch_size={batch_size} must be a positive multiple of the '
                       f'{self.mesh.devices.size} devices')
    model, variables = substitute.train_substitute(setup)
    loss_fn = substitute.decoder_loss_fn(model, variables['batch_stats'],
                                         substitute.attack_config(setup.config))
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
    return np.concatenate(out)


def check_section(name: str, cfg) -> None:
  """Raises ValueError for an eps / steps / tau a projected ascent cannot run with."""
  if not cfg.eps > 0:
    raise ValueError(f'{name}.eps is the L2 radius of the perturbation and must be > 0; '
                     f'got {cfg.eps}')
  if not isinstance(cfg.steps, (int, np.integer)) or cfg.steps < 0:
    raise ValueError(f'{name}.steps must be an integer >= 0; got {cfg.steps!r}')
  if not cfg.tau > 0:
    raise ValueError(f'{name}.tau (step = tau * eps) must be > 0; got {cfg.tau}')
