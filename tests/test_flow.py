"""Flow matching / rectified flow on the core: the schedule ``alpha = 1 - t, sigma = t``, the velocity
parametrization, logit-normal times, grids from pure noise, every deterministic sampler through the one
denoiser interface (checked against closed forms), and training end to end."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff import grids, losses, ode, sampling, toy
from jdiff.parametrization import from_x0_eps, make_denoiser, to_x0_eps

SCH = jdiff.FlowSchedule()
DETERMINISTIC = [("ddim", {}), ("euler", {}), ("heun", {}), ("dpmpp_2m", {}), ("dpmpp_3m", {}),
                 ("unipc", {"order": 2}), ("unipc", {"order": 3})]


def test_velocity_parametrization_is_exact():
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  x0 = jax.random.normal(k1, (64, 5))
  eps = jax.random.normal(k2, (64, 5))
  t = jnp.concatenate([jnp.array([0.0, 1.0]), jax.random.uniform(k3, (62,))])
  a, s = SCH.alpha_sigma(t)
  x = a[:, None] * x0 + s[:, None] * eps
  u = from_x0_eps("flow", x0, eps, x, a, s)
  np.testing.assert_allclose(u, eps - x0, atol=1e-6)  # Lipman et al. 2023, eq. 23
  x0_hat, eps_hat = to_x0_eps("flow", u, x, a, s)
  np.testing.assert_allclose(x0_hat, x0, atol=2e-6)  # finite at both ends: alpha + sigma = 1
  np.testing.assert_allclose(eps_hat, eps, atol=2e-6)
  # On another schedule the conversion is exact too (x0 = (x - sigma u) / (alpha + sigma)).
  cos = jdiff.CosineSchedule()
  a, s = cos.alpha_sigma(jnp.clip(t, 0.01, 0.99))
  x = a[:, None] * x0 + s[:, None] * eps
  x0_hat, eps_hat = to_x0_eps("flow", eps - x0, x, a, s)
  np.testing.assert_allclose(x0_hat, x0, atol=2e-5)
  np.testing.assert_allclose(eps_hat, eps, atol=2e-5)


def _velocity_denoiser():
  """An arbitrary smooth velocity field as a ``flow``-parametrized model."""
  def fn(params, x, t, cond):
    return jnp.tanh(x) * (0.5 + t[:, None]) - 0.3 * x + 0.2
  return make_denoiser(fn, None, SCH, "flow"), fn


@pytest.mark.parametrize("name", ["ddim", "euler"])
def test_ddim_and_euler_are_the_rectified_flow_euler_sampler(name):
  """On this schedule DDIM and Euler are ``x_s = x_t + (s - t) v(x_t, t)`` (Liu et al. 2023), from t = 1."""
  denoise, fn = _velocity_denoiser()
  x = jax.random.normal(jax.random.PRNGKey(1), (32, 3))
  ts = grids.uniform_t(7)
  got = sampling.sample(sampling.get_sampler(name), denoise, SCH, x, ts, jax.random.PRNGKey(0)).x
  want = np.asarray(x, np.float64)
  for t, s in zip(np.asarray(ts)[:-1], np.asarray(ts)[1:]):
    v = np.asarray(fn(None, jnp.asarray(want, jnp.float32), jnp.full((32,), t, jnp.float32), None))
    want = want + (s - t) * v
  np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("name, opts", DETERMINISTIC, ids=[f"{n}{o.get('order', '')}" for n, o in DETERMINISTIC])
def test_first_step_from_pure_noise_is_finite_and_first_order(name, opts):
  """At t = 1 alpha = 0 (sigma_tilde = inf, logsnr = -inf): every deterministic sampler's first step is
  the DDIM step ``x + (t_1 - 1) v``, with no NaN, and a whole run stays finite."""
  denoise, fn = _velocity_denoiser()
  x = jax.random.normal(jax.random.PRNGKey(2), (16, 3))
  sampler = sampling.get_sampler(name, **opts)
  ts = jnp.asarray([1.0, 0.7], jnp.float32)
  state = sampler.init(x, 1)
  keys = jdiff.keys.per_example_keys(jax.random.PRNGKey(0), jnp.arange(16))
  state, _ = sampler.step(denoise, SCH, state, ts[0], ts[1], keys, {k: jnp.float32(v) for k, v in sampler.hparams.items()})
  v = fn(None, x, jnp.ones((16,)), None)
  np.testing.assert_allclose(state.x, x - 0.3 * v, atol=1e-5)
  for grid in grids.GRIDS:
    out = sampling.sample(sampler, denoise, SCH, x, grids.get_grid(grid, SCH, 9), jax.random.PRNGKey(0))
    assert bool(jnp.all(jnp.isfinite(out.x))), grid


def _gaussian():
  cov = jnp.array([[[0.5, 0.2], [0.2, 0.3]]])
  return toy.GaussianMixture(jnp.ones((1,)), jnp.array([[1.0, -0.5]]), cov), cov[0]


def _exact_map(x1, mix, cov):
  """For Gaussian data the probability-flow ODE of this schedule maps ``x_1 ~ N(0, I)`` to
  ``mu + Sigma^(1/2) x_1`` (all covariances ``(1-t)^2 Sigma + t^2 I`` share eigenvectors)."""
  w, u = np.linalg.eigh(np.asarray(cov, np.float64))
  root = u @ np.diag(np.sqrt(w)) @ u.T
  return np.asarray(mix.means[0], np.float64) + np.asarray(x1, np.float64) @ root


def test_adaptive_ode_in_t_matches_the_closed_form():
  mix, cov = _gaussian()
  denoise = make_denoiser(mix.model_fn(SCH), None, SCH, "x0")
  x1 = jax.random.normal(jax.random.PRNGKey(3), (256, 2))
  # To t_min = 1e-3 and then x0_hat, as sample_ode does (at t = 0 itself eps_hat = (x - x0_hat) / 0 is
  # pinned to 0, a kink the step-size controller pays ~3x the steps for).
  x, nfe = ode.solve_pf_ode(denoise, SCH, x1, 1.0, 1e-3, rtol=1e-6, atol=1e-6)
  x = denoise(x, jnp.float32(1e-3)).x0
  np.testing.assert_allclose(x, _exact_map(x1, mix, cov), atol=5e-5)  # measured 1.9e-5
  assert int(nfe) > 0


@pytest.mark.parametrize("name, opts", DETERMINISTIC, ids=[f"{n}{o.get('order', '')}" for n, o in DETERMINISTIC])
def test_samplers_converge_to_the_closed_form_flow(name, opts):
  """Gaussian data: the exact solution is known; the error falls as the grid is refined (uniform_t, the
  rectified-flow grid; the last step lands on x0_hat at t_min = 1e-3, whose own error is ~1e-3)."""
  mix, cov = _gaussian()
  denoise = make_denoiser(mix.model_fn(SCH), None, SCH, "x0")
  x1 = jax.random.normal(jax.random.PRNGKey(4), (256, 2))
  want = _exact_map(x1, mix, cov)
  sampler = sampling.get_sampler(name, **opts)
  run = jax.jit(lambda x, ts: sampling.sample(sampler, denoise, SCH, x, ts, jax.random.PRNGKey(0)).x)
  errs = [float(np.sqrt(np.mean(np.sum((np.asarray(run(x1, grids.uniform_t(n))) - want) ** 2, -1))))
          for n in (8, 32)]
  # Measured RMS at 8 / 32 steps: DDIM = Euler 0.141 / 0.037 (ratio 3.8, first order: 4), Heun 0.022 /
  # 0.0019, DPM-Solver++(2M) 0.023 / 0.0041, (3M) 0.014 / 0.0065, UniPC-2 0.017 / 0.0021, UniPC-3 0.017
  # / 0.00084.
  if name in ("ddim", "euler"):
    assert errs[0] / errs[1] > 3.0 and errs[1] < 0.05, errs
  else:
    assert errs[0] / errs[1] > 2.0 and errs[1] < 0.01, errs


def test_logit_normal_times():
  """Esser et al. 2024, eq. 19: ``logit(t) ~ N(m, s^2)``, per example from its global index."""
  idx = jnp.arange(20000)
  t = losses.sample_times(jax.random.PRNGKey(0), idx, "logit_normal", t_min=1e-5, logit_mean=0.5,
                          logit_std=0.8)
  z = np.log(np.asarray(t, np.float64)) - np.log1p(-np.asarray(t, np.float64))
  assert abs(z.mean() - 0.5) < 4 * 0.8 / math.sqrt(len(z)) and abs(z.std() - 0.8) < 0.02
  # Example i's time does not depend on the batch split.
  part = losses.sample_times(jax.random.PRNGKey(0), idx[5000:5100], "logit_normal", t_min=1e-5,
                             logit_mean=0.5, logit_std=0.8)
  np.testing.assert_array_equal(part, t[5000:5100])


def test_grids_start_at_pure_noise():
  for name in grids.GRIDS:
    for steps in (1, 2, 5, 20):
      ts = np.asarray(grids.get_grid(name, SCH, steps))
      assert ts.shape == (steps + 1,) and ts[0] == 1.0 and ts[-1] == 0.0 and np.all(np.diff(ts) < 0)
  # logsnr spacing cannot start at logsnr(1) = -inf: one step to where uniform_t would go first, then
  # uniform in logsnr down to t_min.
  ts = np.asarray(grids.uniform_logsnr(SCH, 10))
  np.testing.assert_allclose(ts[1], 1.0 - (1.0 - 1e-3) / 9, rtol=1e-6)
  lam = np.asarray(SCH.logsnr(jnp.asarray(ts[1:-1])), np.float64)
  np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-3)


def test_loss_weighting_on_the_velocity():
  """Velocity MSE = x0 MSE / t^2 on this schedule, so ``snr`` weighting on the velocity target is
  ``((1-t)/t)^2 t^2 = (1-t)^2`` and ``simple`` is 1 (Esser et al. 2024 train with ``simple``)."""
  t = jnp.linspace(0.05, 0.95, 19)
  np.testing.assert_allclose(losses.loss_weight(SCH, t, "flow", "snr"), (1 - t) ** 2, rtol=1e-5)
  np.testing.assert_array_equal(losses.loss_weight(SCH, t, "flow", "simple"), 1.0)


@pytest.mark.parametrize("name", ["pc", "langevin"])
def test_ve_only_samplers_are_refused(name):
  with pytest.raises(ValueError, match="variance-exploding"):
    sampling.check_sampler_schedule(sampling.get_sampler(name), SCH)


@pytest.mark.slow  # ~25 s; default run: the exact velocity tests above, and the flow-matching default
#                   trained end to end by test_train_cli (and the flow teacher of test_reflow)
def test_flow_matching_trains_and_samples_the_mixture(tmp_path):
  """End to end on the training path: the toy MLP trained with the velocity loss and logit-normal
  times, sampled with the rectified-flow Euler sampler (N = 2000: the sliced-W1 floor is ~0.03)."""
  from configs import toy2d
  from jdiff.training import loop
  c = toy2d.get_config()
  c.diffusion.schedule = "flow"
  c.diffusion.parametrization = "flow"
  c.diffusion.time_sampling = "logit_normal"
  c.model.features, c.model.num_blocks = 128, 2
  c.data.batch_size = 128
  c.training.num_steps = 600
  c.training.ckpt_every = c.training.log_every = 600
  c.training.sample_every = 0
  c.training.ema_decay = 0.99
  c.sampling.sampler, c.sampling.steps, c.sampling.grid = "euler", 20, "uniform_t"
  state = loop.train(c, str(tmp_path), log=lambda *a: None)
  exp = loop.Experiment(c, num_local_devices=1)
  x = loop.sample_grid(exp, state.ema_params, 2000, 0, None)
  mix = toy.default_mixture()
  ref = np.asarray(mix.sample(jax.random.PRNGKey(5), 2000)[0])
  sw = float(toy.sliced_wasserstein(x, ref, jax.random.PRNGKey(0)))
  assert sw < 0.12, sw
  assert toy.component_weight_error(mix, x) < 0.05
