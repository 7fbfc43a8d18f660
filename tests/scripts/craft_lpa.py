"""Crafts LPA vectors for a fixed tiny problem and saves them: run under different device counts.

  python tests/scripts/craft_lpa.py OUT.npz MODE DEVICES   # DEVICES fake CPU devices (chex)
"""

import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np

from configs import digits
from mip_jax.defenses import lpa
from mip_jax.models import make_decoder
from mip_jax.protocol import substitute
from mip_jax.runtime import parallel


def problem(mode: str):
  c = digits.get_config('tiny')
  c.lpa.mode = mode
  c.lpa.steps = 6
  c.lpa.batch_size = 16
  c.lpa.restarts = 2
  c.decoder.width = 4
  rng = np.random.default_rng(0)
  probs = np.asarray(jax.nn.softmax(rng.normal(size=(40, 5)) * 4, -1))
  images = rng.uniform(size=(40, 16, 16, 1))
  model = make_decoder(c, 5)
  # Jitted: one compilation instead of one per initialiser op (most of this script's time).
  variables = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.key(0),
                                                                  jnp.asarray(probs[:1]))
  loss_fn = substitute.decoder_loss_fn(model, variables['batch_stats'], c.attack)
  g_t = lpa.target_gradient(loss_fn, variables['params'], probs[:8], images[:8])
  return c, model, variables, g_t, probs, images


def main(out: str, mode: str):
  c, model, variables, g_t, probs, images = problem(mode)
  crafter = lpa.Crafter(model=model, variables=variables, target_grad=g_t, config=c,
                        mesh=parallel.data_mesh())
  defended, losses = crafter(probs, images, seed=0)
  np.savez(out, defended=defended, losses=losses, devices=len(jax.devices()),
           compiles=crafter.craft_fn._cache_size())


if __name__ == '__main__':
  out_file, crafting_mode, devices = sys.argv[1:]
  chex.set_n_cpu_devices(int(devices))  # before any JAX computation starts the CPU backend
  # float64 only in this process: sign(grad) must not flip on last-bit reduction-order noise. (At
  # import time this would switch x64 on for a whole pytest session.)
  jax.config.update('jax_enable_x64', True)
  main(out_file, crafting_mode)
