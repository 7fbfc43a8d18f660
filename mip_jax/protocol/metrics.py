"""The paper's utility and privacy metrics (Section VII-A) and input checks for confidence vectors.

Utility: model accuracy of the (defended) vectors, confidence distortion (mean L2 distance between
defended and clean vectors), label flip rate. Privacy: reconstruction error (mean per-image MSE), attack
accuracy (the evaluation classifier's accuracy on reconstructions) and the epsilon-eta curve (fraction
of reconstructions whose error exceeds epsilon; larger is better for the defender).
"""

import numpy as np

from mip_jax.protocol import rules

RULES = {'eval.eps_grid': (rules.each(rules.NON_NEGATIVE),)}  # the epsilon-eta curve's epsilons


def check_probability_vectors(probs: np.ndarray, *, name: str = 'probs', atol: float = 1e-4):
  """Raises ValueError unless `probs` is a finite [N, m] array of rows in [0, 1] summing to 1."""
  probs = np.asarray(probs)
  if probs.ndim != 2:
    raise ValueError(f'{name}: expected confidence vectors of shape [N, m], got {probs.shape}')
  if not np.all(np.isfinite(probs)):
    bad = int(np.sum(~np.all(np.isfinite(probs), axis=1)))
    raise ValueError(f'{name}: {bad} rows hold NaN or inf; a defense must return finite vectors')
  if probs.min() < -atol or probs.max() > 1 + atol:
    raise ValueError(f'{name}: entries must lie in [0, 1], found range '
                     f'[{probs.min():.4g}, {probs.max():.4g}]')
  sums = probs.sum(axis=1)
  worst = int(np.argmax(np.abs(sums - 1)))
  if abs(sums[worst] - 1) > atol * probs.shape[1]:
    raise ValueError(f'{name}: row {worst} sums to {sums[worst]:.6f}, not 1; '
                     'pass probabilities (softmax outputs), not logits')


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(np.argmax(probs, axis=1) == labels))


def confidence_distortion(defended: np.ndarray, clean: np.ndarray) -> float:
  """Mean L2 distance between defended and clean vectors (Table I 'Conf. Dist.')."""
  return float(np.mean(np.linalg.norm(np.asarray(defended, np.float64) - clean, axis=1)))


def label_flip_rate(defended: np.ndarray, clean: np.ndarray) -> float:
  """Fraction of vectors whose argmax the defense changed."""
  return float(np.mean(np.argmax(defended, axis=1) != np.argmax(clean, axis=1)))


def zero_fraction(probs: np.ndarray) -> float:
  """Share of exactly-zero entries: each is a -1000 input to Yang's log-transform attacker."""
  return float(np.mean(np.asarray(probs) == 0))


def input_shift(clean_inputs: np.ndarray, defended_inputs: np.ndarray) -> float:
  """Mean L2 distance between an attacker's decoder inputs of clean and of defended vectors.

  A defense that moves the attacker's inputs far (exact zeros under the log transform: ~950 per row)
  protects by distribution shift, whatever its objective; this measures it in the attacker's space.
  """
  diff = np.asarray(defended_inputs, np.float64) - np.asarray(clean_inputs, np.float64)
  return float(np.mean(np.linalg.norm(diff, axis=1)))


def per_image_mse(recon: np.ndarray, images: np.ndarray) -> np.ndarray:
  if recon.shape != images.shape:
    raise ValueError(f'reconstructions {recon.shape} and images {images.shape} differ in shape')
  return np.mean(np.square(recon.astype(np.float64) - images), axis=tuple(range(1, images.ndim)))


def eps_eta_curve(errors: np.ndarray, eps_grid) -> list[list[float]]:
  """[[eps, fraction of errors > eps], ...]: a defense is better when the curve lies higher."""
  errors = np.asarray(errors)
  return [[float(e), float(np.mean(errors > e))] for e in eps_grid]


def confidence_distortion_l1(defended: np.ndarray, clean: np.ndarray) -> float:
  """Mean L1 distance between defended and clean vectors (twice the probability mass moved)."""
  return float(np.mean(np.abs(np.asarray(defended, np.float64) - clean).sum(axis=1)))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, *, bins: int = 15) -> float:
  """ECE of served vectors: 15 equal-width bins of the top probability (the common choice), the
  gap |accuracy - mean confidence| of each bin weighted by its share of the vectors."""
  probs = np.asarray(probs, np.float64)
  conf = probs.max(axis=1)
  correct = (np.argmax(probs, axis=1) == np.asarray(labels)).astype(np.float64)
  # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 joins the first bin.
  which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
  ece = 0.0
  for b in range(bins):
    mask = which == b
    if mask.any():
      ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
  return float(ece)


def knn_feature_distance(recon_features: np.ndarray, labels: np.ndarray,
                         private_features: np.ndarray, private_labels: np.ndarray) -> float:
  """Mean over reconstructions of the L2 distance from its features to the nearest private training
  image of its true class (GMI, KED-MI, PLG-MI's 'KNN Dist'): lower means closer to real members of
  the class. Features are the evaluation classifier's penultimate activations."""
  recon_features = np.asarray(recon_features, np.float64)
  private_features = np.asarray(private_features, np.float64)
  labels, private_labels = np.asarray(labels), np.asarray(private_labels)
  dists = np.empty(len(recon_features))
  for k in np.unique(labels):
    mine = labels == k
    theirs = private_features[private_labels == k]
    if not len(theirs):
      raise ValueError(f'no private training image of class {k} to measure the KNN distance to')
    sq = (np.sum(recon_features[mine] ** 2, 1)[:, None] + np.sum(theirs ** 2, 1)[None, :]
          - 2 * recon_features[mine] @ theirs.T)
    dists[mine] = np.sqrt(np.maximum(sq.min(axis=1), 0.0))
  return float(dists.mean())
