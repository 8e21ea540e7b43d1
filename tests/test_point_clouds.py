"""Point-cloud diffusion pieces: the synthetic shape dataset (surfaces, area uniformity, determinism),
the permutation-equivariant set denoiser, and the Chamfer-distance metrics (MMD-CD, COV-CD, 1-NNA).

Small sizes throughout (a few dozen points a shape for the model and the metrics): the whole file runs
in well under a minute on 2 CPU cores.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import models
from jdiff.data import point_clouds as pc
from jdiff.eval import point_metrics as pm

# ---------------------------------------------------------------------------------------------------
# Dataset.


def test_make_shapes_shapes_labels_range_and_determinism():
  x, y = pc.make_shapes("train", 3, num_points=40, seed=1)
  assert x.shape == (3 * len(pc.CLASSES), 40, 3) and x.dtype == np.float32
  assert y.dtype == np.int32 and y.tolist() == [c for c in range(len(pc.CLASSES)) for _ in range(3)]
  assert pc.CLASSES == ("sphere", "torus", "cube", "cylinder", "cone", "disc")
  x2, y2 = pc.make_shapes("train", 3, num_points=40, seed=1)
  np.testing.assert_array_equal(x, x2)
  np.testing.assert_array_equal(y, y2)
  assert np.linalg.norm(x, axis=-1).max() <= 1.0 + 1e-6   # every coordinate in [-1, 1]
  big, _ = pc.make_shapes("train", 300, num_points=32)
  assert 0.3 < big.std() < 0.5                             # suits sigma_data = 0.5


def test_splits_seeds_and_classes_are_independent_draws():
  train, _ = pc.make_shapes("train", 4, num_points=32)
  test, _ = pc.make_shapes("test", 4, num_points=32)
  other_seed, _ = pc.make_shapes("train", 4, num_points=32, seed=1)
  assert not np.allclose(train, test) and not np.allclose(train, other_seed)
  # A shape depends on (split, seed, class, index) only: not on how many shapes of each class.
  more, _ = pc.make_shapes("train", 70, num_points=32)   # more than one chunk of 64
  for c in range(len(pc.CLASSES)):
    np.testing.assert_array_equal(train[4 * c:4 * c + 4], more[70 * c:70 * c + 4])
  # Shapes within a class differ (their own scale, rotation and points).
  assert not np.allclose(more[0], more[1]) and not np.allclose(more[64], more[65])


def _canonical(name, count=64, num_points=256, split="train", seed=0):
  return pc._draw_class(split, pc.CLASSES.index(name), count, num_points, seed)


def test_points_are_scaled_rotated_canonical_points():
  """The dataset's points are s * p @ R.T for the frame returned by _draw_class, with R a proper
  rotation and s in SCALE_RANGE: the frame the surface tests below check."""
  x, _ = pc.make_shapes("test", 5, num_points=50, seed=3)
  for c in range(len(pc.CLASSES)):
    canon, s, rot = pc._draw_class("test", c, 5, 50, 3)
    np.testing.assert_allclose(x[5 * c:5 * c + 5], s[:, None, None] * canon @ rot.transpose(0, 2, 1),
                               atol=1e-6)
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape),
                               atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)
    assert np.all((s >= pc.SCALE_RANGE[0]) & (s <= pc.SCALE_RANGE[1]))
  # Undoing scale and rotation of the float32 data lands back on the surface: the sphere's radius.
  canon, s, rot = pc._draw_class("test", 0, 5, 50, 3)
  back = (x[:5] @ rot) / s[:, None, None]
  np.testing.assert_allclose(np.linalg.norm(back, axis=-1), pc.SPHERE_RADIUS, atol=1e-5)


def test_points_lie_on_their_surfaces_centred_at_the_area_centroid():
  tol = 1e-9
  p, _, _ = _canonical("sphere")
  np.testing.assert_allclose(np.linalg.norm(p, axis=-1), pc.SPHERE_RADIUS, atol=tol)

  p, _, _ = _canonical("torus")
  big, small = pc.TORUS_RADII
  np.testing.assert_allclose((np.hypot(p[..., 0], p[..., 1]) - big) ** 2 + p[..., 2] ** 2, small ** 2,
                             atol=tol)

  p, _, _ = _canonical("cube")
  a = pc.CUBE_HALF_SIDE
  np.testing.assert_allclose(np.abs(p).max(axis=-1), a, atol=tol)   # on a face ...
  assert np.abs(p).max() <= a + tol                                   # ... of the cube

  p, _, _ = _canonical("cylinder")
  r, h = pc.CYLINDER_SIZE
  rad = np.hypot(p[..., 0], p[..., 1])
  side = np.isclose(rad, r, atol=tol) & (np.abs(p[..., 2]) <= h + tol)
  cap = np.isclose(np.abs(p[..., 2]), h, atol=tol) & (rad <= r + tol)
  assert np.all(side | cap)

  p, _, _ = _canonical("cone")
  r, h = pc.CONE_SIZE
  z = p[..., 2]
  assert z.min() >= -h / 3 - tol and z.max() <= 2 * h / 3 + tol
  np.testing.assert_allclose(np.hypot(p[..., 0], p[..., 1]), r * (2 * h / 3 - z) / h, atol=tol)

  p, _, _ = _canonical("disc")
  np.testing.assert_array_equal(p[..., 2], 0.0)
  assert np.hypot(p[..., 0], p[..., 1]).max() <= pc.DISC_RADIUS

  for name in pc.CLASSES:   # 64 x 256 points: the sample mean is within ~0.01 of the area centroid
    p, _, _ = _canonical(name)
    np.testing.assert_allclose(p.reshape(-1, 3).mean(axis=0), 0.0, atol=0.01, err_msg=name)


def _assert_uniform(u, name, bins=10):
  """u in [0, 1] is uniform: every one of ``bins`` equal bins holds 1/bins of it (5+ sigma slack)."""
  u = np.ravel(u)
  assert u.min() >= -1e-9 and u.max() <= 1 + 1e-9, name
  frac = np.histogram(u, bins=bins, range=(0.0, 1.0))[0] / u.size
  sigma = np.sqrt((1 / bins) * (1 - 1 / bins) / u.size)
  np.testing.assert_allclose(frac, 1 / bins, atol=6 * sigma, err_msg=name)


def test_points_are_uniform_by_area():
  # Sphere: z is uniform on [-r, r] (Archimedes' hat-box theorem).
  p, _, _ = _canonical("sphere")
  _assert_uniform((p[..., 2] / pc.SPHERE_RADIUS + 1) / 2, "sphere z")
  # Cube: six faces of equal area get 1/6 of the points each, uniform on each face.
  p, _, _ = _canonical("cube")
  a = pc.CUBE_HALF_SIDE
  axis = np.argmax(np.abs(p), axis=-1)
  face = 2 * axis + (np.take_along_axis(p, axis[..., None], -1)[..., 0] < 0)
  frac = np.bincount(face.ravel(), minlength=6) / face.size
  np.testing.assert_allclose(frac, 1 / 6, atol=6 * np.sqrt(5 / 36 / face.size))
  on_top = p[face == 4]                                    # face z = +a: x, y uniform on [-a, a]
  _assert_uniform((on_top[:, 0] / a + 1) / 2, "cube face x")
  # Torus: the tube angle phi has density (R + r cos phi) / (2 pi R): the CDF
  # F(phi) = (R phi + r sin phi) / (2 pi R) of each point is uniform (a uniform phi would fail).
  p, _, _ = _canonical("torus")
  big, small = pc.TORUS_RADII
  phi = np.mod(np.arctan2(p[..., 2], np.hypot(p[..., 0], p[..., 1]) - big), 2 * np.pi)
  _assert_uniform((big * phi + small * np.sin(phi)) / (2 * np.pi * big), "torus phi")
  _assert_uniform(np.mod(np.arctan2(p[..., 1], p[..., 0]), 2 * np.pi) / (2 * np.pi), "torus theta")
  # Cylinder: side vs caps in proportion to their areas; uniform height on the side, r^2 on the caps.
  p, _, _ = _canonical("cylinder")
  r, h = pc.CYLINDER_SIZE
  on_side = np.abs(np.abs(p[..., 2]) - h) > 1e-9
  want = 4 * np.pi * r * h / (4 * np.pi * r * h + 2 * np.pi * r * r)
  assert abs(on_side.mean() - want) < 6 * np.sqrt(want * (1 - want) / on_side.size)
  _assert_uniform((p[on_side][:, 2] / h + 1) / 2, "cylinder side z")
  caps = p[~on_side]
  _assert_uniform((caps[:, 0] ** 2 + caps[:, 1] ** 2) / r ** 2, "cylinder cap r^2")
  assert abs(np.mean(caps[:, 2] > 0) - 0.5) < 0.03
  # Cone: density proportional to the radius, so (radius / base radius)^2 is uniform.
  p, _, _ = _canonical("cone")
  _assert_uniform((p[..., 0] ** 2 + p[..., 1] ** 2) / pc.CONE_SIZE[0] ** 2, "cone r^2")
  # Disc: r^2 uniform.
  p, _, _ = _canonical("disc")
  _assert_uniform((p[..., 0] ** 2 + p[..., 1] ** 2) / pc.DISC_RADIUS ** 2, "disc r^2")


def test_rotations_and_scales_are_uniform():
  rot = pc._rotations(np.random.default_rng(0), 20000)
  # Haar measure: each rotated axis is uniform on the sphere, so its z component is uniform on [-1, 1].
  for k in range(3):
    _assert_uniform((rot[:, 2, k] + 1) / 2, f"rotated axis {k}")
  np.testing.assert_allclose(rot.mean(axis=0), 0.0, atol=0.03)
  _, s, _ = _canonical("disc", count=2000, num_points=1)
  _assert_uniform((s - 0.75) / 0.5, "scale")


@pytest.mark.parametrize("kwargs, match", [
    (dict(split="val", num_per_class=2), "split must be one of"),
    (dict(split="train", num_per_class=0), "num_per_class must be an integer >= 1"),
    (dict(split="train", num_per_class=2.0), "num_per_class must be an integer >= 1"),
    (dict(split="train", num_per_class=2, num_points=0), "num_points must be an integer >= 1"),
    (dict(split="train", num_per_class=2, num_points=True), "num_points must be an integer >= 1"),
    (dict(split="train", num_per_class=2, seed=-1), "seed must be an integer >= 0"),
])
def test_make_shapes_rejects_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    pc.make_shapes(**kwargs)


# ---------------------------------------------------------------------------------------------------
# Set denoiser.

TINY = dict(features=32, hidden=48, num_blocks=2, emb_dim=16, num_classes=3)


def _random_params(params, seed=0):
  """Realistic-scale random parameters (the zero-initialised output layers would map every input to
  zero, for which any symmetry holds trivially)."""
  rng = np.random.default_rng(seed)
  leaves, tree = jax.tree_util.tree_flatten(params)
  new = [jnp.asarray(rng.standard_normal(l.shape) / np.sqrt(l.shape[0] if l.ndim == 2 else 4.0),
                     l.dtype) for l in leaves]
  return jax.tree_util.tree_unflatten(tree, new)


@pytest.fixture(scope="module")
def point_net():
  module = models.create("point_net", **TINY)
  init, apply = models.functional(module)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 17, 3)) * 0.5, jnp.float32)
  t = jnp.array([0.1, 0.5, 0.9])
  params = init(jax.random.PRNGKey(0), x, t)
  run = jax.jit(lambda p, x, t, c: apply(p, x, t, c))
  return module, params, run, x, t


def test_point_net_shapes_zero_init_and_interface(point_net):
  module, params, run, x, t = point_net
  assert models.MODELS["point_net"] is models.PointNet
  labels = jnp.array([0, 1, 3], jnp.int32)   # 3: the NULL label
  out = run(params, x, t, labels)
  assert out.shape == (3, 17, 3) and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, 0.0)                # zero-initialised output layers
  assert models.PointNet.data_channels(params) == 3
  rand = _random_params(params)
  out = run(rand, x, t, labels)
  assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.abs(out).max()) > 1e-2
  # Labels and the noise level change the output.
  assert float(jnp.abs(run(rand, x, t, jnp.array([1, 1, 3], jnp.int32)) - out)[0].max()) > 1e-4
  assert float(jnp.abs(run(rand, x, t[::-1], labels) - out)[0].max()) > 1e-4
  lv = models.create("point_net", **{**TINY, "learned_variance": True})
  assert lv.apply(lv.init(jax.random.PRNGKey(0), x, t), x, t).shape == (3, 17, 6)


def test_point_net_is_permutation_equivariant_and_uses_the_whole_set(point_net):
  _, params, run, x, t = point_net
  rand = _random_params(params, seed=2)
  labels = jnp.array([2, 0, 1], jnp.int32)
  out = np.asarray(run(rand, x, t, labels))
  perm = np.random.default_rng(5).permutation(x.shape[1])
  out_perm = np.asarray(run(rand, x[:, perm], t, labels))
  np.testing.assert_allclose(out_perm, out[:, perm], atol=1e-5 * np.abs(out).max())
  # Not a per-point map: moving one point changes the output at every other point (pooled context).
  moved = x.at[:, 0].add(0.7)
  diff = np.abs(np.asarray(run(rand, moved, t, labels)) - out)[:, 1:]
  assert diff.max(axis=-1).min() > 1e-5


@pytest.mark.parametrize("options", [{"num_latents": 4, "num_heads": 2}, {"local_scales": (0.3, 0.6)},
                                     {"mix_scale": 0.4, "mix_dim": 3},
                                     {"num_latents": 3, "latent_dim": 8, "num_heads": 2}])
def test_point_net_options_stay_permutation_equivariant(options):
  module = models.create("point_net", **TINY, **options)
  init, apply = models.functional(module)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 17, 3)) * 0.5, jnp.float32)
  t, labels = jnp.array([0.1, 0.5, 0.9]), jnp.array([2, 0, 1], jnp.int32)
  rand = _random_params(init(jax.random.PRNGKey(0), x, t), seed=2)
  out = np.asarray(apply(rand, x, t, labels))
  perm = np.random.default_rng(5).permutation(x.shape[1])
  np.testing.assert_allclose(np.asarray(apply(rand, x[:, perm], t, labels)), out[:, perm],
                             atol=1e-5 * np.abs(out).max())
  plain = models.create("point_net", **TINY)
  assert not np.allclose(out, np.asarray(models.functional(plain)[1](
      {"params": {k: v for k, v in rand["params"].items() if k in plain.init(
          jax.random.PRNGKey(0), x, t)["params"]}}, x, t, labels)), atol=1e-6)  # the option is used


def test_point_net_neighbour_mixing_reads_only_neighbours():
  """``K m - m`` vanishes when every point is alone in its kernel (K = I): the output is then exactly
  that of the same network with the mixing layers zeroed; with neighbours in reach it is not."""
  module = models.create("point_net", **TINY, mix_scale=0.05)
  init, apply = models.functional(module)
  t, labels = jnp.array([0.1, 0.5, 0.9]), jnp.array([2, 0, 1], jnp.int32)
  far = jnp.asarray(np.random.default_rng(3).standard_normal((3, 17, 3)) * 0.1
                    + np.arange(17)[None, :, None] * 2.0, jnp.float32)   # pairwise > 2.5 apart
  rand = _random_params(init(jax.random.PRNGKey(0), far, t), seed=4)
  cut = jax.tree_util.tree_map_with_path(
      lambda path, v: jnp.zeros_like(v) if "_mix'" in jax.tree_util.keystr(path) else v, rand)
  np.testing.assert_allclose(np.asarray(apply(cut, far, t, labels)),
                             np.asarray(apply(rand, far, t, labels)), rtol=1e-6, atol=1e-6)
  near = far * 0.01   # neighbours within a kernel width
  assert not np.allclose(np.asarray(apply(cut, near, t, labels)), np.asarray(apply(rand, near, t, labels)),
                         atol=1e-4)


def test_local_moments_closed_form():
  from jdiff.models.point_net import local_moments
  # Two points at distance 2 with kernel width 1: each weighs the other exp(-2) against its own 1.
  x = jnp.array([[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]]])
  m = np.asarray(local_moments(x, 1.0))
  w = np.exp(-2.0) / (1.0 + np.exp(-2.0))
  np.testing.assert_allclose(m[0, 0, :3], [2.0 * w, 0, 0], rtol=1e-6)   # mean offset / scale
  np.testing.assert_allclose(m[0, 1, :3], [-2.0 * w, 0, 0], rtol=1e-6)
  # covariance of a two-point distribution: w (1 - w) 4 along x, nothing else (xx, xy, xz, yy, yz, zz)
  np.testing.assert_allclose(m[0, 0, 3:], [4 * w * (1 - w), 0, 0, 0, 0, 0], rtol=1e-5, atol=1e-7)
  # Points on a plane: no covariance along its normal (z), whatever the kernel width.
  rng = np.random.default_rng(0)
  flat = jnp.asarray(np.concatenate([rng.standard_normal((1, 50, 2)), np.zeros((1, 50, 1))], -1),
                     jnp.float32)
  m = np.asarray(local_moments(flat, 0.5))
  np.testing.assert_allclose(m[..., [2, 5, 7, 8]], 0.0, atol=1e-6)  # z offset; xz, yz, zz


def test_point_net_rejects_bad_input(point_net):
  module, params, _, x, t = point_net
  _, apply = models.functional(module)
  with pytest.raises(ValueError, match=r"PointNet expects x of shape \[batch, N, 3\]"):
    apply(params, x[:, :, 0], t)
  with pytest.raises(ValueError, match="channels"):
    apply(params, jnp.zeros((3, 17, 2)), t)
  with pytest.raises(ValueError, match="at least one point"):
    apply(params, jnp.zeros((3, 0, 3)), t)
  with pytest.raises(ValueError, match="hidden must be an integer >= 1"):
    models.create("point_net", hidden=0)
  with pytest.raises(ValueError, match=r"num_heads=3 must divide the attention width 8 \(latent_dim"):
    models.create("point_net", num_latents=2, latent_dim=8, num_heads=3)
  with pytest.raises(ValueError, match="local_scales must be a tuple of positive kernel widths"):
    models.create("point_net", local_scales=(0.1, -1.0))
  with pytest.raises(ValueError, match=r"mix_scale must be a kernel width >= 0 \(0: off\), got -0.1"):
    models.create("point_net", mix_scale=-0.1)


# ---------------------------------------------------------------------------------------------------
# Chamfer distance and the generative metrics.


def _chamfer_np(a, b):
  d = ((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1)
  return d.min(axis=1).mean() + d.min(axis=0).mean()


def _brute_pairwise(x, y):
  return np.array([[_chamfer_np(a, b) for b in y] for a in x])


def test_chamfer_known_value():
  a = np.zeros((1, 1, 3), np.float32)
  b = np.array([[[1, 0, 0], [2, 0, 0]]], np.float32)
  # A -> B: 1^2; B -> A: mean(1^2, 2^2) = 2.5 (squared distances, each direction averaged).
  np.testing.assert_allclose(pm.pairwise_chamfer(a, b), [[3.5]], rtol=1e-6)
  np.testing.assert_allclose(pm.pairwise_chamfer(b, a), [[3.5]], rtol=1e-6)


@pytest.mark.parametrize("block_bytes", [1, 4 * 20 * 13 * 6, pm.DEFAULT_BLOCK_BYTES])
def test_pairwise_chamfer_matches_brute_force(block_bytes):
  """Different point counts, set sizes that are no multiple of the blocks (padding), 1 pair a block,
  6 pairs a block, one block for everything."""
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (7, 20, 3)).astype(np.float32)
  y = rng.uniform(-1, 1, (5, 13, 3)).astype(np.float32)
  d = pm.pairwise_chamfer(x, y, block_bytes=block_bytes)
  assert d.shape == (7, 5) and d.dtype == np.float64
  np.testing.assert_allclose(d, _brute_pairwise(x, y), rtol=1e-5, atol=1e-6)


def _reference_metrics(s, r):
  """PointFlow's metrics written out with loops over brute-force Chamfer distances."""
  d_sr = _brute_pairwise(s, r)
  mmd = np.mean([d_sr[:, j].min() for j in range(len(r))])
  cov = len({int(np.argmin(d_sr[i])) for i in range(len(s))}) / len(r)
  shapes = list(s) + list(r)
  origin = [0] * len(s) + [1] * len(r)
  correct = 0
  for i, a in enumerate(shapes):
    dists = [_chamfer_np(a, b) if j != i else np.inf for j, b in enumerate(shapes)]
    correct += origin[int(np.argmin(dists))] == origin[i]
  return mmd, cov, correct / len(shapes)


def test_metrics_match_a_brute_force_reference():
  x, _ = pc.make_shapes("test", 3, num_points=24, seed=4)
  rng = np.random.default_rng(1)
  s = x[rng.permutation(len(x))[:8]] + 0.05 * rng.standard_normal((8, 24, 3)).astype(np.float32)
  r = x[rng.permutation(len(x))[:8]]
  m = pm.point_cloud_metrics(s, r)
  mmd, cov, nna = _reference_metrics(s, r)
  np.testing.assert_allclose(m["mmd_cd"], mmd, rtol=1e-5)
  assert m["cov_cd"] == pytest.approx(cov) and m["1nna_cd"] == pytest.approx(nna)
  assert 0 < m["1nna_cd"] < 1 and 0 < m["cov_cd"] < 1   # a non-trivial case
  assert (m["num_samples"], m["num_reference"]) == (8, 8)
  assert m["1nna_cd"] == pytest.approx((m["1nna_cd_samples"] + m["1nna_cd_reference"]) / 2)
  # MMD and COV alone take sets of different sizes
  m = pm.point_cloud_metrics(s[:5], r, one_nna=False)
  mmd, cov, _ = _reference_metrics(s[:5], r)
  np.testing.assert_allclose(m["mmd_cd"], mmd, rtol=1e-5)
  assert m["cov_cd"] == pytest.approx(cov)


def test_metrics_refuse_sets_of_different_sizes():
  x, labels = pc.make_shapes("test", 4, num_points=24)
  y, _ = pc.make_shapes("test", 4, num_points=16)
  with pytest.raises(ValueError, match="1-NNA compares sets of equal size .* got 5 samples and 8 "
                                       "reference shapes: pass as many"):
    pm.point_cloud_metrics(x[:5], x[8:16])
  with pytest.raises(ValueError, match="samples have 16 points per shape but the reference shapes 24"):
    pm.point_cloud_metrics(y[:4], x[:4], one_nna=False)
  with pytest.raises(ValueError, match="1-NNA compares sets of equal size .* of class 'torus'"):
    pm.per_class_metrics(x[:7], labels[:7], x[:8], labels[:8], ["sphere", "torus"])


def test_metrics_known_answers():
  x, _ = pc.make_shapes("test", 2, num_points=24)
  # Identical sets: MMD 0, full coverage; 1-NNA 0: every shape's nearest other shape is its copy.
  m = pm.point_cloud_metrics(x, x.copy())
  assert m["mmd_cd"] == pytest.approx(0.0, abs=1e-6)
  assert m["cov_cd"] == 1.0 and m["1nna_cd"] == 0.0
  # Far-apart sets: every shape's neighbour comes from its own set, 1-NNA 100%.
  m = pm.point_cloud_metrics(x, x + np.float32(10.0))
  assert m["1nna_cd"] == 1.0 and m["cov_cd"] == pytest.approx(1 / len(x))
  # Samples all copies of one reference shape: they cover only it.
  m = pm.point_cloud_metrics(np.repeat(x[3:4], 5, axis=0), x, one_nna=False)
  assert m["cov_cd"] == pytest.approx(1 / len(x)) and "1nna_cd" not in m
  np.testing.assert_allclose(m["mmd_cd"], _brute_pairwise(x[3:4], x).mean(), rtol=1e-5, atol=1e-6)


def test_per_class_metrics():
  x, y = pc.make_shapes("test", 3, num_points=16)
  keep = y < 2
  s, ls = x[keep][::-1] + np.float32(0.01), y[keep][::-1]
  r, lr = x[keep], y[keep]
  out = pm.per_class_metrics(s, ls, r, lr, ["sphere", "torus"])
  assert set(out["per_class"]) == {"sphere", "torus"}
  sphere = pm.point_cloud_metrics(s[ls == 0], r[lr == 0])
  assert out["per_class"]["sphere"] == sphere
  for k in ("mmd_cd", "cov_cd", "1nna_cd"):
    assert out["mean"][k] == pytest.approx(np.mean([v[k] for v in out["per_class"].values()]))
  with pytest.raises(ValueError, match=r"class 'cube' \(label 2\) has 0 samples"):
    pm.per_class_metrics(s, ls, r, lr, ["sphere", "torus", "cube"])
  with pytest.raises(ValueError, match=r"class 'sphere' \(label 0\) has 1 samples; 1-NNA needs"):
    pm.per_class_metrics(s[:4], ls[:4], r, lr, ["sphere", "torus"])
  one = pm.per_class_metrics(s[:4], ls[:4], r, lr, ["sphere", "torus"], one_nna=False)
  assert set(one["mean"]) == {"mmd_cd", "cov_cd"}
  with pytest.raises(ValueError, match=r"sample_labels must lie in \[0, 2\)"):
    pm.per_class_metrics(s, ls + 1, r, lr, ["sphere", "torus"])
  with pytest.raises(ValueError, match=r"ref_labels must be integer class labels of shape \[6\]"):
    pm.per_class_metrics(s, ls, r, lr[:3], ["sphere", "torus"])
  with pytest.raises(ValueError, match="class_names must be a non-empty sequence of distinct"):
    pm.per_class_metrics(s, ls, r, lr, ["sphere", "sphere"])


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 8)), r"must be point clouds of shape \[num_shapes, num_points, 3\]"),
    (np.zeros((4, 8, 2)), r"must be point clouds of shape \[num_shapes, num_points, 3\]"),
    (np.full((4, 8, 3), np.nan), "contains NaN or Inf"),
    (np.zeros((4, 0, 3)), "0 points"),
    (np.zeros((1, 8, 3)), "1-NNA needs at least 2 shapes per set"),
    (np.zeros((0, 8, 3)), "has 0 shape"),
    (np.zeros((4, 8, 3), bool), "must be numbers"),
])
def test_metrics_reject_bad_input(bad, match):
  good = np.random.default_rng(0).standard_normal((4, 8, 3)).astype(np.float32)
  with pytest.raises(ValueError, match=match):
    pm.point_cloud_metrics(bad, good)
  with pytest.raises(ValueError, match=match):
    pm.point_cloud_metrics(good, bad)


def test_metrics_without_1nna_need_one_shape_and_block_bytes_is_checked():
  a = np.random.default_rng(0).standard_normal((1, 8, 3)).astype(np.float32)
  m = pm.point_cloud_metrics(a, a, one_nna=False)
  assert m["cov_cd"] == 1.0 and m["mmd_cd"] == pytest.approx(0.0, abs=1e-6)
  with pytest.raises(ValueError, match="block_bytes must be an integer >= 1"):
    pm.pairwise_chamfer(a, a, block_bytes=0)
