"""Time grids: shape, end points, spacing, and validation."""
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff import grids

SCHEDULES = ["linear", "cosine", "vp_sde", "sigmoid", "ve", "edm"]


def _grid(name, schedule, steps, **kw):
  return np.asarray(grids.get_grid(name, jdiff.get_schedule(schedule), steps, **kw), np.float64)


@pytest.mark.parametrize("name", grids.GRIDS)
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("steps", [1, 2, 10, 50])
def test_grid_shape_and_ends(name, schedule, steps):
  ts = _grid(name, schedule, steps)
  assert ts.shape == (steps + 1,)
  assert ts[0] == 1.0 and ts[-1] == 0.0
  assert np.all(np.diff(ts) < 0)
  grids.check_grid(ts)


def test_unresolvable_grid_raises():
  # 50 steps between t_min = 1 - 1e-6 and t_max = 1: float32 has only 17 values there.
  sch = jdiff.get_schedule("sigmoid")
  for grid in (grids.uniform_logsnr, grids.karras):
    with pytest.raises(ValueError, match="not strictly descending after mapping to t"):
      grid(sch, 50, t_min=1 - 1e-6)
  # A schedule whose whole noise range is narrower than float32 resolves: sigma in [1, 1 + 1e-6].
  narrow = jdiff.get_schedule("edm", sigma_min=1.0, sigma_max=1.000001)
  for name in ("uniform_logsnr", "karras"):
    with pytest.raises(ValueError, match="not strictly descending after mapping to t"):
      grids.get_grid(name, narrow, 50)
  grids.check_grid(grids.get_grid("uniform_t", narrow, 50))  # uniform t does not look at the schedule


@pytest.mark.parametrize("name", ["uniform_logsnr", "karras"])
@pytest.mark.parametrize("steps", [10, 20, 50, 200])
def test_sigmoid_grids_start_where_float32_resolves(name, steps):
  """The sigmoid schedule has logsnr ~ log(1 - t) near t = 1: the largest float32 below 1 is at logsnr
  -17.8, its clamp logsnr(1) = -20. A grid whose spacing cannot be followed by float32 t there starts its
  spacing at the noisiest level float32 resolves: t_max = 1 first, then strictly increasing logsnr levels,
  spaced as asked (uniform in logsnr / rho-spaced in sigma_tilde) past the first few."""
  sch = jdiff.get_schedule("sigmoid")
  ts = grids.get_grid(name, sch, steps)
  grids.check_grid(ts)
  assert float(ts[0]) == 1.0 and float(ts[-2]) == pytest.approx(grids.DEFAULT_VP_T_MIN)
  lam = np.asarray(sch.logsnr(ts[:-1]), np.float64)
  assert lam[0] == sch.logsnr_min and np.all(np.diff(lam) > 0)
  assert lam[1] < -12  # the grid still reaches into the very noisy end
  tail = lam[len(lam) // 2:] if name == "uniform_logsnr" else None
  if tail is not None:  # past the steep end the spacing is uniform in logsnr
    np.testing.assert_allclose(np.diff(tail), np.diff(tail).mean(), rtol=2e-3)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "vp_sde", "ve", "edm"])
def test_grids_unchanged_where_float32_resolves_them(schedule):
  """The noisy end moves only where the grid would not be strictly descending: elsewhere every grid is
  the plain formula from t_max (bit for bit the grids before the noisy end could move; recomputed here
  eagerly, which rounds differently by a few float32 ulps)."""
  sch = jdiff.get_schedule(schedule)
  steps = 50
  n = steps if grids.reaches_zero_noise(sch) else steps + 1
  t_min = grids.DEFAULT_VP_T_MIN if grids.reaches_zero_noise(sch) else 0.0
  lo, hi = sch.logsnr(jnp.float32(1.0)), sch.logsnr(jnp.float32(t_min))
  want = np.array(sch.t_of_logsnr(jnp.linspace(lo, hi, n)), np.float32)
  want[0], want[n - 1] = 1.0, t_min
  np.testing.assert_allclose(np.asarray(grids.uniform_logsnr(sch, steps))[:n], want, rtol=0, atol=3e-7)
  s_hi, s_lo = (float(sch.sigma_tilde(jnp.float32(t))) for t in (1.0, t_min))
  i = np.arange(n) / (n - 1)
  sig = (s_hi ** (1 / 7) + i * (s_lo ** (1 / 7) - s_hi ** (1 / 7))) ** 7
  want = np.array(sch.t_of_sigma_tilde(jnp.asarray(sig, jnp.float32)), np.float32)
  want[0], want[n - 1] = 1.0, t_min
  np.testing.assert_allclose(np.asarray(grids.karras(sch, steps))[:n], want, rtol=0, atol=3e-7)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "vp_sde", "sigmoid"])
@pytest.mark.parametrize("name", ["uniform_logsnr", "karras"])
def test_vp_grids_stop_at_t_min_then_zero(schedule, name):
  # sigma(0) = 0 on VP schedules: the spaced part ends at t_min (default 1e-3), then one step to 0.
  ts = _grid(name, schedule, 6)
  assert ts[-2] == pytest.approx(grids.DEFAULT_VP_T_MIN)
  ts = _grid(name, schedule, 6, t_min=0.02)
  assert ts[-2] == pytest.approx(0.02)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "ve", "edm"])
def test_uniform_logsnr_is_uniform(schedule):
  sch = jdiff.get_schedule(schedule)
  ts = grids.uniform_logsnr(sch, 12)
  lam = np.asarray(sch.logsnr(ts), np.float64)
  spaced = lam[:-1] if grids.reaches_zero_noise(sch) else lam
  diffs = np.diff(spaced)
  # float32 round trip t(logsnr) -> logsnr: ~1e-4 relative on steps of ~1.
  np.testing.assert_allclose(diffs, diffs.mean(), rtol=2e-3)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "ve", "edm"])
def test_karras_follows_rho_formula(schedule):
  sch = jdiff.get_schedule(schedule)
  steps, rho = 15, 7.0
  ts = grids.karras(sch, steps, rho=rho)
  sig = np.asarray(sch.sigma_tilde(ts), np.float64)
  n = steps if grids.reaches_zero_noise(sch) else steps + 1
  hi, lo = sig[0], sig[n - 1]
  i = np.arange(n) / (n - 1)
  expected = (hi ** (1 / rho) + i * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
  np.testing.assert_allclose(sig[:n], expected, rtol=2e-3)  # float32 round trip through t


def test_karras_on_edm_is_uniform_t():
  # The EDM schedule is defined so that uniform t is the rho=7 grid (Karras et al. 2022, eq. 5).
  ts = grids.karras(jdiff.get_schedule("edm"), 18)
  np.testing.assert_allclose(np.asarray(ts), np.asarray(grids.uniform_t(18)), atol=2e-6)


def test_t_max_below_one():
  ts = _grid("uniform_logsnr", "ve", 8, t_max=0.5)
  assert ts[0] == 0.5 and ts[-1] == 0.0 and np.all(np.diff(ts) < 0)


@pytest.mark.parametrize("call, match", [
    (lambda: grids.uniform_t(0), "steps must be an integer >= 1"),
    (lambda: grids.uniform_t(2.5), "steps must be an integer >= 1"),
    (lambda: grids.uniform_t(5, t_max=1.5), r"t_max must lie in \(0, 1\]"),
    (lambda: grids.karras(jdiff.get_schedule("linear"), 5, t_min=0.0), "t_min=0 is not allowed"),
    (lambda: grids.uniform_logsnr(jdiff.get_schedule("ve"), 5, t_max=0.3, t_min=0.5),
     r"t_min must lie in \[0, t_max"),
    (lambda: grids.karras(jdiff.get_schedule("edm"), 5, rho=0.0), "rho must be > 0"),
    (lambda: grids.get_grid("geometric", jdiff.get_schedule("ve"), 5), "valid grids are"),
    (lambda: grids.check_grid(np.array([1.0, 0.5, 0.6, 0.0])), "strictly descending"),
    (lambda: grids.check_grid(np.array([1.0, 0.5, 0.1])), "end at exactly 0.0"),
    (lambda: grids.check_grid(np.array([1.2, 0.5, 0.0])), r"must lie in \[0, 1\]"),
    (lambda: grids.check_grid(np.array([1.0, np.nan, 0.0])), r"must lie in \[0, 1\]"),
    (lambda: grids.check_grid(np.array([1.0])), "at least 2 times"),
    (lambda: grids.check_grid(np.ones((2, 3))), "1-D array"),
])
def test_bad_grid_inputs(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_grid_is_float32_array():
  ts = grids.uniform_logsnr(jdiff.get_schedule("cosine"), 7)
  assert isinstance(ts, jnp.ndarray) and ts.dtype == jnp.float32


def test_config_check_builds_the_sampling_grid():
  """A schedule/grid/steps combination that float32 cannot resolve fails when the config is checked
  (before training starts), not at the first sample grid."""
  from configs import toy2d
  from jdiff.experiment import config
  c = toy2d.get_config()
  c.diffusion.schedule, c.sampling.grid, c.sampling.steps = "edm", "karras", 50
  c.diffusion.schedule_kwargs = {"sigma_min": 1.0, "sigma_max": 1.000001}  # narrower than float32
  with pytest.raises(ValueError, match="config.sampling: the 'karras' grid of 50 steps on the 'edm'"):
    config.validate(c)
  c.sampling.grid = "uniform_t"
  config.validate(c)
  c.diffusion.schedule, c.diffusion.schedule_kwargs = "sigmoid", {}
  for c.sampling.grid in grids.GRIDS:  # every grid works on the sigmoid schedule
    config.validate(c)
