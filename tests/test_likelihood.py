"""Variational bounds against closed forms for Gaussian data with its exact denoiser.

For ``x0 ~ N(mu, diag(s^2))`` and ``x_t = alpha x0 + sigma eps``, ``E[x0 | x_t]`` is linear and the
posterior variance per dimension is ``s^2 / (SNR s^2 + 1)``, so every term of both bounds has a closed
form: the continuous diffusion term is ``1/2 log((SNR(t_min) s^2 + 1) / (SNR(1) s^2 + 1))`` per dim and
each discrete KL is a KL between Gaussians averaged over ``x0``. The true NLL is the entropy
``1/2 log(2 pi e s^2)`` per dim (or, for 8-bit data, the entropy of the binned Gaussian).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal, norm

from jdiff import likelihood, losses, parametrization, schedules, toy

MU = np.array([0.3, -0.2])
S = np.array([0.5, 0.8])
GAUSS = toy.GaussianMixture(jnp.array([1.0]), jnp.asarray(MU[None], jnp.float32),
                            jnp.asarray(np.diag(S ** 2)[None], jnp.float32))
ENTROPY = float(np.sum(0.5 * np.log(2 * np.pi * np.e * S ** 2)))


def exact_model(schedule, param="x0", learned_v=None, data=None):
  """The exact denoiser in any parametrization (optionally with constant variance channels v)."""
  fn_x0 = (GAUSS if data is None else data).model_fn(schedule)

  def fn(params, x, t, cond):
    x0 = fn_x0(None, x, t, cond)
    alpha, sigma = schedule.alpha_sigma(parametrization.broadcast_t(t, x))
    eps = parametrization.to_x0_eps("x0", x0, x, alpha, sigma)[1]
    out = parametrization.from_x0_eps(param, x0, eps, x, alpha, sigma)
    return out if learned_v is None else jnp.concatenate([out, jnp.full_like(out, learned_v)], -1)

  return fn


def f64(v):
  return float(np.asarray(v, np.float64))


def mean_se(v):
  v = np.asarray(v, np.float64)
  return v.mean(), v.std() / math.sqrt(v.size)


def prior_closed(schedule, prior_std):
  a1, s1 = (f64(v) for v in schedule.alpha_sigma(jnp.float32(1.0)))
  p2 = prior_std ** 2
  return float(np.sum(0.5 * ((s1 ** 2 + a1 ** 2 * (MU ** 2 + S ** 2)) / p2 - 1 - np.log(s1 ** 2 / p2))))


@pytest.mark.parametrize("schedule, variable, t_min, param", [
    (schedules.LinearSchedule(), "logsnr", 1e-4, "x0"),
    (schedules.CosineSchedule(), "t", 1e-2, "eps"),
    (schedules.VESchedule(), "logsnr", 0.0, "v"),
], ids=["linear-logsnr", "cosine-t", "ve-logsnr"])
def test_continuous_vlb_matches_closed_form(schedule, variable, t_min, param):
  n = 8192
  x0, _ = GAUSS.sample(jax.random.PRNGKey(0), n)
  terms = jax.jit(lambda x: likelihood.continuous_vlb(
      exact_model(schedule, param), None, schedule, x, jax.random.PRNGKey(1), parametrization=param,
      t_min=t_min, variable=variable, time_sampling="low_discrepancy"))(x0)
  snr = lambda t: math.exp(f64(schedule.logsnr(jnp.float32(t))))
  diffusion = float(np.sum(0.5 * np.log((snr(t_min) * S ** 2 + 1) / (snr(1.0) * S ** 2 + 1))))
  recon = len(S) * 0.5 * (math.log(2 * math.pi / snr(t_min)) + 1.0)
  prior = prior_closed(schedule, schedule.prior_std())
  # Monte Carlo over x0, t and eps: 4 standard errors (the per-example SE ignores the extra variance
  # reduction of low-discrepancy times, so it is conservative).
  for got, want in [(terms.diffusion, diffusion), (terms.prior, prior)]:
    m, se = mean_se(got)
    assert abs(m - want) < 4 * se + 1e-4 * abs(want) + 1e-7, (m, want, se)
  np.testing.assert_allclose(terms.reconstruction, recon, rtol=1e-5)
  np.testing.assert_allclose(terms.total, terms.prior + terms.diffusion + terms.reconstruction,
                             rtol=1e-6)
  # The bound is an upper bound on the true NLL; with the exact denoiser and SNR(t_min) large it is
  # tight up to KL(q(x_1) || prior) and the ends of the t range.
  closed = prior + diffusion + recon
  assert closed >= ENTROPY
  if variable == "logsnr":
    assert closed - ENTROPY < 0.02 * len(S)


def discrete_closed(schedule, n_steps, variance, frac=0.5):
  """Exact expected DDPM bound terms for the Gaussian data (Gaussian decoder), in float64."""
  t = np.arange(n_steps + 1) / n_steps
  a, s = (np.asarray(v, np.float64) for v in schedule.alpha_sigma(jnp.asarray(t, jnp.float32)))
  a[0], s[0] = 1.0, 0.0  # the clean data
  snr = a ** 2 / np.maximum(s, 1e-150) ** 2  # inf at t = 0 is never used
  beta = s[1:] ** 2 - (a[1:] / a[:-1]) ** 2 * s[:-1] ** 2  # sigma_{t|s}^2, index i-1
  beta_tilde = beta * s[:-1] ** 2 / s[1:] ** 2
  c_x0 = a[:-1] * beta / s[1:] ** 2
  log_small = np.log(np.where(np.arange(1, n_steps + 1) == 1, beta_tilde[1], beta_tilde))
  log_large = np.where(np.arange(1, n_steps + 1) == 1, log_small, np.log(beta))
  logvar = {"small": log_small, "large": log_large,
            "learned": frac * np.log(beta) + (1 - frac) * log_small}[variance]
  vp = np.exp(logvar)[:, None]
  post = S ** 2 / (snr[1:, None] * S ** 2 + 1)  # E (x0 - x0_hat)^2 at step i
  with np.errstate(divide="ignore", invalid="ignore"):
    kl = 0.5 * (np.log(vp / beta_tilde[:, None]) + beta_tilde[:, None] / vp - 1
                + c_x0[:, None] ** 2 * post / vp)
  diffusion = float(np.sum(kl[1:]))
  recon = float(np.sum(0.5 * (np.log(2 * np.pi * vp[0]) + post[0] / vp[0])))
  return prior_closed(schedule, 1.0), diffusion, recon


@pytest.mark.parametrize("variance, param", [("small", "x0"), ("large", "eps"), ("learned", "v")])
def test_discrete_vlb_exact_sum_matches_closed_form(variance, param):
  schedule, n_steps, n = schedules.LinearSchedule(), 200, 2048
  x0, _ = GAUSS.sample(jax.random.PRNGKey(2), n)
  model = exact_model(schedule, param, 0.0 if variance == "learned" else None)  # frac = 1/2
  terms = jax.jit(lambda x: likelihood.discrete_vlb(
      model, None, schedule, x, jax.random.PRNGKey(3), n_steps, parametrization=param,
      variance=variance, decoder="gaussian"))(x0)
  prior, diffusion, recon = discrete_closed(schedule, n_steps, variance)
  for got, want in [(terms.prior, prior), (terms.diffusion, diffusion),
                    (terms.reconstruction, recon)]:
    m, se = mean_se(got)
    assert abs(m - want) < 4 * se + 1e-3 * abs(want), (m, want, se)
  assert prior + diffusion + recon > ENTROPY  # the bound exceeds the true NLL
  assert mean_se(terms.total)[0] > ENTROPY


def test_discrete_monte_carlo_estimator_is_unbiased():
  schedule, n_steps, n = schedules.LinearSchedule(), 8, 8192
  x0, _ = GAUSS.sample(jax.random.PRNGKey(4), n)
  model = exact_model(schedule)
  mc = jax.jit(lambda x: likelihood.discrete_vlb(
      model, None, schedule, x, jax.random.PRNGKey(5), n_steps, parametrization="x0",
      decoder="gaussian", estimator="monte_carlo"))(x0)
  prior, diffusion, recon = discrete_closed(schedule, n_steps, "small")
  for got, want in [(mc.diffusion, diffusion), (mc.reconstruction, recon),
                    (mc.total, prior + diffusion + recon)]:
    m, se = mean_se(got)
    assert abs(m - want) < 4 * se, (m, want, se)


def test_discretized_decoder_is_a_distribution():
  grid = jnp.arange(256) / 127.5 - 1.0
  means = jnp.array([-1.3, -0.37, 0.0, 0.999, 2.0])[:, None, None]
  scales = jnp.array([1e-3, 0.05, 1.0, 50.0])[None, :, None]
  dec = likelihood.discretized_gaussian_log_likelihood

  @jax.jit
  def evaluate():
    grad = jax.grad(lambda m, ls: jnp.sum(dec(grid, m, ls)), argnums=(0, 1))(0.3, -3.0)
    return (dec(grid, means, jnp.log(scales)), dec(jnp.float32(0.2), 0.1, math.log(40.0)),
            dec(jnp.float32(0.6), 0.0, math.log(0.02)), grad)

  ll, wide, tail, grad = evaluate()
  assert np.all(np.isfinite(ll)) and np.all(ll <= 1e-6)
  np.testing.assert_allclose(jnp.sum(jnp.exp(ll), -1), 1.0, atol=2e-5)
  # Wide Gaussian: a bin's mass is pdf * width.
  np.testing.assert_allclose(wide, norm.logpdf(0.2, 0.1, 40.0) + math.log(2 / 255), rtol=1e-5)
  # Far upper tail (z ~ 30): P = sf(lo) - sf(hi), from log survival functions in float64.
  lo, hi = norm.logsf(0.6 - 1 / 255, 0, 0.02), norm.logsf(0.6 + 1 / 255, 0, 0.02)
  np.testing.assert_allclose(tail, lo + np.log1p(-np.exp(hi - lo)), rtol=1e-4)
  assert all(np.isfinite(v) for v in grad)


def test_bounds_on_8bit_data_exceed_the_discrete_entropy():
  """8-bit data: the bound (nats) is at least the entropy of the binned Gaussian."""
  mu, s = np.array([0.1, -0.2]), np.array([0.3, 0.4])
  data = toy.GaussianMixture(jnp.array([1.0]), jnp.asarray(mu[None], jnp.float32),
                             jnp.asarray(np.diag(s ** 2)[None], jnp.float32))
  grid = np.arange(256) / 127.5 - 1
  edges = np.concatenate([[-np.inf], (grid[:-1] + grid[1:]) / 2, [np.inf]])
  entropy = 0.0
  for d in range(2):
    p = np.diff(norm.cdf(edges, mu[d], s[d]))
    entropy -= np.sum(p[p > 0] * np.log(p[p > 0]))
  x, _ = data.sample(jax.random.PRNGKey(6), 2048)
  x = jnp.clip(jnp.round((x + 1) * 127.5) / 127.5 - 1, -1, 1)
  schedule = schedules.LinearSchedule()
  model = data.model_fn(schedule)
  disc, cont = jax.jit(lambda x: (
      likelihood.discrete_vlb(model, None, schedule, x, jax.random.PRNGKey(7), 50,
                              parametrization="x0"),
      likelihood.continuous_vlb(model, None, schedule, x, jax.random.PRNGKey(8),
                                parametrization="x0", decoder="discretized", variable="logsnr",
                                t_min=1e-3)))(x)
  for terms in [disc, cont]:
    m, se = mean_se(terms.total)
    assert m > entropy - 4 * se
    bpd = likelihood.bits_per_dim(terms, x)
    np.testing.assert_allclose(bpd.total, terms.total / (2 * math.log(2)), rtol=1e-6)
    assert 7.0 < float(jnp.mean(bpd.total)) < 9.0  # entropy is 7.44 bits/dim


def test_hybrid_loss_vlb_term_trains_only_the_variance():
  schedule, n_steps = schedules.LinearSchedule(), 1000
  x0 = jnp.clip(jax.random.normal(jax.random.PRNGKey(9), (32, 2, 2, 3)) * 0.5, -1, 1)

  def model(p, x, t, c):
    mean = jnp.tanh(x * p["mean"] + t[:, None, None, None])
    v = jnp.tanh(x * p["var"] - 0.5)
    return jnp.concatenate([mean, v], -1)

  params = {"mean": jnp.float32(0.7), "var": jnp.float32(0.3)}
  def f(p, w):
    terms = likelihood.hybrid_loss(model, p, schedule, x0, jax.random.PRNGKey(10), n_steps,
                                   vlb_weight=w)
    return jnp.mean(terms.total), terms

  grads = jax.jit(jax.grad(f, has_aux=True))  # the weight is traced: one compilation
  (g0, _), (g1, terms), (g_only_vlb, _) = grads(params, 0.0), grads(params, 1e-3), grads(params, 1e3)
  assert g0["var"] == 0.0 and g0["mean"] != 0.0  # L_simple never sees the variance channels
  assert g1["var"] != 0.0
  # The vlb term adds nothing to the mean's gradient, however heavily it is weighted.
  np.testing.assert_allclose(g1["mean"], g0["mean"], rtol=1e-6)
  np.testing.assert_allclose(g_only_vlb["mean"], g0["mean"], rtol=1e-6)
  np.testing.assert_allclose(terms.total, terms.simple + 1e-3 * terms.vlb, rtol=1e-6)
  assert np.all(np.isfinite(terms.vlb)) and np.all(terms.vlb != 0)


def test_continuous_vlb_is_a_jittable_training_loss():
  schedule = schedules.CosineSchedule()
  x0, _ = GAUSS.sample(jax.random.PRNGKey(11), 256)
  model = lambda p, x, t, c: x * p  # an eps model with one parameter
  loss = losses.mean_loss(lambda p, k: likelihood.continuous_vlb(model, p, schedule, x0, k))
  val, g = jax.jit(jax.value_and_grad(loss))(jnp.float32(0.5), jax.random.PRNGKey(12))
  assert np.isfinite(val) and np.isfinite(g) and g != 0.0


def _x():
  return jnp.zeros((4, 2))


M = lambda p, x, t, c: x


@pytest.mark.parametrize("call, match", [
    (lambda: likelihood.continuous_vlb(M, None, schedules.LinearSchedule(), _x(),
                                       jax.random.PRNGKey(0), variable="sigma"),
     "unknown integration variable 'sigma'"),
    (lambda: likelihood.continuous_vlb(M, None, schedules.LinearSchedule(), _x(),
                                       jax.random.PRNGKey(0), time_sampling="lognormal"),
     "unknown time sampling 'lognormal'; valid time samplings are: low_discrepancy, uniform"),
    (lambda: likelihood.continuous_vlb(M, None, schedules.LinearSchedule(), _x(),
                                       jax.random.PRNGKey(0), t_min=0.0), "infinite"),
    (lambda: likelihood.continuous_vlb(M, None, schedules.LinearSchedule(), _x(),
                                       jax.random.PRNGKey(0), t_min=1.0), "t_min must be"),
    (lambda: likelihood.continuous_vlb(M, None, schedules.LinearSchedule(), _x(),
                                       jax.random.PRNGKey(0), decoder="logistic"),
     "unknown decoder 'logistic'"),
    (lambda: likelihood.continuous_vlb(M, None, schedules.LinearSchedule(), _x() + 2.0,
                                       jax.random.PRNGKey(0), decoder="discretized"),
     r"needs data in \[-1, 1\]"),
    (lambda: likelihood.continuous_vlb(M, None, schedules.LinearSchedule(), _x(),
                                       jax.random.PRNGKey(0), prior_std=-1.0),
     "prior_std must be a positive"),
    (lambda: likelihood.continuous_vlb(M, None, schedules.LinearSchedule(), _x(),
                                       jax.random.PRNGKey(0), parametrization="mu"),
     "unknown parametrization 'mu'"),
    (lambda: likelihood.discrete_vlb(M, None, schedules.LinearSchedule(), _x(),
                                     jax.random.PRNGKey(0), 1), "num_steps must be >= 2"),
    (lambda: likelihood.discrete_vlb(M, None, schedules.LinearSchedule(), _x(),
                                     jax.random.PRNGKey(0), 0), "num_steps must be an integer"),
    (lambda: likelihood.discrete_vlb(M, None, schedules.LinearSchedule(), _x(),
                                     jax.random.PRNGKey(0), 10, variance="fixed"),
     "unknown variance 'fixed'; valid variances are: large, learned, small"),
    (lambda: likelihood.discrete_vlb(M, None, schedules.LinearSchedule(), _x(),
                                     jax.random.PRNGKey(0), 10, estimator="mc"),
     "unknown estimator 'mc'"),
    (lambda: likelihood.discrete_vlb(M, None, schedules.LinearSchedule(), _x(),
                                     jax.random.PRNGKey(0), 10, variance="learned"),
     "twice the data channels"),
    (lambda: likelihood.discrete_vlb(M, None, schedules.LinearSchedule(), _x(),
                                     jax.random.PRNGKey(0), 10, cond=jnp.zeros(3)),
     "cond has leading dimension 3"),
    (lambda: likelihood.hybrid_loss(M, None, schedules.LinearSchedule(), _x(),
                                    jax.random.PRNGKey(0), 10, vlb_weight=-1.0),
     "vlb_weight must be a finite scalar >= 0"),
])
def test_bad_inputs_raise_clear_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# ---------------------------------------------------------------------------------------------------
# Probability-flow ODE likelihood (jdiff.ode_likelihood) against closed forms.
#
# For Gaussian data N(mu, C) (eigenvalues lam) the probability-flow ODE is linear in y = x / alpha:
# y(s) - mu = U diag(sqrt((lam + e^{2s}) / (lam + e^{2 s0}))) U^T (y(s0) - mu), with the divergence
# int div f ds = sum 1/2 log((lam + e^{2 s1}) / (lam + e^{2 s0})) the same for every example. So the
# model density the ODE computes (the flow from the prior N(0, prior_std^2) on x_1) is known exactly
# per example, and its expectation is the entropy of the data blurred by sigma_tilde(t_min) plus
# KL(q(x_1) || prior) (both computed below; ~1e-4 nats here).

from jdiff import ode_likelihood

MU3 = np.array([0.3, -0.2, 0.1])
_L3 = np.array([[0.5, 0.0, 0.0], [0.2, 0.6, 0.0], [-0.1, 0.15, 0.4]])
COV3 = _L3 @ _L3.T
GAUSS3 = toy.GaussianMixture(jnp.ones(1), jnp.asarray(MU3[None], jnp.float32),
                             jnp.asarray(COV3[None], jnp.float32))
ENTROPY3 = 0.5 * float(np.linalg.slogdet(2 * np.pi * np.e * COV3)[1])  # nats per example


def _flow_closed_form(schedule, x, t_min, mu=MU3, cov=COV3):
  """Per-example NLL of the exact flow, its end point z, and the expected NLL (nats)."""
  d = len(mu)
  lam, u = np.linalg.eigh(cov)
  s0 = f64(jnp.log(schedule.sigma_tilde(jnp.float32(t_min))))
  s1 = f64(jnp.log(schedule.sigma_tilde(jnp.float32(1.0))))
  a1 = f64(schedule.alpha(jnp.float32(1.0)))
  p2 = schedule.prior_std() ** 2
  scale = np.sqrt((lam + np.exp(2 * s1)) / (lam + np.exp(2 * s0)))
  z = a1 * (mu + ((np.asarray(x, np.float64) - mu) @ u * scale) @ u.T)
  delta = float(np.sum(np.log(scale)))
  nll = 0.5 * np.sum(z ** 2, 1) / p2 + 0.5 * d * math.log(2 * math.pi * p2) - d * math.log(a1) - delta
  b = lam + math.exp(2 * s0)  # the data blurred by sigma_tilde(t_min)
  blurred_entropy = float(np.sum(0.5 * np.log(2 * np.pi * b) + 0.5 * lam / b))
  return nll, z, blurred_entropy + _prior_kl(schedule, mu, cov)


def _prior_kl(schedule, mu, cov):
  """KL(q(x_1) || N(0, prior_std^2 I)) for Gaussian data: the ODE's bias from the prior."""
  d = len(mu)
  a1, s1 = (f64(v) for v in schedule.alpha_sigma(jnp.float32(1.0)))
  p2 = schedule.prior_std() ** 2
  c1 = a1 ** 2 * cov + s1 ** 2 * np.eye(d)
  return 0.5 * (np.trace(c1) / p2 + a1 ** 2 * mu @ mu / p2 - d + d * math.log(p2)
                - np.linalg.slogdet(c1)[1])


@jax.jit
def _hutchinson_nll(x, key, indices):
  """Rademacher-probe ODE NLL on the linear schedule with the exact eps model (one compilation for
  the [4096, 3] batches of the two tests below)."""
  schedule = schedules.LinearSchedule()
  return ode_likelihood.ode_nll(exact_model(schedule, "eps", data=GAUSS3), None, schedule, x, key,
                                parametrization="eps", trace="rademacher", indices=indices)


@pytest.mark.parametrize("schedule, param, t_min", [
    (schedules.LinearSchedule(), "eps", 1e-5), (schedules.VESchedule(), "v", 0.0)],
    ids=["linear-eps", "ve-v"])
def test_ode_nll_exact_trace_matches_the_flow_in_closed_form(schedule, param, t_min):
  x = np.random.default_rng(20).multivariate_normal(MU3, COV3, 128).astype(np.float32)
  out = jax.jit(lambda x, k: ode_likelihood.ode_nll(
      exact_model(schedule, param, data=GAUSS3), None, schedule, x, k, parametrization=param,
      trace="exact",
      t_min=t_min))(x, jax.random.PRNGKey(21))
  nll, z, _ = _flow_closed_form(schedule, x, t_min)
  # Adaptive solve with rtol = atol = 1e-5 on y (|y_1| ~ 150) and on the divergence integral (~20
  # nats): a few 1e-4 nats; measured max 2.4e-4 (linear), float32 throughout.
  np.testing.assert_allclose(out.nll, nll, atol=2e-3)
  np.testing.assert_allclose(out.z, z, atol=2e-4 * np.abs(z).max())
  np.testing.assert_allclose(out.nll, out.prior - out.delta, rtol=1e-6)
  assert np.all(np.asarray(out.dequantization) == 0.0)
  assert 20 < int(out.nfe) < 1000  # adaptive: ~100-200 evaluations (each 3 JVPs for the exact trace)


def test_ode_and_vlb_bits_per_dim_match_the_gaussian_entropy():
  """Both estimators on Gaussian data with the exact denoiser recover the entropy (the expected NLL).

  Tolerances are 4 Monte-Carlo standard errors (over data, Hutchinson probes, VLB times and noise)
  plus the known, closed-form bias of each estimator: for the ODE the data blur by sigma_tilde(t_min)
  and KL(q(x_1) || prior); for the VLB its gap to the NLL (prior KL and the Gaussian decoder at t_min).
  Both biases are < 1e-4 bits/dim here, so the checks say: the estimate equals the entropy up to MC error.
  """
  schedule, d = schedules.LinearSchedule(), 3
  to_bpd = 1.0 / (d * math.log(2))
  h_bpd = ENTROPY3 * to_bpd
  rng = np.random.default_rng(22)
  x = rng.multivariate_normal(MU3, COV3, 4096).astype(np.float32)
  out = _hutchinson_nll(x, jax.random.PRNGKey(23), jnp.arange(4096))
  _, _, expected = _flow_closed_form(schedule, x, 1e-5)
  bpd = np.asarray(likelihood.bits_per_dim(out.nll, x), np.float64)
  m, se = mean_se(bpd)
  ode_bias = expected * to_bpd - h_bpd
  assert 0.0 <= ode_bias < 1e-4
  assert abs(m - h_bpd) < 4 * se + ode_bias, (m, h_bpd, se)
  # Paired with the true log density at the same points: only the Hutchinson noise remains.
  true_nll = -multivariate_normal(MU3, COV3).logpdf(x.astype(np.float64))
  mp, sep = mean_se((np.asarray(out.nll, np.float64) - true_nll) * to_bpd)
  assert abs(mp) < 4 * sep + ode_bias + 1e-5, (mp, sep)

  # The continuous VLB (Kingma et al. 2021) with the same exact denoiser. Its per-example values have
  # a heavy chi-square tail (the eps draw at high SNR), hence many examples: 2^18 one-call estimates.
  xv = rng.multivariate_normal(MU3, COV3, 2 ** 18).astype(np.float32)
  t_min = 1e-5
  terms = jax.jit(lambda x: likelihood.continuous_vlb(
      GAUSS3.model_fn(schedule), None, schedule, x, jax.random.PRNGKey(25), parametrization="x0",
      t_min=t_min, variable="logsnr", time_sampling="low_discrepancy"))(xv)
  vm, vse = mean_se(np.asarray(likelihood.bits_per_dim(terms.total, xv), np.float64))
  lam = np.linalg.eigvalsh(COV3)
  snr = lambda t: math.exp(f64(schedule.logsnr(jnp.float32(t))))
  a1, s1 = (f64(v) for v in schedule.alpha_sigma(jnp.float32(1.0)))
  expected_vlb = (np.sum(0.5 * np.log((snr(t_min) * lam + 1) / (snr(1.0) * lam + 1)))
                  + d * 0.5 * (math.log(2 * math.pi / snr(t_min)) + 1.0)
                  + np.sum(0.5 * (s1 ** 2 + a1 ** 2 * (MU3 ** 2 + np.diag(COV3)) - 1 - np.log(s1 ** 2))))
  vlb_gap = expected_vlb * to_bpd - h_bpd
  assert 0.0 <= vlb_gap < 1e-4  # a bound: never below the NLL
  assert abs(vm - h_bpd) < 4 * vse + vlb_gap, (vm, h_bpd, vse)
  print(f"\nentropy {h_bpd:.4f} bits/dim; ODE {m:.4f} +- {se:.4f} (NFE {int(out.nfe)}); "
        f"ODE - true NLL (paired) {mp:+.5f} +- {sep:.5f}; VLB {vm:.4f} +- {vse:.4f}")


def test_hutchinson_trace_is_unbiased():
  # divergence(): a nonlinear per-example map with a dense Jacobian; exact trace vs jacfwd, then the
  # mean of many probes within 4 standard errors of it, for both probe distributions.
  w = jax.random.normal(jax.random.PRNGKey(26), (5, 5))
  fn = lambda y: jnp.tanh(y @ w) + 0.3 * y ** 2
  n = 20000

  @jax.jit
  def run(y0):
    want = jnp.trace(jax.jacfwd(lambda v: fn(v[None])[0])(y0[0]))
    ys = jnp.broadcast_to(y0, (n, 5))
    est = [ode_likelihood.divergence(fn, ys, ode_likelihood.probes(
        jax.random.PRNGKey(28), jnp.arange(n), (5,), kind))[1] for kind in ("rademacher", "gaussian")]
    return want, ode_likelihood.divergence(fn, y0)[1], est

  want, exact, est = run(jax.random.normal(jax.random.PRNGKey(27), (1, 5)))
  np.testing.assert_allclose(exact, want, rtol=1e-5)
  for kind, e in zip(("rademacher", "gaussian"), est):
    m, se = mean_se(e)
    assert abs(m - float(want)) < 4 * se, (kind, m, float(want), se)
  assert np.var(est[0]) < np.var(est[1])  # Rademacher drops the diagonal's contribution

  # The whole ODE: each of 4 points with 1024 different probes (global indices) against the exact
  # flow (the closed form that the exact-trace solve matches to 2e-4 nats, see above).
  schedule, reps = schedules.LinearSchedule(), 1024
  x = np.random.default_rng(29).multivariate_normal(MU3, COV3, 4).astype(np.float32)
  out = _hutchinson_nll(np.repeat(x, reps, axis=0), jax.random.PRNGKey(30), jnp.arange(4 * reps))
  hutch = np.asarray(out.nll, np.float64)
  exact_nll = _flow_closed_form(schedule, x, 1e-5)[0]
  for i in range(4):
    m, se = mean_se(hutch[i * reps:(i + 1) * reps])
    assert 0 < se and abs(m - exact_nll[i]) < 4 * se + 2e-3, (i, m, exact_nll[i], se)


def test_ode_nll_of_dequantized_8bit_data_matches_the_discrete_entropy():
  """Uniform dequantization on 8-bit data (a Gaussian rounded to the grid v / 127.5 - 1).

  With the exact flow, E[nll] = sum over bins of P(bin) E_u[-log p(x_bin + u)] + D log 127.5 + the
  prior's KL, computed here exactly (the flow's density is N(mu, s^2 + sigma_tilde(t_min)^2) per
  dimension). The estimate must match it within 4 standard errors; the value itself bounds the 8-bit
  NLL (the discrete entropy) from above (Jensen) and is tight, up to ~w^2 / (24 s^2) ~ 1e-4 nats,
  when the bins are much narrower than the data and no mass is clipped at +-1 (as here).
  """
  mu, s = np.array([0.1, -0.2]), np.array([0.15, 0.2])
  data = toy.GaussianMixture(jnp.array([1.0]), jnp.asarray(mu[None], jnp.float32),
                             jnp.asarray(np.diag(s ** 2)[None], jnp.float32))
  schedule, t_min, w = schedules.CosineSchedule(), 1e-5, 2 / 255
  grid = np.arange(256) / 127.5 - 1
  edges = np.concatenate([[-np.inf], (grid[:-1] + grid[1:]) / 2, [np.inf]])
  v = s ** 2 + f64(schedule.sigma_tilde(jnp.float32(t_min))) ** 2
  entropy = cross = 0.0
  for k in range(2):
    p = np.diff(norm.cdf(edges, mu[k], s[k]))
    entropy -= np.sum(p[p > 0] * np.log(p[p > 0]))
    cross += np.sum(p * (0.5 * np.log(2 * np.pi * v[k]) + ((grid - mu[k]) ** 2 + w ** 2 / 12)
                         / (2 * v[k]))) + math.log(127.5)
  expected = cross + _prior_kl(schedule, mu, np.diag(s ** 2))
  x = mu + s * np.random.default_rng(31).standard_normal((4096, 2))
  x = np.clip(np.round((x + 1) * 127.5) / 127.5 - 1, -1, 1).astype(np.float32)
  out = jax.jit(lambda x, k: ode_likelihood.ode_nll(
      data.model_fn(schedule), None, schedule, x, k, parametrization="x0", dequantize=True,
      t_min=t_min))(x, jax.random.PRNGKey(32))
  np.testing.assert_allclose(out.dequantization, 2 * math.log(127.5), rtol=1e-6)
  to_bpd = 1 / (2 * math.log(2))
  m, se = mean_se(np.asarray(likelihood.bits_per_dim(out.nll, x), np.float64))
  assert abs(m - expected * to_bpd) < 4 * se, (m, expected * to_bpd, se)
  assert 0 <= (cross - entropy) * to_bpd < 1e-3  # the bound is tight: 8.1 bits/dim both
  assert m > entropy * to_bpd - 4 * se


@pytest.mark.parametrize("kwargs, x, match", [
    (dict(trace="hutchinson"), None, "unknown trace 'hutchinson'"),
    (dict(t_min=0.0), None, r"sigma\(t_min=0.0\) is 0"),
    (dict(dequantize=True), np.full((4, 2), 1.5, np.float32), r"needs data in \[-1, 1\]"),
    (dict(dequantize=True), np.full((4, 2), 0.001, np.float32), "levels off"),
    (dict(num_bins=1), None, "num_bins must be >= 2"),
    (dict(rtol=2.0), None, r"rtol must be a number in \(0, 1\)"),
    (dict(solver="euler"), None, "unknown ODE solver 'euler'"),
    (dict(prior_std=0.0), None, "prior_std must be a positive"),
    (dict(parametrization="mu"), None, "unknown parametrization 'mu'"),
])
def test_ode_nll_bad_inputs(kwargs, x, match):
  x = jnp.zeros((4, 2)) if x is None else x
  with pytest.raises(ValueError, match=match):
    ode_likelihood.ode_nll(M, None, schedules.LinearSchedule(), x, jax.random.PRNGKey(0), **kwargs)
