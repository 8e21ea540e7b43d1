"""A synthetic 3-D shape dataset for point-cloud diffusion: six classes of surfaces, generated offline
(numpy only), deterministic by seed.

Each example is ``num_points`` points drawn **uniformly by area** on the surface of one shape, which is
then scaled by ``s ~ U[0.75, 1.25]`` and rotated by a uniform random rotation ``R`` (Haar measure on
SO(3)): ``x = s * p @ R.T`` for points ``p`` in the shape's own frame. Every shape is centred at the
origin (its area centroid) and has circumradius 0.8 at ``s = 1``, so every point has norm at most
``1.25 * 0.8 = 1`` (all coordinates in [-1, 1]; per-coordinate standard deviation ~0.4, which suits a
denoiser with ``sigma_data = 0.5``).

The classes (``CLASSES``, in label order) and their area densities in their own frame (z: the axis):

- ``sphere`` of radius 0.8: a normalised Gaussian vector (Muller 1959). By Archimedes' hat-box
  theorem ``z`` is then uniform on ``[-r, r]``.
- ``torus`` with major radius 0.56 and minor radius 0.24 (tube angle ``phi``, ring angle ``theta``):
  the area element is ``r (R + r cos phi) dphi dtheta``, so ``theta`` is uniform and ``phi`` has density
  proportional to ``R + r cos phi``, sampled by rejection (accept with probability
  ``(R + r cos phi) / (R + r)``; Diaconis, Holmes & Shahshahani 2013, "Sampling from a manifold").
- ``cube`` of half side ``0.8 / sqrt(3)``, its surface: the six faces have equal areas, so a face is
  chosen uniformly and the point is uniform on it.
- ``cylinder`` of radius 0.48 and half height 0.64, a **closed** surface (side and both caps): the part
  is chosen in proportion to its area (side ``4 pi r h``, each cap ``pi r^2``); side points have a
  uniform angle and height, cap points radius ``r sqrt(u)``.
- ``cone``, an **open** cone (lateral surface only, no base disc) of base radius 0.6 and height 1.2:
  at slant fraction ``v`` from the apex the circle has radius ``v r``, so the density of ``v`` is ``2 v``
  (proportional to the radius) and ``v = sqrt(u)``. The apex sits at ``z = 2h/3`` and the base circle at
  ``z = -h/3``, which puts the area centroid (``v = 2/3``) at the origin.
- ``disc``: a flat filled disc of radius 0.8 in the plane ``z = 0``, radius ``r sqrt(u)``.

The rotation is the unit quaternion of a normalised 4-D Gaussian vector, which is uniform on S^3 and
so gives the Haar measure on SO(3) (Shoemake 1992, "Uniform random rotations").

Determinism: the shapes of one class are generated in chunks of ``_CHUNK`` shapes, chunk ``k`` from
``np.random.default_rng([seed, split_index, class_index, k])``. A shape therefore depends only on
``(split, seed, class, its index)``: not on ``num_per_class`` (the first ``n`` shapes are the same for
any larger request) nor on the other classes; ``"train"`` and ``"test"`` are independent draws.
"""
from __future__ import annotations

import math

import numpy as np

CLASSES = ("sphere", "torus", "cube", "cylinder", "cone", "disc")
SPLITS = ("train", "test")
# Shapes per class. Measured on a 2-core CPU: the default train set (12,000 shapes of 512 points,
# 74 MB float32) in ~1 s.
DEFAULT_SIZES = {"train": 2000, "test": 200}
SCALE_RANGE = (0.75, 1.25)

# Sizes in the shape's own frame, each with circumradius 0.8 (norm <= 1 after the largest scale).
SPHERE_RADIUS = 0.8
TORUS_RADII = (0.56, 0.24)                 # major R, minor r
CUBE_HALF_SIDE = 0.8 / math.sqrt(3.0)
CYLINDER_SIZE = (0.48, 0.64)               # radius, half height
CONE_SIZE = (0.6, 1.2)                     # base radius, height
DISC_RADIUS = 0.8

_CHUNK = 64


def _sphere(rng, m: int, n: int) -> np.ndarray:
  g = rng.standard_normal((m, n, 3))
  return SPHERE_RADIUS * g / np.linalg.norm(g, axis=-1, keepdims=True)


def _torus(rng, m: int, n: int) -> np.ndarray:
  big, small = TORUS_RADII
  total = m * n
  phis = np.empty(0)
  while phis.size < total:  # acceptance >= (R - r) / (R + r) = 0.4, on average R / (R + r) = 0.7
    draw = int(1.5 * (total - phis.size)) + 64
    phi = rng.uniform(0.0, 2.0 * np.pi, draw)
    keep = rng.uniform(0.0, big + small, draw) < big + small * np.cos(phi)
    phis = np.concatenate([phis, phi[keep]])
  phi = phis[:total].reshape(m, n)
  theta = rng.uniform(0.0, 2.0 * np.pi, (m, n))
  ring = big + small * np.cos(phi)
  return np.stack([ring * np.cos(theta), ring * np.sin(theta), small * np.sin(phi)], axis=-1)


def _cube(rng, m: int, n: int) -> np.ndarray:
  a = CUBE_HALF_SIDE
  p = rng.uniform(-a, a, (m, n, 3))
  face = rng.integers(0, 6, (m, n))          # equal areas: a uniform face
  axis, sign = face // 2, np.where(face % 2 == 0, 1.0, -1.0)
  np.put_along_axis(p, axis[..., None], (sign * a)[..., None], axis=-1)
  return p


def _disc_points(rng, radius: float, shape) -> tuple[np.ndarray, np.ndarray]:
  rad = radius * np.sqrt(rng.uniform(0.0, 1.0, shape))
  ang = rng.uniform(0.0, 2.0 * np.pi, shape)
  return rad * np.cos(ang), rad * np.sin(ang)


def _cylinder(rng, m: int, n: int) -> np.ndarray:
  r, h = CYLINDER_SIZE
  side, cap = 4.0 * np.pi * r * h, np.pi * r * r
  part = rng.uniform(0.0, side + 2.0 * cap, (m, n))   # [0, side): side; then the top cap, the bottom
  ang = rng.uniform(0.0, 2.0 * np.pi, (m, n))
  z_side = rng.uniform(-h, h, (m, n))
  cx, cy = _disc_points(rng, r, (m, n))
  on_side = part < side
  x = np.where(on_side, r * np.cos(ang), cx)
  y = np.where(on_side, r * np.sin(ang), cy)
  z = np.where(on_side, z_side, np.where(part < side + cap, h, -h))
  return np.stack([x, y, z], axis=-1)


def _cone(rng, m: int, n: int) -> np.ndarray:
  r, h = CONE_SIZE
  v = np.sqrt(rng.uniform(0.0, 1.0, (m, n)))   # slant fraction from the apex, density 2 v
  ang = rng.uniform(0.0, 2.0 * np.pi, (m, n))
  return np.stack([v * r * np.cos(ang), v * r * np.sin(ang), 2.0 * h / 3.0 - v * h], axis=-1)


def _disc(rng, m: int, n: int) -> np.ndarray:
  x, y = _disc_points(rng, DISC_RADIUS, (m, n))
  return np.stack([x, y, np.zeros_like(x)], axis=-1)


_SAMPLERS = {"sphere": _sphere, "torus": _torus, "cube": _cube, "cylinder": _cylinder, "cone": _cone,
             "disc": _disc}


def _rotations(rng, m: int) -> np.ndarray:
  """``m`` uniform rotation matrices ``[m, 3, 3]`` from uniform unit quaternions (Shoemake 1992)."""
  q = rng.standard_normal((m, 4))
  w, x, y, z = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
  return np.stack([
      np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=-1),
      np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=-1),
      np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1),
  ], axis=1)


def _draw_class(split: str, class_index: int, count: int, num_points: int, seed: int):
  """``count`` shapes of class ``class_index``: ``(canonical [count, num_points, 3] float64 in the
  shape's own frame, scales [count], rotations [count, 3, 3])``; the dataset's points are
  ``scales[:, None, None] * canonical @ rotations.transpose(0, 2, 1)``."""
  sampler = _SAMPLERS[CLASSES[class_index]]
  canon, scales, rots = [], [], []
  for k in range(-(-count // _CHUNK)):
    rng = np.random.default_rng([seed, SPLITS.index(split), class_index, k])
    m = _CHUNK  # always a full chunk, so a shape does not depend on count
    scales.append(rng.uniform(*SCALE_RANGE, m))
    rots.append(_rotations(rng, m))
    canon.append(sampler(rng, m, num_points))
  return (np.concatenate(canon)[:count], np.concatenate(scales)[:count],
          np.concatenate(rots)[:count])


def _check_int(v, name: str, lo: int) -> int:
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
    raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
  return int(v)


def make_shapes(split: str, num_per_class: int, num_points: int = 512,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """The synthetic shape dataset: ``num_per_class`` shapes of every class in ``CLASSES``.

  Args:
    split: ``"train"`` or ``"test"`` (independent draws).
    num_per_class: shapes per class (``DEFAULT_SIZES[split]`` is the usual size).
    num_points: points per shape, sampled uniformly by area on its surface.
    seed: integer >= 0; the same ``(split, seed)`` always gives the same shapes.

  Returns:
    ``(points, labels)``: float32 ``[len(CLASSES) * num_per_class, num_points, 3]`` (class by class, in
    the order of ``CLASSES``; every point has norm <= 1) and int32 labels, the class index of each shape.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  num_per_class = _check_int(num_per_class, "num_per_class", 1)
  num_points = _check_int(num_points, "num_points", 1)
  seed = _check_int(seed, "seed", 0)
  points = np.empty((len(CLASSES) * num_per_class, num_points, 3), np.float32)
  for c in range(len(CLASSES)):
    canon, scales, rots = _draw_class(split, c, num_per_class, num_points, seed)
    points[c * num_per_class:(c + 1) * num_per_class] = (
        scales[:, None, None] * np.matmul(canon, rots.transpose(0, 2, 1)))
  labels = np.repeat(np.arange(len(CLASSES), dtype=np.int32), num_per_class)
  return points, labels


__all__ = ["CLASSES", "DEFAULT_SIZES", "SCALE_RANGE", "SPLITS", "make_shapes"]
