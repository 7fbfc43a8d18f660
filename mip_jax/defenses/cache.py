"""Crafted vectors saved in `<workdir>/perturbations/`: crafted once, reused by later runs.

A file's name is a hash of everything its vectors depend on (the caller's key: crafting settings,
seed, substitute and target gradient, the clean vectors and the images), so a changed input crafts
afresh instead of reusing vectors crafted against something else. Files are written whole (tmp then
rename): a killed run leaves no half-written file. With several JAX processes process 0 writes them.
"""

import os
from typing import Callable

import numpy as np

from mip_jax.runtime import files


def cached(workdir: str, prefix: str, key: str, craft: Callable[[], dict]) -> np.ndarray:
  """The `defended` array of `<workdir>/perturbations/<prefix>_<key>.npz`, crafted when missing.

  `craft()` returns a dict of arrays with at least 'defended'; all of them are saved.
  """
  path = os.path.join(workdir, 'perturbations', f'{prefix}_{key}.npz')
  if os.path.exists(path):
    with np.load(path) as f:
      return f['defended']
  arrays = craft()
  save_arrays(path, arrays, prefix)
  return arrays['defended']


def save_arrays(path: str, arrays: dict, prefix: str = '') -> None:
  """Saves `arrays` to `path` (.npz), whole, by process 0 only; all processes wait for it.

  With several JAX processes every one crafted the same vectors: one writes, and the barrier keeps a
  later `cached` check from seeing the file in one process and not in another. Resume tests kill
  the run at `<prefix>:write`, between the temporary file and its rename.
  """
  files.write_npz(path, arrays, killpoint=f'{prefix}:write')
