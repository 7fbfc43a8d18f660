"""Step timings for the decoder training step and the LPA alignment step (`launch.benchmark`).

Each step is jitted, warmed up, then timed `repeats` times; the median is reported with the FLOPs XLA
counts for it and the fraction of a matmul peak measured in the same process (these machines are
noisy: compare ratios from one run, not absolute numbers across runs).
"""

import functools
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from mip_jax.defenses import lpa
from mip_jax.losses import alignment
from mip_jax.models import make_decoder
from mip_jax.protocol import stages, substitute
from mip_jax.runtime import parallel, train


def _median_ms(fn, *args, repeats: int, warmup: int = 2) -> float:
  """Median ms of `fn(*args)` over `repeats` timed calls after `warmup` untimed ones."""
  return _interleaved_median_ms({'fn': fn}, *args, repeats=repeats, warmup=warmup)['fn_ms']


def _interleaved_median_ms(fns: dict, *args, repeats: int, warmup: int = 2) -> dict:
  """{'<name>_ms': median ms} of several functions timed in turn, round after round (ratios between
  them then survive a machine that is busy for part of the run)."""
  for _ in range(warmup):
    for fn in fns.values():
      jax.block_until_ready(fn(*args))
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - t)
  return {f'{name}_ms': 1000 * float(np.median(v)) for name, v in times.items()}


def _flops(jitted, *args) -> float:
  cost = jitted.lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX returns one dict per computation
    cost = cost[0]
  return float(cost.get('flops', float('nan'))) if cost else float('nan')


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
  """Best observed float32 GFLOP/s of an n x n x n matmul on the default device."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(jnp.matmul)
  jax.block_until_ready(f(a, a))
  best = min(_time_once(f, a, a) for _ in range(repeats))
  return 2 * n ** 3 / best / 1e9


def _time_once(fn, *args) -> float:
  t = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - t


def peak_memory_mb() -> tuple[float, str]:
  """Peak device memory where the backend reports it (GPU/TPU), else the process's peak RSS."""
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2 ** 20, 'device peak_bytes_in_use'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'host peak RSS'


def run(config, *, repeats: int = 10, mesh=None) -> dict:
  """Times one decoder training step and one LPA alignment step (both modes) on random data."""
  mesh = mesh or parallel.data_mesh()
  peak_before = matmul_peak_gflops()
  m = len(config.private_classes) if config.dataset != 'facescrub' else 100
  shape = (config.image_size, config.image_size, config.channels)
  b = config.decoder.batch_size
  rng = np.random.default_rng(0)
  probs = np.asarray(jax.nn.softmax(rng.normal(size=(b, m)) * 5, -1), np.float32)
  images = rng.uniform(size=(b, *shape)).astype(np.float32)
  model = make_decoder(config, m)
  variables = model.init(jax.random.key(0), probs[:1], train=False)

  # Plain decoder training step (train-mode BatchNorm, Adam): what the attacker runs.
  from mip_jax.attacks import transforms
  z = np.asarray(transforms.attacker_input(probs, config.attack))
  state = parallel.replicate(train.TrainState.create(
      variables=variables, tx=stages.decoder_optimizer(config.decoder)), mesh)
  batch = parallel.shard_batch((z, images), mesh)
  key = jax.random.key(0)
  train_step = jax.jit(functools.partial(stages.decoder_step, model=model, loss=config.decoder.loss))
  train_ms = _median_ms(lambda s: train_step(s, batch, key)[1]['loss'], state, repeats=repeats)
  train_flops = _flops(train_step, state, batch, key)

  # One LPA crafting round: second-order gradient, signed Adam update, projection; on a crafting
  # batch (config.lpa.batch_size), in both modes, per-example both ways (losses.ghost and vmap).
  b_craft = config.lpa.batch_size
  probs_c = np.asarray(jax.nn.softmax(rng.normal(size=(b_craft, m)) * 5, -1), np.float32)
  images_c = rng.uniform(size=(b_craft, *shape)).astype(np.float32)
  loss_fn = substitute.decoder_loss_fn(model, variables['batch_stats'],
                                       substitute.attack_config(config), config.lpa.loss)
  g_t = parallel.replicate(lpa.target_gradient(loss_fn, variables['params'], probs_c, images_c),
                           mesh)
  params = parallel.replicate(variables['params'], mesh)
  opt = lpa.delta_optimizer(config.lpa)
  c, x, w = parallel.shard_batch((probs_c, images_c, np.ones(b_craft, np.float32)), mesh)
  delta = jnp.zeros_like(c)

  def align_step(delta, opt_state, params, g_t, c, x, w, *, mode, impl='auto'):
    # The crafting round LPA runs (lpa.crafting_round), not a copy of it.
    cfg = config.lpa.copy_and_resolve_references()
    cfg.mode = mode
    objective = lpa.alignment_objective(x, w, params=params, target_grad=g_t, loss_fn=loss_fn,
                                        cfg=cfg)
    if impl != 'auto':  # the materialised per-example gradients ghost norms replace
      objective = functools.partial(alignment.per_example_alignment_loss, images=x, weights=w,
                                    loss_fn=loss_fn, params=params, target_grad=g_t,
                                    distance=cfg.distance, impl=impl)
    return lpa.crafting_round(delta, opt_state, c, config.lpa.eps, objective=objective, opt=opt)

  out = {}
  steps = (('align_step', dict(mode='aggregate')),
           ('align_per_example_step', dict(mode='per_example')),
           ('align_per_example_vmap_step', dict(mode='per_example', impl='vmap')))
  args = (delta, opt.init(delta), params, g_t, c, x, w)
  compiled = {name: jax.jit(functools.partial(align_step, **kw)) for name, kw in steps}
  for name, step in compiled.items():
    out[f'{name}_flops'] = _flops(step, *args)
  # Interleaved, so that a busy moment of a shared machine weighs on every mode alike.
  out.update(_interleaved_median_ms({k: (lambda *a, f=f: f(*a)[0]) for k, f in compiled.items()},
                                    *args, repeats=repeats))

  # The peak is measured around the steps (best of both) so a busy moment does not deflate it.
  peak = max(peak_before, matmul_peak_gflops())
  mem, mem_source = peak_memory_mb()
  frac = lambda flops, ms: flops / (ms / 1000) / 1e9 / peak
  return {
      'platform': jax.default_backend(),
      'device_kind': jax.devices()[0].device_kind,
      'devices': int(mesh.devices.size),
      'batch_size': b,
      'num_classes': m,
      'image_shape': list(shape),
      'decoder_blocks': config.decoder.blocks,
      'decoder_width': config.decoder.width,
      'decoder_params': int(sum(p.size for p in jax.tree.leaves(variables['params']))),
      'train_step_ms': train_ms,
      'craft_batch_size': b_craft,
      'align_step_ms': out['align_step_ms'],
      'align_per_example_step_ms': out['align_per_example_step_ms'],
      'align_per_example_vmap_step_ms': out['align_per_example_vmap_step_ms'],
      'align_to_train_ratio': out['align_step_ms'] / train_ms,
      # Per-example crafting (served vectors independent of their batch) against the paper's
      # aggregate step, same batch, same run: the attribution issue's target is <= 1.5. The vmap
      # ratio is what materialising per-example gradients would cost instead of ghost norms.
      'per_example_to_aggregate_ratio': out['align_per_example_step_ms'] / out['align_step_ms'],
      'per_example_vmap_to_aggregate_ratio': (out['align_per_example_vmap_step_ms']
                                              / out['align_step_ms']),
      'craft_vectors_per_s': b_craft / (config.lpa.steps * out['align_step_ms'] / 1000),
      'craft_steps': config.lpa.steps,
      'train_step_flops': train_flops,
      'align_step_flops': out['align_step_flops'],
      'align_per_example_step_flops': out['align_per_example_step_flops'],
      'matmul_peak_gflops': peak,
      'train_step_peak_fraction': frac(train_flops, train_ms),
      'align_step_peak_fraction': frac(out['align_step_flops'], out['align_step_ms']),
      'align_per_example_step_peak_fraction': frac(out['align_per_example_step_flops'],
                                                   out['align_per_example_step_ms']),
      'peak_memory_mb': mem,
      'peak_memory_source': mem_source,
      'repeats': repeats,
      'glibc_tunables': os.environ.get('GLIBC_TUNABLES', ''),
  }


# ---------------------------------------------------------------- serving latency (Tables VIII, IX)

def serving_latency(config, *, batch_sizes=(1, 256), repeats: int = 10,
                    lpa_repeats: int = 2) -> dict:
  """Per-sample latency (ms) of plain inference, LPA online crafting and the VAE generator.

  Each is one jitted call on one device at batch size b, compiled and warmed up at that shape, the
  median of `repeats` (`lpa_repeats` for LPA: one call runs config.lpa.steps second-order rounds)
  divided by b. Weights are random (latency does not depend on training):
    infer: the target classifier's forward pass + softmax on b images (Table VIII 'Inference');
    lpa_online: crafting b vectors in per-example mode, config.lpa.steps rounds x restarts (the
      defense's own work, Table VIII 'Poisoning' / Table IX 'Opti.');
    vae: the generator's forward pass + the feasible-set map on b vectors (Table IX 'VAE').

  Returns:
    {'infer_ms_per_sample': {'1': ms, '256': ms}, 'lpa_online_ms_per_sample': {...},
     'vae_ms_per_sample': {...}, 'vae_speedup_vs_lpa_online': {...}, ...}: dicts keyed by the
    batch size as a string.
  """
  from mip_jax.defenses import vae
  from mip_jax.models import make_classifier
  from mip_jax.models import vae as vae_model
  mesh = parallel.data_mesh(1)
  m = len(config.private_classes) if config.dataset != 'facescrub' else 100
  shape = (config.image_size, config.image_size, config.channels)
  rng = np.random.default_rng(0)
  key = jax.random.key(0)

  classifier = make_classifier(config.classifier, m)
  cls_vars = jax.device_put(classifier.init(key, np.zeros((1, *shape), np.float32), train=False))
  infer = jax.jit(lambda v, x: jax.nn.softmax(classifier.apply(v, x, train=False), axis=-1))

  lpa_cfg = config.copy_and_resolve_references()
  with lpa_cfg.unlocked():
    lpa_cfg.lpa.mode = 'per_example'
  decoder = make_decoder(config, m)
  dec_vars = decoder.init(key, np.full((1, m), 1.0 / m, np.float32), train=False)
  loss_fn = substitute.decoder_loss_fn(decoder, dec_vars['batch_stats'],
                                       substitute.attack_config(config), config.lpa.loss)
  calib = rng.uniform(size=(8, *shape)).astype(np.float32)
  g_t = lpa.target_gradient(loss_fn, dec_vars['params'],
                            np.asarray(jax.nn.softmax(rng.normal(size=(8, m)) * 5, -1), np.float32),
                            calib)
  crafter = lpa.Crafter(model=decoder, variables=dec_vars, target_grad=g_t, config=lpa_cfg,
                        mesh=mesh)

  generator = vae.make_generator(config.vae, m)
  flat = np.full((1, m), 1.0 / m, np.float32)
  gen_params = jax.device_put(generator.init(key, flat, flat, sample=False)['params'])
  gen = jax.jit(lambda p, c: vae_model.defended_vectors(generator, p, c, config.vae.eps,
                                                        key)['defended'])

  out = {'infer_ms_per_sample': {}, 'lpa_online_ms_per_sample': {}, 'vae_ms_per_sample': {},
         'vae_speedup_vs_lpa_online': {}}
  for b in batch_sizes:
    images = jax.device_put(rng.uniform(size=(b, *shape)).astype(np.float32))
    probs = jax.device_put(np.asarray(jax.nn.softmax(rng.normal(size=(b, m)) * 5, -1), np.float32))
    weights = jax.device_put(np.ones(b, np.float32))
    k = str(b)
    out['infer_ms_per_sample'][k] = _median_ms(infer, cls_vars, images, repeats=repeats) / b
    craft = lambda c, x, w: crafter.craft_fn(c, x, w, key, params=crafter.params,
                                             target_grad=crafter.target_grad)[0]
    out['lpa_online_ms_per_sample'][k] = _median_ms(craft, probs, images, weights,
                                                    repeats=lpa_repeats, warmup=1) / b
    out['vae_ms_per_sample'][k] = _median_ms(gen, gen_params, probs, repeats=repeats) / b
    out['vae_speedup_vs_lpa_online'][k] = (out['lpa_online_ms_per_sample'][k]
                                           / out['vae_ms_per_sample'][k])
  out.update(latency_batch_sizes=list(batch_sizes), latency_devices=1,
             lpa_online_steps=config.lpa.steps, lpa_online_restarts=config.lpa.restarts,
             vae_params=int(sum(p.size for p in jax.tree.leaves(gen_params))))
  return out


# ---------------------------------------------------------------- serving throughput (issue 20)

def serving_throughput(workdir: str, config, defenses, *, batch_size: int = 256, repeats: int = 10,
                       http_requests: int = 20) -> dict:
  """Vectors/s of each defense served from a trained workdir at `batch_size`, three ways:

    defend: `Defender.defend` on clean vectors (the defense's own work, validation included);
    defender: `Defender.__call__` on images (classifier forward pass + defense, what a Python
      caller of the library gets);
    http_json, http_npy: `launch.serve` on loopback, one keep-alive client sending POST /defend
      bodies of `batch_size` images as JSON or as one .npy file (parsing and the JSON answer
      included), `http_requests` requests after a warm-up.

  Each is the median of `repeats` timed calls (http: requests / wall time), so figures of one run
  compare; pin the process to one core (`taskset -c 0`) for per-core figures.

  Returns:
    {defense: {'defend_vectors_per_s', 'defender_vectors_per_s', 'http_json_vectors_per_s',
     'http_npy_vectors_per_s'}, and 'serving_batch_size'}.
  """
  import io
  import json as json_lib
  from mip_jax.serving import loadgen, server as http_server
  from mip_jax.serving.defender import Defender
  rng = np.random.default_rng(0)
  out = {'serving_batch_size': batch_size}
  for name in defenses:
    defender = Defender.from_workdir(workdir, config, name)
    images = rng.uniform(size=(batch_size, *defender.image_shape)).astype(np.float32)
    clean = defender.classify(images)
    given = images if defender.needs_images else None
    ms = _interleaved_median_ms({'defend': lambda: defender.defend(clean, given),
                                 'defender': lambda: defender(images)}, repeats=repeats)
    npy = io.BytesIO()
    np.save(npy, images)
    bodies = {'json': (json_lib.dumps({'images': images.tolist()}).encode(), 'application/json'),
              'npy': (npy.getvalue(), http_server.NPY)}
    out[name] = {'defend_vectors_per_s': 1000 * batch_size / ms['defend_ms'],
                 'defender_vectors_per_s': 1000 * batch_size / ms['defender_ms']}
    with loadgen.serve_process([f'--workdir={workdir}'], name) as served:
      for form, (body, content_type) in bodies.items():
        call = functools.partial(loadgen.load, served.url, [body], clients=1, max_seconds=600,
                                 content_type=content_type)
        call(requests=2)  # compiles
        stats = call(requests=http_requests)
        if stats['failed']:
          raise RuntimeError(f'{name}: {stats["failed"]} of {stats["requests"]} HTTP requests '
                             f'({form}) failed: {stats["errors"]}')
        out[name][f'http_{form}_vectors_per_s'] = stats['requests_per_s'] * batch_size
  return out


# ---------------------------------------------------------------- crafting scaling over devices

def device_counts(available: int) -> list[int]:
  """1, 2, 4, ... up to `available`, and `available` itself when it is not a power of two."""
  counts = [1 << i for i in range(available.bit_length()) if 1 << i <= available]
  return counts + ([available] if counts[-1] != available else [])


def craft_throughput(config, *, devices: int, batch_size: int, repeats: int = 3) -> dict:
  """LPA crafting throughput (vectors/s) of one whole crafting call on the first `devices` devices.

  One call crafts `batch_size` vectors with config.lpa.steps rounds x restarts, the batch split over
  the devices (parameters and g_t replicated), exactly as `lpa.Crafter` does in a run; it is
  compiled and warmed up, then the median of `repeats` calls is taken. Weights are random
  (throughput does not depend on training); the decoder has the substitute's architecture.
  """
  mesh = parallel.data_mesh(devices)
  m = len(config.private_classes) if config.dataset != 'facescrub' else 100
  shape = (config.image_size, config.image_size, config.channels)
  rng = np.random.default_rng(0)
  probs = np.asarray(jax.nn.softmax(rng.normal(size=(batch_size, m)) * 5, -1), np.float32)
  images = rng.uniform(size=(batch_size, *shape)).astype(np.float32)
  model = make_decoder(config, m, section=substitute.decoder_section(config))  # I_sub's shape
  variables = jax.jit(lambda k, z: model.init(k, z, train=False))(jax.random.key(0), probs[:1])
  loss_fn = substitute.decoder_loss_fn(model, variables['batch_stats'],
                                       substitute.attack_config(config), config.lpa.loss)
  g_t = lpa.target_gradient(loss_fn, variables['params'], probs[:8], images[:8])
  section = config.lpa.copy_and_resolve_references()
  with section.unlocked():
    section.batch_size = batch_size
  crafter = lpa.Crafter(model=model, variables=variables, target_grad=g_t, config=config,
                        mesh=mesh, section=section)
  batch = parallel.shard_batch((probs, images, np.ones(batch_size, np.float32)), mesh)
  key = jax.random.key(0)
  craft = lambda c, x, w: crafter.craft_fn(c, x, w, key, params=crafter.params,
                                           target_grad=crafter.target_grad)[0]
  ms = _median_ms(craft, *batch, repeats=repeats, warmup=1)
  return {'devices': devices, 'batch_size': batch_size, 'call_ms': ms,
          'vectors_per_s': batch_size / (ms / 1000)}


def craft_scaling(config, *, counts: list[int], per_device_batch: int | None = None,
                  global_batch: int | None = None, repeats: int = 3) -> dict:
  """`craft_throughput` on each device count; speedup and efficiency relative to the first count.

  Weak scaling (default): `per_device_batch` (config.lpa.batch_size) vectors per device, so the
  global batch grows with the devices; strong scaling: one fixed `global_batch` split over them.
  Returns {'rows': [...], 'scaling': 'weak'|'strong', ...}; each row adds `speedup`
  (vectors/s over the first row's) and `efficiency` (speedup per added device factor).
  """
  if per_device_batch is not None and global_batch is not None:
    raise ValueError('give per_device_batch (weak scaling) or global_batch (strong), not both')
  if global_batch is None:
    per_device_batch = per_device_batch or config.lpa.batch_size
  rows = []
  for k in counts:
    b = global_batch if global_batch is not None else per_device_batch * k
    if b % k:
      raise ValueError(f'a global batch of {b} does not split over {k} devices')
    rows.append(craft_throughput(config, devices=k, batch_size=b, repeats=repeats))
  base = rows[0]
  for row in rows:
    row['speedup'] = row['vectors_per_s'] / base['vectors_per_s']
    row['efficiency'] = row['speedup'] / (row['devices'] / base['devices'])
  return {'platform': jax.default_backend(), 'device_kind': jax.devices()[0].device_kind,
          'scaling': 'strong' if global_batch is not None else 'weak',
          'craft_steps': config.lpa.steps, 'craft_restarts': config.lpa.restarts,
          'craft_mode': config.lpa.mode, 'decoder_blocks': config.decoder.blocks,
          'decoder_width': config.decoder.width, 'repeats': repeats, 'rows': rows}


def scaling_table(result: dict) -> str:
  """Markdown table of `craft_scaling` output."""
  lines = [f'LPA crafting on {result["platform"]} ({result["device_kind"]}), {result["scaling"]} '
           f'scaling, {result["craft_steps"]} rounds x {result["craft_restarts"]} restarts, '
           f'{result["craft_mode"]} mode', '',
           '| devices | batch | ms per call | vectors/s | speedup | efficiency |',
           '|---|---|---|---|---|---|']
  for r in result['rows']:
    lines.append(f'| {r["devices"]} | {r["batch_size"]} | {r["call_ms"]:.1f} | '
                 f'{r["vectors_per_s"]:.1f} | {r["speedup"]:.2f}x | {100 * r["efficiency"]:.0f}% |')
  return '\n'.join(lines) + '\n'
