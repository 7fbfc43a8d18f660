"""Defended predictions for deployment: a trained classifier and a fitted defense as one object.

  defender = Defender.from_workdir('runs/digits', None, defense)   # the workdir's config.json
  defended = defender(images)                  # [N, m] defended confidence vectors of [N, H, W, C]
  defended = defender.defend(probs, images=x)  # defend clean vectors you computed yourself
  defended, labels = defender.predict(images)

`from_workdir` reads two things of a workdir and trains nothing: the target classifier's stage
checkpoint (`<workdir>/checkpoints/classifier`, restored by `stages.load_classifier`) and the
defense's serving artefact (`<workdir>/serving/`, `defenses.artefact`), written when the defense
was fitted for the workdir's config. Neither the dataset nor the evaluation classifier is read. How
a defense serves is its own business (`defenses.protocol`: `export` / `serve`, or `apply` on plain
settings); this module names no defense. A missing artefact fails naming the command that writes it.

Every backend is called with any number of rows: jitted ones (the classifier here, LPA's online
crafting, generators, retrained classifiers) cut each request into chunks of at most
config.serve.max_batch rows and pad each chunk to a power of two (`parallel.bucket_size`), so any
request size compiles at most log2(max_batch) + 1 shapes.

A defender never returns an undefended vector. Every output row is checked (finite, entries in
[0, 1], sum 1, the clean vector's label, and for defenses whose rows always move, e.g. LPA and the
VAE, actually moved and produced by a finite network output / alignment loss); when any row fails,
or the defense raises, `defend` raises `DefenseError` naming the failed rows (its `.defended` holds
the rows that passed and NaN for the rest), never the clean vectors of those rows.
"""

import os
import threading

import jax
import numpy as np

from mip_jax import defenses
from mip_jax.defenses import artefact, protocol
from mip_jax.protocol import metrics, rules, run_config, stages
from mip_jax.runtime import parallel

# Tolerances of the output checks (float32 vectors): entries in [-TOL, 1 + TOL], |sum - 1| <= m * TOL.
TOL = 1e-4
# A row within this max-abs distance of its clean vector counts as unchanged: a failed crafting or
# generator that falls back to c still renormalises it, which moves entries by a few float32 ulps.
UNCHANGED_TOL = 1e-6
RULES = {'serve.max_batch': (rules.above(0, integer=True),)}


class DefenseError(RuntimeError):
  """The defense failed for some rows; those rows get this error, never their clean vectors.

  Attributes:
    defense: the defense's name.
    rows: indices (in the request) of the failed rows, ascending.
    reasons: {row: why it failed}.
    defended: [N, m] float32 with the rows that passed and NaN in the failed rows, or None when the
      defense produced nothing usable (it raised, or returned the wrong shape).
  """

  def __init__(self, defense: str, reasons: dict, num_rows: int, defended=None):
    self.defense = defense
    self.reasons = dict(sorted(reasons.items()))
    self.rows = list(self.reasons)
    self.defended = defended
    shown = '; '.join(f'row {i}: {r}' for i, r in list(self.reasons.items())[:3])
    more = f' (and {len(self.rows) - 3} more)' if len(self.rows) > 3 else ''
    super().__init__(f'defense {defense!r} failed for {len(self.rows)} of {num_rows} rows '
                     f'{self.rows[:20]}{"..." if len(self.rows) > 20 else ""}: {shown}{more}. '
                     f'These rows get no vector.')


def real_array(values, *, name: str) -> np.ndarray:
  """`values` as a numpy array of real numbers (int or float); ValueError naming `name` otherwise.

  Booleans, complex numbers (whose imaginary part a float cast would silently drop), strings and
  ragged nesting are refused instead of being coerced.
  """
  try:
    arr = np.asarray(values)
  except (ValueError, TypeError) as e:  # numpy 2 refuses ragged nested lists
    raise ValueError(f'{name} must be a rectangular array of numbers: {e}') from None
  if arr.dtype.kind not in 'iuf':
    what = {'b': 'booleans', 'c': 'complex numbers'}.get(arr.dtype.kind, 'not numeric')
    raise ValueError(f'{name} must hold real numbers (int or float), got {arr.dtype} ({what})')
  return arr


def check_images(images, image_shape: tuple[int, int, int]) -> np.ndarray:
  """Validates a batch of images; returns it as float32 [N, H, W, C].

  Args:
    images: array-like [N, H, W, C], or [N, H, W] for grey (C = 1) models; numbers in [0, 1].
    image_shape: the model's (H, W, C).

  Raises:
    ValueError naming what is wrong (ragged/non-numeric, shape, NaN/inf, pixel range).
  """
  arr = real_array(images, name='images [B, H, W(, C)]')
  h, w, ch = image_shape
  if arr.ndim == 3 and ch == 1:
    arr = arr[..., None]
  if arr.ndim != 4 or tuple(arr.shape[1:]) != (h, w, ch):
    accepted = f'[B, {h}, {w}, {ch}]' + (f' or [B, {h}, {w}]' if ch == 1 else '')
    raise ValueError(f'images must have shape {accepted} (a batch of the model\'s images), got '
                     f'{list(np.shape(images))}')
  if arr.dtype.kind == 'f':
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=(1, 2, 3)))
    if len(bad):
      raise ValueError(f'images {bad[:20].tolist()} hold NaN or inf values; send finite pixels')
  if arr.size:
    lo, hi = arr.min(axis=(1, 2, 3)), arr.max(axis=(1, 2, 3))
    bad = np.flatnonzero((lo < 0) | (hi > 1))
    if len(bad):
      i = bad[0]
      raise ValueError(f'pixel values must lie in [0, 1] (scale 8-bit images by 1/255); images '
                       f'{bad[:20].tolist()} do not (image {i}: range [{lo[i]:.4g}, {hi[i]:.4g}])')
  return arr.astype(np.float32)


def row_failures(clean: np.ndarray, defended: np.ndarray, ok: np.ndarray | None = None, *,
                 require_change: bool = False) -> dict[int, str]:
  """{row: reason} for every row of `defended` that is not a valid defended vector of `clean`.

  Args:
    clean: the clean vectors [N, m]; defended: what the defense returned for them.
    ok: optional per-row flag from the defense itself (False: it failed internally).
    require_change: a row equal to its clean vector fails (for defenses that always move vectors,
      so that an internal failure that falls back to c is caught).

  Returns:
    An empty dict when every row is valid.
  """
  n, m = clean.shape
  defended = np.asarray(defended)
  if defended.shape != clean.shape:
    return {i: f'the defense returned shape {list(defended.shape)}, expected {[n, m]}'
            for i in range(n)}
  reasons = {}
  d = defended.astype(np.float64)
  finite = np.isfinite(d).all(axis=1)
  in_box = np.all((d >= -TOL) & (d <= 1 + TOL), axis=1)
  sums = np.abs(d.sum(axis=1) - 1) <= TOL * m
  label = np.argmax(np.where(np.isfinite(d), d, -np.inf), axis=1) == np.argmax(clean, axis=1)
  moved = np.max(np.abs(d - clean), axis=1) > UNCHANGED_TOL
  for i in range(n):
    if ok is not None and not ok[i]:
      reasons[i] = 'the defense failed internally (non-finite network output or alignment loss)'
    elif not finite[i]:
      reasons[i] = 'non-finite output'
    elif not in_box[i] or not sums[i]:
      reasons[i] = f'not a probability vector (sum {d[i].sum():.6f}, range [{d[i].min():.4g}, ' \
                   f'{d[i].max():.4g}])'
    elif not label[i]:
      reasons[i] = f'label changed from {int(np.argmax(clean[i]))} to {int(np.argmax(d[i]))}'
    elif require_change and not moved[i]:
      reasons[i] = 'the vector came back unchanged (undefended)'
  return reasons


class Defender:
  """A classifier and a defense; callable on images, thread-safe (calls are serialised).

  Build it with `from_workdir`; the constructor takes the parts directly:

  Args:
    classifier: (model, variables) of the target classifier.
    image_shape: the classifier's (H, W, C).
    defense: the defense's name (for messages).
    backend: `backend(probs, images) -> (defended, ok or None)` for float32 inputs
      (`protocol.Backend.fn`).
    needs_images: the backend needs the queried images (`protocol.Backend.needs_images`).
    require_change: rows returned unchanged count as failures (`protocol.Backend.moves_rows`).
    max_batch: rows per compiled call of the classifier (longer inputs are processed in chunks).
  """

  def __init__(self, *, classifier, image_shape, defense: str, backend, needs_images: bool = False,
               require_change: bool = False, max_batch: int = 256):
    model, variables = classifier
    self.image_shape = tuple(int(s) for s in image_shape)
    self.defense = defense
    self.needs_images = needs_images
    self.max_batch = int(max_batch)
    self._backend = backend
    self._require_change = require_change
    self._variables = jax.device_put(variables)
    self._probs_fn = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False), axis=-1))
    out = jax.eval_shape(self._probs_fn, self._variables,
                         jax.ShapeDtypeStruct((1, *self.image_shape), np.float32))
    self.num_classes = int(out.shape[-1])
    # Serialised: some defenses' apply keeps state (RNGs, caches), and on a CPU one call already
    # uses every core.
    self._lock = threading.Lock()

  @classmethod
  def from_workdir(cls, workdir: str, config=None, defense: str | None = None, *,
                   mesh=None) -> 'Defender':
    """Loads the trained classifier and the serving artefact of `defense` in `workdir`.

    Args:
      workdir: a run directory in which `defense` was fitted (e.g. by launch.compare).
      config: the run's config; None: the one saved in the workdir (`run_config`). A given config
        must match the saved one (run_config.ConfigMismatchError names the differing fields).
      defense: a registered defense name (required; None fails listing them).
      mesh: device mesh of defenses that split batches over devices (default: all devices).

    Raises:
      ValueError (unknown defense; ConfigMismatchError), FileNotFoundError (no classifier stage,
      no saved config, or `artefact.MissingArtefactError`: the defense was not fitted for this
      config), train.StageNotTrainedError, checkpoints.StageMismatchError.
    """
    module = defenses.get(defense)
    if not os.path.isdir(os.path.join(workdir, 'checkpoints', 'classifier')):
      raise FileNotFoundError(
          f'{workdir!r} holds no trained classifier (checkpoints/classifier); train the workdir '
          f'first, e.g. python -m launch.compare --config=... --workdir={workdir} '
          f'--defenses={defense}')
    if config is None:
      config = run_config.load(workdir)
    else:
      run_config.check_matches(workdir, config)
    stored = artefact.load(workdir, defense, config)
    classifier = stages.load_classifier(config.classifier, stored.classifier, workdir=workdir,
                                        mesh=mesh)
    backend = protocol.serve(module, stored.artefact, config, mesh or parallel.data_mesh())
    return cls(classifier=classifier, image_shape=stored.classifier['image_shape'],
               defense=defense, backend=backend.fn, needs_images=backend.needs_images,
               require_change=backend.moves_rows, max_batch=config.serve.max_batch)

  def classify(self, images) -> np.ndarray:
    """Clean softmax vectors [N, m] of validated images (jitted, chunked, padded)."""
    images = check_images(images, self.image_shape)
    out = []
    for _, n, (padded, _) in parallel.padded_batches((images,), self.max_batch,
                                                     pad_to=parallel.bucket_size):
      out.append(np.asarray(self._probs_fn(self._variables, padded))[:n])
    return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)

  def defend(self, probs, images=None) -> np.ndarray:
    """Defended vectors for clean vectors `probs` [N, m] (of `images` [N, H, W, C], when given).

    Raises:
      ValueError: invalid probs / images, or images missing for a defense that needs them.
      DefenseError: the defense failed for some rows (see the class).
    """
    probs = real_array(probs, name='probs').astype(np.float32)
    if probs.ndim != 2 or len(probs):  # an empty [0, m] batch is valid and has nothing to check
      metrics.check_probability_vectors(probs, name='probs')
    if probs.shape[1] != self.num_classes:
      raise ValueError(f'probs must have {self.num_classes} entries per row (the classifier\'s '
                       f'classes), got {probs.shape[1]}')
    if images is not None:
      images = check_images(images, self.image_shape)
      if len(images) != len(probs):
        raise ValueError(f'{len(images)} images for {len(probs)} vectors; pass one per vector')
    elif self.needs_images:
      raise ValueError(f'defense {self.defense!r} needs the queried images: defend(probs, images)')
    n = len(probs)
    if n == 0:
      return np.zeros_like(probs)
    with self._lock:
      try:
        defended, ok = self._backend(probs, images)
      except Exception as e:  # the request's rows all failed; never fall back to clean vectors
        raise DefenseError(self.defense, {i: f'{type(e).__name__}: {e}' for i in range(n)},
                           n) from e
    reasons = row_failures(probs, defended, ok, require_change=self._require_change)
    if reasons:
      partial = None
      if np.shape(defended) == probs.shape:
        partial = np.array(defended, np.float32)
        partial[list(reasons)] = np.nan
      raise DefenseError(self.defense, reasons, n, partial)
    return np.asarray(defended, np.float32)

  def __call__(self, images) -> np.ndarray:
    """Defended vectors [N, m] for images [N, H, W, C] (or [N, H, W] for grey models)."""
    images = check_images(images, self.image_shape)
    return self.defend(self.classify(images), images)

  def predict(self, images) -> tuple[np.ndarray, np.ndarray]:
    """(defended vectors [N, m], labels [N]); the labels are the classifier's (the defense keeps them)."""
    defended = self(images)
    return defended, np.argmax(defended, axis=1)
