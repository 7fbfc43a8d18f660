"""Kernel dependence measures on batches of features: HSIC, normalised HSIC and COCO (BiDO's).

Every function takes two batches x [B, dx], y [B, dy] whose rows are paired samples (any trailing
shape is flattened) and returns a scalar; all are pure, jit- and grad-safe and stable in float32.

  k = gram(x, kernel, sigma)          # 'gaussian' (sigma, or None: median heuristic) or 'linear'
  hsic(x, y)                          # Gretton et al. (2005), biased: tr(K H L H) / (B - 1)^2
  normalized_hsic(x, y, eps=1e-5)     # tr(Rx Ry), R = Kc (Kc + eps B I)^-1 (Fukumizu et al. 2008;
                                      # the nHSIC of the HSIC bottleneck and of BiDO-HSIC)
  coco(x, y)                          # sqrt(||Kc Lc||) / B (Gretton et al. 2005; BiDO-COCO)

Kc = H K H is the centred Gram matrix, H = I - 11^T / B.

Float32 care: features are centred before pairwise distances (distances are translation invariant,
and centring removes the cancellation of ||a||^2 + ||b||^2 - 2 a.b for data far from the origin);
products of Gram matrices are formed after dividing each by its largest entry and the scale is put
back at the end, so unbounded (linear) kernels on large or tiny features neither overflow nor
underflow; square roots are guarded so the gradient at zero dependence is 0, not NaN.
"""

import chex
import jax
import jax.numpy as jnp

KERNELS = ('gaussian', 'linear')


def _flat(x: jnp.ndarray) -> jnp.ndarray:
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(f'features must be a batch [B, ...] with B >= 2 rows, got shape {x.shape}')
  if x.shape[0] < 2:
    raise ValueError(f'dependence measures need at least 2 samples, got a batch of {x.shape[0]}')
  return x.reshape(x.shape[0], -1).astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_pair(x: jnp.ndarray, y: jnp.ndarray) -> None:
  if x.shape[0] != y.shape[0]:
    raise ValueError(f'x and y must hold the same number of paired samples, got {x.shape[0]} '
                     f'and {y.shape[0]}')


def pairwise_sq_distances(x: jnp.ndarray) -> jnp.ndarray:
  """Squared Euclidean distances between the rows of x [B, d]; [B, B], >= 0, zero diagonal.

  Args:
    x: features [B, d] (float32 or float64).

  Returns:
    D with D[i, j] = ||x_i - x_j||^2.
  """
  chex.assert_rank(x, 2)
  x = x - jnp.mean(x, axis=0, keepdims=True)  # translation invariant; avoids cancellation
  sq = jnp.sum(x * x, axis=1)
  d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
  d = jnp.maximum(d, 0.0)
  return d * (1.0 - jnp.eye(x.shape[0], dtype=d.dtype))


def median_sq_distance(d: jnp.ndarray) -> jnp.ndarray:
  """Median heuristic: the median of the off-diagonal squared distances (mean if that is 0).

  Args:
    d: squared distances [B, B] from `pairwise_sq_distances`.

  Returns:
    A positive scalar (no gradient flows through it: the bandwidth is a constant of the kernel).
  """
  b = d.shape[0]
  chex.assert_shape(d, (b, b))
  off = d[jnp.triu_indices(b, k=1)]
  med = jnp.median(off)
  med = jnp.where(med > 0, med, jnp.mean(off))  # more than half the pairs coincide
  return jax.lax.stop_gradient(jnp.maximum(med, jnp.finfo(d.dtype).tiny))


def gram(x: jnp.ndarray, kernel: str = 'gaussian', sigma: float | None = None) -> jnp.ndarray:
  """Kernel (Gram) matrix of a batch of features.

  Args:
    x: features [B, ...] (flattened to [B, d]).
    kernel: 'gaussian' exp(-||a - b||^2 / (2 sigma^2)) or 'linear' a.b.
    sigma: Gaussian bandwidth; None uses the median heuristic, sigma = the median distance between
      distinct rows (sigma^2 = median of the squared distances), which makes the kernel invariant to
      the scale of x.

  Returns:
    K [B, B].
  """
  x = _flat(x)
  if kernel == 'linear':
    x = x - jnp.mean(x, axis=0, keepdims=True)  # H K H is unchanged; K itself is better scaled
    return x @ x.T
  if kernel != 'gaussian':
    raise ValueError(f'unknown kernel {kernel!r}; known: {", ".join(KERNELS)}')
  d = pairwise_sq_distances(x)
  if sigma is None:
    two_sigma_sq = 2.0 * median_sq_distance(d)
  else:
    if not sigma > 0:
      raise ValueError(f'Gaussian kernel bandwidth sigma must be > 0 (or None for the median '
                       f'heuristic), got {sigma}')
    two_sigma_sq = 2.0 * sigma * sigma
  return jnp.exp(-d / two_sigma_sq)


def center(k: jnp.ndarray) -> jnp.ndarray:
  """H K H for H = I - 11^T / B, computed by subtracting means (no B x B matmuls)."""
  chex.assert_shape(k, (k.shape[0], k.shape[0]))
  k = 0.5 * (k + k.T)
  row = jnp.mean(k, axis=0, keepdims=True)
  return k - row - row.T + jnp.mean(k)


def _scaled(a: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(a / s, s), s = max|a| (1 if a is all zero): products of scaled matrices stay in range."""
  s = jax.lax.stop_gradient(jnp.max(jnp.abs(a)))
  s = jnp.where(s > 0, s, 1.0)
  return a / s, s


def _safe_sqrt(v: jnp.ndarray) -> jnp.ndarray:
  """sqrt with gradient 0 (not inf / NaN) at v = 0."""
  pos = v > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, v, 1.0)), 0.0)


def _centred_grams(x, y, kernel_x, kernel_y, sigma_x, sigma_y):
  x, y = _flat(x), _flat(y)
  _check_pair(x, y)
  return center(gram(x, kernel_x, sigma_x)), center(gram(y, kernel_y, sigma_y))


def hsic(x: jnp.ndarray, y: jnp.ndarray, *, kernel_x: str = 'gaussian', kernel_y: str = 'gaussian',
         sigma_x: float | None = None, sigma_y: float | None = None) -> jnp.ndarray:
  """Biased empirical HSIC (Gretton et al. 2005): tr(K H L H) / (B - 1)^2.

  Near 0 for independent x and y (it is >= 0 and its bias is O(1/B)), larger for dependent ones.

  Args:
    x: features [B, ...]; y: paired features [B, ...].
    kernel_x / kernel_y: 'gaussian' or 'linear'.
    sigma_x / sigma_y: Gaussian bandwidths; None = median heuristic.

  Returns:
    Scalar HSIC.
  """
  kc, lc = _centred_grams(x, y, kernel_x, kernel_y, sigma_x, sigma_y)
  b = kc.shape[0]
  (kn, ks), (ln, ls) = _scaled(kc), _scaled(lc)
  return jnp.sum(kn * ln) * (ks * ls) / (b - 1) ** 2


def _regularized_projection(kc: jnp.ndarray, eps: float) -> jnp.ndarray:
  """R = Kc (Kc + eps B I)^-1, symmetric with eigenvalues in [0, 1).

  A Gram matrix whose mean eigenvalue tr(Kc)/B exceeds 1 (only an unbounded kernel, e.g. linear on
  large features, can) is first divided by it: that keeps the Cholesky factorisation well
  conditioned in float32 and makes the estimate scale-invariant for large linear features, while
  bounded kernels (Gaussian, linear on one-hot labels: tr(Kc)/B < 1) are used exactly as in
  Fukumizu et al. / BiDO.
  """
  b = kc.shape[0]
  scale = jnp.maximum(jnp.trace(kc) / b, 1.0)
  kc = kc / scale
  a = kc + (eps * b) * jnp.eye(b, dtype=kc.dtype)
  factor = jax.scipy.linalg.cho_factor(a, lower=True)
  r = jax.scipy.linalg.cho_solve(factor, kc)  # (Kc + eps B I)^-1 Kc = Kc (Kc + eps B I)^-1
  return 0.5 * (r + r.T)


def normalized_hsic(x: jnp.ndarray, y: jnp.ndarray, *, kernel_x: str = 'gaussian',
                    kernel_y: str = 'gaussian', sigma_x: float | None = None,
                    sigma_y: float | None = None, eps: float = 1e-5) -> jnp.ndarray:
  """Normalised HSIC: tr(Rx Ry), R = Kc (Kc + eps B I)^-1 (Fukumizu et al. 2008, NOCCO estimator).

  This is the nHSIC of the HSIC bottleneck (Ma et al. 2020) that BiDO-HSIC uses. It lies in
  [0, min(rank Kc, rank Lc)]: e.g. y = one-hot labels of c classes (linear kernel) gives at most
  c - 1, reached when x determines the label. BiDO's code centres on one side only (K H); this uses
  the symmetric H K H of the definition.

  Args:
    x, y: paired features [B, ...].
    kernel_x / kernel_y: 'gaussian' or 'linear'; sigma_x / sigma_y: bandwidths (None = median).
    eps: regulariser (BiDO: 1e-5).

  Returns:
    Scalar nHSIC.
  """
  kc, lc = _centred_grams(x, y, kernel_x, kernel_y, sigma_x, sigma_y)
  return jnp.sum(_regularized_projection(kc, eps) * _regularized_projection(lc, eps))


def coco(x: jnp.ndarray, y: jnp.ndarray, *, kernel_x: str = 'gaussian', kernel_y: str = 'gaussian',
         sigma_x: float | None = None, sigma_y: float | None = None,
         norm: str = 'frobenius') -> jnp.ndarray:
  """Constrained covariance: sqrt(||Kc Lc||) / B, >= 0.

  Gretton et al. (2005) define COCO with the spectral norm (the largest singular value); BiDO's code
  uses the Frobenius norm (an upper bound of it), the default here.

  Args:
    x, y: paired features [B, ...].
    kernel_x / kernel_y: 'gaussian' or 'linear'; sigma_x / sigma_y: bandwidths (None = median).
    norm: 'frobenius' (BiDO) or 'spectral' (Gretton et al.).

  Returns:
    Scalar COCO.
  """
  if norm not in ('frobenius', 'spectral'):
    raise ValueError(f"coco norm must be 'frobenius' or 'spectral', got {norm!r}")
  kc, lc = _centred_grams(x, y, kernel_x, kernel_y, sigma_x, sigma_y)
  (kn, ks), (ln, ls) = _scaled(kc), _scaled(lc)
  prod, ps = _scaled(kn @ ln)
  if norm == 'frobenius':
    size = _safe_sqrt(jnp.sum(prod * prod))
  else:
    size = jnp.linalg.svd(prod, compute_uv=False)[0]
  # sqrt(||A||) with A = Kc Lc = prod * ps * ks * ls; the scales enter as square roots separately.
  return _safe_sqrt(size) * jnp.sqrt(ps) * jnp.sqrt(ks) * jnp.sqrt(ls) / kc.shape[0]
