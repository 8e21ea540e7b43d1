"""Sampler step rules as pairs of pure functions over one denoiser interface (in the spirit of optax).

A ``Sampler`` has ``init(x, num_steps) -> state`` (a NamedTuple whose field ``x`` is the current sample;
``num_steps`` is the length of the grid, which some rules use: churn's ``S_churn / N``) and
``step(denoise, schedule, state, t, t_next, keys, hp) -> (state, nfe)``: one step of the time grid from
``t`` to ``t_next < t``, where ``denoise(x, t) -> Prediction(x0, eps, var_frac)``, ``keys`` holds one PRNG
key per example for this step (so sample ``i`` does not depend on the batch it is in), ``hp`` is the dict
of the sampler's traced hyperparameters and ``nfe`` the number of denoiser calls spent (a traced int).
The driver ``jdiff.sampling.sample`` runs the whole grid in one ``lax.scan``; ``jdiff.sampling.SAMPLERS``
is the registry by name, with the multistep solvers of ``jdiff.multistep`` (DPM-Solver++, UniPC) and
the adaptive probability-flow ODE solver of ``jdiff.ode``.

Notation: ``x_t = alpha_t x0 + sigma_t eps``, ``lambda = logsnr / 2``, ``sigma_tilde = sigma / alpha`` and
``y = x / alpha`` (the scaled variable of Karras et al. 2022, eq. 4). A step to ``t_next = 0`` on a VP
schedule (``sigma = 0``) lands on the denoised ``x0_hat`` for every sampler here (no noise is added).
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jdiff import _checks
from jdiff.keys import normal_like


class Sampler(NamedTuple):
  """``init``/``step`` pair plus metadata.

  ``hparams``: the traced hyperparameters and their defaults (an ``int`` default means an integer one);
  ``deterministic``: no noise is drawn with the default hyperparameters (then the sampler solves the
  probability-flow ODE); ``ve_only``: needs ``alpha = 1`` (VE/EDM schedules); ``needs_var_frac``: the
  denoiser must predict ``Prediction.var_frac``; ``adaptive``: its steps depend on the whole batch
  (one error norm of an adaptive solver), so a sample is batch-independent only when it is run one
  example at a time (``jdiff.generation`` does so); ``lands_on_x0``: its step to ``t = 0`` already returns
  the model's ``x0`` even where ``sigma(0) > 0`` (no final denoising call is added).
  """
  name: str
  init: Callable[[jnp.ndarray], Any]
  step: Callable[..., Any]
  hparams: dict
  deterministic: bool
  ve_only: bool = False
  needs_var_frac: bool = False
  adaptive: bool = False
  lands_on_x0: bool = False


class SampleOutput(NamedTuple):
  x: jnp.ndarray  # the samples at t = 0
  nfe: jnp.ndarray  # int32: denoiser calls spent on the batch (not per example)


class XState(NamedTuple):
  x: jnp.ndarray


def _init_x(x, num_steps):
  del num_steps
  return XState(x)


class Coefs(NamedTuple):
  alpha: jnp.ndarray
  sigma: jnp.ndarray
  logsnr: jnp.ndarray
  sigma_tilde: jnp.ndarray


def coefs(schedule, t) -> Coefs:
  """``alpha, sigma, logsnr, sigma_tilde`` at ``t``, pinned to their exact limits ``1, 0, +inf, 0`` at
  ``t = 0`` for schedules that reach zero noise (VP, flow; so a step to 0 lands exactly on ``x0_hat``
  even where a schedule's float32 formula leaves a tiny ``sigma(0) > 0``)."""
  t = jnp.asarray(t, jnp.float32)
  a, s = schedule.alpha_sigma(t)
  lam, st = schedule.logsnr(t), schedule.sigma_tilde(t)
  if schedule.reaches_zero_noise:
    zero = t == 0.0
    a, s = jnp.where(zero, 1.0, a), jnp.where(zero, 0.0, s)
    lam, st = jnp.where(zero, jnp.inf, lam), jnp.where(zero, 0.0, st)
  return Coefs(a, s, lam, st)


def _frac(c_t: Coefs, c_s: Coefs):
  """``sigma_{t|s}^2 / sigma_t^2 = 1 - exp(logsnr_t - logsnr_s)`` (1 when ``sigma_s = 0``)."""
  return -jnp.expm1(c_t.logsnr - c_s.logsnr)


# ----------------------------------------------------------------------------------------------------
# Ancestral samplers
# ----------------------------------------------------------------------------------------------------


def ddpm(variance: str = "small") -> Sampler:
  """Ancestral sampling ``x_s ~ N(mu(x_t, x0_hat), var)`` (Ho et al. 2020, Alg. 2 and eq. 7).

  ``mu = c_xt x_t + c_x0 x0_hat`` is the posterior mean of ``q(x_s | x_t, x0)`` (Kingma et al. 2021,
  eqs. 30-33; ``jdiff.noising.posterior_coefficients``). The variance is ``small``: the posterior variance
  ``sigma_tilde_{t,s}^2 = sigma_{t|s}^2 sigma_s^2 / sigma_t^2``; ``large``: ``sigma_{t|s}^2 = sigma_t^2 -
  alpha_{t|s}^2 sigma_s^2`` (beta_t in Ho et al. 2020, Sec. 3.2); or ``learned``: ``log var = v log
  sigma_{t|s}^2 + (1 - v) log sigma_tilde^2`` with ``v = Prediction.var_frac`` (Nichol & Dhariwal 2021,
  eq. 15). No noise is added on a step to ``sigma_s = 0``.
  """
  _checks.choice("ddpm variance", variance, ("small", "large", "learned"))

  def step(denoise, schedule, state, t, t_next, keys, hp):
    del hp
    x = state.x
    pred = denoise(x, t)
    ct, cs = coefs(schedule, t), coefs(schedule, t_next)
    frac = _frac(ct, cs)
    # Posterior coefficients as in jdiff.noising.posterior_coefficients, with t = 0 pinned.
    c_xt = ct.alpha * cs.sigma ** 2 / (cs.alpha * ct.sigma ** 2)
    mean = c_xt * x + cs.alpha * frac * pred.x0
    var_small = cs.sigma ** 2 * frac
    var_large = ct.sigma ** 2 * frac
    if variance == "small":
      std = jnp.sqrt(var_small)
    elif variance == "large":
      std = jnp.sqrt(var_large)
    else:
      log_small = jnp.log(jnp.where(var_small > 0, var_small, 1.0))
      v = pred.var_frac
      std = jnp.exp(0.5 * (v * jnp.log(var_large) + (1.0 - v) * log_small))
    std = jnp.where(cs.sigma > 0, std, 0.0)
    return XState(mean + std * normal_like(keys, x, 0)), jnp.int32(1)

  return Sampler("ddpm", _init_x, step, {}, deterministic=False,
                 needs_var_frac=variance == "learned")


def ddim() -> Sampler:
  """DDIM (Song et al. 2021a, eq. 12) for any ``alpha, sigma``:
  ``x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z`` with ``c^2 = eta^2 sigma_tilde_{t,s}^2``
  (``eta`` times the posterior variance; eq. 16). ``eta = 0``: deterministic (an Euler step of the
  probability-flow ODE in ``sigma_tilde``); ``eta = 1``: the same distribution of steps as DDPM ``small``.
  """

  def step(denoise, schedule, state, t, t_next, keys, hp):
    x = state.x
    pred = denoise(x, t)
    cs = coefs(schedule, t_next)
    a_s, s_s = cs.alpha, cs.sigma
    eta2_frac = hp["eta"] ** 2 * _frac(coefs(schedule, t), cs)
    c = s_s * jnp.sqrt(eta2_frac)
    direction = s_s * jnp.sqrt(jnp.maximum(1.0 - eta2_frac, 0.0))
    x_next = a_s * pred.x0 + direction * pred.eps + c * normal_like(keys, x, 0)
    return XState(x_next), jnp.int32(1)

  return Sampler("ddim", _init_x, step, {"eta": 0.0}, deterministic=True)


# ----------------------------------------------------------------------------------------------------
# Karras et al. 2022: Euler and Heun in the scaled variable y = x / alpha with optional churn
# ----------------------------------------------------------------------------------------------------

_KARRAS_HP = {"S_churn": 0.0, "S_tmin": 0.0, "S_tmax": math.inf, "S_noise": 1.0}


class ChurnState(NamedTuple):
  x: jnp.ndarray
  num_steps: jnp.ndarray  # N of S_churn / N


def _init_churn(x, num_steps):
  return ChurnState(x, jnp.float32(num_steps))


def _churn(schedule, x, t, keys, hp, num_steps):
  """Alg. 2, lines 4-6: ``gamma = min(S_churn / N, sqrt(2) - 1)`` if ``S_tmin <= sigma <= S_tmax``;
  ``sigma_hat = sigma (1 + gamma)``; ``y_hat = y + sqrt(sigma_hat^2 - sigma^2) S_noise z``.
  ``t_hat`` is clipped to 1, and ``sigma_hat`` recomputed from it, so that the noise added matches the
  level at which the denoiser is evaluated. No churn at ``sigma_tilde = inf`` (pure noise, flow at
  ``t = 1``). Returns ``x_hat = alpha(t_hat) y_hat`` (``x`` itself without churn), ``t_hat`` and
  ``sigma_tilde(t_hat)``."""
  st = schedule.sigma_tilde(t)
  in_range = (st >= hp["S_tmin"]) & (st <= hp["S_tmax"]) & jnp.isfinite(st)
  gamma = jnp.where(in_range, jnp.minimum(hp["S_churn"] / num_steps, math.sqrt(2.0) - 1.0), 0.0)
  churn = gamma > 0
  t_hat = jnp.where(churn, jnp.clip(schedule.t_of_sigma_tilde(st * (1.0 + gamma)), t, 1.0), t)
  s_hat = jnp.where(churn, schedule.sigma_tilde(t_hat), st)
  # where(): s_hat^2 - st^2 is not exactly 0 for gamma = 0 under XLA's fused multiply-adds.
  extra = jnp.where(churn, jnp.sqrt(jnp.maximum(s_hat * s_hat - st * st, 0.0)), 0.0) * hp["S_noise"]
  a, a_hat = schedule.alpha(t), schedule.alpha(t_hat)
  y_hat = x / jnp.where(churn, a, 1.0) + extra * normal_like(keys, x, 0)
  return jnp.where(churn, a_hat * y_hat, x), t_hat, s_hat


def _karras(name: str, heun: bool) -> Sampler:

  def step(denoise, schedule, state, t, t_next, keys, hp):
    x_hat, t_hat, s_hat = _churn(schedule, state.x, t, keys, hp, state.num_steps)
    c_hat, cn = coefs(schedule, t_hat), coefs(schedule, t_next)
    d0 = denoise(x_hat, t_hat).x0
    # Euler in y = x / alpha: y + (s_next - s_hat) (y - D) / s_hat = D + (s_next / s_hat) (y - D), written
    # in x: alpha_next D + (sigma_next / sigma_hat) (x_hat - alpha_hat D). Finite at alpha_hat = 0 (pure
    # noise, sigma_tilde = inf: then it is the DDIM step) and exactly D on a step to sigma_tilde = 0.
    x_euler = cn.alpha * d0 + (cn.sigma / c_hat.sigma) * (x_hat - c_hat.alpha * d0)
    if not heun:
      return state._replace(x=x_euler), jnp.int32(1)
    s_next = cn.sigma_tilde

    def correct(_):
      a_hat = jnp.where(c_hat.alpha > 0, c_hat.alpha, 1.0)
      y_hat, y_euler = x_hat / a_hat, x_euler / cn.alpha
      d1 = denoise(x_euler, t_next).x0
      slope = 0.5 * ((y_hat - d0) / s_hat + (y_euler - d1) / s_next)
      return cn.alpha * (y_hat + (s_next - s_hat) * slope)

    # No correction on a step to sigma_tilde = 0 (the Euler step lands on x0_hat) nor from sigma_tilde =
    # inf (an infinite step in sigma_tilde; the first-order step there keeps the global order 2).
    do = (s_next > 0) & jnp.isfinite(s_hat)
    x_next = jax.lax.cond(do, correct, lambda _: x_euler, None)
    return state._replace(x=x_next), 1 + do.astype(jnp.int32)

  return Sampler(name, _init_churn, step, dict(_KARRAS_HP), deterministic=True)


def euler() -> Sampler:
  """Euler steps of the probability-flow ODE ``dy/dsigma = (y - D(y; sigma)) / sigma`` in ``y = x /
  alpha``, ``sigma = sigma_tilde`` (Karras et al. 2022, eq. 4 and Alg. 2 without the correction), with
  optional churn ``S_churn, S_tmin, S_tmax, S_noise`` (Alg. 2, lines 4-6). Without churn it equals DDIM
  with ``eta = 0``."""
  return _karras("euler", heun=False)


def heun() -> Sampler:
  """Karras et al. 2022, Alg. 2 (2nd-order Heun with churn) for any schedule via ``y = x / alpha``,
  ``sigma = sigma_tilde`` (eq. 4). The correction (line 9) is skipped on a step to ``sigma_tilde = 0``,
  where the Euler step lands exactly on ``x0_hat``, and on a step from ``sigma_tilde = inf`` (flow
  matching's ``t = 1``): 2 NFE per step, 1 on such a step."""
  return _karras("heun", heun=True)


# ----------------------------------------------------------------------------------------------------
# Score-based samplers for VE schedules (alpha = 1)
# ----------------------------------------------------------------------------------------------------


def _score(denoise, x, t, sigma):
  """``grad log p_t(x) = -eps_hat / sigma`` (Song & Ermon 2019; Vincent 2011)."""
  return -denoise(x, t).eps / sigma


def langevin() -> Sampler:
  """Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1). Step ``t -> t_next`` runs ``n_steps_each``
  updates ``x <- x + a/2 score(x, sigma_i) + sqrt(a) z`` at the level ``sigma_i = sigma(t_next)`` with
  ``a = step_size sigma_i^2 / sigma_L^2`` and ``sigma_L = sigma(0)`` the smallest level. VE/EDM only."""

  def step(denoise, schedule, state, t, t_next, keys, hp):
    del t
    sig = schedule.sigma(t_next)
    a = hp["step_size"] * (sig / schedule.sigma(jnp.float32(0.0))) ** 2

    def body(j, x):
      return x + 0.5 * a * _score(denoise, x, t_next, sig) + jnp.sqrt(a) * normal_like(keys, x, j)

    n = hp["n_steps_each"]
    return XState(jax.lax.fori_loop(0, n, body, state.x)), n

  return Sampler("langevin", _init_x, step, {"step_size": 2e-5, "n_steps_each": 100},
                 deterministic=False, ve_only=True)


def _per_example_norm(v):
  return jnp.sqrt(jnp.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))


def pc(step_rule: str = "noise_level") -> Sampler:
  """Predictor-corrector sampling for the VE SDE (Song et al. 2021b, Alg. 2): the reverse-diffusion
  predictor ``x <- x + (sigma_t^2 - sigma_s^2) score(x, t) + sqrt(sigma_t^2 - sigma_s^2) z`` (eq. 47),
  then ``n_corrector`` Langevin corrector steps at ``t_next``: ``x <- x + eps g + sqrt(2 eps) z`` with
  ``g = score(x, t_next)`` (Alg. 4).

  The corrector step ``eps = 2 (snr |z| / |g|)^2`` of Alg. 4 (``step_rule="paper"``, per example) is
  unstable in low dimension, where ``|g|`` can be near 0 (the score_sde code averages both norms over the
  batch instead, which makes a sample depend on its batch). The default ``step_rule="noise_level"``
  uses the value it concentrates on in high dimension for an exact score, ``|z|^2 / |g|^2 ~ sigma^2``:
  ``eps = 2 (snr sigma)^2``. VE/EDM only.
  """
  _checks.choice("pc step_rule", step_rule, ("noise_level", "paper"))

  def step(denoise, schedule, state, t, t_next, keys, hp):
    s_t, s_s = schedule.sigma(t), schedule.sigma(t_next)
    dv = s_t * s_t - s_s * s_s

    # Update j = 0 is the predictor (score at t), j >= 1 the correctors (score at t_next): one loop with
    # one denoiser call site keeps the program small (and avoids an XLA CPU hang seen with a denoiser
    # call before a loop that contains another, at batch >= 10k with jdiff.toy's LAPACK calls).
    def update(j, x):
      pred = j == 0
      tj, sj = jnp.where(pred, t, t_next), jnp.where(pred, s_t, s_s)
      g = _score(denoise, x, tj, sj)
      z = normal_like(keys, x, j)
      if step_rule == "paper":
        ratio = _per_example_norm(z) / jnp.maximum(_per_example_norm(g), 1e-20)
      else:
        ratio = s_s
      eps = 2.0 * (hp["snr"] * ratio) ** 2
      return x + jnp.where(pred, dv, eps) * g + jnp.sqrt(jnp.where(pred, dv, 2.0 * eps)) * z

    n = 1 + hp["n_corrector"]
    return XState(jax.lax.fori_loop(0, n, update, state.x)), n

  return Sampler("pc", _init_x, step, {"snr": 0.16, "n_corrector": 1}, deterministic=False,
                 ve_only=True)
