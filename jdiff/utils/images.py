"""Image grids as PNG, written atomically (a crash never leaves a half-written file), and the tiles
that draw data other than images in such a grid: point sets (:func:`point_views`) and 1-D signals
(:func:`signal_plots`); :func:`preview_png` picks by data kind."""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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


# A fixed oblique camera for point sets: azimuth 35 degrees about z, then elevation 25 degrees.
_AZIMUTH, _ELEVATION = math.radians(35.0), math.radians(25.0)


def _camera() -> np.ndarray:
  ca, sa, ce, se = math.cos(_AZIMUTH), math.sin(_AZIMUTH), math.cos(_ELEVATION), math.sin(_ELEVATION)
  rz = np.array([[ca, -sa, 0.0], [sa, ca, 0.0], [0.0, 0.0, 1.0]])
  rx = np.array([[1.0, 0.0, 0.0], [0.0, ce, -se], [0.0, se, ce]])
  return (rx @ rz).astype(np.float32)


def point_views(points, size: int = 64, extent: float = 1.25) -> np.ndarray:
  """Scatter views of point sets ``[N, P, 3]`` as gray images ``[N, size, size, 1]`` in [-1, 1] for
  :func:`grid_png`: an orthographic view from a fixed oblique camera, the box ``[-extent, extent]^3``
  filling the tile (one scale for all samples, so sizes compare), nearer points darker. A set holding
  NaN or Inf gives a NaN tile (drawn as a checkerboard)."""
  x = np.asarray(points, np.float32)
  if x.ndim != 3 or x.shape[-1] != 3:
    raise ValueError(f"point sets must have shape [N, P, 3], got {x.shape}")
  n, p, _ = x.shape
  out = np.ones((n, size, size, 1), np.float32)
  v = np.einsum("ij,npj->npi", _camera(), np.where(np.isfinite(x), x, 0.0))
  col = np.clip(np.round((v[..., 0] / extent + 1.0) * 0.5 * (size - 1)), 0, size - 1).astype(int)
  row = np.clip(np.round((1.0 - v[..., 2] / extent) * 0.5 * (size - 1)), 0, size - 1).astype(int)
  depth = np.clip(v[..., 1] / extent, -1.0, 1.0)  # camera looks along +y: smaller y is nearer
  shade = 0.35 * depth - 0.45  # in [-0.8, -0.1]
  for i in range(n):
    order = np.argsort(-depth[i])  # far to near: nearer points are drawn last
    out[i, row[i, order], col[i, order], 0] = shade[i, order]
  out[~np.isfinite(x).all(axis=(1, 2))] = np.nan
  return out


def signal_plots(signals, height: int = 32, xscale: int = 2) -> np.ndarray:
  """Line plots of 1-D signals ``[N, L, C]`` as gray images ``[N, height, L * xscale, 1]`` in [-1, 1]
  for :func:`grid_png`: one value range for all samples (the finite min and max over the batch), each
  channel a dark polyline (channels in lighter grays). A signal holding NaN or Inf gives a NaN tile."""
  x = np.asarray(signals, np.float32)
  if x.ndim != 3:
    raise ValueError(f"signals must have shape [N, L, C], got {x.shape}")
  n, length, chans = x.shape
  finite = x[np.isfinite(x)]
  lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
  hi = hi if hi > lo else lo + 1.0
  width = length * xscale
  out = np.ones((n, height, width, 1), np.float32)
  xs = np.arange(width) / xscale  # the signal position under each pixel column
  for i in range(n):
    for c in range(chans):
      y = np.interp(xs, np.arange(length), np.where(np.isfinite(x[i, :, c]), x[i, :, c], lo))
      r = np.round((hi - y) / (hi - lo) * (height - 1)).astype(int)
      gray = -1.0 + 1.2 * c / max(chans, 2)
      for j in range(width):  # a vertical run joins each column's value to the next one's
        a, b = sorted((r[j], r[min(j + 1, width - 1)]))
        out[i, a:b + 1, j, 0] = gray
  out[~np.isfinite(x).all(axis=(1, 2))] = np.nan
  return out


def preview_png(samples, kind: str, ncols: int | None = None) -> bytes:
  """The PNG grid that shows samples of a data ``kind``: images as they are, point sets as
  :func:`point_views`, 1-D signals as :func:`signal_plots` (vectors have no picture: an error)."""
  if kind == "image":
    x = np.asarray(samples)
    return grid_png(x, ncols, scale=2 if max(x.shape[1:3]) < 64 else 1)
  if kind == "points":
    return grid_png(point_views(samples), ncols, scale=2)
  if kind == "signal":
    return grid_png(signal_plots(samples), ncols, scale=2)
  raise ValueError(f"no picture for {kind!r} data; only images, point sets and 1-D signals are drawn")


def _wrap(text: str, width_px: int, font, draw) -> list:
  """``text`` broken into lines no wider than ``width_px`` (a longer single word stays whole)."""
  lines, line = [], ""
  for word in text.split():
    trial = f"{line} {word}".strip()
    if line and draw.textlength(trial, font=font) > width_px:
      lines.append(line)
      line = word
    else:
      line = trial
  return lines + ([line] if line else [])


def captioned_grid_png(images, captions, ncols: int | None = None, scale: int = 3) -> bytes:
  """A PNG grid of ``[N, H, W, C]`` images in [-1, 1] with each image's caption written under it
  (wrapped to the tile's width, PIL's default font), e.g. text-to-image samples and their prompts."""
  x = to_uint8(images)
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"images must have shape [N, H, W, 1 or 3], got {x.shape}")
  if len(captions) != x.shape[0]:
    raise ValueError(f"{len(captions)} captions for {x.shape[0]} images; give one caption per image")
  n, h, w, _ = x.shape
  tile_w, pad = max(w * scale, 96), 4
  ncols = ncols or int(math.ceil(math.sqrt(n)))
  nrows = int(math.ceil(n / ncols))
  font = ImageFont.load_default()
  probe = ImageDraw.Draw(Image.new("L", (1, 1)))
  wrapped = [_wrap(str(c), tile_w, font, probe) for c in captions]
  line_h = int(math.ceil(sum(font.getmetrics()))) + 1
  text_h = line_h * max(1, max(len(l) for l in wrapped))
  cell_w, cell_h = tile_w + pad, h * scale + text_h + 2 * pad
  mode = "L" if x.shape[-1] == 1 else "RGB"
  canvas = Image.new(mode, (ncols * cell_w + pad, nrows * cell_h + pad), 255)
  draw = ImageDraw.Draw(canvas)
  for i in range(n):
    r, q = divmod(i, ncols)
    left, top = pad + q * cell_w, pad + r * cell_h
    tile = Image.fromarray(x[i, ..., 0] if mode == "L" else x[i]).resize((w * scale, h * scale),
                                                                          Image.NEAREST)
    canvas.paste(tile, (left + (tile_w - w * scale) // 2, top))
    for k, line in enumerate(wrapped[i]):
      draw.text((left, top + h * scale + pad + k * line_h), line, fill=0, font=font)
  buf = io.BytesIO()
  canvas.save(buf, format="PNG")
  return buf.getvalue()


def has_preview(kind: str) -> bool:
  return kind in ("image", "points", "signal")
