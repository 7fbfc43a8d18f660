"""HTTP serving of defended predictions: a Starlette app around a `Defender`, run by uvicorn.

  POST /defend  {"images": [B x H x W (x C) nested lists of numbers in [0, 1]]}
       200 -> {"defense": "vae", "defended": [[...m floats], ...], "labels": [int, ...]}
  POST /defend  with Content-Type: application/x-npy, the batch as one .npy file (np.save of a
       [B, H, W(, C)] float or int array; no pickled objects): the same answer. A batch of 256
       32x32 images is 5.9 MB of JSON that takes longer to parse than the classifier takes to
       run; as .npy it is 1 MB read in microseconds (launch.benchmark --serving_defenses times both).
  GET  /health
       200 -> {"status": "ok", "defense", "image_shape": [H, W, C], "num_classes", "max_batch"}

Errors answer JSON {"detail": message}:
  400  the body is not JSON, or not an object with an "images" field (an .npy body: not a
       readable .npy file, or one holding pickled objects)
  413  the body is larger than a full batch can be, or the batch holds more than max_batch images
  422  images that are not a rectangular array of numbers of shape [B, H, W(, C)], hold NaN/inf, or
       have pixels outside [0, 1]
  500  the defense failed for some rows (`DefenseError`): "failed_rows" lists them, "defended" holds
       the vectors of the other rows and null for the failed ones (never their clean vectors)
The server keeps serving after each of them.

Why Starlette and not a pydantic model: the body is one big numeric array that numpy validates in
one pass with messages about shapes and pixel ranges; element-wise pydantic validation would be
slower and say less. Defender calls run in a worker thread so /health answers during a long batch.
"""

import io
import json
import logging
import math
import socket

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mip_jax.serving.defender import DefenseError, check_images

# Generous bytes per pixel value in a JSON body ("0.12345678901234567, "), for the body size limit.
BYTES_PER_VALUE = 32
NPY = 'application/x-npy'  # the Content-Type of a binary batch (an .npy file)


class RequestError(Exception):
  """A request the server refuses: HTTP `status` with a message for the client."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status
    self.message = message


def max_body_bytes(image_shape, max_batch: int) -> int:
  """The largest body a request of `max_batch` images can reasonably need."""
  return max_batch * math.prod(image_shape) * BYTES_PER_VALUE + 4096


def parse_images(body: bytes, *, image_shape, max_batch: int) -> np.ndarray:
  """The validated images of a /defend body as float32 [B, H, W, C].

  Raises:
    RequestError with status 400 (not JSON / no "images"), 413 (too many images) or 422 (shape,
    dtype, NaN/inf, range).
  """
  try:
    payload = json.loads(body)
  except (ValueError, RecursionError) as e:  # JSONDecodeError and bad UTF-8 are ValueErrors
    raise RequestError(400, f'malformed JSON: {e}') from None
  if not isinstance(payload, dict) or 'images' not in payload:
    raise RequestError(400, 'expected a JSON object {"images": [[...], ...]} with a batch of '
                       f'images of shape [B, {", ".join(map(str, image_shape))}]')
  images = payload['images']
  if not isinstance(images, list):
    raise RequestError(422, f'"images" must be a list (a batch), got {type(images).__name__}')
  if not images:
    raise RequestError(422, '"images" is empty; send at least one image')
  # numpy turns a true/false among numbers into 1.0/0.0; JSON booleans are not pixels. The byte
  # search keeps the walk off the common path.
  if (b'true' in body or b'false' in body) and _holds_bool(images):
    raise RequestError(422, 'images must hold numbers in [0, 1], found true/false; send numbers')
  return _checked(images, image_shape=image_shape, max_batch=max_batch)


def parse_npy(body: bytes, *, image_shape, max_batch: int) -> np.ndarray:
  """The validated images of an application/x-npy /defend body as float32 [B, H, W, C].

  Raises:
    RequestError with status 400 (not an .npy file, or pickled objects), 413 (too many images) or
    422 (shape, dtype, NaN/inf, range).
  """
  try:
    images = np.load(io.BytesIO(body), allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:  # not .npy; object arrays need pickle
    raise RequestError(400, f'malformed .npy body: {e}; send np.save of a [B, '
                       f'{", ".join(map(str, image_shape))}] float32 array') from None
  if not isinstance(images, np.ndarray):
    raise RequestError(400, 'expected one .npy array (np.save), got an .npz archive')
  return _checked(images, image_shape=image_shape, max_batch=max_batch)


def _checked(images, *, image_shape, max_batch: int) -> np.ndarray:
  """`check_images` with its ValueError as a 422, then the batch size limit (413)."""
  try:
    images = check_images(images, tuple(image_shape))
  except ValueError as e:
    raise RequestError(422, str(e)) from None
  # After the shape check, so an unbatched image is reported as such, not as a batch of its rows.
  if len(images) > max_batch:
    raise RequestError(413, f'a request may hold at most {max_batch} images (config.serve.'
                       f'max_batch), got {len(images)}; split the batch')
  return images


def _holds_bool(nested) -> bool:
  stack = [nested]
  while stack:
    value = stack.pop()
    if isinstance(value, list):
      stack.extend(value)
    elif isinstance(value, bool):
      return True
  return False


def make_app(defender, *, max_batch: int | None = None) -> Starlette:
  """The Starlette app serving `defender` (a `mip_jax.serving.defender.Defender`)."""
  max_batch = int(max_batch or defender.max_batch)
  body_limit = max_body_bytes(defender.image_shape, max_batch)

  async def health(request: Request) -> JSONResponse:
    del request
    return JSONResponse({'status': 'ok', 'defense': defender.defense,
                         'image_shape': list(defender.image_shape),
                         'num_classes': defender.num_classes, 'max_batch': max_batch})

  async def read_body(request: Request) -> bytes:
    declared = request.headers.get('content-length')
    if declared is not None and declared.isdigit() and int(declared) > body_limit:
      raise RequestError(413, f'request body of {declared} bytes exceeds the limit of '
                         f'{body_limit} bytes ({max_batch} images)')
    chunks, size = [], 0
    async for chunk in request.stream():  # bounded even without a Content-Length header
      size += len(chunk)
      if size > body_limit:
        raise RequestError(413, f'request body exceeds the limit of {body_limit} bytes '
                           f'({max_batch} images)')
      chunks.append(chunk)
    return b''.join(chunks)

  async def defend(request: Request) -> JSONResponse:
    try:
      body = await read_body(request)
      parse = parse_npy if request.headers.get('content-type', '').startswith(NPY) \
          else parse_images
      images = parse(body, image_shape=defender.image_shape, max_batch=max_batch)
    except RequestError as e:
      return JSONResponse({'detail': e.message}, status_code=e.status)
    try:
      defended, labels = await run_in_threadpool(defender.predict, images)
    except DefenseError as e:
      rows = None
      if e.defended is not None:
        rows = [None if i in e.reasons else v.tolist() for i, v in enumerate(e.defended)]
      return JSONResponse({'detail': str(e), 'failed_rows': e.rows, 'defended': rows},
                          status_code=500)
    return JSONResponse({'defense': defender.defense, 'defended': defended.tolist(),
                         'labels': labels.tolist()})

  return Starlette(routes=[Route('/health', health, methods=['GET']),
                           Route('/defend', defend, methods=['POST'])])


def bind(host: str, port: int) -> socket.socket:
  """A listening TCP socket on (host, port); port 0 picks a free one (read it from getsockname)."""
  family = socket.AF_INET6 if ':' in host else socket.AF_INET
  sock = socket.socket(family, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  sock.bind((host, port))
  sock.listen(128)
  sock.set_inheritable(True)
  return sock


def make_server(app: Starlette, *, log_level: str = 'info') -> uvicorn.Server:
  """A uvicorn server for `app`; run it with `server.run(sockets=[bind(host, port)])`."""
  logging.getLogger('uvicorn.error').setLevel(log_level.upper())
  return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False))
