"""Every file a run writes besides Orbax checkpoints: written whole, by process 0 only.

  files.write_text(path, text)          # results.md, tables
  files.write_json(path, value)         # results.json, cells, config.json
  files.write_npz(path, arrays)         # crafted vectors, reconstructions
  files.write_with(path, fig.savefig)   # anything with a writer of its own (figures)
  files.remove(paths)

Each writes a temporary file next to `path` and renames it into place, so a run killed at any point
leaves the old file or the new one, never half of one. With several JAX processes the write runs on
process 0 between two barriers that every process passes (`parallel.on_main_process`), so a
process that checks for the file right after never disagrees with another.
"""

import json
import os
from typing import Any, Callable, Iterable

import numpy as np

from mip_jax.runtime import killpoints, parallel


def write_with(path: str, writer: Callable[[str], Any], *, killpoint: str | None = None) -> None:
  """`writer(tmp)` writes the file at a temporary path; it is then renamed to `path`.

  The temporary path keeps `path`'s extension (numpy and matplotlib choose formats by it).
  `killpoint` names a point (`killpoints`) between the write and the rename.
  """
  def write():
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    stem, ext = os.path.splitext(path)
    tmp = f'{stem}.tmp{ext}'
    writer(tmp)
    if killpoint:
      killpoints.reached(killpoint)
    os.replace(tmp, path)
  parallel.on_main_process(write, path)


def write_text(path: str, text: str) -> None:
  def writer(tmp):
    with open(tmp, 'w') as f:
      f.write(text)
  write_with(path, writer)


def write_json(path: str, value: Any, *, indent: int = 1) -> None:
  """JSON with numpy scalars and arrays as plain numbers and lists."""
  write_text(path, json.dumps(value, indent=indent, default=_plain) + '\n')


def write_npz(path: str, arrays: dict, *, killpoint: str | None = None) -> None:
  write_with(path, lambda tmp: np.savez(tmp, **arrays), killpoint=killpoint)


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def remove(paths: Iterable[str]) -> None:
  """Deletes the files that exist (process 0; everyone waits)."""
  paths = [p for p in paths]

  def delete():
    for p in paths:
      if os.path.exists(p):
        os.remove(p)
  parallel.on_main_process(delete, f'remove {len(paths)} files')


def _plain(value):
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  return float(value)
