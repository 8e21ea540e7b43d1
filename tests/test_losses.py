"""Denoising losses: weightings, time sampling, per-example randomness and validation.

The exact Gaussian-mixture denoiser (``jdiff.toy``) is the minimiser of every weighted denoising loss,
so perturbing it must raise each loss; comparisons use common random numbers (same key) and a margin
of several standard errors of the per-example difference.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import losses, parametrization, schedules, toy

PARAMS = parametrization.PARAMETRIZATIONS
MIX = toy.default_mixture()


def as_parametrization(fn_x0, schedule, param):
  """Turn an ``x0`` model into a ``param`` model; ``params = (scale, shift)`` perturbs its x0."""

  def fn(params, x, t, cond):
    scale, shift = params
    x0 = fn_x0(None, x, t, cond) * scale + shift
    alpha, sigma = schedule.alpha_sigma(parametrization.broadcast_t(t, x))
    eps = parametrization.to_x0_eps("x0", x0, x, alpha, sigma)[1]
    return parametrization.from_x0_eps(param, x0, eps, x, alpha, sigma)

  return fn


EXACT = (jnp.float32(1.0), jnp.float32(0.0))
SCHEDULE = schedules.LinearSchedule()
X0 = MIX.sample(jax.random.PRNGKey(0), 4096)[0]  # one batch shape: eager tests reuse compiled ops
CHEAP = lambda p, x, t, c: jnp.tanh(x) * (1.0 - 0.5 * t[:, None])  # an arbitrary x0 model


@pytest.mark.parametrize("time_sampling", losses.TIME_SAMPLINGS)
@pytest.mark.parametrize("param", PARAMS)
def test_exact_denoiser_minimises_every_weighting(param, time_sampling):
  schedule = SCHEDULE
  fn = as_parametrization(MIX.model_fn(schedule), schedule, param)
  x0 = X0
  key = jax.random.PRNGKey(1)

  # Eager on purpose: op-by-op dispatch reuses compiled primitives across this grid of 12 cases.
  # t_eps = 1e-2 keeps the SNR below ~1e3, so the paired differences are not dominated by a few
  # examples at tiny t (whose weight on the eps/score error grows like 1/t).
  def all_losses(params):
    return jnp.stack([losses.denoising_loss(fn, params, schedule, x0, key, parametrization=param,
                                            weighting=w, time_sampling=time_sampling, t_eps=1e-2)
                      for w in losses.WEIGHTINGS])

  exact = all_losses(EXACT)
  assert np.all(np.isfinite(exact)) and exact.shape == (len(losses.WEIGHTINGS), 4096)
  # The cross term of the paired difference is linear in the perturbation and its mean quadratic,
  # so the perturbations are large enough (20%, 0.2) to sit far outside the Monte-Carlo error.
  for perturbed in [(jnp.float32(1.2), jnp.float32(0.0)), (jnp.float32(1.0), jnp.float32(0.2))]:
    diff = np.asarray(all_losses(perturbed) - exact, np.float64)
    mean, se = diff.mean(1), diff.std(1) / math.sqrt(diff.shape[1])
    # Common random numbers: the same t and noise for both models, so the paired difference is
    # positive in expectation (the exact model is the conditional mean of every target). 5 standard
    # errors, except 2 for the score target with unit weight: its error is alpha / sigma^2 times the x0
    # error, so heavy-tailed, and under logit-normal times it sits only 2.3-3.3 standard errors above 0.
    k = np.where((param == "score") & (np.asarray(losses.WEIGHTINGS) == "simple"), 2.0, 5.0)
    assert np.all(mean > k * se), (param, time_sampling, perturbed, mean, se)


def test_weightings_match_their_formulas():
  """Recompute each weighting from the (t, x_t) the model saw, with the papers' formulas (VP)."""
  schedule = SCHEDULE
  fn_x0 = CHEAP  # any model: the formulas hold for every prediction
  x0 = X0
  seen = {}

  def recording(param):
    inner = as_parametrization(fn_x0, schedule, param)

    def fn(params, x, t, cond):
      seen["x"], seen["t"] = x, t
      return inner(params, x, t, cond)

    return fn

  perturbed = (jnp.float32(1.1), jnp.float32(0.02))
  for param in PARAMS:
    for weighting in losses.WEIGHTINGS:
      got = losses.denoising_loss(recording(param), perturbed, schedule, x0, jax.random.PRNGKey(3),
                                  parametrization=param, weighting=weighting, t_eps=1e-3)
      x, t = np.asarray(seen["x"], np.float64), np.asarray(seen["t"], np.float64)
      a, s = (np.asarray(v, np.float64)[:, None] for v in schedule.alpha_sigma(seen["t"]))
      x0n = np.asarray(x0, np.float64)
      eps = (x - a * x0n) / s
      x0_hat = np.asarray(fn_x0(None, seen["x"], seen["t"], None), np.float64) * 1.1 + 0.02
      assert np.all(np.isfinite(x0_hat))
      eps_hat = (x - a * x0_hat) / s
      snr = (a[:, 0] / s[:, 0]) ** 2
      err = {"x0": x0_hat - x0n, "eps": eps_hat - eps,
             "v": (a * eps_hat - s * x0_hat) - (a * eps - s * x0n), "score": -(eps_hat - eps) / s,
             "flow": (eps_hat - x0_hat) - (eps - x0n)}
      mse = np.mean(err[param] ** 2, axis=1)
      x0_mse = np.mean((x0_hat - x0n) ** 2, axis=1)
      if weighting == "simple":
        want = mse
      elif weighting == "snr":
        want = np.mean((eps_hat - eps) ** 2, axis=1)  # = snr * x0 MSE
      elif weighting == "min_snr":
        g = np.minimum(snr, 5.0)
        want = {"eps": g / snr * mse, "v": g / (snr + 1) * mse, "x0": g * mse,
                "score": g * x0_mse, "flow": g * x0_mse}[param]
      else:
        sig = s[:, 0] / a[:, 0]
        want = (sig ** 2 + 0.25) / (sig * 0.5) ** 2 * x0_mse
      # float32 model outputs converted between parametrizations: ~1e-5 relative, worse at small
      # sigma where eps = (x - alpha x0) / sigma amplifies rounding.
      np.testing.assert_allclose(np.asarray(got), want, rtol=2e-3, atol=1e-6,
                                 err_msg=f"{param}/{weighting}")


def test_x0_weightings_agree_across_parametrizations():
  """snr, min_snr and edm weight the x0 error, so they do not depend on the parametrization."""
  perturbed = (jnp.float32(0.9), jnp.float32(0.1))
  for schedule, x0 in [(schedules.VESchedule(), X0), (SCHEDULE, X0)]:
   for weighting in ["snr", "min_snr", "edm"]:
    vals = [losses.denoising_loss(as_parametrization(CHEAP, schedule, p), perturbed,
                                  schedule, x0, jax.random.PRNGKey(5), parametrization=p,
                                  weighting=weighting, t_eps=1e-3) for p in PARAMS]
    for v in vals[1:]:
      # float32 conversions between parametrizations (eps = (x - alpha x0) / sigma at sigma ~ 0.03).
      np.testing.assert_allclose(v, vals[0], rtol=2e-3)


def test_edm_weighting_with_preconditioned_unit_network_is_unit_weighted():
  """For EDM preconditioning, lambda(sigma) c_out(sigma)^2 = 1 (Karras et al. 2022, eq. 8 and Table 1):
  the edm-weighted loss is the raw network's MSE on its effective target."""
  schedule = schedules.EDMSchedule()
  x0 = X0
  raw = lambda p, x, c_noise, cond: jnp.zeros_like(x)  # F = 0: D = c_skip x, error = c_out * target
  fn = parametrization.edm_precondition(raw, schedule)
  seen = {}

  def rec(params, x, t, cond):
    seen["x"], seen["t"] = x, t
    return fn(params, x, t, cond)

  got = losses.denoising_loss(rec, None, schedule, x0, jax.random.PRNGKey(7), parametrization="x0",
                              weighting="edm")
  sig = schedule.sigma(seen["t"])[:, None]
  c_skip, c_out, _, _ = parametrization.edm_coefficients(sig)
  f_target = (x0 - c_skip * seen["x"]) / c_out
  np.testing.assert_allclose(got, jnp.mean(f_target ** 2, axis=1), rtol=1e-4)


# ----------------------------------------------------------------------------------------------------
# Time sampling
# ----------------------------------------------------------------------------------------------------


def test_low_discrepancy_times_are_stratified_over_the_global_batch():
  b, t_min = 64, 1e-3
  key = jax.random.PRNGKey(8)
  t = np.asarray(losses.sample_times(key, jnp.arange(b), "low_discrepancy", t_min=t_min))
  strata = np.floor((t - t_min) / (1 - t_min) * b + 1e-4).astype(int) % b
  assert sorted(strata.tolist()) == list(range(b))
  assert t.min() >= t_min and t.max() <= 1.0
  # Two devices with 32 examples each see the same strata as one device with 64.
  halves = [losses.sample_times(key, jnp.arange(32) + 32 * d, "low_discrepancy", t_min=t_min,
                                global_batch_size=b) for d in range(2)]
  np.testing.assert_allclose(np.concatenate(halves), t, rtol=0, atol=1e-6)


def test_uniform_times_cover_the_range():
  t = np.asarray(losses.sample_times(jax.random.PRNGKey(9), jnp.arange(20000), "uniform",
                                     t_min=0.1))
  assert t.min() >= 0.1 and t.max() <= 1.0
  assert abs(t.mean() - 0.55) < 4 * 0.9 / math.sqrt(12 * 20000)  # 4 standard errors


@pytest.mark.parametrize("schedule", [schedules.EDMSchedule(), schedules.LinearSchedule()],
                         ids=["edm", "linear"])
def test_lognormal_noise_levels(schedule):
  n = 20000
  t = losses.sample_times(jax.random.PRNGKey(10), jnp.arange(n), "lognormal", schedule=schedule,
                          t_min=1e-5)
  log_sigma = np.asarray(jnp.log(schedule.sigma_tilde(t)), np.float64)
  # Both schedules reach sigma in [2e-3, 80] (ln in [-6.2, 4.4]): clipping moves < 0.1% of the mass.
  assert abs(log_sigma.mean() + 1.2) < 4 * 1.2 / math.sqrt(n)
  assert abs(log_sigma.std() - 1.2) < 0.03  # std of a sample std: 1.2 / sqrt(2n) = 0.006


def test_batch_split_sees_the_same_randomness():
  fn = as_parametrization(CHEAP, SCHEDULE, "eps")
  x0 = X0[:64]
  key = jax.random.PRNGKey(12)

  @jax.jit
  def all_samplings(x0, indices):
    return jnp.stack([losses.denoising_loss(fn, EXACT, SCHEDULE, x0, key, weighting="min_snr",
                                            time_sampling=ts, indices=indices, global_batch_size=64)
                      for ts in losses.TIME_SAMPLINGS])

  full = all_samplings(x0, jnp.arange(64))
  # Default indices are arange(batch): the same losses (eager vs jit: float32 rounding differs).
  np.testing.assert_allclose(losses.denoising_loss(fn, EXACT, SCHEDULE, x0, key, weighting="min_snr"),
                             full[0], rtol=1e-4, atol=1e-8)
  parts = [all_samplings(x0[s], jnp.arange(64)[s]) for s in (slice(0, 32), slice(32, 64))]
  np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-5, atol=1e-7)
  # A permutation of the same examples gives the permuted losses.
  perm = np.random.RandomState(0).permutation(64)
  permuted = all_samplings(x0[perm], jnp.asarray(perm))
  np.testing.assert_allclose(permuted, np.asarray(full)[:, perm], rtol=1e-5, atol=1e-7)
  # Stratified times differ from uniform ones, so the three rows are genuinely different draws.
  assert not np.allclose(full[0], full[1]) and not np.allclose(full[0], full[2])


def test_loss_is_differentiable_and_jits_with_traced_indices():
  schedule = schedules.LinearSchedule()
  x0 = jax.random.normal(jax.random.PRNGKey(13), (16, 4, 4, 2))
  model = lambda p, x, t, c: x * p["w"] + p["b"] * t[:, None, None, None]
  params = {"w": jnp.float32(0.5), "b": jnp.float32(0.1)}
  loss = jax.jit(jax.grad(losses.mean_loss(
      lambda p, idx: losses.denoising_loss(model, p, schedule, x0, jax.random.PRNGKey(0),
                                           weighting="min_snr", time_sampling="low_discrepancy",
                                           indices=idx, global_batch_size=16))))
  g = loss(params, jnp.arange(16))
  assert all(np.isfinite(v) and v != 0 for v in jax.tree_util.tree_leaves(g))


def test_learned_variance_output_uses_the_mean_half():
  schedule = SCHEDULE
  x0 = X0
  fn = as_parametrization(CHEAP, schedule, "eps")
  doubled = lambda p, x, t, c: jnp.concatenate([fn(p, x, t, c), jnp.full_like(x, 0.3)], -1)
  a = losses.denoising_loss(fn, EXACT, schedule, x0, jax.random.PRNGKey(0))
  b = losses.denoising_loss(doubled, EXACT, schedule, x0, jax.random.PRNGKey(0),
                            learned_variance=True)
  np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------


def _call(**kw):
  schedule = kw.pop("schedule", schedules.LinearSchedule())
  x0 = kw.pop("x0", jnp.zeros((4, 2)))
  model = kw.pop("model", lambda p, x, t, c: x)
  return losses.denoising_loss(model, None, schedule, x0, jax.random.PRNGKey(0), **kw)


@pytest.mark.parametrize("kw, match", [
    (dict(weighting="mse"), "unknown weighting 'mse'; valid weightings are: edm, min_snr, simple"),
    (dict(time_sampling="sobol"), "unknown time sampling 'sobol'; valid"),
    (dict(parametrization="noise"), "unknown parametrization 'noise'; valid"),
    (dict(t_eps=1.5), "t_eps must be a number in"),
    (dict(t_eps=-0.1), "t_eps must be a number in"),
    (dict(t_eps=0.0), "infinite log-SNR"),
    (dict(min_snr_gamma=0.0), "min_snr_gamma must be a positive"),
    (dict(sigma_data=-1.0), "sigma_data must be a positive"),
    (dict(p_std=0.0), "p_std must be a positive"),
    (dict(x0=jnp.zeros((4, 2), jnp.int32)), "x0 must be a floating-point array"),
    (dict(x0=jnp.array([[0.0, jnp.nan]] * 4)), "x0 contains NaN"),
    (dict(indices=jnp.arange(3)), r"indices must have shape \[batch\]=\(4,\)"),
    (dict(indices=jnp.zeros(4)), "indices must be integers"),
    (dict(indices=jnp.arange(4), time_sampling="low_discrepancy"), "needs global_batch_size"),
    (dict(global_batch_size=0), "global_batch_size must be an integer >= 1"),
    (dict(cond=jnp.zeros(5, jnp.int32)), r"cond has leading dimension 5 but the batch has 4"),
    (dict(cond={"label": jnp.zeros(3)}), r"cond\['label'\] has leading dimension 3"),
    (dict(model=lambda p, x, t, c: x[:, :1]), r"model output has shape \(4, 1\), expected \(4, 2\)"),
    (dict(model=lambda p, x, t, c: x, learned_variance=True), "twice the data channels"),
])
def test_bad_inputs_raise_clear_errors(kw, match):
  with pytest.raises(ValueError, match=match):
    _call(**kw)


def test_lognormal_without_schedule_raises():
  with pytest.raises(ValueError, match="needs the schedule"):
    losses.sample_times(jax.random.PRNGKey(0), jnp.arange(3), "lognormal")


def test_t_eps_zero_is_allowed_where_logsnr_is_finite():
  out = _call(schedule=schedules.VESchedule(), t_eps=0.0)
  assert out.shape == (4,) and np.all(np.isfinite(out))
