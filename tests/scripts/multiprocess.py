"""One JAX process of a multi-process check; `tests/test_multiprocess.py` starts one or several.

  JAX_NUM_CPU_DEVICES=2 python tests/scripts/multiprocess.py equality OUT_DIR localhost:PORT 2 0 &
  JAX_NUM_CPU_DEVICES=2 python tests/scripts/multiprocess.py equality OUT_DIR localhost:PORT 2 1
  JAX_NUM_CPU_DEVICES=4 python tests/scripts/multiprocess.py equality OUT_DIR - 1 0   # one process

Tasks:
  equality: LPA crafting (both modes) and one decoder training epoch on a fixed tiny problem;
    process 0 writes OUT_DIR/equality.npz.
  experiment: the tiny digits comparison (none and lpa; a study on the cell engine) in OUT_DIR/run;
    each process records every
    file it opened for writing there (a Python audit hook: the real writes, not a mock) in
    OUT_DIR/writes_<process>.json, with the result rows.
  reload: the same protocol again, in load-only mode: every stage must come from its checkpoint.
"""

import json
import os
import sys

import jax


def main(task: str, out_dir: str, coordinator: str, num_processes: str, process_id: str):
  from mip_jax.runtime import parallel
  if int(num_processes) > 1:
    # A peer that never arrives fails the rendezvous within a minute instead of hanging.
    parallel.initialize(coordinator, int(num_processes), int(process_id), timeout_s=60)
  if task == 'equality':
    equality(out_dir)
  else:
    experiment(out_dir, load_only=task == 'reload')


def equality(out_dir: str):
  # float64: sign(grad) in signed Adam must not flip on last-bit reduction-order noise (gloo's
  # all-reduce across processes sums in another order than one process's).
  jax.config.update('jax_enable_x64', True)
  import numpy as np
  from mip_jax.defenses import cache
  from mip_jax.protocol import stages
  from mip_jax.runtime import checkpoints, parallel, train
  from tests.scripts import craft_lpa
  # The paper's aggregate mode: one cosine over the batch-mean gradient, reduced across processes.
  c, model, variables, g_t, probs, images = craft_lpa.problem('aggregate')
  c.lpa.restarts = 1
  crafter = craft_lpa.lpa.Crafter(model=model, variables=variables, target_grad=g_t, config=c,
                                  mesh=parallel.data_mesh())
  out = dict(zip(('defended', 'losses'), crafter(probs, images, seed=0)), clean=probs)
  # One decoder epoch: 2 steps of batch 16 over the 4 devices, train-mode BatchNorm, Adam.
  for i, leaf in enumerate(jax.tree.leaves(variables)):
    out[f'initial_{i}'] = np.array(leaf)  # a copy: fit donates the state's buffers
  state = train.TrainState.create(variables=variables, tx=stages.decoder_optimizer(c.decoder))
  step = lambda s, b, r: stages.decoder_step(s, b, r, model=model, loss='mse')
  ckpt = checkpoints.StageCheckpoint(os.path.join(out_dir, 'work'), 'decoder', 'fixed')
  state = train.fit(state, step, (probs, images), epochs=1, batch_size=16, seed=0, checkpoint=ckpt,
                    mesh=parallel.data_mesh())
  for i, leaf in enumerate(jax.tree.leaves(parallel.to_host(state.variables))):
    out[f'decoder_{i}'] = leaf
  out['devices'] = np.asarray(jax.device_count())
  out['processes'] = np.asarray(jax.process_count())
  cache.save_arrays(os.path.join(out_dir, 'equality.npz'), out)


def experiment(out_dir: str, *, load_only: bool):
  from configs import digits
  from mip_jax.runtime import train
  from mip_jax.studies import compare
  workdir = os.path.realpath(os.path.join(out_dir, 'run'))
  writes = []

  def audit(event, args):
    # open(path, mode, flags): a write mode on a file in the workdir (orbax's own files included).
    if event == 'open' and isinstance(args[0], str) and args[1] and any(m in args[1] for m in 'wax+'):
      path = os.path.realpath(args[0])
      if path.startswith(workdir + os.sep):
        writes.append(os.path.relpath(path, workdir))

  sys.addaudithook(audit)
  config = digits.get_config('tiny')
  config.data_dir = os.path.join(out_dir, 'tfds')
  # One epoch per stage: every stage still trains, saves and restores; fewer collective saves.
  config.classifier.epochs = config.eval_classifier.epochs = config.decoder.epochs = 1
  if load_only:
    with train.load_only():
      result = compare.run(config, workdir, defenses=('none', 'lpa'))
  else:
    result = compare.run(config, workdir, defenses=('none', 'lpa'))
  rows = [{k: v for k, v in r.items() if k != 'eps_eta'} for r in result['rows']]
  doc = {'process': jax.process_index(), 'writes': writes, 'rows': rows}
  name = f'{"reload" if load_only else "writes"}_{jax.process_index()}.json'
  with open(os.path.join(out_dir, name), 'w') as f:  # outside the workdir: not recorded
    json.dump(doc, f, default=float)


if __name__ == '__main__':
  main(*sys.argv[1:])
