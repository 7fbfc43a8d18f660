"""HSIC, normalised HSIC, COCO and the VIB KL against numpy formulas, and their properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mip_jax.losses import hsic, vib

# The measures under test, jitted once per shape and setting (eager dispatch of every small op
# would compile far more often on these CPUs).
_STATIC = ('kernel_x', 'kernel_y', 'sigma_x', 'sigma_y')
HSIC = jax.jit(hsic.hsic, static_argnames=_STATIC)
NHSIC = jax.jit(hsic.normalized_hsic, static_argnames=_STATIC + ('eps',))
COCO = jax.jit(hsic.coco, static_argnames=_STATIC + ('norm',))
MEASURES = (HSIC, NHSIC, COCO)

# ---------------------------------------------------------------- numpy references (float64)


def np_gram(x, kernel, sigma=None):
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  if kernel == 'linear':
    return x @ x.T
  d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
  if sigma is None:
    sigma_sq = np.median(d[np.triu_indices(len(x), 1)])
  else:
    sigma_sq = sigma ** 2
  return np.exp(-d / (2 * sigma_sq))


def np_center(k):
  h = np.eye(len(k)) - 1.0 / len(k)
  return h @ k @ h


def np_hsic(x, y, kx='gaussian', ky='gaussian', sx=None, sy=None):
  k, l = np_gram(x, kx, sx), np_gram(y, ky, sy)
  h = np.eye(len(k)) - 1.0 / len(k)
  return np.trace(k @ h @ l @ h) / (len(k) - 1) ** 2


def np_nhsic(x, y, kx='gaussian', ky='gaussian', sx=None, sy=None, eps=1e-5):
  def proj(k):
    b = len(k)
    kc = np_center(k)
    kc = kc / max(np.trace(kc) / b, 1.0)
    return kc @ np.linalg.inv(kc + eps * b * np.eye(b))
  return np.trace(proj(np_gram(x, kx, sx)) @ proj(np_gram(y, ky, sy)))


def np_coco(x, y, kx='gaussian', ky='gaussian', sx=None, sy=None, ord='fro'):
  a = np_center(np_gram(x, kx, sx)) @ np_center(np_gram(y, ky, sy))
  return np.sqrt(np.linalg.norm(a, ord)) / len(a)


def sample(b=48, dx=6, dy=3, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(b, dx)).astype(np.float32)
  noise = rng.normal(size=(b, dy)).astype(np.float32)
  dependent = (np.tanh(2 * x[:, :dy]) + 0.2 * noise).astype(np.float32)
  return x, noise, dependent


KERNEL_CASES = [('gaussian', 'gaussian', None, None), ('gaussian', 'gaussian', 1.5, 0.7),
                ('linear', 'linear', None, None), ('gaussian', 'linear', 2.0, None)]

# ---------------------------------------------------------------- against numpy


@pytest.mark.parametrize('kx,ky,sx,sy', KERNEL_CASES)
def test_measures_match_numpy_formulas(kx, ky, sx, sy):
  x, _, y = sample()
  kw = dict(kernel_x=kx, kernel_y=ky, sigma_x=sx, sigma_y=sy)
  np.testing.assert_allclose(HSIC(x, y, **kw), np_hsic(x, y, kx, ky, sx, sy), rtol=1e-4)
  np.testing.assert_allclose(NHSIC(x, y, **kw), np_nhsic(x, y, kx, ky, sx, sy),
                             rtol=2e-3)
  np.testing.assert_allclose(COCO(x, y, **kw), np_coco(x, y, kx, ky, sx, sy), rtol=1e-4)


def test_spectral_coco_matches_numpy():
  x, _, y = sample()
  np.testing.assert_allclose(COCO(x, y, norm='spectral'), np_coco(x, y, ord=2), rtol=1e-4)
  assert float(COCO(x, y, norm='spectral')) <= float(COCO(x, y))  # spectral <= Frobenius


def test_gram_and_centering_match_numpy():
  x, _, _ = sample(b=10)
  np.testing.assert_allclose(hsic.gram(x), np_gram(x, 'gaussian'), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(hsic.center(hsic.gram(x, 'linear')), np_center(np_gram(x, 'linear')),
                             rtol=1e-4, atol=1e-4)
  d = np.asarray(hsic.pairwise_sq_distances(x))
  assert (d >= 0).all() and np.all(np.diag(d) == 0)


def test_trailing_axes_are_flattened():
  x, _, y = sample(b=16, dx=12)
  assert float(HSIC(x.reshape(16, 3, 4), y)) == pytest.approx(float(HSIC(x, y)), rel=1e-6)


# ---------------------------------------------------------------- properties


def test_hsic_is_near_zero_for_independent_and_larger_for_dependent():
  x, independent, dependent = sample(b=200, seed=1)
  h_ind, h_dep = float(HSIC(x, independent)), float(HSIC(x, dependent))
  assert 0 <= h_ind < 0.15 * h_dep
  assert float(COCO(x, independent)) < float(COCO(x, dependent))
  lin = dict(kernel_x='linear', kernel_y='linear')
  assert float(NHSIC(x, independent, **lin)) < 0.3 * float(
      NHSIC(x, dependent, **lin))


def test_normalized_hsic_of_labels_reaches_classes_minus_one():
  labels = np.arange(60) % 5
  onehot = np.eye(5, dtype=np.float32)[labels]
  val = float(NHSIC(onehot, onehot, kernel_x='linear', kernel_y='linear'))
  assert val == pytest.approx(4.0, abs=1e-2)  # rank of the centred one-hot Gram matrix
  feats = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
  assert 0 <= float(NHSIC(feats, onehot, kernel_y='linear')) <= 4.0 + 1e-3


def test_coco_and_hsic_are_nonnegative_on_random_batches():
  rng = np.random.default_rng(2)
  for _ in range(5):
    x, y = rng.normal(size=(20, 4)), rng.normal(size=(20, 2))
    assert float(COCO(x, y)) >= 0 and float(HSIC(x, y)) >= 0
    assert float(NHSIC(x, y)) >= -1e-5


@pytest.mark.parametrize('scale', [1e-6, 1e-3, 1e3, 1e6])
def test_float32_stable_across_feature_scales(scale):
  x, _, y = sample()
  # Median-heuristic Gaussian kernels are scale invariant: the same value at every scale.
  for fn in MEASURES:
    np.testing.assert_allclose(fn(scale * x, scale * y), fn(x, y), rtol=2e-3)
  lin = dict(kernel_x='linear', kernel_y='linear')
  # Linear kernels: HSIC scales as s^4, COCO as s^2, without overflow or underflow in float32.
  np.testing.assert_allclose(HSIC(scale * x, scale * y, **lin) / scale ** 4,
                             HSIC(x, y, **lin), rtol=1e-3)
  np.testing.assert_allclose(COCO(scale * x, scale * y, **lin) / scale ** 2,
                             COCO(x, y, **lin), rtol=1e-3)
  nh = float(NHSIC(scale * x, scale * y, **lin))
  assert np.isfinite(nh)
  if scale > 1:  # large linear features are rescaled: scale invariant
    assert nh == pytest.approx(float(NHSIC(x, y, **lin)), rel=1e-2)


def test_large_offsets_do_not_cancel():
  x, _, y = sample()
  for fn in MEASURES:
    np.testing.assert_allclose(fn(x + 1e4, y - 3e3), fn(x, y), rtol=2e-3)


def test_gradients_are_finite_also_at_zero_dependence():
  x, _, y = sample(b=16)
  const = np.ones_like(y)
  for fn in MEASURES:
    for other in (y, const):
      g = jax.grad(lambda a: fn(a, other))(jnp.asarray(x))
      assert np.all(np.isfinite(np.asarray(g))), fn.__name__
  assert float(COCO(x, const)) == 0.0


def test_jit_gives_the_same_values():
  x, _, y = sample()
  for fn in (hsic.hsic, hsic.normalized_hsic, hsic.coco):
    np.testing.assert_allclose(jax.jit(fn)(x, y), fn(x, y), rtol=1e-4)


def test_bad_inputs_are_rejected():
  x, _, y = sample()
  with pytest.raises(ValueError, match='same number'):
    hsic.hsic(x, y[:10])
  with pytest.raises(ValueError, match='unknown kernel'):
    hsic.hsic(x, y, kernel_x='rbf')
  with pytest.raises(ValueError, match='sigma must be > 0'):
    hsic.coco(x, y, sigma_x=0.0)
  with pytest.raises(ValueError, match='at least 2'):
    hsic.hsic(x[:1], y[:1])
  with pytest.raises(ValueError, match='spectral'):
    hsic.coco(x, y, norm='nuclear')


# ---------------------------------------------------------------- VIB


def test_kl_is_zero_at_the_prior_and_matches_the_closed_form():
  assert float(vib.gaussian_kl(jnp.zeros((3, 4)), jnp.ones((3, 4)))) == 0.0
  rng = np.random.default_rng(0)
  mu, std = rng.normal(size=(5, 3)), rng.uniform(0.1, 2.0, size=(5, 3))
  expected = np.mean(np.sum(0.5 * (mu ** 2 + std ** 2 - 1 - 2 * np.log(std)), axis=1))
  np.testing.assert_allclose(vib.gaussian_kl(mu, std), expected, rtol=1e-5)
  assert float(vib.gaussian_kl(mu, std)) > 0


def test_kl_matches_a_monte_carlo_estimate():
  mu, std = 0.7, 0.4
  z = mu + std * np.random.default_rng(0).normal(size=400_000)
  log_q = -0.5 * ((z - mu) / std) ** 2 - np.log(std)
  log_p = -0.5 * z ** 2
  mc = np.mean(log_q - log_p)
  kl = float(vib.gaussian_kl(jnp.array([[mu]]), jnp.array([[std]])))
  assert kl == pytest.approx(mc, abs=5e-3)


def test_softplus_std_is_stable_in_float32():
  raw = jnp.array([[-300.0, -60.0, -15.0, 0.0, 5.0, 40.0]], jnp.float32)
  std, log_std = vib.softplus_std(raw)
  ref = np.log(np.log1p(np.exp(np.asarray(raw, np.float64) - 5.0)))
  np.testing.assert_allclose(log_std, ref, rtol=1e-5)
  assert float(std[0, 3]) == pytest.approx(np.log1p(np.exp(-5.0)), rel=1e-5)  # MID's start ~0.0067
  kl_fn = lambda r: vib.gaussian_kl(jnp.zeros_like(r), *vib.softplus_std(r)[:1],
                                    log_std=vib.softplus_std(r)[1])
  assert np.isfinite(float(kl_fn(raw)))
  assert np.all(np.isfinite(np.asarray(jax.grad(kl_fn)(raw))))


def test_reparameterize_has_the_right_moments():
  key = jax.random.key(0)
  z = vib.reparameterize(key, jnp.full((20000, 1), 2.0), jnp.full((20000, 1), 0.5))
  assert float(jnp.mean(z)) == pytest.approx(2.0, abs=0.02)
  assert float(jnp.std(z)) == pytest.approx(0.5, abs=0.02)


def test_kl_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match='same shape'):
    vib.gaussian_kl(jnp.zeros((2, 3)), jnp.ones((2, 4)))
