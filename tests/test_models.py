"""Tests of mip_jax.models: exact fast transposed convolutions, decoder and classifier shapes."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mip_jax import models
from mip_jax.models import conv_transpose as ct
from mip_jax.models.decoder import hidden_channels

# float64 context for exactness checks (jax.experimental.enable_x64 moved to jax.enable_x64).
enable_x64 = lambda: jax.enable_x64(True)


def _rand(rng, shape, dtype):
  return jnp.asarray(rng.normal(size=shape), dtype)


def _s2(impl):
  return lambda x, k: models.conv_transpose_s2(x, k, impl=impl)


def test_conv_transpose_s2_matches_pytorch_loop():
  """The gemm path implements PyTorch ConvTranspose2d(k4, s2, p1) with flipped taps (module doc)."""
  rng = np.random.default_rng(0)
  x, k = rng.normal(size=(2, 3, 4, 2)), rng.normal(size=(4, 4, 2, 3))
  want = np.zeros((2, 6, 8, 3))
  for i in range(3):
    for j in range(4):
      for th in range(4):
        for tw in range(4):
          oh, ow = 2 * i - 1 + th, 2 * j - 1 + tw   # PyTorch: o = i*stride - padding + tap
          if 0 <= oh < 6 and 0 <= ow < 8:
            want[:, oh, ow] += x[:, i, j] @ k[3 - th, 3 - tw]
  got = models.conv_transpose_s2(jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32),
                                 impl='gemm')
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('shape', [(2, 5, 6, 3, 7), (3, 1, 1, 4, 2), (1, 4, 4, 8, 1)])
def test_conv_transpose_s2_gemm_equals_lax_float64(shape):
  b, h, w, cin, cout = shape
  with enable_x64():
    rng = np.random.default_rng(1)
    x, k = _rand(rng, (b, h, w, cin), jnp.float64), _rand(rng, (4, 4, cin, cout), jnp.float64)
    gemm, ref = _s2('gemm')(x, k), _s2('lax')(x, k)
    assert gemm.shape == ref.shape == (b, 2 * h, 2 * w, cout)
    assert gemm.dtype == jnp.float64
    np.testing.assert_allclose(gemm, ref, rtol=1e-12, atol=1e-12)

    # First derivatives w.r.t. x and the kernel, through a nonlinear loss.
    t = _rand(rng, ref.shape, jnp.float64)
    loss = lambda f: (lambda x, k: jnp.sum(jnp.sin(f(x, k)) * t))
    g_gemm = jax.grad(loss(_s2('gemm')), argnums=(0, 1))(x, k)
    g_ref = jax.grad(loss(_s2('lax')), argnums=(0, 1))(x, k)
    chex.assert_trees_all_close(g_gemm, g_ref, rtol=1e-12, atol=1e-12)

    # Forward mode too (no custom_vjp in the way).
    tangents = (_rand(rng, x.shape, jnp.float64), _rand(rng, k.shape, jnp.float64))
    jvp = lambda f: jax.jvp(f, (x, k), tangents)[1]
    chex.assert_trees_all_close(jvp(_s2('gemm')), jvp(_s2('lax')), rtol=1e-12, atol=1e-12)


def test_conv_transpose_s2_second_order_float64():
  """grad w.r.t. x of a function of the kernel gradient (the alignment-loss pattern)."""
  with enable_x64():
    rng = np.random.default_rng(2)
    x, k = _rand(rng, (2, 4, 4, 3), jnp.float64), _rand(rng, (4, 4, 3, 5), jnp.float64)
    t = _rand(rng, (2, 8, 8, 5), jnp.float64)
    g_target = _rand(rng, k.shape, jnp.float64)

    def outer(f):
      def align(x):
        gk = jax.grad(lambda k: jnp.sum(jnp.tanh(f(x, k)) * t))(k)
        return jnp.vdot(gk, g_target) / jnp.linalg.norm(gk)
      return jax.grad(align)(x)

    got, want = outer(_s2('gemm')), outer(_s2('lax'))
    assert float(jnp.max(jnp.abs(want))) > 1e-3   # the check is not vacuous
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_conv_transpose_s2_float32_and_vmap():
  rng = np.random.default_rng(3)
  x, k = _rand(rng, (4, 8, 8, 16), jnp.float32), _rand(rng, (4, 4, 16, 8), jnp.float32)
  np.testing.assert_allclose(_s2('gemm')(x, k), _s2('lax')(x, k), rtol=1e-5, atol=1e-5)
  # Per-example vmap (callers vmap per-example gradients) gives the batched result.
  per_example = jax.vmap(lambda xi: _s2('gemm')(xi[None], k)[0])(x)
  np.testing.assert_allclose(per_example, _s2('lax')(x, k), rtol=1e-5, atol=1e-5)
  gx = jax.grad(lambda x: jnp.sum(_s2('gemm')(x, k) ** 2))(x)
  gx_ref = jax.grad(lambda x: jnp.sum(_s2('lax')(x, k) ** 2))(x)
  np.testing.assert_allclose(gx, gx_ref, rtol=1e-4, atol=1e-4)


def test_conv_transpose_stem_equals_lax_valid():
  with enable_x64():
    rng = np.random.default_rng(4)
    z, k = _rand(rng, (3, 5), jnp.float64), _rand(rng, (4, 4, 5, 6), jnp.float64)
    ref = jax.lax.conv_transpose(z[:, None, None, :], k, (1, 1), 'VALID',
                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    assert ref.shape == (3, 4, 4, 6)
    for impl in ('gemm', 'lax'):
      got = models.conv_transpose_stem(z, k, impl=impl)
      np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    stem = lambda impl: lambda z, k: jnp.sum(jnp.sin(models.conv_transpose_stem(z, k, impl=impl)))
    chex.assert_trees_all_close(jax.grad(stem('gemm'), argnums=(0, 1))(z, k),
                                jax.grad(stem('lax'), argnums=(0, 1))(z, k), rtol=1e-12, atol=1e-12)


# (ours, its flax.linen twin, input shape): same params (name, shape, init), same outputs.
FLAX_TWINS = {
    'convt_s2 gemm': (lambda: models.ConvTranspose4x4S2(3, impl='gemm'),
                      lambda: nn.ConvTranspose(3, (4, 4), (2, 2), padding=((2, 2), (2, 2))),
                      (2, 4, 4, 6)),
    # The decoder's stride-1 extra blocks: flax.linen.Conv(k3, SAME).
    'conv3x3 gemm': (lambda: ct.Conv3x3(4, impl='gemm'),
                     lambda: nn.Conv(4, (3, 3), padding='SAME'), (2, 5, 4, 3)),
    'conv3x3 lax': (lambda: ct.Conv3x3(4, impl='lax'),
                    lambda: nn.Conv(4, (3, 3), padding='SAME'), (2, 5, 4, 3)),
}


@pytest.mark.parametrize('name', list(FLAX_TWINS))
def test_conv_modules_interchangeable_with_flax(name):
  make_ours, make_flax, shape = FLAX_TWINS[name]
  ours, twin = make_ours(), make_flax()
  x = jnp.asarray(np.random.default_rng(5).normal(size=shape), jnp.float32)
  key = jax.random.key(0)
  v_ours, v_flax = ours.init(key, x), twin.init(key, x)
  chex.assert_trees_all_equal_shapes(v_ours, v_flax)  # same tree: same names, same shapes
  chex.assert_trees_all_equal(v_ours['params']['kernel'], v_flax['params']['kernel'])
  features = v_flax['params']['kernel'].shape[-1]
  v = {'params': {'kernel': v_flax['params']['kernel'], 'bias': jnp.arange(float(features))}}
  chex.assert_trees_all_close(ours.apply(v, x), twin.apply(v, x), rtol=1e-5, atol=1e-5)


def test_resolve_impl():
  assert ct.resolve_impl('auto') == ('gemm' if jax.default_backend() == 'cpu' else 'lax')
  with pytest.raises(ValueError, match='impl'):
    ct.resolve_impl('cudnn')


@pytest.mark.parametrize('side,blocks,channels', [(16, 3, 1), (32, 4, 3), (64, 5, 1)])
def test_decoder_shapes_and_range(side, blocks, channels):
  dec = models.Decoder((side, side, channels), width=4, blocks=blocks)
  z = jnp.asarray(np.random.default_rng(6).normal(size=(3, 5)) * 10, jnp.float32)

  @jax.jit   # one compilation instead of hundreds of eager dispatches: keeps the test fast
  def run(z):
    v = dec.init(jax.random.key(0), z, train=False)
    y, upd = dec.apply(v, z, train=True, mutable=['batch_stats'])
    return v, y, upd, dec.apply(v, z, train=False)

  v, y, upd, y_eval = run(z)
  assert set(v) == {'params', 'batch_stats'}
  assert y.shape == y_eval.shape == (3, side, side, channels)
  assert bool(jnp.all((y > 0) & (y < 1))) and bool(jnp.all((y_eval > 0) & (y_eval < 1)))
  assert not jax.tree.all(jax.tree.map(jnp.array_equal, upd['batch_stats'], v['batch_stats']))


def test_decoder_channels_and_param_count():
  assert hidden_channels(64, 4) == (256, 128, 64)
  assert hidden_channels(128, 5) == (1024, 512, 256, 128)
  dec = models.Decoder((32, 32, 1), width=64, blocks=4)
  count = lambda m: sum(a.size for a in jax.tree.leaves(jax.eval_shape(
      lambda: dec.init(jax.random.key(0), jnp.zeros((2, m)), train=False))['params']))
  # Yang's PyTorch decoder (conv biases + BatchNorm affine) at m=10: design section 6's figure.
  assert count(10) == 698_689
  assert count(5) == 698_689 - 5 * 16 * 256


@pytest.mark.parametrize('shape,blocks,field', [((32, 32, 1), 3, 'config.decoder.blocks=4'),
                                                ((16, 16, 1), 4, 'config.decoder.blocks=3'),
                                                ((32, 16, 1), 4, 'square'),
                                                ((48, 48, 1), 4, 'config.image_size')])
def test_decoder_geometry_errors(shape, blocks, field):
  with pytest.raises(ValueError, match=field):   # at construction, before any init
    models.Decoder(shape, width=4, blocks=blocks)


def test_decoder_gemm_equals_lax_with_same_params():
  z = jnp.asarray(np.random.default_rng(7).normal(size=(4, 5)), jnp.float32)
  gemm = models.Decoder((32, 32, 1), width=8, blocks=4, impl='gemm')
  plain = models.Decoder((32, 32, 1), width=8, blocks=4, impl='lax')
  v = jax.jit(lambda z: gemm.init(jax.random.key(1), z, train=False))(z)
  for train in (False, True):
    run = lambda dec: jax.jit(lambda v, z: dec.apply(v, z, train=train, mutable=['batch_stats']))
    # Outputs and the updated batch statistics alike.
    chex.assert_trees_all_close(run(gemm)(v, z), run(plain)(v, z), rtol=1e-5, atol=1e-6)


def test_decoder_second_order_in_eval_mode_matches_lax():
  """grad w.r.t. the decoder input of a cosine between parameter gradients (alignment loss)."""
  rng = np.random.default_rng(8)
  z, x = _rand(rng, (3, 5), jnp.float32), jnp.asarray(rng.uniform(size=(3, 16, 16, 1)), jnp.float32)
  # One stride-1 extra block: its Conv3x3 GEMM form is checked against lax's convolution too.
  decs = {impl: models.Decoder((16, 16, 1), width=4, blocks=3, extra_blocks=1, impl=impl)
          for impl in ('gemm', 'lax')}
  v = jax.jit(lambda z: decs['gemm'].init(jax.random.key(2), z, train=False))(z)

  def align_grad(dec):
    def grad_params(zz, target):
      mse = lambda p: jnp.mean((dec.apply({**v, 'params': p}, zz, train=False) - target) ** 2)
      return jax.grad(mse)(v['params'])
    g_t = grad_params(z, 1 - x)
    def loss(delta):
      g = grad_params(z + delta, x)
      flat = lambda t: jnp.concatenate([a.ravel() for a in jax.tree.leaves(t)])
      a, b = flat(g), flat(g_t)
      return 1 - jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b))
    return jax.grad(loss)(jnp.zeros_like(z))

  align_grad = jax.jit(align_grad, static_argnums=0)
  got, want = align_grad(decs['gemm']), align_grad(decs['lax'])
  assert bool(jnp.all(jnp.isfinite(got))) and float(jnp.max(jnp.abs(want))) > 0
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5 * float(jnp.max(jnp.abs(want))))


def test_decoder_rejects_wrong_input_length():
  dec = models.Decoder((16, 16, 1), width=4, blocks=3, in_features=5)
  with pytest.raises(ValueError, match='m=5'):
    dec.init(jax.random.key(0), jnp.zeros((2, 7)), train=False)


def _classifier_section(channels):
  s = ml_collections.ConfigDict()
  s.channels, s.hidden_mult, s.dropout = channels, 5, 0.5
  return s


@pytest.mark.parametrize('shape,channels,m', [
    ((16, 16, 1), (32, 64), 5),              # digits
    ((32, 32, 1), (128, 256, 512), 5),       # mnist / fashion_mnist
    ((32, 32, 3), (128, 256, 512), 5),       # cifar10
    ((64, 64, 1), (128, 256, 512, 1024), 100),  # facescrub
])
def test_classifier_logit_shapes(shape, channels, m):
  clf = models.make_classifier(_classifier_section(channels), m)
  x = jax.ShapeDtypeStruct((7,) + shape, jnp.float32)
  v = jax.eval_shape(lambda x: clf.init(jax.random.key(0), x, train=False), x)
  assert set(v) == {'params', 'batch_stats'}
  assert v['params']['fc_hidden']['kernel'].shape[-1] == 5 * m
  out, upd = jax.eval_shape(
      lambda v, x: clf.apply(v, x, train=True, mutable=['batch_stats'],
                             rngs={'dropout': jax.random.key(1)}), v, x)
  assert out.shape == (7, m)
  assert jax.eval_shape(lambda v, x: clf.apply(v, x, train=False), v, x).shape == (7, m)


def test_classifier_small_run_dropout_and_logits():
  clf = models.Classifier(3, channels=(4, 8), dropout=0.5)
  x = jnp.asarray(np.random.default_rng(9).uniform(size=(6, 16, 16, 1)), jnp.float32)
  v = jax.jit(lambda x: clf.init(jax.random.key(0), x, train=False))(x)
  evaluate = jax.jit(lambda v, x: clf.apply(v, x, train=False))
  e1, e2 = evaluate(v, x), evaluate(v, x)
  np.testing.assert_array_equal(e1, e2)
  run = jax.jit(lambda key: clf.apply(v, x, train=True, mutable=['batch_stats'],
                                      rngs={'dropout': key})[0])
  assert not np.allclose(run(jax.random.key(1)), run(jax.random.key(2)))   # dropout is active
  assert not np.allclose(jnp.sum(jax.nn.softmax(e1), -1), jnp.sum(e1, -1))   # logits, not probs


@pytest.mark.parametrize('shape', [(16, 16, 1), (2, 16, 16, 1, 1), (2, 20, 20, 1)])
def test_classifier_rejects_bad_input(shape):
  clf = models.Classifier(5, channels=(8, 8, 8))
  with pytest.raises(ValueError, match='Classifier|divisible'):
    clf.init(jax.random.key(0), jnp.zeros(shape), train=False)


def test_factories_from_configs():
  from configs import digits
  cfg = digits.get_config()
  dec = models.make_decoder(cfg, 5)
  assert (dec.image_shape, dec.width, dec.blocks) == ((16, 16, 1), 32, 3)
  clf = models.make_classifier(cfg.classifier, 5)
  ev = models.make_classifier(cfg.eval_classifier, 5)
  assert clf.channels == (32, 64) and ev.channels == (16, 32)
  cfg.image_size = 32
  with pytest.raises(ValueError, match='config.decoder.blocks'):
    models.make_decoder(cfg, 5)
