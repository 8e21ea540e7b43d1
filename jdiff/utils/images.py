"""Image grids as PNG, written atomically (a crash never leaves a half-written file)."""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from jdiff.utils import files


def to_uint8(images) -> np.ndarray:
  """``[N, H, W, C]`` floats in [-1, 1] to uint8 in [0, 255] (values outside are clipped). An image
  holding any NaN or Inf becomes a black-and-white checkerboard (4-pixel squares), so a diverged
  sample is never drawn as if it were a plausible one."""
  x = np.asarray(images, np.float32)
  bad = ~np.isfinite(x).all(axis=tuple(range(1, x.ndim))) if x.ndim >= 2 else np.zeros((0,), bool)
  x = np.where(np.isfinite(x), x, 0.0)
  out = np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
  if bad.any() and x.ndim == 4:
    h, w = x.shape[1:3]
    checker = ((np.arange(h)[:, None] // 4 + np.arange(w)[None, :] // 4) % 2 * 255).astype(np.uint8)
    out[bad] = checker[:, :, None]
  return out


def make_grid(images, ncols: int | None = None, pad: int = 2) -> np.ndarray:
  """Tile ``[N, H, W, C]`` images in [-1, 1] into one uint8 ``[rows*H', cols*W', C]`` array."""
  x = to_uint8(images)
  if x.ndim != 4:
    raise ValueError(f"images must have shape [N, H, W, C], got {x.shape}")
  n, h, w, c = x.shape
  ncols = ncols or int(math.ceil(math.sqrt(n)))
  nrows = int(math.ceil(n / ncols))
  grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
  for i in range(n):
    r, q = divmod(i, ncols)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = x[i]
  return grid


def grid_png(images, ncols: int | None = None, scale: int = 1) -> bytes:
  """The PNG bytes of a grid of ``[N, H, W, C]`` images in [-1, 1] (C = 1 or 3), each pixel drawn as a
  ``scale`` x ``scale`` block; ``ncols`` defaults to ``ceil(sqrt(N))``."""
  g = make_grid(images, ncols)
  img = Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g)
  if scale > 1:
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  buf = io.BytesIO()
  img.save(buf, format="PNG")
  return buf.getvalue()


def save_grid(images, path: str, ncols: int | None = None, scale: int = 1) -> None:
  """Write a PNG grid of ``[N, H, W, C]`` images in [-1, 1] (C = 1 or 3) to ``path`` atomically."""
  files.write_bytes(path, grid_png(images, ncols, scale))
