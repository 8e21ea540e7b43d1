"""The sampling driver: reproducibility, no recompilation, NFE accounting, t=0 handling, validation."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff import editing, grids, sampling, samplers, toy
from jdiff.parametrization import Prediction, make_denoiser

MIX = toy.default_mixture()


def _denoiser(schedule):
  return make_denoiser(MIX.model_fn(schedule), None, schedule, "x0")


def _with_var_frac(denoise, frac):
  def d(x, t):
    p = denoise(x, t)
    return Prediction(p.x0, p.eps, jnp.full_like(x, frac))
  return d


# ----------------------------------------------------------------------------------------------------
# Reproducibility: sample i depends only on (key, i)
# ----------------------------------------------------------------------------------------------------


def test_initial_noise_is_per_index():
  sch = jdiff.get_schedule("ve")
  key = jax.random.PRNGKey(5)
  full = sampling.initial_noise(key, jnp.arange(64), (3, 2), sch)
  assert full.shape == (64, 3, 2)
  np.testing.assert_array_equal(sampling.initial_noise(key, jnp.array([17]), (3, 2), sch), full[17:18])
  np.testing.assert_array_equal(sampling.initial_noise(key, jnp.arange(10, 18), (3, 2), sch),
                                full[10:18])
  # prior_std = sqrt(1 + sigma_max^2) for VE.
  assert float(jnp.std(sampling.initial_noise(key, jnp.arange(4096), (2,), sch))) == pytest.approx(
      sch.prior_std(), rel=0.05)


@pytest.mark.parametrize("name, schedule, hp", [
    ("ddpm", "linear", {}),
    ("heun", "edm", {"S_churn": 20.0}),
    ("pc", "ve", {"n_corrector": 2}),
])
def test_sample_independent_of_batch(name, schedule, hp):
  sch = jdiff.get_schedule(schedule)
  fn = sampling.make_sample_fn(MIX.model_fn(sch), sch, "x0", name, 8)
  ts = grids.uniform_logsnr(sch, 8)
  key = jax.random.PRNGKey(11)
  full = fn(None, (64, 2), ts, key, **hp).x
  one = fn(None, (1, 2), ts, key, indices=jnp.array([37]), **hp).x
  # Noise is bit-exact (test_initial_noise_is_per_index); the denoiser's float32 arithmetic may
  # differ in the last bits with the batch size.
  np.testing.assert_allclose(one[0], full[37], atol=1e-5)
  assert float(jnp.max(jnp.abs(full[36] - full[37]))) > 0.1  # examples do differ


# ----------------------------------------------------------------------------------------------------
# No recompilation when traced values change
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, schedule, hps", [
    ("heun", "edm", [{}, {"S_churn": 30.0, "S_tmin": 0.05, "S_tmax": 50.0, "S_noise": 1.003}]),
    ("ddim", "cosine", [{"eta": 0.0}, {"eta": 0.7}]),
    ("unipc", "linear", [{}]),  # the grid's values (step ratios) are traced too
    ("langevin", "ve", [{"step_size": 1e-5, "n_steps_each": 2}, {"step_size": 3e-5,
                                                                 "n_steps_each": 3}]),
])
def test_no_retrace(name, schedule, hps):
  sch = jdiff.get_schedule(schedule)
  traces = []
  inner = MIX.model_fn(sch)

  def model(params, x, t, cond):
    traces.append(1)  # runs only while tracing
    return inner(params, x, t, cond)

  steps = 6
  fn = sampling.make_sample_fn(model, sch, "x0", name, steps)
  grid_list = [grids.uniform_t(steps), grids.karras(sch, steps, rho=5.0), grids.uniform_logsnr(sch, steps)]
  out = fn(None, (16, 2), grid_list[0], jax.random.PRNGKey(0), **hps[0])
  n_traces = len(traces)
  assert n_traces > 0
  results = [out.x]
  for seed, ts in enumerate(grid_list):
    for hp in hps:
      results.append(fn(None, (16, 2), ts, jax.random.PRNGKey(seed + 1), **hp).x)
  assert len(traces) == n_traces
  assert all(bool(jnp.all(jnp.isfinite(r))) for r in results)
  assert float(jnp.max(jnp.abs(results[-1] - results[0]))) > 1e-3  # the values did change


# ----------------------------------------------------------------------------------------------------
# NFE accounting and steps to t = 0
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, schedule, hp, expected", [
    ("heun", "linear", {}, lambda n: 2 * n - 1),  # no correction on the step to sigma = 0
    ("unipc", "edm", {}, lambda n: n + 1),  # UniC reuses the next step's evaluation; + final denoise
    ("langevin", "ve", {"n_steps_each": 3}, lambda n: 3 * n + 1),  # + the final denoise
])
def test_nfe_counts_actual_calls(name, schedule, hp, expected):
  sch = jdiff.get_schedule(schedule)
  calls = []
  inner = MIX.model_fn(sch)

  def model(params, x, t, cond):
    jax.debug.callback(lambda: calls.append(1))
    return inner(params, x, t, cond)

  steps = 5
  fn = sampling.make_sample_fn(model, sch, "x0", name, steps)
  out = fn(None, (4, 2), grids.uniform_logsnr(sch, steps), jax.random.PRNGKey(0), **hp)
  jax.block_until_ready(out.x)
  jax.effects_barrier()
  assert int(out.nfe) == expected(steps) == len(calls)


def test_final_denoise_flag():
  sch = jdiff.get_schedule("edm")
  ts = grids.karras(sch, 6)
  x = sampling.initial_noise(jax.random.PRNGKey(0), jnp.arange(32), (2,), sch)
  d = _denoiser(sch)

  @jax.jit
  def both(x, ts):
    key = jax.random.PRNGKey(1)
    return (sampling.sample("ddim", d, sch, x, ts, key),
            sampling.sample("ddim", d, sch, x, ts, key, final_denoise=False))

  on, off = both(x, ts)
  assert int(on.nfe) == int(off.nfe) + 1 == 7
  np.testing.assert_allclose(on.x, d(off.x, 0.0).x0, atol=1e-6)


def _all_samplers(sch, x, ts):
  d = _denoiser(sch)
  out = {}
  for name in sampling.SAMPLERS:
    if sampling.SAMPLERS[name]().ve_only and sch.variance_preserving:
      continue
    hp = {"n_steps_each": 2} if name == "langevin" else {}
    out[name] = sampling.sample(name, d, sch, x, ts, jax.random.PRNGKey(1), **hp).x
  return out


@pytest.mark.parametrize("schedule", ["cosine"])
def test_step_to_zero_lands_on_x0_hat(schedule):
  # VP: the step to sigma = 0 lands exactly on x0_hat at the previous time (cosine's float32
  # sigma(0) is 5e-6, not 0: t = 0 is pinned). On a 1-step grid that is x0_hat(x_1, 1) for all.
  sch = jdiff.get_schedule(schedule)
  x = sampling.initial_noise(jax.random.PRNGKey(0), jnp.arange(64), (2,), sch)
  outs = jax.jit(lambda x, ts: _all_samplers(sch, x, ts))(x, grids.uniform_t(1))
  expected = _denoiser(sch)(x, 1.0).x0
  assert len(outs) == 8  # the seven VP grid samplers and the ODE solver
  for name, v in outs.items():
    assert bool(jnp.all(jnp.isfinite(v))), name
    # Euler/Heun go through y = x / alpha with alpha(1) ~ 1e-2..1e-5: a few float32 ulps of x.
    np.testing.assert_allclose(v, expected, atol=1e-4, err_msg=name)


# ----------------------------------------------------------------------------------------------------
# Consistency between samplers
# ----------------------------------------------------------------------------------------------------


# A single Gaussian: its flow map is smooth, so float32 rounding differences between algebraically equal
# samplers are not amplified (near the basin boundaries of the mixture they can grow to ~1e-2).
GAUSS = toy.GaussianMixture(jnp.ones(1), jnp.array([[0.5, -1.0]]),
                            jnp.array([[[0.6, 0.25], [0.25, 0.3]]]))


@functools.lru_cache(maxsize=None)
def _runner(name, schedule, learned=False, **opts):
  """One jitted sampler per configuration; hyperparameters (and var_frac) are traced arguments."""
  sch = jdiff.get_schedule(schedule)
  d = make_denoiser(GAUSS.model_fn(sch), None, sch, "x0")
  s = sampling.get_sampler(name, **opts)

  @jax.jit
  def run(ts, hp, frac):
    x = sampling.initial_noise(jax.random.PRNGKey(0), jnp.arange(256), (2,), sch)
    return sampling.sample(s, _with_var_frac(d, frac) if learned else d, sch, x, ts,
                           jax.random.PRNGKey(3), **hp).x

  return run


def _run(name, schedule, ts, hp=None, frac=None, **opts):
  hp = sampling.resolve_hparams(sampling.get_sampler(name, **opts), hp or {})  # fixed structure
  return _runner(name, schedule, frac is not None, **opts)(ts, hp, frac)


@pytest.mark.parametrize("schedule", ["linear"])
def test_ddim_eta0_is_euler(schedule):
  # DDIM with eta = 0 is the Euler method of the ODE in sigma_tilde (Karras et al. 2022, Sec. 4).
  ts = grids.uniform_logsnr(jdiff.get_schedule(schedule), 12)
  np.testing.assert_allclose(_run("ddim", schedule, ts), _run("euler", schedule, ts), atol=2e-4)


def test_ddim_eta1_is_ddpm_small():
  # Same per-step noise draws, same Gaussian transition: eq. 12 with eta=1 is the DDPM posterior.
  ts = grids.uniform_t(20)
  np.testing.assert_allclose(_run("ddim", "cosine", ts, {"eta": 1.0}), _run("ddpm", "cosine", ts),
                             atol=2e-4)


def test_learned_variance_interpolates_small_and_large():
  ts = grids.uniform_t(20)
  for frac, variance in ((0.0, "small"), (1.0, "large")):
    learned = _run("ddpm", "linear", ts, frac=frac, variance="learned")
    fixed = _run("ddpm", "linear", ts, variance=variance)
    np.testing.assert_allclose(learned, fixed, atol=1e-4)
  mid = _run("ddpm", "linear", ts, frac=0.5, variance="learned")
  assert float(jnp.max(jnp.abs(mid - fixed))) > 1e-3


def test_churn_changes_samples_only_when_enabled():
  ts = grids.karras(jdiff.get_schedule("edm"), 10)
  base = _run("heun", "edm", ts)
  np.testing.assert_array_equal(_run("heun", "edm", ts, {"S_churn": 40.0, "S_tmax": 1e-4}), base)
  assert float(jnp.max(jnp.abs(_run("heun", "edm", ts, {"S_churn": 40.0}) - base))) > 1e-2


# ----------------------------------------------------------------------------------------------------
# Validation at the boundary
# ----------------------------------------------------------------------------------------------------

_VP = jdiff.get_schedule("linear")
_VE = jdiff.get_schedule("ve")
_MODEL_VP = MIX.model_fn(_VP)


def _fn(name="ddim", steps=4, schedule=_VP, **kw):
  return sampling.make_sample_fn(MIX.model_fn(schedule), schedule, "x0", name, steps, **kw)


@pytest.mark.parametrize("call, match", [
    (lambda: _fn("ddmi"), "unknown sampler 'ddmi'; valid samplers are: consistency, ddim, ddpm, dpmpp_2m"),
    (lambda: sampling.get_sampler("no_such_sampler"), "valid samplers are"),
    (lambda: _fn(steps=0), "steps must be an integer >= 1"),
    (lambda: _fn("langevin"), "is for variance-exploding schedules"),
    (lambda: _fn("pc"), "is for variance-exploding schedules"),
    (lambda: _fn("ddpm", variance="learned"), "pass learned_variance=True"),
    (lambda: _fn("ddpm", variance="medium"), "valid ddpm variances are"),
    (lambda: _fn("ddim", variance="small"), "has no option"),
    (lambda: _fn("ode", solver="rk4"), "valid ODE solvers are"),
    (lambda: _fn("unipc", order=4), "unipc order must be 1, 2 or 3"),
    (lambda: _fn("unipc", variant="bh3"), "valid unipc variants are: bh1, bh2"),
    (lambda: _fn("unipc", rho=1.0), "sampler 'unipc' has no option"),
    (lambda: sampling.make_sample_fn(_MODEL_VP, _VP, "noise", "ddim", 4), "valid parametrizations"),
    (lambda: _fn()(None, (4, 2), grids.uniform_t(5), jax.random.PRNGKey(0)),
     "ts has 6 entries but this sample fn was built for steps=4"),
    (lambda: _fn()(None, (4, 2), jnp.array([1.0, 0.7, 0.8, 0.2, 0.0]), jax.random.PRNGKey(0)),
     "strictly descending"),
    (lambda: _fn()(None, (4, 2), jnp.array([1.5, 0.7, 0.5, 0.2, 0.0]), jax.random.PRNGKey(0)),
     r"must lie in \[0, 1\]"),
    (lambda: _fn()(None, (4, 2), jnp.array([1.0, 0.7, 0.5, 0.2, 0.1]), jax.random.PRNGKey(0)),
     "must end at exactly 0.0"),
    (lambda: _fn()(None, (4, 2), grids.uniform_t(4), jax.random.PRNGKey(0), indices=jnp.arange(3)),
     "indices has 3 entries but x has batch size 4"),
    (lambda: _fn()(None, jnp.zeros((4, 2)), grids.uniform_t(4), jax.random.PRNGKey(0),
                   indices=jnp.arange(5)), "indices has 5 entries but x has batch size 4"),
    (lambda: _fn()(None, (4, 2), grids.uniform_t(4), jax.random.PRNGKey(0),
                   indices=jnp.linspace(0, 1, 4)), "indices must be integers"),
    (lambda: _fn()(None, jnp.array([[0.0, jnp.nan]]), grids.uniform_t(4), jax.random.PRNGKey(0)),
     "x_init contains NaN or Inf"),
    (lambda: _fn()(None, jnp.zeros((2, 2), jnp.int32), grids.uniform_t(4), jax.random.PRNGKey(0)),
     "x_init must be a floating-point array"),
    (lambda: _fn()(None, (4, 0), grids.uniform_t(4), jax.random.PRNGKey(0)),
     "shape must be a tuple of positive ints"),
    (lambda: _fn()(None, (4, 2), grids.uniform_t(4), jax.random.PRNGKey(0), S_churn=1.0),
     "sampler 'ddim' has no hyperparameter"),
    (lambda: _fn("langevin", schedule=_VE)(None, (4, 2), grids.uniform_t(4), jax.random.PRNGKey(0),
                                           n_steps_each=-1), "must be an integer >= 0"),
    (lambda: sampling.sample(samplers.ddpm("learned"), _denoiser(_VP), _VP, jnp.zeros((4, 2)),
                             grids.uniform_t(4), jax.random.PRNGKey(0)),
     "needs a denoiser that predicts var_frac"),
    (lambda: sampling.sample("pc", _denoiser(_VP), _VP, jnp.zeros((4, 2)), grids.uniform_t(4),
                             jax.random.PRNGKey(0)), "is for variance-exploding schedules"),
    (lambda: sampling.sample("heun", _denoiser(_VP), _VP, jnp.zeros(()), grids.uniform_t(4),
                             jax.random.PRNGKey(0)), "leading batch axis"),
])
def test_bad_inputs_raise(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_shape_and_x_init_paths_agree():
  sch = jdiff.get_schedule("linear")
  fn = _fn("ddpm", steps=6, schedule=sch)
  ts, key = grids.uniform_t(6), jax.random.PRNGKey(4)
  a = fn(None, (8, 2), ts, key, indices=jnp.arange(3, 11))
  x = sampling.initial_noise(key, jnp.arange(3, 11), (2,), sch)
  b = fn(None, x, ts, key, indices=jnp.arange(3, 11))
  np.testing.assert_array_equal(a.x, b.x)
  assert int(a.nfe) == 6


def test_unipc_runs_inpainting_and_repaint():
  # UniPC's multistep state through the driver's two editing hooks: after_step (the known region is
  # replaced after every step; UniC then corrects that x) and RePaint's jumps (init restarts the
  # history): the known region comes out exact and the rest is generated.
  sch = jdiff.get_schedule("cosine")
  x_in = MIX.sample(jax.random.PRNGKey(2), 32)[0]
  mask = jnp.array([[1.0, 0.0]])
  out = jax.jit(lambda k: editing.edit("unipc", _denoiser(sch), sch, x_in, grids.uniform_logsnr(sch, 8),
                                       k, mask=mask, resample=3, jump_length=2))(jax.random.PRNGKey(0))
  np.testing.assert_array_equal(out.x[:, 0], x_in[:, 0])
  assert bool(jnp.all(jnp.isfinite(out.x)))
  assert float(jnp.std(out.x[:, 1])) > 0.3
