"""Reading prepared TFDS datasets without TensorFlow.

TFDS reads data without TensorFlow only from `array_record` files, through
`builder.as_data_source(split)` (random access; examples are parsed by
`features.deserialize_example_np`, which decodes `tfds.features.Image` with
OpenCV or, failing that, PIL). `tfds.load`, `as_dataset` and tfrecord files
need TensorFlow, which this project never installs.

There is no network on the machines this runs on, and TFDS downloads there
hang instead of failing. So nothing here ever calls `download_and_prepare` on
a public dataset: we look for prepared files on disk and, if they are not
there, raise `DatasetNotFoundError` at once with instructions.
"""

import contextlib
import dataclasses
import fcntl
import io
import os
from typing import Any, Callable, Sequence

import numpy as np
from absl import logging
import tensorflow_datasets as tfds

from mip_jax.runtime import console

# Examples read per `__getitems__` call: batched reads are much faster than
# one at a time, and chunks keep the encoded payloads of a big split bounded.
_READ_CHUNK = 4096


class DatasetNotFoundError(FileNotFoundError):
  """A dataset is not prepared where we looked; the message says how to fix it."""


def grey_id_info(builder, *, image_size: int, label: tfds.features.ClassLabel, homepage: str,
                 description: str) -> tfds.core.DatasetInfo:
  """DatasetInfo of this project's builders: grey uint8 images, a label and a stable `id`.

  TFDS shuffles examples when writing; `id` (the example's index in its source) lets splits be
  defined independently of that order. Built directly (not dataset_info_from_configs): that helper
  scans the package folder for README/CITATIONS files we do not keep.
  """
  return tfds.core.DatasetInfo(
      builder=builder,
      description=description,
      features=tfds.features.FeaturesDict({
          'image': tfds.features.Tensor(shape=(image_size, image_size, 1), dtype=np.uint8),
          'label': label,
          'id': tfds.features.Scalar(dtype=np.int64),
      }),
      supervised_keys=('image', 'label'),
      homepage=homepage,
  )


def open_public(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """Returns the TFDS builder of a public dataset prepared as array_record.

  Never downloads: checks the files on disk and fails fast otherwise.

  Args:
    name: a TFDS dataset name, e.g. 'mnist'.
    data_dir: TFDS data_dir; None means the TFDS default
      (~/tensorflow_datasets or $TFDS_DATA_DIR).

  Returns:
    The builder; `builder.as_data_source(split)` reads it.

  Raises:
    DatasetNotFoundError: not prepared in data_dir, prepared only as tfrecord,
      or shard files missing.
  """
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise DatasetNotFoundError(_not_prepared_message(name, builder))
  formats = builder.info.available_file_formats()
  array_record = tfds.core.FileFormat.ARRAY_RECORD
  if array_record not in formats:
    raise DatasetNotFoundError(_wrong_format_message(name, builder, formats))
  missing = [
      os.fspath(path)
      for split_info in builder.info.splits.values()
      for path in split_info.filepaths
      if not path.exists()
  ]
  if missing:
    raise DatasetNotFoundError(
        f'{name} at {builder.data_dir} is incomplete: {len(missing)} shard '
        f'file(s) listed in dataset_info.json are missing, e.g. {missing[0]}. '
        'Copy the whole folder again.\n'
        + _prepare_instructions(name, builder))
  return builder


def prepared_offline(make_builder: Callable[[], tfds.core.DatasetBuilder],
                     source: str) -> tfds.core.DatasetBuilder:
  """The builder of one of our offline datasets (data in an installed wheel), built once.

  Two launchers started together on a fresh machine both find the dataset missing; TFDS builds
  into a temporary folder and renames it, so the second rename failed with FileExistsError. The
  build runs under an exclusive file lock beside the dataset's folder, and a process that waited
  reads what the first one built.
  """
  builder = make_builder()
  if builder.is_prepared():
    return builder
  root = os.path.dirname(os.fspath(builder.data_dir))       # <data_dir>/<name>
  if '://' in root:                                          # no file locks on remote storage
    _build_offline(builder, source)
    return builder
  os.makedirs(os.path.dirname(root), exist_ok=True)
  with open(root + '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)                         # released when the file closes
    builder = make_builder()                                 # another process may have built it
    if not builder.is_prepared():
      _build_offline(builder, source)
  return builder


def _build_offline(builder: tfds.core.DatasetBuilder, source: str) -> None:
  """Builds the dataset as array_record. The terminal gets one line; TFDS's banner and progress
  bars (printed, not logged) go to the log."""
  console.say('%s: building it from %s into %s (first use only)', builder.name, source,
              builder.data_dir)
  printed = io.StringIO()
  tfds.display_progress_bar(False)
  try:
    with contextlib.redirect_stdout(printed):
      builder.download_and_prepare(file_format='array_record')
  finally:
    tfds.display_progress_bar(True)
    logging.info('TFDS while building %s: %s', builder.name, printed.getvalue().strip())


def _prepare_instructions(name: str, builder) -> str:
  root = os.fspath(builder.data_dir_root)
  return (
      f'To prepare {name}, on a machine with internet (TensorFlow is needed '
      'only there, to build the files):\n'
      '  pip install tensorflow-datasets tensorflow\n'
      f'  tfds build {name} --file_format=array_record --data_dir=DIR\n'
      'or in Python:\n'
      f"  tfds.builder('{name}', data_dir=DIR).download_and_prepare("
      "file_format='array_record')\n"
      f'then copy DIR/{name}/ into {root}/ (giving {builder.data_dir}), or '
      'point the run at your copy with --config.data_dir=DIR.')


def _not_prepared_message(name: str, builder) -> str:
  root = os.fspath(builder.data_dir_root)
  found = ''
  dataset_dir = os.path.join(root, name)
  if os.path.isdir(dataset_dir):
    versions = sorted(os.listdir(dataset_dir))
    found = (f' (found {dataset_dir} with {versions}; this tensorflow-datasets '
             f'reads version {builder.version})')
  return (f'Dataset {name!r} is not prepared in data_dir {root}: no '
          f'{builder.data_dir}/dataset_info.json{found}. Nothing is downloaded '
          'here (no network).\n' + _prepare_instructions(name, builder))


def _wrong_format_message(name: str, builder, formats) -> str:
  have = ', '.join(sorted(f.value for f in formats)) or 'unknown'
  return (
      f'{name} at {builder.data_dir} is prepared as {have}, but it must be '
      'array_record: reading tfrecord needs TensorFlow, which this project '
      'does not use. Rebuild it with --file_format=array_record, or convert '
      'it where TensorFlow is installed:\n'
      f'  tfds convert_format --dataset_version_dir={builder.data_dir} '
      '--out_file_format=array_record\n' + _prepare_instructions(name, builder))


@dataclasses.dataclass(frozen=True)
class Records:
  """One prepared split: labels and ids read, images decoded on demand.

  Decoding is deferred so that a capped run (`max_per_split`) decodes only
  the images it keeps; for MNIST that skips ~70k PNG decodes.

  Attributes:
    labels: int64 [N], the dataset's own class labels.
    ids: int64 [N] from the `id` feature, or None if the dataset has none.
    payloads: per example, the image as stored (encoded bytes or array).
    decode: maps one payload to a uint8 [H, W, C] array.
  """
  labels: np.ndarray
  ids: np.ndarray | None
  payloads: Sequence[Any]
  decode: Callable[[Any], np.ndarray]

  def __len__(self) -> int:
    return len(self.labels)

  def images(self, indices: Sequence[int]) -> np.ndarray:
    """Decodes the images at `indices` into one uint8 [n, H, W, C] array."""
    decoded = [_as_hwc(self.decode(self.payloads[i])) for i in indices]
    shapes = {im.shape for im in decoded}
    if len(shapes) > 1:
      raise ValueError(
          f'images of one dataset have different shapes {sorted(shapes)}; '
          'only fixed-size datasets are supported')
    if not decoded:
      return np.zeros((0, 0, 0, 0), np.uint8)
    return np.stack(decoded).astype(np.uint8, copy=False)


def _as_hwc(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  return image[..., None] if image.ndim == 2 else image


def read_split(builder: tfds.core.DatasetBuilder, split: str) -> Records:
  """Reads one split of a prepared array_record dataset, without TensorFlow.

  Expects features 'image' (Image or Tensor), 'label' (ClassLabel) and
  optionally 'id' (an integer scalar; other id types are ignored).
  """
  image_feature = builder.info.features['image']
  encoded = isinstance(image_feature, tfds.features.Image)
  # Image bytes are kept encoded (SkipDecoding works on the numpy path too)
  # and decoded later by the feature itself, with PIL when OpenCV is absent.
  decoders = {'image': tfds.decode.SkipDecoding()} if encoded else None
  source = builder.as_data_source(split, decoders=decoders)
  n = len(source)
  labels = np.empty(n, np.int64)
  # An integer `id` feature (ours) defines splits; cifar10's string ids
  # ('train_16399') are not needed: positions are stable there too.
  has_id = ('id' in builder.info.features and np.issubdtype(
      builder.info.features['id'].np_dtype, np.integer))
  ids = np.empty(n, np.int64) if has_id else None
  payloads = []
  for start in range(0, n, _READ_CHUNK):
    keys = list(range(start, min(n, start + _READ_CHUNK)))
    for i, example in zip(keys, source.__getitems__(keys)):
      labels[i] = example['label']
      if has_id:
        ids[i] = example['id']
      payloads.append(example['image'])
  decode = image_feature.decode_example_np if encoded else np.asarray
  return Records(labels=labels, ids=ids, payloads=payloads, decode=decode)
