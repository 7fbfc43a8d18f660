"""Tests of mip_jax.data: builders, splits, errors. No network, no TF."""

import io
import json
import os
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest
from sklearn import datasets as sk_datasets
import tensorflow_datasets as tfds

from configs import common
from configs import digits as digits_config
from mip_jax.data import KNOWN_DATASETS, DatasetNotFoundError, load_splits
from mip_jax.data import digits
from mip_jax.data import splits as splits_lib

SPLIT_NAMES = ('private_train', 'private_test', 'attack_train', 'attack_test')


def _parts(s):
  return [getattr(s, name) for name in SPLIT_NAMES]


# ---------------------------------------------------------------- digits ----


@pytest.fixture(scope='module')
def digits_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds_digits'))
  digits.prepared_builder(data_dir)
  return data_dir


_BUILD_TOGETHER = """
import sys, time
from mip_jax.data import digits, tfds_source
built = tfds_source._build_offline
def counted(*args):
  print('BUILT', flush=True)
  built(*args)
tfds_source._build_offline = counted
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))   # start together
print('RECORDS', digits.prepared_builder(sys.argv[1]).info.splits['train'].num_examples)
"""


def test_processes_that_start_together_build_the_dataset_once(tmp_path):
  """Two launchers' first use on a fresh machine: one builds, the others wait and read it (TFDS's
  rename of its temporary folder failed in the second builder with FileExistsError)."""
  start = time.time() + 8.0              # after every interpreter has imported TFDS
  procs = [subprocess.Popen([sys.executable, '-c', _BUILD_TOGETHER, str(tmp_path), str(start)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(3)]
  outs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outs]
  stdout = ''.join(out for out, _ in outs)
  assert stdout.count('BUILT') == 1
  assert stdout.count('RECORDS 1797') == 3, stdout


def _digits_config(data_dir, **overrides):
  c = digits_config.get_config()
  c.data_dir = data_dir
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def test_digits_builds_shapes_ranges_and_counts(digits_dir):
  assert os.path.isfile(os.path.join(
      digits_dir, 'mip_digits', '1.0.0', 'dataset_info.json'))
  assert any(f.startswith('mip_digits-train.array_record') for f in
             os.listdir(os.path.join(digits_dir, 'mip_digits', '1.0.0')))
  s = load_splits(_digits_config(digits_dir))
  assert (s.dataset, s.image_shape) == ('digits', (16, 16, 1))
  assert (s.num_private_classes, s.num_attack_classes) == (5, 5)
  assert sum(len(p) for p in _parts(s)) == 1797
  target = sk_datasets.load_digits().target
  for name, part in zip(SPLIT_NAMES, _parts(s)):
    assert part.images.shape[1:] == (16, 16, 1), name
    assert part.images.dtype == np.float32 and part.labels.dtype == np.int32
    assert 0.0 <= part.images.min() and part.images.max() <= 1.0
    assert part.images.max() == 1.0  # 16 -> 255 -> 1.0: scaled, not 0..16.
    assert set(np.unique(part.labels)) == set(range(5)), name
  # Each class holds out round(0.2 * n) examples.
  for part, offset in (('private', 0), ('attack', 5)):
    train, test = getattr(s, part + '_train'), getattr(s, part + '_test')
    for c in range(5):
      n = int(np.sum(target == c + offset))
      assert np.sum(test.labels == c) == round(0.2 * n)
      assert np.sum(train.labels == c) == n - round(0.2 * n)


def test_digits_images_and_labels_follow_ids(digits_dir):
  # Unusual class lists: labels are re-indexed in the order given.
  c = _digits_config(digits_dir, private_classes=[7, 2],
                     attack_classes=[0, 9, 5])
  s = load_splits(c)
  assert (s.num_private_classes, s.num_attack_classes) == (2, 3)
  raw = sk_datasets.load_digits()
  for part, classes in ((s.private_train, [7, 2]), (s.attack_test, [0, 9, 5])):
    np.testing.assert_array_equal(
        raw.target[part.ids], np.asarray(classes)[part.labels])
    for i in range(3):
      want = digits.resize_digit(raw.images[part.ids[i]]) / 255.0
      np.testing.assert_allclose(part.images[i, ..., 0], want, atol=1e-6)


def test_digits_splits_disjoint_and_deterministic(digits_dir):
  c = _digits_config(digits_dir)
  a, b = load_splits(c), load_splits(c)
  ids = [set(p.ids.tolist()) for p in _parts(a)]
  assert sum(len(x) for x in ids) == 1797 == len(set().union(*ids))
  for pa, pb in zip(_parts(a), _parts(b)):
    np.testing.assert_array_equal(pa.ids, pb.ids)
    np.testing.assert_array_equal(pa.labels, pb.labels)
    np.testing.assert_array_equal(pa.images, pb.images)
  # Private and attack are disjoint by class (dataset labels).
  target = sk_datasets.load_digits().target
  assert set(target[a.private_train.ids]) == set(range(5))
  assert set(target[a.attack_train.ids]) == set(range(5, 10))
  # seed changes training, not data.
  other = load_splits(_digits_config(digits_dir, seed=7))
  np.testing.assert_array_equal(other.private_test.ids, a.private_test.ids)


def test_holdout_does_not_depend_on_stored_order():
  rng = np.random.default_rng(0)
  labels, ids = rng.integers(0, 4, 300), rng.permutation(10_000)[:300]
  mask = splits_lib.holdout_mask(labels, ids, 0.25)
  perm = rng.permutation(300)
  mask_perm = splits_lib.holdout_mask(labels[perm], ids[perm], 0.25)
  assert set(ids[mask]) == set(ids[perm][mask_perm])
  order = splits_lib.fixed_order(np.arange(300), labels, ids)
  order_perm = splits_lib.fixed_order(np.arange(300), labels[perm], ids[perm])
  np.testing.assert_array_equal(ids[order], ids[perm][order_perm])


def test_max_per_split_caps_stratified_and_prefix(digits_dir):
  small = load_splits(_digits_config(digits_dir, max_per_split=7))
  big = load_splits(_digits_config(digits_dir, max_per_split=20))
  full = load_splits(_digits_config(digits_dir))
  for ps, pb, pf in zip(_parts(small), _parts(big), _parts(full)):
    assert len(ps) == 7 and len(pb) == 20
    assert set(ps.labels.tolist()) == set(range(5))  # Every class present.
    np.testing.assert_array_equal(pb.ids[:7], ps.ids)  # A prefix of one order.
    np.testing.assert_array_equal(pf.ids[:20], pb.ids)
  huge = load_splits(_digits_config(digits_dir, max_per_split=10_000))
  assert [len(p) for p in _parts(huge)] == [len(p) for p in _parts(full)]


def test_digits_wrong_channels_or_size(digits_dir):
  with pytest.raises(ValueError, match=r'config\.channels'):
    load_splits(_digits_config(digits_dir, channels=3))
  with pytest.raises(ValueError, match=r'config\.image_size=12'):
    load_splits(_digits_config(digits_dir, image_size=12))
  # Integer downscale and padding are fine.
  assert load_splits(_digits_config(digits_dir, image_size=8)).image_shape == (8, 8, 1)
  padded = load_splits(_digits_config(digits_dir, image_size=20, max_per_split=5))
  assert padded.private_train.images[:, :2].max() == 0.0


def test_unknown_dataset_and_bad_config(tmp_path):
  c = _digits_config(str(tmp_path), dataset='svhn')
  with pytest.raises(ValueError, match='svhn') as e:
    load_splits(c)
  for name in KNOWN_DATASETS:
    assert name in str(e.value)
  with pytest.raises(ValueError, match='disjoint'):
    load_splits(_digits_config(str(tmp_path), attack_classes=[4, 5]))
  with pytest.raises(ValueError, match='test_fraction'):
    load_splits(_digits_config(str(tmp_path), test_fraction=1.0))


# ------------------------------------------------------------- facescrub ----


def _write_faces(root, identities=6, per_identity=5):
  rng = np.random.default_rng(0)
  for i in range(identities):
    folder = root / f'Person_{chr(ord("F") - i)}'  # Created in reverse order.
    folder.mkdir(parents=True)
    for j in range(per_identity):
      h, w = int(rng.integers(40, 120)), int(rng.integers(40, 120))
      pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
      ext = 'png' if j % 2 else 'JPG'
      Image.fromarray(pixels, 'RGB').save(folder / f'img_{j}.{ext}')
    (folder / 'notes.txt').write_text('not an image')
  (root / 'Empty_Person').mkdir()  # No images: not an identity.


def _facescrub_config(data_dir, manual_dir, **overrides):
  c = common.base_config()
  c.dataset, c.image_size, c.channels = 'facescrub', 64, 1
  c.data_dir, c.manual_dir = str(data_dir), str(manual_dir)
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def test_facescrub_builds_from_identity_folders(tmp_path):
  manual = tmp_path / 'faces'
  _write_faces(manual)
  s = load_splits(_facescrub_config(tmp_path / 'tfds', manual))
  assert (s.num_private_classes, s.num_attack_classes) == (3, 3)
  assert s.class_names == tuple(f'Person_{c}' for c in 'ABCDEF')
  assert s.private_classes == (0, 1, 2) and s.attack_classes == (3, 4, 5)
  for name, part in zip(SPLIT_NAMES, _parts(s)):
    assert part.images.shape[1:] == (64, 64, 1), name
    assert 0.0 <= part.images.min() and part.images.max() <= 1.0
    assert set(part.labels.tolist()) == {0, 1, 2}, name
  # 5 images per identity, test_fraction 0.2: 4 train + 1 test each.
  assert [len(p) for p in _parts(s)] == [12, 3, 12, 3]
  ids = np.concatenate([p.ids for p in _parts(s)])
  assert len(set(ids.tolist())) == 30
  # The image is the grey 64x64 of the file (ids: sorted identity, file).
  files = sorted((n, f) for n in os.listdir(manual) for f in
                 os.listdir(manual / n) if not f.endswith('.txt'))
  name, file = files[s.attack_test.ids[0]]
  assert name == s.class_names[3 + s.attack_test.labels[0]]
  with Image.open(manual / name / file) as im:
    want = np.asarray(im.convert('L').resize((64, 64), Image.BILINEAR)) / 255
  np.testing.assert_allclose(s.attack_test.images[0, ..., 0], want, atol=1e-6)

  # Built once: the raw folder is no longer needed; 64 -> 32 averages 2x2.
  for f in manual.glob('*/*'):
    f.unlink()
  small = load_splits(_facescrub_config(tmp_path / 'tfds', tmp_path / 'gone',
                                        image_size=32))
  np.testing.assert_array_equal(small.attack_test.ids, s.attack_test.ids)
  np.testing.assert_allclose(
      small.attack_test.images,
      s.attack_test.images.reshape(-1, 32, 2, 32, 2, 1).mean(axis=(2, 4)),
      atol=1e-6)


def test_facescrub_missing_or_empty_folder(tmp_path):
  start = time.monotonic()
  with pytest.raises(DatasetNotFoundError) as e:
    load_splits(_facescrub_config(tmp_path / 'tfds', tmp_path / 'nowhere'))
  msg = str(e.value)
  assert str(tmp_path / 'nowhere') in msg
  assert 'manual_dir' in msg and '--config.manual_dir=' in msg
  assert '<manual_dir>/<Identity_Name>/<image files>' in msg
  (tmp_path / 'empty').mkdir()
  with pytest.raises(DatasetNotFoundError, match='Identity_Name'):
    load_splits(_facescrub_config(tmp_path / 'tfds', tmp_path / 'empty'))
  # Default manual_dir: <data_dir>/downloads/manual/facescrub.
  c = _facescrub_config(tmp_path / 'tfds', None)
  c.manual_dir = None
  with pytest.raises(FileNotFoundError) as e:
    load_splits(c)
  assert str(tmp_path / 'tfds' / 'downloads' / 'manual' / 'facescrub') in str(e.value)
  assert time.monotonic() - start < 5


# ----------------------------------------------------------- mnist-style ----


def _prepare_fake_public(dataset_name, data_dir, num_train=40, num_test=10):
  """Writes what `tfds build NAME --file_format=array_record` would write.

  The fake builder takes the name, version and features of the real TFDS
  builder, so the real one (tfds.builder(NAME)) reads the files through the
  same code path as real data. Images are PNG bytes: TFDS encodes numpy
  images with TensorFlow. Labels are i % 10; train is 0..num_train-1.
  """
  real = tfds.builder(dataset_name, data_dir=str(data_dir))  # Info only.
  features = real.info.features
  shape = features['image'].shape

  class Fake(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = dataset_name
    VERSION = real.VERSION
    code_path = None  # TFDS otherwise needs importlib_resources here.

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=features,
                                   supervised_keys=('image', 'label'))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(0, num_train),
              'test': self._generate_examples(num_train, num_train + num_test)}

    def _generate_examples(self, start, stop):
      for i in range(start, stop):
        image = fake_image(i, shape)
        buf = io.BytesIO()
        Image.fromarray(image[..., 0] if shape[-1] == 1 else image).save(
            buf, format='PNG')
        example = {'image': buf.getvalue(), 'label': i % 10}
        if 'id' in features:  # cifar10: a string id.
          example['id'] = f'example_{i}'
        yield i, example

  Fake(data_dir=str(data_dir)).download_and_prepare(file_format='array_record')
  return real


def fake_image(i, shape):
  # Non-zero everywhere, so that padding is visible; unique per example.
  image = np.random.default_rng(i).integers(1, 256, shape, dtype=np.uint8)
  image[0, 0, 0] = i % 255 + 1
  return image


@pytest.fixture(scope='module')
def mnist_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds_mnist')
  _prepare_fake_public('mnist', data_dir)
  return data_dir


def _mnist_config(data_dir, **overrides):
  c = common.base_config()
  c.dataset, c.image_size, c.channels = 'mnist', 32, 1
  c.data_dir = str(data_dir)
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def test_mnist_prepared_array_record_is_padded_to_32(mnist_dir):
  assert tfds.builder('mnist', data_dir=str(mnist_dir)).is_prepared()
  s = load_splits(_mnist_config(mnist_dir))
  assert s.image_shape == (32, 32, 1)
  # Labels i % 10: train 0..39, test 40..49; classes 0-4 private.
  assert [len(p) for p in _parts(s)] == [20, 5, 20, 5]
  originals = {fake_image(i, (28, 28, 1)).tobytes(): i for i in range(50)}
  seen = set()
  for name, part in zip(SPLIT_NAMES, _parts(s)):
    images = part.images
    assert images.shape[1:] == (32, 32, 1)
    border = np.concatenate([images[:, :2].ravel(), images[:, -2:].ravel(),
                             images[:, :, :2].ravel(), images[:, :, -2:].ravel()])
    assert np.all(border == 0)
    for image, label in zip(images, part.labels):
      centre = np.round(image[2:30, 2:30] * 255).astype(np.uint8)
      i = originals[centre.tobytes()]  # KeyError if not a padded original.
      assert (i >= 40) == name.endswith('test')
      assert label == i % 10 - (5 if name.startswith('attack') else 0)
      seen.add(i)
  assert seen == set(range(50))
  capped = load_splits(_mnist_config(mnist_dir, max_per_split=5))
  assert all(set(p.labels.tolist()) == set(range(5)) for p in _parts(capped))


def test_mnist_wrong_image_size(mnist_dir):
  with pytest.raises(ValueError) as e:
    load_splits(_mnist_config(mnist_dir, image_size=20))
  assert '28x28x1' in str(e.value) and 'config.image_size=20' in str(e.value)
  with pytest.raises(ValueError, match=r'--config.channels=1'):
    load_splits(_mnist_config(mnist_dir, channels=3))


def test_mnist_missing_fails_fast_with_instructions(tmp_path):
  start = time.monotonic()
  with pytest.raises(DatasetNotFoundError) as e:
    load_splits(_mnist_config(tmp_path))
  assert time.monotonic() - start < 5
  assert isinstance(e.value, FileNotFoundError)
  msg = str(e.value)
  assert str(tmp_path) in msg
  assert 'tfds build mnist --file_format=array_record' in msg
  assert '--config.data_dir=' in msg
  assert not (tmp_path / 'mnist').exists()  # Nothing created, no download.
  for name in ('fashion_mnist', 'cifar10'):
    with pytest.raises(DatasetNotFoundError, match=f'tfds build {name}'):
      load_splits(_mnist_config(tmp_path, dataset=name))


def test_mnist_tfrecord_only_says_array_record(tmp_path):
  real = _prepare_fake_public('mnist', tmp_path, num_train=10, num_test=10)
  info_path = tmp_path / 'mnist' / str(real.version) / 'dataset_info.json'
  info = json.loads(info_path.read_text())
  info['fileFormat'] = 'tfrecord'
  info_path.write_text(json.dumps(info))
  with pytest.raises(DatasetNotFoundError, match='must be array_record'):
    load_splits(_mnist_config(tmp_path))


def test_cifar10_style_rgb(tmp_path):
  _prepare_fake_public('cifar10', tmp_path)
  s = load_splits(_mnist_config(tmp_path, dataset='cifar10', channels=3))
  assert s.image_shape == (32, 32, 3)
  assert [len(p) for p in _parts(s)] == [20, 5, 20, 5]
  ids = np.concatenate([p.ids for p in _parts(s)])
  assert sorted(ids.tolist()) == list(range(50))  # Test ids offset by 40.
  image = s.attack_test.images[0]
  i = [j for j in range(40, 50)
       if np.array_equal(np.round(image * 255), fake_image(j, (32, 32, 3)))]
  assert len(i) == 1 and s.attack_test.labels[0] == i[0] % 10 - 5
  with pytest.raises(ValueError, match=r'--config.channels=3'):
    load_splits(_mnist_config(tmp_path, dataset='cifar10', channels=1))
