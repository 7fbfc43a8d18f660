"""TFDS builder `mip_digits`: scikit-learn's 8x8 digits at 16x16, fully offline.

`sklearn.datasets.load_digits` ships its 1,797 images (values 0..16) inside
the scikit-learn wheel, so this dataset builds with no network. Each image is
scaled to 0..255, resized to 16x16 with PIL bilinear and stored as a raw
uint8 Tensor (`tfds.features.Image` would need TensorFlow to encode numpy
arrays). `prepared_builder` builds it on first use into the data_dir
(<data_dir>/mip_digits/1.0.0, array_record) and reuses it afterwards.
"""

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from mip_jax.data import tfds_source

IMAGE_SIZE = 16
NUM_CLASSES = 10


class MipDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn digits resized to 16x16 grey, with a stable `id` feature."""

  name = 'mip_digits'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'load_digits x 255/16, PIL bilinear to 16x16.'}
  # TFDS 4.9.10 derives code_path through `importlib_resources`, installed only
  # on Python < 3.9, for builders outside its own package: without this
  # override download_and_prepare fails with ModuleNotFoundError.
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds_source.grey_id_info(
        self, image_size=IMAGE_SIZE, label=tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html', description=__doc__)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data is in the sklearn wheel.
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    from sklearn import datasets  # Imported here: only needed to build.
    digits = datasets.load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
      yield i, {
          'image': resize_digit(image)[..., None],
          'label': int(label),
          'id': i,
      }


def resize_digit(image: np.ndarray) -> np.ndarray:
  """Maps one 8x8 load_digits image (0..16) to uint8 16x16 (0..255)."""
  scaled = np.round(np.asarray(image, np.float64) * (255.0 / 16.0))
  pil = Image.fromarray(scaled.astype(np.uint8), mode='L')
  return np.asarray(pil.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))


def prepared_builder(data_dir: str | None) -> MipDigits:
  """Returns the `mip_digits` builder, building it into data_dir if needed."""
  return tfds_source.prepared_offline(lambda: MipDigits(data_dir=data_dir), "scikit-learn's wheel")
