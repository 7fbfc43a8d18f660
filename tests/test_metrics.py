"""Metrics, probability-vector checks and the attacker's input transforms."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mip_jax.attacks import transforms
from mip_jax.protocol import metrics


def test_check_probability_vectors_accepts_softmax_and_rejects_bad_input():
  probs = np.asarray(jax.nn.softmax(jnp.arange(12.0).reshape(3, 4)))
  metrics.check_probability_vectors(probs)
  with pytest.raises(ValueError, match='NaN'):
    metrics.check_probability_vectors(np.where(probs > 0.5, np.nan, probs))
  with pytest.raises(ValueError, match='not logits'):
    metrics.check_probability_vectors(probs * 1.5 / 1.5 + np.array([[0.2, 0, 0, 0]] * 3) / 2)
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    metrics.check_probability_vectors(np.array([[1.5, -0.5]]))
  with pytest.raises(ValueError, match='shape'):
    metrics.check_probability_vectors(probs[0])


def test_utility_metrics_on_known_values():
  clean = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
  defended = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1]])
  assert metrics.accuracy(clean, np.array([0, 0])) == 0.5
  assert metrics.label_flip_rate(defended, clean) == 0.5
  expected = (np.sqrt(0.02) + np.sqrt(0.32)) / 2
  assert metrics.confidence_distortion(defended, clean) == pytest.approx(expected)


def test_eps_eta_curve_is_fraction_above_threshold():
  curve = metrics.eps_eta_curve(np.array([0.01, 0.02, 0.03, 0.04]), [0.0, 0.015, 0.035, 0.05])
  assert curve == [[0.0, 1.0], [0.015, 0.75], [0.035, 0.25], [0.05, 0.0]]


def test_per_image_mse_checks_shapes():
  a = np.zeros((2, 4, 4, 1))
  assert metrics.per_image_mse(a + 0.5, a).tolist() == [0.25, 0.25]
  with pytest.raises(ValueError, match='differ in shape'):
    metrics.per_image_mse(a, np.zeros((2, 4, 4, 3)))


def test_log_transform_truncates_clamps_and_offsets():
  p = jnp.array([[0.6, 0.3, 0.1, 0.0]])
  z = transforms.log_transform(p, top_k=2, floor=-1000.0)
  np.testing.assert_allclose(z, [[50 + np.log(0.6), 50 + np.log(0.3), 0.0, 0.0]], rtol=1e-6)
  # A zero probability lands on the floor, and its row is shifted up so its minimum is 0.
  z = transforms.log_transform(p)
  np.testing.assert_allclose(z, [[1000 + np.log(0.6), 1000 + np.log(0.3), 1000 + np.log(0.1), 0]],
                             rtol=1e-6)
  # Rows with log p >= -50 everywhere are not shifted: the offset is 50, as in Yang's code.
  q = jnp.array([[0.5, 0.25, 0.25]])
  np.testing.assert_allclose(transforms.log_transform(q), 50 + np.log(q), rtol=1e-6)
  g = jax.grad(lambda q: transforms.log_transform(q).sum())(p)
  assert np.all(np.isfinite(g))  # differentiable at p = 0 (LPA differentiates through it)
  np.testing.assert_allclose(g[0, :3], 1 / np.array([0.6, 0.3, 0.1]), rtol=1e-5)


def test_attacker_input_dispatches_and_rejects_unknown():
  cfg = ml_collections.ConfigDict({'transform': 'prob', 'top_k': 1, 'log_floor': -1000.0})
  np.testing.assert_allclose(transforms.attacker_input(jnp.array([[0.2, 0.8]]), cfg), [[0, 0.8]])
  cfg.transform = 'sqrt'
  with pytest.raises(ValueError, match='known: log, floor, prob'):
    transforms.attacker_input(jnp.array([[0.2, 0.8]]), cfg)


def test_expected_calibration_error_by_hand():
  probs = np.array([[0.95, 0.05], [0.03, 0.97], [0.5, 0.5], [0.2, 0.8]])
  labels = np.array([0, 0, 0, 1])  # right, wrong, right (a tie names index 0), right
  # Bins of width 1/15: 0.95 and 0.97 share the last bin (accuracy 1/2, confidence 0.96); 0.5 and
  # 0.8 are alone in theirs (accuracy 1).
  expected = (2 / 4) * abs(0.5 - 0.96) + (1 / 4) * abs(1 - 0.5) + (1 / 4) * abs(1 - 0.8)
  assert metrics.expected_calibration_error(probs, labels) == pytest.approx(expected)
  # Always right with confidence 1: calibrated.
  assert metrics.expected_calibration_error(np.eye(3), np.arange(3)) == 0.0


def test_knn_feature_distance_by_hand():
  private = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 5.0]])
  private_labels = np.array([0, 0, 1])
  recon = np.array([[1.0, 0.0], [9.0, 0.0], [0.0, 0.0]])
  labels = np.array([0, 0, 1])
  # nearest of its own class: 1 (to [0,0]), 1 (to [10,0]), 5 (the only class-1 image, [0,5])
  assert metrics.knn_feature_distance(recon, labels, private, private_labels) == pytest.approx(7 / 3)
  with pytest.raises(ValueError, match='class 2'):
    metrics.knn_feature_distance(recon, np.array([0, 0, 2]), private, private_labels)


def test_l1_distortion_is_twice_the_mass_moved():
  clean = np.array([[0.7, 0.2, 0.1]])
  served = np.array([[0.6, 0.3, 0.1]])
  assert metrics.confidence_distortion_l1(served, clean) == pytest.approx(0.2)
