"""Variational bounds on ``-log p(x0)``: continuous time (VDM), discrete time (DDPM) and the hybrid loss.

All functions return per-example values in nats (summed over data dimensions); ``bits_per_dim`` converts.
A continuous density of data rescaled from {0..255} to [-1, 1] converts to the usual 8-bit figure by
adding ``log2(127.5)`` bits/dim; the discretized decoders give the 8-bit figure directly.

* ``continuous_vlb``: Kingma et al. 2021, eqs. 11-13 and 17, on ``t in [t_min, 1]``:
  ``prior KL(q(x_1|x0) || N(0, prior_std^2 I))`` + ``reconstruction -log p(x0 | x_{t_min})`` +
  ``diffusion  -1/2 int_{t_min}^1 SNR'(t) E||x0 - x0_hat(x_t, t)||^2 dt``.
* ``discrete_vlb``: Ho et al. 2020, eq. 5 (Sohl-Dickstein et al. 2015) for the N-step discretization
  ``t_i = i / N`` of any schedule: ``L_N + sum_{i>=2} L_{i-1} + L_0``.
* ``hybrid_loss``: ``L_simple + lambda L_vlb`` (Nichol & Dhariwal 2021, Sec. 3.1).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from jdiff import _checks
from jdiff._checks import check_cond, check_data, check_time_bound, logsnr_is_finite
from jdiff.keys import example_normal, per_example_keys, resolve_indices
from jdiff.losses import mean_flat, model_output, sample_times
from jdiff.noising import bcast, posterior_coefficients
from jdiff.parametrization import ModelFn, check_parametrization, target, to_x0_eps
from jdiff.schedules import Schedule

VARIANCES = ("small", "large", "learned")
CONT_DECODERS = ("gaussian", "discretized")
ESTIMATORS = ("exact", "monte_carlo")
LN2 = math.log(2.0)


class VLBTerms(NamedTuple):
  """Per-example bound and its parts, in nats: ``total = prior + diffusion + reconstruction``."""
  total: jnp.ndarray
  prior: jnp.ndarray
  diffusion: jnp.ndarray
  reconstruction: jnp.ndarray


class HybridTerms(NamedTuple):
  """``total = simple + vlb_weight * vlb``; ``vlb`` is the Monte-Carlo L_vlb in bits/dim."""
  total: jnp.ndarray
  simple: jnp.ndarray
  vlb: jnp.ndarray


def bits_per_dim(nats, x0):
  """Nats per example (an array or a ``VLBTerms``) to bits per data dimension of ``x0 [batch, ...]``."""
  d = int(np.prod(np.shape(x0)[1:]))
  return jax.tree_util.tree_map(lambda v: v / (d * LN2), nats)


def _sum_flat(x):
  return jnp.sum(x.reshape(x.shape[0], -1), axis=1)


def _expm1_minus_x(d):
  """``exp(d) - 1 - d`` without cancellation for small ``|d|`` (series to 4th order there)."""
  small = jnp.abs(d) < 1e-2
  ds = jnp.where(small, d, 0.0)
  series = ds * ds * (0.5 + ds * (1.0 / 6.0 + ds / 24.0))
  return jnp.where(small, series, jnp.expm1(d) - d)


def gaussian_kl(mean1, logvar1, mean2, logvar2):
  """Elementwise ``KL(N(mean1, e^logvar1) || N(mean2, e^logvar2))``
  ``= 1/2 (e^d - 1 - d + (mean1 - mean2)^2 e^-logvar2)``, ``d = logvar1 - logvar2``, written so that
  nearly equal variances lose no precision."""
  return 0.5 * (_expm1_minus_x(logvar1 - logvar2) + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def _log_ndtr_diff(a, b):
  """``log(Phi(b) - Phi(a))`` for ``a < b``, using the tail on the side of the interval."""
  flip = (a + b) > 0
  a, b = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
  la, lb = log_ndtr(a), log_ndtr(b)
  return lb + jnp.log(-jnp.expm1(jnp.minimum(la - lb, -1e-30)))


def discretized_gaussian_log_likelihood(x, mean, log_scale, num_bins: int = 256):
  """Elementwise ``log P(bin of x)`` under ``N(mean, exp(log_scale)^2)`` for data on the grid of
  ``num_bins`` values in [-1, 1], the end bins extended to infinity (Ho et al. 2020, Sec. 3.3, eq. 13).
  """
  half = 1.0 / (num_bins - 1)
  inv = jnp.exp(-log_scale)
  big = 1e4  # a standardized edge this far out is +-infinity for all purposes, with finite gradients
  lo = jnp.where(x < -1.0 + half, -big, (x - mean - half) * inv)
  hi = jnp.where(x > 1.0 - half, big, (x - mean + half) * inv)
  exact = _log_ndtr_diff(lo, hi)
  # A bin much narrower than the scale: midpoint rule, exact to O(width^2).
  mid = 0.5 * (lo + hi)
  narrow = -0.5 * jnp.square(mid) - 0.5 * math.log(2 * math.pi) + jnp.log(jnp.maximum(hi - lo, 1e-30))
  return jnp.where(hi - lo < 1e-3, narrow, exact)


def _prior_kl(schedule: Schedule, x0, prior_std: Optional[float]):
  """``KL(q(x_1 | x0) || N(0, prior_std^2 I))`` per example (Kingma et al. 2021, eq. 11)."""
  with jax.ensure_compile_time_eval():  # Schedule.prior_std() calls float()
    p = schedule.prior_std() if prior_std is None else prior_std
  a1, s1 = schedule.alpha_sigma(jnp.float32(1.0))
  kl = gaussian_kl(a1 * x0, 2.0 * jnp.log(s1), 0.0, 2.0 * math.log(p))
  return _sum_flat(kl)


def _check_common(x0, schedule, cond, parametrization, prior_std, decoder):
  batch = check_data(x0)
  check_parametrization(parametrization)
  check_cond(cond, batch)
  if prior_std is not None and not (isinstance(prior_std, (int, float)) and prior_std > 0):
    raise ValueError(f"prior_std must be a positive number or None (the schedule's), got {prior_std!r}")
  _checks.choice("decoder", decoder, CONT_DECODERS)
  if decoder == "discretized" and _checks.is_concrete(x0):
    a = np.asarray(x0)
    if a.min() < -1.0 or a.max() > 1.0:
      raise ValueError(f"decoder='discretized' needs data in [-1, 1] (8-bit values v mapped to "
                       f"v / 127.5 - 1), got values in [{a.min():.4g}, {a.max():.4g}]")
  return batch


# ----------------------------------------------------------------------------------------------------
# Continuous time (Kingma et al. 2021)
# ----------------------------------------------------------------------------------------------------


def continuous_vlb(model_fn: ModelFn, params, schedule: Schedule, x0, key, cond: Any = None,
                   parametrization: str = "eps", *, t_min: float = 1e-4, variable: str = "t",
                   time_sampling: str = "uniform", decoder: str = "gaussian",
                   prior_std: Optional[float] = None, indices=None,
                   global_batch_size: Optional[int] = None) -> VLBTerms:
  """Continuous-time VLB per example (nats), one Monte-Carlo time per example.

  Diffusion term (Kingma et al. 2021, eq. 17, restricted to ``[t_min, 1]``):
  ``variable='t'``: ``(1 - t_min) * -1/2 SNR'(t) ||x0 - x0_hat||^2`` with ``t ~ U[t_min, 1]`` and
  ``SNR'`` by forward-mode autodiff of ``schedule.logsnr`` (any schedule);
  ``variable='logsnr'``: the same integral after the change of variables ``v = logsnr`` (Kingma et al.
  2021, Sec. 5.1, invariance to the noise schedule): ``1/2 (logsnr(t_min) - logsnr(1)) e^v
  ||x0 - x0_hat||^2`` with ``v`` uniform; much lower variance when the SNR spans many decades.
  ``time_sampling`` (``uniform`` or ``low_discrepancy``) draws the uniform variable.

  Reconstruction at ``t_min`` (``sigma_tilde = sigma / alpha``): ``gaussian`` uses the decoder
  ``p(x0 | z) proportional to q(z | x0) = N(z / alpha, sigma_tilde^2)`` (Kingma et al. 2021, Sec. 3.3),
  whose expected NLL is ``D/2 (log(2 pi sigma_tilde^2) + 1)`` (returned exactly); ``discretized`` uses
  the 256-bin discretized Gaussian with the same mean and scale on a sampled ``z`` (data in [-1, 1]).
  Prior: ``KL(q(x_1 | x0) || N(0, prior_std^2))``, ``prior_std`` by default ``schedule.prior_std()``.
  As a training loss, take ``mean_loss(continuous_vlb)`` (only the diffusion term has a gradient).
  """
  batch = _check_common(x0, schedule, cond, parametrization, prior_std, decoder)
  _checks.choice("integration variable", variable, ("t", "logsnr"))
  _checks.choice("time sampling", time_sampling, ("uniform", "low_discrepancy"))
  t_min = check_time_bound(t_min, "t_min")
  if not logsnr_is_finite(schedule, t_min):
    raise ValueError(f"logsnr(t_min={t_min}) is infinite for this schedule (sigma=0); use t_min > 0, "
                     f"e.g. 1e-4")
  indices, gbs = resolve_indices(batch, indices, global_batch_size,
                                 time_sampling == "low_discrepancy")
  x0 = jnp.asarray(x0)
  k_t, k_eps, k_rec = jax.random.split(key, 3)
  u = sample_times(k_t, indices, time_sampling, t_min=0.0, global_batch_size=gbs)
  ls_hi, ls_lo = schedule.logsnr(jnp.float32(t_min)), schedule.logsnr(jnp.float32(1.0))
  if variable == "t":
    t = t_min + (1.0 - t_min) * u
    logsnr, dlogsnr = jax.jvp(schedule.logsnr, (t,), (jnp.ones_like(t),))
    weight = (1.0 - t_min) * -0.5 * jnp.exp(logsnr) * dlogsnr
  else:
    t = jnp.clip(schedule.t_of_logsnr(ls_hi + u * (ls_lo - ls_hi)), t_min, 1.0)
    weight = 0.5 * (ls_hi - ls_lo) * jnp.exp(schedule.logsnr(t))
  eps = example_normal(k_eps, indices, x0.shape[1:], x0.dtype)
  alpha, sigma = schedule.alpha_sigma(t)
  x_t = bcast(alpha, x0) * x0 + bcast(sigma, x0) * eps
  out, _ = model_output(model_fn, params, x_t, t, cond, x0.shape)
  x0_hat = to_x0_eps(parametrization, out, x_t, alpha, sigma)[0]
  diffusion = weight * _sum_flat(jnp.square(x0 - x0_hat))

  d = int(np.prod(x0.shape[1:]))
  log_st2 = -ls_hi  # log sigma_tilde(t_min)^2
  if decoder == "gaussian":
    recon = jnp.full((batch,), 0.5 * d * (math.log(2 * math.pi) + 1.0)) + 0.5 * d * log_st2
  else:
    z_over_a = x0 + jnp.exp(0.5 * log_st2) * example_normal(k_rec, indices, x0.shape[1:], x0.dtype)
    recon = -_sum_flat(discretized_gaussian_log_likelihood(x0, z_over_a, 0.5 * log_st2))
  prior = _prior_kl(schedule, x0, prior_std)
  return VLBTerms(prior + diffusion + recon, prior, diffusion, recon)


# ----------------------------------------------------------------------------------------------------
# Discrete time (Sohl-Dickstein et al. 2015; Ho et al. 2020; Nichol & Dhariwal 2021)
# ----------------------------------------------------------------------------------------------------


def _step_terms(schedule, num_steps, i, x0, x0_hat, v, variance, decoder, clip_x0):
  """``L_{i-1}`` for steps ``i`` (int ``[batch]``): the KL for ``i >= 2``, the decoder NLL for ``i = 1``.

  Reverse variances (Ho et al. 2020, Sec. 3.2; Nichol & Dhariwal 2021, eq. 15): ``small`` is the
  posterior variance ``beta_tilde_i``, ``large`` is ``beta_i = sigma_{t|s}^2``, ``learned`` is
  ``exp(frac log beta_i + (1 - frac) log beta_tilde_i)`` with ``frac = (v + 1) / 2``. As in both papers'
  code, ``beta_tilde_1 = 0`` is replaced by ``beta_tilde_2`` (and ``large`` uses it at ``i = 1``).
  The model mean is the posterior mean with ``x0_hat`` in place of ``x0`` (Ho et al. 2020, eq. 11).
  """
  n = float(num_steps)
  t, s = i / n, (i - 1) / n
  first = i == 1
  _, c_x0, var_q = posterior_coefficients(schedule, t, s)  # the x_t parts of the means cancel
  var_q2 = posterior_coefficients(schedule, 2.0 / n, 1.0 / n)[2]
  sig_t2 = jnp.square(schedule.sigma(t))
  beta = sig_t2 * -jnp.expm1(schedule.logsnr(t) - schedule.logsnr(s))
  log_small = jnp.log(jnp.where(first, var_q2, var_q))
  log_large = jnp.where(first, log_small, jnp.log(beta))
  if clip_x0:
    x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
  if variance == "small":
    logvar = bcast(log_small, x0)
  elif variance == "large":
    logvar = bcast(log_large, x0)
  else:
    frac = (v + 1.0) / 2.0
    logvar = frac * bcast(jnp.log(beta), x0) + (1.0 - frac) * bcast(log_small, x0)
  logvar = jnp.broadcast_to(logvar, x0.shape)
  safe_var_q = jnp.where(first, 1.0, var_q)
  kl = gaussian_kl(bcast(c_x0, x0) * x0, bcast(jnp.log(safe_var_q), x0),
                   bcast(c_x0, x0) * x0_hat, logvar)
  if decoder == "discretized":
    nll = -discretized_gaussian_log_likelihood(x0, x0_hat, 0.5 * logvar)
  else:
    nll = 0.5 * (math.log(2 * math.pi) + logvar + jnp.square(x0 - x0_hat) * jnp.exp(-logvar))
  return jnp.where(first, _sum_flat(nll), _sum_flat(kl))


def _discrete_checks(x0, schedule, cond, parametrization, prior_std, decoder, num_steps, variance):
  batch = _check_common(x0, schedule, cond, parametrization, prior_std, decoder)
  num_steps = _checks.positive_int(num_steps, "num_steps")
  if num_steps < 2:
    raise ValueError(f"num_steps must be >= 2 (step 1 borrows beta_tilde_2), got {num_steps}")
  _checks.choice("variance", variance, VARIANCES)
  return batch, num_steps


def _predict_step(model_fn, params, schedule, parametrization, x0, eps, i, num_steps, cond,
                  learned):
  t = i.astype(jnp.float32) / num_steps
  alpha, sigma = schedule.alpha_sigma(t)
  x_t = bcast(alpha, x0) * x0 + bcast(sigma, x0) * eps
  out, v = model_output(model_fn, params, x_t, t, cond, x0.shape, learned)
  return x_t, alpha, sigma, out, v


def discrete_vlb(model_fn: ModelFn, params, schedule: Schedule, x0, key, num_steps: int = 1000,
                 cond: Any = None, parametrization: str = "eps", *, variance: str = "small",
                 decoder: str = "discretized", estimator: str = "exact", clip_x0: bool = False,
                 prior_std: Optional[float] = None, indices=None) -> VLBTerms:
  """The DDPM bound ``L_N + sum_{i=2}^N L_{i-1} + L_0`` per example, in nats (Ho et al. 2020, eq. 5).

  ``estimator='exact'`` sums every step (``num_steps`` model calls, in one ``lax.scan``; evaluation,
  as Ho et al.'s ``calc_bpd_loop``), each with its own noise ``fold_in(fold_in(key, index), i)``;
  ``monte_carlo`` draws one step ``i ~ U{1..N}`` per example and scales its term by ``N`` (unbiased;
  training). ``decoder``: ``discretized`` (256 bins, data in [-1, 1]) or ``gaussian`` (continuous data).
  ``variance='learned'`` reads the model's extra channels (``make_denoiser(learned_variance=True)``).
  """
  batch, num_steps = _discrete_checks(x0, schedule, cond, parametrization, prior_std, decoder,
                                      num_steps, variance)
  _checks.choice("estimator", estimator, ESTIMATORS)
  indices, _ = resolve_indices(batch, indices, None, False)
  x0 = jnp.asarray(x0)
  learned = variance == "learned"

  def term(i, eps):
    x_t, alpha, sigma, out, v = _predict_step(model_fn, params, schedule, parametrization, x0, eps,
                                              i, num_steps, cond, learned)
    x0_hat = to_x0_eps(parametrization, out, x_t, alpha, sigma)[0]
    return _step_terms(schedule, num_steps, i, x0, x0_hat, v, variance, decoder, clip_x0)

  if estimator == "exact":
    keys = per_example_keys(key, indices)

    def body(carry, i):
      eps = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), x0.shape[1:],
                                                 x0.dtype))(keys)
      val = term(jnp.full((batch,), i, jnp.int32), eps)
      return carry + jnp.where(i == 1, 0.0, val), jnp.where(i == 1, val, 0.0)

    steps = jnp.arange(num_steps, 0, -1, dtype=jnp.int32)
    diffusion, recons = jax.lax.scan(body, jnp.zeros((batch,), jnp.float32), steps)
    recon = recons[-1]
  else:
    k_i, k_eps = jax.random.split(key)
    i = jax.vmap(lambda k: jax.random.randint(k, (), 1, num_steps + 1))(per_example_keys(k_i, indices))
    val = num_steps * term(i, example_normal(k_eps, indices, x0.shape[1:], x0.dtype))
    diffusion, recon = jnp.where(i == 1, 0.0, val), jnp.where(i == 1, val, 0.0)
  prior = _prior_kl(schedule, x0, prior_std)
  return VLBTerms(prior + diffusion + recon, prior, diffusion, recon)


def hybrid_loss(model_fn: ModelFn, params, schedule: Schedule, x0, key, num_steps: int = 1000,
                cond: Any = None, parametrization: str = "eps", *, vlb_weight: float = 1e-3,
                decoder: str = "discretized", indices=None) -> HybridTerms:
  """``L_hybrid = L_simple + lambda L_vlb`` per example (Nichol & Dhariwal 2021, Sec. 3.1, eq. 16).

  The model outputs twice the data channels (mean output, then ``v`` in [-1, 1]). One step
  ``i ~ U{1..N}`` per example serves both terms: ``L_simple`` is the target MSE (mean over dims) and
  ``L_vlb = N L_{i-1}`` in bits/dim, computed with ``stop_gradient`` on the mean output so that it trains
  only the variance (Sec. 3.1). With ``lambda = 1e-3`` and ``N = 1000`` this is the reference code's
  hybrid loss (which scales the per-step term by ``N / 1000``). ``L_N`` has no gradient and is omitted.
  """
  if _checks.is_concrete(vlb_weight):
    w = np.asarray(vlb_weight)
    if w.shape != () or not np.isfinite(w) or w < 0:
      raise ValueError(f"vlb_weight must be a finite scalar >= 0, got {vlb_weight!r}")
  batch, num_steps = _discrete_checks(x0, schedule, cond, parametrization, None, decoder,
                                      num_steps, "learned")
  indices, _ = resolve_indices(batch, indices, None, False)
  x0 = jnp.asarray(x0)
  k_i, k_eps = jax.random.split(key)
  i = jax.vmap(lambda k: jax.random.randint(k, (), 1, num_steps + 1))(per_example_keys(k_i, indices))
  eps = example_normal(k_eps, indices, x0.shape[1:], x0.dtype)
  x_t, alpha, sigma, out, v = _predict_step(model_fn, params, schedule, parametrization, x0, eps, i,
                                            num_steps, cond, True)
  simple = mean_flat(jnp.square(out - target(parametrization, x0, eps, x_t, alpha, sigma)))
  x0_hat = to_x0_eps(parametrization, jax.lax.stop_gradient(out), x_t, alpha, sigma)[0]
  step = _step_terms(schedule, num_steps, i, x0, x0_hat, v, "learned", decoder, False)
  vlb = num_steps * step / (int(np.prod(x0.shape[1:])) * LN2)
  return HybridTerms(simple + vlb_weight * vlb, simple, vlb)
