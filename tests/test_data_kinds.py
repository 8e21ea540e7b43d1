"""Point sets and 1-D signals as data kinds: sources, the pipeline, and how samples are drawn and
written (PNG views / plots, PLY)."""
import numpy as np
import pytest

from jdiff import data
from jdiff.generation import files as gfiles
from jdiff.utils import images


def _points(n=6, p=16, seed=0):
  return np.random.default_rng(seed).normal(size=(n, p, 3)).astype(np.float32)


def test_array_source_kinds():
  pts = data.ArraySource(_points(), np.arange(6) % 2, name="p", split="train", num_classes=2,
                         kind="points")
  assert pts.kind == "points" and not pts.is_image and pts.shape == (16, 3)
  sig = data.ArraySource(np.zeros((4, 40, 1), np.float32), np.zeros(4), name="s", split="train",
                         num_classes=None, kind="signal")
  assert sig.kind == "signal" and sig.shape == (40, 1)
  img = data.ArraySource(np.zeros((2, 4, 4, 1), np.uint8), np.zeros(2), name="i", split="train",
                         num_classes=None)
  vec = data.ArraySource(np.zeros((2, 3)), np.zeros(2), name="v", split="train", num_classes=None)
  assert (img.kind, img.is_image, vec.kind, vec.is_image) == ("image", True, "vector", False)


@pytest.mark.parametrize("make, kind, match", [
    (lambda: np.zeros((4, 16, 2), np.float32), "points", r"point sets for 'x' must have shape \[N, P, 3\]"),
    (lambda: np.zeros((4, 16, 3), np.float32), None, "pass kind='points'"),
    (lambda: np.zeros((4, 16), np.float32), "signal", r"signal data must have shape \[N, L, C\]"),
    (lambda: np.full((4, 16, 3), np.nan, np.float32), "points", "contain NaN or Inf"),
    (lambda: np.zeros((4, 16, 3), np.float32), "cloud", "unknown data kind 'cloud'"),
])
def test_array_source_bad_input(make, kind, match):
  with pytest.raises(ValueError, match=match):
    data.ArraySource(make(), np.zeros(4), name="x", split="train", num_classes=None, kind=kind)


def test_pipeline_carries_point_sets_unscaled():
  x = _points(8)
  src = data.ArraySource(x, np.arange(8), name="p", split="train", num_classes=8, kind="points")
  pipe = data.Pipeline(src, 4, seed=0, num_local_devices=2, process_index=0, process_count=1)
  b = pipe.batch_at(0)
  assert b["image"].shape == (2, 2, 16, 3)
  idx = pipe.global_indices(0)
  np.testing.assert_array_equal(b["image"].reshape(4, 16, 3), x[idx])
  with pytest.raises(ValueError, match="random_flip needs an image dataset; 'p' holds points data"):
    data.Pipeline(src, 4, seed=0, random_flip=True, num_local_devices=1, process_index=0,
                  process_count=1)


def test_kind_of():
  assert data.kind_of("fashion_mnist", (28, 28, 1)) == "image"
  assert data.kind_of("mixture2d", (2,)) == "vector"
  assert data.kind_of("point_clouds", (512, 3)) == "points"
  assert data.kind_of("mnist1d", (40, 1)) == "signal"


def test_point_views_draw_where_the_points_are():
  # One point at the origin lands in the middle of the tile; one far away is clipped to the border.
  pts = np.zeros((2, 2, 3), np.float32)
  pts[1, :, 0] = [0.0, np.nan]
  v = images.point_views(pts, size=33)
  assert v.shape == (2, 33, 33, 1)
  dark = np.argwhere(v[0, ..., 0] < 0)
  np.testing.assert_array_equal(dark, [[16, 16]])
  assert (v[0] <= 1).all() and np.isnan(v[1]).all()  # a non-finite set is a NaN (checkerboard) tile


def test_signal_plots_trace_the_signal():
  # A rising ramp: the line starts at the bottom-left and ends at the top-right of its tile.
  ramp = np.linspace(-1, 1, 10, dtype=np.float32)[None, :, None]
  p = images.signal_plots(np.concatenate([ramp, -ramp]), height=11, xscale=1)
  assert p.shape == (2, 11, 10, 1)
  assert p[0, 10, 0, 0] < 0 and p[0, 0, 9, 0] < 0 and p[0, 0, 0, 0] == 1
  assert p[1, 0, 0, 0] < 0 and p[1, 10, 9, 0] < 0
  for j in range(10):  # every column holds some of the line
    assert (p[0, :, j, 0] < 0).any()


def test_preview_png_by_kind():
  from PIL import Image
  import io
  for kind, x in (("image", np.zeros((4, 8, 8, 1))), ("points", _points(4)),
                  ("signal", np.zeros((4, 40, 1)))):
    img = Image.open(io.BytesIO(images.preview_png(x, kind)))
    assert img.width > 0
  with pytest.raises(ValueError, match="no picture for 'vector' data"):
    images.preview_png(np.zeros((4, 2)), "vector")


def test_ply_round_trip():
  x = _points(3, 5)
  text = gfiles.ply_bytes(x, spacing=3.0).decode()
  header, body = text.split("end_header\n")
  assert "element vertex 15" in header and "property int sample" in header
  rows = np.array([[float(v) for v in line.split()] for line in body.strip().splitlines()])
  assert rows.shape == (15, 4)
  np.testing.assert_array_equal(rows[:, 3], np.repeat(np.arange(3), 5))
  # sample i sits in grid cell i (2 columns for 3 samples): undo the offsets and get the points back
  offsets = np.array([[0, 0, 0], [3, 0, 0], [0, -3, 0]], np.float32)
  back = rows[:, :3].reshape(3, 5, 3) - offsets[:, None, :]
  np.testing.assert_allclose(back, x, atol=1e-5)
