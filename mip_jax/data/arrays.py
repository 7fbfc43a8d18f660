"""The in-memory data every stage consumes: ArraySplit and Splits."""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySplit:
  """Aligned examples of one split.

  Attributes:
    images: float32 [N, H, W, C] in [0, 1].
    labels: int32 [N], re-indexed within its part (0..m-1 or 0..k-1).
    ids: int64 [N], unique within a dataset across train and test (the TFDS
      `id` feature, or the position in the prepared split); defaults to
      0..N-1 when an ArraySplit is built by hand.
  """
  images: np.ndarray
  labels: np.ndarray
  ids: np.ndarray | None = None

  def __post_init__(self):
    if self.ids is None:
      object.__setattr__(self, 'ids', np.arange(len(self.labels), dtype=np.int64))
    if not len(self.images) == len(self.labels) == len(self.ids):
      raise ValueError(
          f'images, labels and ids must have the same length, got '
          f'{len(self.images)}, {len(self.labels)}, {len(self.ids)}')

  def __len__(self) -> int:
    return len(self.labels)

  def take(self, indices) -> 'ArraySplit':
    """The examples at `indices`, in that order."""
    return ArraySplit(self.images[indices], self.labels[indices],
                      self.ids[indices])


@dataclasses.dataclass(frozen=True, eq=False)
class Splits:
  """The four splits of the protocol (design section 2) and their metadata.

  Private and attack parts are disjoint by class; train and test are disjoint
  by id.

  Attributes:
    private_train, private_test: D_cla, the classifier's task.
    attack_train, attack_test: D_inv, the attacker's auxiliary data.
    num_private_classes: m, the classifier's output size.
    num_attack_classes: k.
    image_shape: (H, W, C) of every image.
    dataset: the config's dataset name.
    private_classes, attack_classes: the dataset's own labels of each part;
      private label i is the dataset's class private_classes[i].
    class_names: the dataset's names of all its classes.
  """
  private_train: ArraySplit
  private_test: ArraySplit
  attack_train: ArraySplit
  attack_test: ArraySplit
  num_private_classes: int
  num_attack_classes: int
  image_shape: tuple[int, int, int]
  dataset: str
  private_classes: tuple[int, ...] = ()
  attack_classes: tuple[int, ...] = ()
  class_names: tuple[str, ...] = ()
