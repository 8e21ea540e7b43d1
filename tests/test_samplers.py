"""Every sampler, driven by the exact Gaussian-mixture denoiser, samples the mixture; deterministic samplers
converge to the exact probability-flow ODE solution at their order."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff import grids, ode, sampling, samplers, toy
from jdiff.parametrization import Prediction, make_denoiser

MIX = toy.default_mixture()
N = 10_000
PROJ_KEY = jax.random.PRNGKey(7)
INIT_KEY = jax.random.PRNGKey(2024)  # shared by all configurations: deterministic samplers see the same x_1


@functools.lru_cache(maxsize=None)
def _references():
  """4 independent true sample sets of size N, and the two-sample noise floor: the mean SW1 between
  4 further independent pairs of true sets (SW1 of N=10k samples fluctuates by ~+-40% between draws,
  mostly from the multinomial component counts, so one pair is not a stable floor)."""
  sets = [MIX.sample(jax.random.PRNGKey(100 + j), N)[0] for j in range(12)]
  sw = jax.jit(lambda a, b: toy.sliced_wasserstein(a, b, PROJ_KEY))
  floor = float(np.mean([sw(sets[4 + 2 * j], sets[5 + 2 * j]) for j in range(4)]))
  return sets[:4], floor, sw


def _check_distribution(x, weight_tol=0.01):
  refs, floor, sw = _references()
  assert x.shape == (N, 2) and bool(jnp.all(jnp.isfinite(x)))
  dist = float(np.mean([sw(x, r) for r in refs]))
  werr = toy.component_weight_error(MIX, x)
  assert dist <= 1.5 * floor, f"sliced W1 {dist:.4f} > 1.5 x floor {floor:.4f}"
  # Multinomial noise of the component fractions at N = 10k: std ~0.005 per component.
  assert werr <= weight_tol, f"component weight error {werr:.4f}"


# (schedule, sampler, options, hparams, grid, steps, expected NFE). Step counts are generous enough that
# the discretization bias is below the N = 10k noise floor, yet moderate (10k samples x 1 NFE ~ 10 ms).
FAST = [
    ("linear", "ddpm", {}, {}, "uniform_t", 250, 250),
    ("linear", "ddim", {}, {}, "uniform_t", 100, 100),
    ("edm", "euler", {}, {}, "karras", 100, 101),
    ("cosine", "heun", {}, {}, "uniform_logsnr", 50, 99),
    ("edm", "heun", {}, {"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0, "S_noise": 1.003},
     "karras", 32, 65),
    ("linear", "dpmpp_2m", {}, {}, "uniform_logsnr", 30, 30),
    ("cosine", "dpmpp_3m", {}, {}, "uniform_logsnr", 40, 40),
    ("edm", "dpmpp_3m", {}, {}, "karras", 40, 41),
    # The corrector costs no NFE. 25 steps: with the final order lowered on every VP grid (diffusers'
    # rule, jdiff.multistep) this cell is 1.12x further from the exact ODE at 20 steps than without, and
    # its sliced W1 there (0.030) is just above the bound (0.028); 0.021 at 25 steps.
    ("cosine", "unipc", {"order": 3}, {}, "uniform_logsnr", 25, 25),
    # PC at 100 steps still has a heavy-component deficit of ~0.006 (measured at N=40k); 200 is clean.
    ("ve", "pc", {}, {}, "uniform_t", 200, 401),
    ("linear", "ode", {}, {}, "uniform_logsnr", 10, None),
]


def _id(c):
  extra = "".join(f"-{v}" for v in c[2].values()) + ("-hp" if c[3] else "")
  return f"{c[1]}{extra}-{c[0]}"


def _sample(schedule, name, opts, hp, grid, steps, denoiser=None):
  sch = jdiff.get_schedule(schedule)
  ts = grids.get_grid(grid, sch, steps)
  if denoiser is None:
    fn = sampling.make_sample_fn(MIX.model_fn(sch), sch, "x0", name, steps, **opts)
    return fn(None, (N, 2), ts, INIT_KEY, **hp)
  x = sampling.initial_noise(INIT_KEY, jnp.arange(N), (2,), sch)
  s = sampling.get_sampler(name, **opts)
  return jax.jit(lambda x, ts: sampling.sample(s, denoiser, sch, x, ts, jax.random.PRNGKey(5)))(x, ts)


# The deterministic samplers of FAST that test_deterministic_samplers_converge_at_their_order checks
# against the exact ODE solution, and SLOW on every schedule: their distribution checks run with the
# slow tests.
_ODE_CHECKED = {("linear", "ddim"), ("edm", "euler"), ("cosine", "heun"), ("linear", "dpmpp_2m"),
                ("cosine", "dpmpp_3m"), ("edm", "dpmpp_3m")}


@pytest.mark.parametrize("config", [
    pytest.param(c, marks=pytest.mark.slow) if (c[0], c[1]) in _ODE_CHECKED and not c[3] else c
    for c in FAST], ids=_id)
def test_samples_match_mixture(config):
  schedule, name, opts, hp, grid, steps, nfe = config
  out = _sample(schedule, name, opts, hp, grid, steps)
  _check_distribution(out.x)
  if nfe is not None:
    assert int(out.nfe) == nfe
  else:
    assert 20 < int(out.nfe) < 1000


def test_annealed_langevin_samples_match_mixture():
  # Annealed Langevin (Song & Ermon 2019, Alg. 1) moves mass between modes slowly: at 50 levels x 20
  # updates (1000 NFE, a = sigma_i^2) the heavy component comes out ~0.012 too light (measured at
  # N=40k); it takes ~4000 NFE with a = sigma_i^2 / 2 to get within 0.003 (the slow test below checks
  # 0.01 there). Here: the sample distribution (SW1) and weights within 0.025.
  out = _sample("ve", "langevin", {}, {"step_size": 1e-4, "n_steps_each": 20}, "uniform_t", 50)
  assert int(out.nfe) == 1001
  _check_distribution(out.x, weight_tol=0.025)


@pytest.mark.slow
def test_annealed_langevin_long_run_weights():
  out = _sample("ve", "langevin", {}, {"step_size": 5e-5, "n_steps_each": 40}, "uniform_t", 100)
  _check_distribution(out.x)


@pytest.mark.slow
def test_learned_variance_samples_match_mixture():
  # The exact denoiser has no learned variance: interpolate halfway between 'small' and 'large'.
  # (The fast test_sampling.py::test_learned_variance_interpolates_small_and_large checks that
  # var_frac = 0 and 1 reproduce 'small' and 'large' exactly.)
  sch = jdiff.get_schedule("linear")
  d = make_denoiser(MIX.model_fn(sch), None, sch, "x0")

  def with_var(x, t):
    p = d(x, t)
    return Prediction(p.x0, p.eps, jnp.full_like(x, 0.5))

  out = _sample("linear", "ddpm", {"variance": "learned"}, {}, "uniform_t", 250, denoiser=with_var)
  _check_distribution(out.x)


# Every sampler on every schedule where it makes sense, including DDPM 'large', DDIM with eta and Euler
# with churn (the fast set above covers each sampler and each schedule at least once).
SLOW = [(sch, name, opts, hp, grid, steps, None)
        for sch in ("linear", "cosine", "ve", "edm")
        for name, opts, hp, grid, steps in [
            ("ddpm", {}, {}, "uniform_t", 500), ("ddpm", {"variance": "large"}, {}, "uniform_t", 500),
            ("ddim", {}, {}, "uniform_logsnr", 200), ("ddim", {}, {"eta": 0.5}, "uniform_t", 200),
            ("euler", {}, {}, "uniform_logsnr", 200), ("euler", {}, {"S_churn": 20.0}, "uniform_logsnr", 300),
            ("heun", {}, {}, "uniform_logsnr", 60), ("heun", {}, {"S_churn": 30.0}, "uniform_logsnr", 60),
            ("dpmpp_2m", {}, {}, "uniform_logsnr", 50), ("dpmpp_3m", {}, {}, "uniform_logsnr", 50),
            ("pc", {}, {}, "uniform_logsnr", 300), ("ode", {}, {}, "uniform_logsnr", 10)]
        if not (name == "pc" and sch in ("linear", "cosine"))]


@pytest.mark.slow
@pytest.mark.parametrize("config", SLOW, ids=_id)
def test_samples_match_mixture_all_schedules(config):
  schedule, name, opts, hp, grid, steps, _ = config
  x = _sample(schedule, name, opts, hp, grid, steps).x
  refs, floor, sw = _references()
  dist = float(np.mean([sw(x, r) for r in refs]))
  assert dist <= 1.5 * floor, f"sliced W1 {dist:.4f} > 1.5 x floor {floor:.4f}"
  werr = toy.component_weight_error(MIX, x)
  if werr > 0.01:
    # At N = 10k the largest of the 3 component-fraction errors exceeds 0.01 by multinomial noise alone
    # for ~10% of unbiased configurations (std ~0.005 per component). Then draw 4 x N samples (std
    # ~0.0025) from other starting noise and require the bound there.
    sch = jdiff.get_schedule(schedule)
    fn = sampling.make_sample_fn(MIX.model_fn(sch), sch, "x0", name, steps, **opts)
    x4 = fn(None, (4 * N, 2), grids.get_grid(grid, sch, steps), jax.random.PRNGKey(99), **hp).x
    werr4 = toy.component_weight_error(MIX, x4)
    assert werr4 <= 0.01, f"component weight error {werr:.4f} at N={N}, {werr4:.4f} at N={4 * N}"


# ----------------------------------------------------------------------------------------------------
# Convergence to the exact ODE solution at the method's order
# ----------------------------------------------------------------------------------------------------

ORDERS = {"ddim": 1, "euler": 1, "heun": 2, "dpmpp_2m": 2, "dpmpp_3m": 3}
# UniPC-p (with its corrector) is of order p + 1 (Zhao et al. 2023).
# (tests/test_sampler_errors.py checks every order and variant on non-uniform grids and every schedule,
# against the closed-form solution for Gaussian data.)
UNIPC_ORDERS = [({"order": 3, "variant": "bh2"}, 4)]
CONVERGENCE = ([(n, {}, ORDERS[n], "linear", "uniform_logsnr") for n in sorted(ORDERS)]
               + [(n, {}, ORDERS[n], "edm", "karras") for n in ("heun", "dpmpp_3m")]
               + [("unipc", o, p, "linear", "uniform_logsnr") for o, p in UNIPC_ORDERS]
               # Flow matching (alpha = 1 - t, sigma = t): the first step starts at pure noise
               # (sigma_tilde = inf), where every sampler takes the first-order (DDIM) step; the global
               # order is kept.
               + [(n, {}, ORDERS[n], "flow", "uniform_logsnr") for n in ("euler", "heun", "dpmpp_3m")]
               + [("unipc", o, p, "flow", "uniform_logsnr") for o, p in UNIPC_ORDERS])
STEPS = (20, 40, 80)


@functools.lru_cache(maxsize=None)
def _ode_setup(schedule, grid):
  sch = jdiff.get_schedule(schedule)
  d = make_denoiser(MIX.model_fn(sch), None, sch, "x0")
  x = sampling.initial_noise(jax.random.PRNGKey(0), jnp.arange(400), (2,), sch)
  # The grids keep their end points (t=1, t_min, 0) as steps double, so they share one exact solution.
  ref = jax.jit(lambda x, ts: ode.sample_ode(d, sch, x, ts, rtol=1e-6, atol=1e-6))(
      x, grids.get_grid(grid, sch, 4))
  return sch, d, x, ref.x


def _median_errors(name, opts, schedule, grid, steps):
  """Median and RMS over 400 samples of the distance to the exact ODE solution, for each step count."""
  sch, d, x, ref = _ode_setup(schedule, grid)
  s = sampling.get_sampler(name, **opts)
  run = jax.jit(lambda x, ts: sampling.sample(s, d, sch, x, ts, jax.random.PRNGKey(1)).x)
  med, rms = [], []
  for n in steps:
    dist = np.linalg.norm(np.asarray(run(x, grids.get_grid(grid, sch, n)) - ref), axis=-1)
    med.append(np.median(dist))
    rms.append(np.sqrt(np.mean(dist ** 2)))
  return med, rms


@pytest.mark.parametrize("name, opts, order, schedule, grid", CONVERGENCE,
                         ids=[f"{c[0]}{''.join(f'-{v}' for v in c[1].values())}-{c[3]}-{c[4]}"
                              for c in CONVERGENCE])
def test_deterministic_samplers_converge_at_their_order(name, opts, order, schedule, grid):
  errs_med, errs_rms = _median_errors(name, opts, schedule, grid, STEPS)
  # The median per-sample distance shows the asymptotic order at these step counts. The RMS is
  # dominated by the few trajectories that pass near a boundary between mixture components, where the
  # flow map has large derivatives: they reach the asymptotic regime only at hundreds of steps (RMS
  # slope ~1 at 20-80 steps even for 3M), so for the RMS we only require it to fall.
  slope = -np.polyfit(np.log(STEPS), np.log(errs_med), 1)[0]
  assert slope >= order - 0.3, (slope, errs_med)
  assert errs_rms[0] > errs_rms[1] > errs_rms[2], errs_rms
  assert errs_med[-1] < 0.05


@pytest.mark.parametrize("schedule", ["linear", pytest.param("cosine", marks=pytest.mark.slow)])
def test_unipc_beats_dpmpp_at_20_steps(schedule):
  # At 20 steps UniPC-2 (bh2) is closer to the exact ODE solution than DPM-Solver++(2M), and UniPC-3
  # than 3M (median distance over 400 samples; measured margins 2-3.6x for 2 vs 2M, 1.2-1.4x for 3 vs
  # 3M on linear and cosine). At 10 steps neither family is uniformly ahead on this mixture, so no
  # claim is made there. UniPC-3 is compared without lowering its final order: the default lowers it on
  # every VP grid (diffusers' rule, jdiff.multistep), which on cosine at 20 steps costs 1.12x and puts
  # it 5% behind 3M (median 0.0376 vs 0.0359).
  def err(name, **opts):
    return _median_errors(name, opts, schedule, "uniform_logsnr", (20,))[0][0]

  assert err("unipc", order=2, variant="bh2") < err("dpmpp_2m")
  assert err("unipc", order=3, variant="bh2", lower_order_final=False) < err("dpmpp_3m")
