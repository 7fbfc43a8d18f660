"""TFDS builder `mip_facescrub`: FaceScrub faces from a local folder (manual_dir).

FaceScrub is distributed as image URLs, so it cannot be downloaded by TFDS.
Put the face images you have in one folder per identity:

  <manual_dir>/<Identity_Name>/<image files: .jpg .jpeg .png, any size/colour>

and the builder converts each image to grey 64x64 (PIL, bilinear, no crop:
FaceScrub crops are already roughly square) and stores it as a uint8 Tensor.
The label is the identity's index among the sorted identity names. Identity
folders without images are ignored, unreadable files are skipped with a
warning (URL-scraped datasets contain some).

Class rule (design section 2): identities sorted by name, the first
min(100, n // 2) are private, the next as many are the attack classes. The
`private_classes` / `attack_classes` config fields do not apply here.
"""

import os

from absl import logging
from etils import epath
import numpy as np
from PIL import Image, ImageOps
import tensorflow_datasets as tfds

from mip_jax.data import tfds_source
from mip_jax.data.tfds_source import DatasetNotFoundError

IMAGE_SIZE = 64
MAX_CLASSES_PER_PART = 100
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')

_LAYOUT = (
    '  <manual_dir>/<Identity_Name>/<image files>\n'
    'e.g. <manual_dir>/Aaron_Eckhart/Aaron_Eckhart_1.jpg; one folder per '
    'person, .jpg/.jpeg/.png of any size or colour (converted to grey 64x64).')


class MipFacescrub(tfds.core.GeneratorBasedBuilder):
  """FaceScrub identities from manual_dir, grey 64x64, with an `id` feature."""

  name = 'mip_facescrub'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Grey 64x64 faces from identity folders.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put FaceScrub (e.g. the cropped faces) in manual_dir, one folder per '
      'identity:\n' + _LAYOUT)
  # See digits.MipDigits.code_path: works around TFDS needing
  # `importlib_resources` on Python >= 3.9.
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    # Identity names are only known once manual_dir is listed: they are set in _split_generators,
    # and restored from label.labels.txt on reads. `id`: index of (identity, file name) in sorted
    # order.
    return tfds_source.grey_id_info(
        self, image_size=IMAGE_SIZE, label=tfds.features.ClassLabel(),
        homepage='http://vintage.winklerbros.net/facescrub.html', description=__doc__)

  def _split_generators(self, dl_manager):
    files = list_images(dl_manager.manual_dir)
    self.info.features['label'].names = sorted(files)
    return {'train': self._generate_examples(files)}

  def _generate_examples(self, files: dict[str, list[str]]):
    paths = [(label, path) for label, name in enumerate(sorted(files))
             for path in files[name]]
    skipped = []
    for i, (label, path) in enumerate(paths):
      try:
        image = load_face(path)
      except (OSError, ValueError) as e:  # PIL's errors for broken files.
        skipped.append(f'{path} ({e})')
        continue
      yield i, {'image': image, 'label': label, 'id': i}
    if skipped:
      logging.warning('mip_facescrub: skipped %d unreadable images, e.g. %s',
                      len(skipped), '; '.join(skipped[:3]))


def load_face(path: str) -> np.ndarray:
  """Reads one image file as grey uint8 [64, 64, 1]."""
  with Image.open(path) as image:
    image = ImageOps.exif_transpose(image)  # Phone photos store rotation.
    grey = image.convert('L').resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
  return np.asarray(grey, np.uint8)[..., None]


def list_images(manual_dir) -> dict[str, list[str]]:
  """Maps each identity folder that holds images to its sorted image paths.

  Raises:
    DatasetNotFoundError: manual_dir is missing or holds no identity images.
  """
  manual_dir = os.fspath(manual_dir)
  if not os.path.isdir(manual_dir):
    raise DatasetNotFoundError(missing_message(manual_dir, 'does not exist'))
  files = {}
  for name in sorted(os.listdir(manual_dir)):
    folder = os.path.join(manual_dir, name)
    if name.startswith('.') or not os.path.isdir(folder):
      continue
    images = sorted(
        os.path.join(folder, f) for f in os.listdir(folder)
        if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith('.'))
    if images:
      files[name] = images
  if len(files) < 2:
    raise DatasetNotFoundError(missing_message(
        manual_dir, f'holds {len(files)} identity folder(s) with images; at '
        'least 2 are needed'))
  return files


def missing_message(manual_dir: str, problem: str) -> str:
  return (
      f'FaceScrub manual_dir {manual_dir} {problem}. FaceScrub cannot be '
      'downloaded automatically; put the face images there (or anywhere, and '
      'pass --config.manual_dir=PATH), one folder per identity:\n' + _LAYOUT)


def class_split(num_identities: int) -> tuple[list[int], list[int]]:
  """The fixed identity rule: sorted identities, first k private, next k attack.

  k = min(100, num_identities // 2): 100/100 on FaceScrub (530 identities),
  half and half on small test folders.
  """
  k = min(MAX_CLASSES_PER_PART, num_identities // 2)
  return list(range(k)), list(range(k, 2 * k))


def default_manual_dir(data_dir_root) -> str:
  return os.path.join(os.fspath(data_dir_root), 'downloads', 'manual',
                      'facescrub')


def prepared_builder(data_dir: str | None,
                     manual_dir: str | None) -> MipFacescrub:
  """Returns the `mip_facescrub` builder, building it from manual_dir if needed.

  Once built (<data_dir>/mip_facescrub/1.0.0), the raw folder is no longer
  needed. If it is still there and its identities differ from the built ones,
  this raises rather than silently using stale data.

  Args:
    data_dir: TFDS data_dir (None: TFDS default).
    manual_dir: identity folders; None means
      <data_dir>/downloads/manual/facescrub.
  """
  builder = MipFacescrub(data_dir=data_dir)
  if manual_dir is None:
    manual_dir = default_manual_dir(builder.data_dir_root)
  if builder.is_prepared():
    if os.path.isdir(manual_dir):
      _check_not_stale(builder, manual_dir)
    return builder
  list_images(manual_dir)  # Fails fast, before TFDS creates any folders.
  builder.download_and_prepare(
      file_format='array_record',
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def _check_not_stale(builder: MipFacescrub, manual_dir: str) -> None:
  try:
    current = sorted(list_images(manual_dir))
  except DatasetNotFoundError:
    return  # An emptied raw folder is fine: the built copy is what we read.
  built = builder.info.features['label'].names
  if current != built:
    raise ValueError(
        f'{builder.data_dir} was built from {len(built)} identities but '
        f'{manual_dir} now holds {len(current)} different ones; delete '
        f'{builder.data_dir} to rebuild it from the folder.')
