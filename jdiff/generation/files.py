"""Files in and out of sampling: editing inputs (PNG images or ``.npy``/``.npz`` arrays, never
unpickled) and the outputs of ``sample.py`` (a PNG grid, the samples as ``.npz``, the settings as
``.json``, point sets as ``.ply``), written atomically.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from jdiff import _checks
from jdiff.data import text as text_data
from jdiff.utils import files
from jdiff.utils import images as image_utils


def _read_array(path: str, what: str) -> np.ndarray:
  if not os.path.isfile(path):
    raise ValueError(f"{what} file {path} does not exist")
  ext = os.path.splitext(path)[1].lower()
  try:
    if ext in (".npy", ".npz"):
      arrays = _checks.load_arrays(path, what)  # never unpickles: object arrays are refused
    else:
      from PIL import Image
      with Image.open(path) as img:
        return np.asarray(img)
  except ValueError as e:
    if _checks.PICKLE_REFUSED in str(e):
      raise
    raise ValueError(f"cannot read {what} {path} ({str(e).splitlines()[0][:100]}); give a PNG image or "
                     f"a .npy/.npz array") from None
  except Exception as e:  # PIL / numpy raise many types for unreadable files
    raise ValueError(f"cannot read {what} {path} ({type(e).__name__}); give a PNG image or a .npy/.npz "
                     f"array") from None
  if len(arrays) == 1:
    return next(iter(arrays.values()))
  if "samples" in arrays:
    return arrays["samples"]
  raise ValueError(f"{what} {path} holds arrays {sorted(arrays)}; expected one array or 'samples'")


def load_input(path: str, data_shape) -> np.ndarray:
  """Editing input as ``[M, *data_shape]`` float32 in the model's data space.

  A PNG (or other image file) is one image with values mapped from [0, 255] to [-1, 1] (grayscale or RGB
  to match the model's channels); a ``.npy``/``.npz`` array (e.g. the ``samples`` of an earlier
  ``sample.py`` run) is taken as is, one example of ``data_shape`` or ``[M, *data_shape]``.
  """
  shape = tuple(data_shape)
  ext = os.path.splitext(path)[1].lower()
  if ext in (".npy", ".npz"):
    a = _read_array(path, "input")
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer) and not np.issubdtype(a.dtype,
                                                                                      np.floating):
      raise ValueError(f"input {path} holds {a.dtype} values; give real numbers (float32 in the model's "
                       f"data range, e.g. [-1, 1] for images)")
    a = a.astype(np.float32)
  else:
    if len(shape) != 3 or shape[-1] not in (1, 3):
      raise ValueError(f"the model makes data of shape {shape}, not images; give the input as a .npy "
                       f"array of that shape")
    from PIL import Image
    _read_array(path, "input")  # existence and readability, one clear error
    with Image.open(path) as img:
      img = img.convert("L" if shape[-1] == 1 else "RGB")
      a = np.asarray(img, np.float32)
    if a.ndim == 2:
      a = a[..., None]
    a = a / 127.5 - 1.0
    if a.shape != shape:
      raise ValueError(f"input image {path} is {a.shape[1]}x{a.shape[0]} but the model makes "
                       f"{shape[1]}x{shape[0]} images; resize it to {shape[1]}x{shape[0]}")
  if a.shape == shape:
    a = a[None]
  if a.shape[1:] != shape:
    raise ValueError(f"input {path} has shape {a.shape} but the model makes data of shape {shape}; give "
                     f"one example of that shape or [N, *{shape}]")
  if not np.all(np.isfinite(a)):
    raise ValueError(f"input {path} contains NaN or Inf")
  return a


def load_mask(path: str, input_shape) -> np.ndarray:
  """Inpainting mask (1 = known: keep the input; 0 = generate) as ``[1 or M, ...]`` matching the input
  ``[M, *data_shape]`` (size-1 axes broadcast). A PNG is white = keep, black = generate (gray blends);
  an array holds values in [0, 1] and may leave out the channel axis of images."""
  xs = tuple(input_shape)
  shape = xs[1:]
  ext = os.path.splitext(path)[1].lower()
  m = _read_array(path, "mask")
  if ext not in (".npy", ".npz"):
    from PIL import Image
    with Image.open(path) as img:
      m = np.asarray(img.convert("L"), np.float32) / 255.0
  m = np.asarray(m, np.float32)
  image_like = len(shape) == 3
  if image_like and m.shape in (shape[:2], (xs[0],) + shape[:2], (1,) + shape[:2]):
    m = m[..., None]  # no channel axis: the same mask for every channel
  if m.ndim == len(shape):
    m = m[None]
  try:
    ok = m.ndim == len(xs) and np.broadcast_shapes(m.shape[1:], shape) == shape and \
        m.shape[0] in (1, xs[0])
  except ValueError:
    ok = False
  if not ok:
    what = "image" if image_like else "input"
    want = f"{shape[:2]} or {shape}" if image_like else f"{shape}"
    raise ValueError(f"mask {path} has shape {_squeeze_shape(m.shape)} but the {what} has shape "
                     f"{shape}; give a mask of shape {want}")
  if not np.all(np.isfinite(m)) or m.min() < 0 or m.max() > 1:
    raise ValueError(f"mask {path} values must lie in [0, 1] (1 = keep the input, 0 = generate)")
  return m


def _squeeze_shape(shape):
  shape = tuple(shape)
  return shape[1:] if len(shape) > 1 and shape[0] == 1 else shape


def ply_bytes(points, spacing: float = 3.0) -> bytes:
  """An ASCII PLY point cloud (Turk 1994) of point sets ``[N, P, 3]``: vertex ``x, y, z`` and the
  ``sample`` index each point belongs to. Sample ``i`` is translated to cell ``i`` of a square grid in
  the x-y plane (``spacing`` apart), so a viewer shows the sets side by side; the ``.npz`` holds the
  untranslated points."""
  x = np.asarray(points, np.float32)
  n, p, _ = x.shape
  ncols = int(np.ceil(np.sqrt(n)))
  rows, cols = np.divmod(np.arange(n), ncols)
  offset = np.stack([cols * spacing, -rows * spacing, np.zeros(n)], -1).astype(np.float32)
  v = (x + offset[:, None, :]).reshape(-1, 3)
  sample = np.repeat(np.arange(n), p)
  header = (f"ply\nformat ascii 1.0\ncomment jdiff samples: sample i at grid cell i, spacing "
            f"{spacing:g}\nelement vertex {n * p}\nproperty float x\nproperty float y\n"
            f"property float z\nproperty int sample\nend_header\n")
  body = "\n".join(f"{a:.6g} {b:.6g} {c:.6g} {i}" for (a, b, c), i in zip(v.tolist(), sample.tolist()))
  return (header + body + "\n").encode()


def prefix_tokens(vocab: str, length: int, prefix: str) -> tuple:
  """``(x_known [1, length] int32, mask [1, length] float32)`` that make every sample of a token model
  start with the text ``prefix`` (mask 1 on its positions). A character outside the model's vocabulary
  or a prefix longer than the model's sequence length is a ``ValueError``, never a silent change."""
  if not isinstance(prefix, str) or not prefix:
    raise ValueError("--prefix is empty; pass the text the samples should start with")
  unknown = sorted(set(prefix) - set(vocab))
  if unknown:
    shown = ", ".join(repr(ch) for ch in unknown[:10])
    raise ValueError(f"--prefix has {len(unknown)} character(s) outside the model's vocabulary of "
                     f"{len(vocab)} ({shown}); the model cannot represent them: remove or replace them")
  if len(prefix) > length:
    raise ValueError(f"--prefix has {len(prefix)} characters but the model generates {length}; pass "
                     f"at most {length}")
  index = {ch: k for k, ch in enumerate(vocab)}
  x = np.zeros((1, length), np.int32)
  x[0, :len(prefix)] = [index[ch] for ch in prefix]
  mask = np.zeros((1, length), np.float32)
  mask[0, :len(prefix)] = 1.0
  return x, mask


def texts_file(texts, indices) -> str:
  """Generated texts as one file: a ``=== sample i ===`` line (its global index) before each."""
  return "".join(f"=== sample {int(i)} ===\n{t}\n" for t, i in zip(texts, indices))


def write_outputs(base: str, result, info: dict, kind: str = "image", vocab: str = "",
                  arrays: Optional[dict] = None) -> dict:
  """Write ``base.npz`` (samples, indices, labels, x_init with save_noise; loadable with
  ``allow_pickle=False``), ``base.json`` (``info``; with a text-to-image model each sample's caption
  under ``captions``) and the data's pictures: ``base.png`` (a grid of images, with their captions
  written under them, of point-set views or of signal plots; none for vectors), for point sets ``base.ply``, for
  tokens ``base.txt`` (the texts decoded with ``vocab``, also listed under ``texts`` in the JSON).
  All are renamed into place only when all are complete (``jdiff.utils.files.write_all``), so an error
  never leaves a half-written output. Returns the paths written."""
  paths = {"npz": base + ".npz", "json": base + ".json"}
  tokens = kind == "tokens"
  extra, arrays = dict(arrays or {}), {"samples": result.samples.astype(np.int32 if tokens else np.float32),
            "indices": result.indices.astype(np.int64), "ts": result.ts.astype(np.float32)}
  if result.labels is not None:
    arrays["labels"] = result.labels.astype(np.int32)
  if result.x_init is not None:
    arrays["x_init"] = result.x_init.astype(np.float32)
  arrays.update(extra)  # e.g. a cascade's base samples
  blobs = {paths["npz"]: files.npz_bytes(arrays)}
  captions = getattr(result, "captions", None)
  if image_utils.has_preview(kind):
    paths["png"] = base + ".png"
    blobs[paths["png"]] = (image_utils.captioned_grid_png(result.samples, captions)
                           if captions is not None and kind == "image" else
                           image_utils.preview_png(result.samples, kind))
  if captions is not None:  # text-to-image: each sample's prompt, in the JSON and drawn under the grid
    info = dict(info, captions=list(captions))
  if kind == "points":
    paths["ply"] = base + ".ply"
    blobs[paths["ply"]] = ply_bytes(result.samples)
  if tokens:  # the texts: base.txt, and in the JSON
    texts = text_data.decode_rows(vocab, result.samples)
    paths["txt"] = base + ".txt"
    blobs[paths["txt"]] = texts_file(texts, result.indices).encode()
    info = dict(info, texts=texts)
  info = dict(info, outputs={k: os.path.abspath(v) for k, v in paths.items()})
  blobs[paths["json"]] = (json.dumps(info, indent=1) + "\n").encode()
  files.write_all(blobs)
  return paths
