"""Sampler step rules as pairs of pure functions over one denoiser interface (in the spirit of optax).

A ``Sampler`` has ``init(x, num_steps) -> state`` (a NamedTuple whose field ``x`` is the current sample;
``num_steps`` is the length of the grid, which some rules use: churn's ``S_churn / N``) and
``step(denoise, schedule, state, t, t_next, keys, hp) -> (state, nfe)``: one step of the time grid from
``t`` to ``t_next < t``, where ``denoise(x, t) -> Prediction(x0, eps, var_frac)``, ``keys`` holds one PRNG
key per example for this step (so sample ``i`` does not depend on the batch it is in), ``hp`` is the dict
of the sampler's traced hyperparameters and ``nfe`` the number of denoiser calls spent (a traced int).
The driver ``jdiff.sampling.sample`` runs the whole grid in one ``lax.scan``; ``jdiff.sampling.SAMPLERS``
is the registry by name (with the adaptive probability-flow ODE solver of ``jdiff.ode``).

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
  example at a time (``jdiff.generation`` does so).
  """
  name: str
  init: Callable[[jnp.ndarray], Any]
  step: Callable[..., Any]
  hparams: dict
  deterministic: bool
  ve_only: bool = False
  needs_var_frac: bool = False
  adaptive: bool = False


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
  ``t = 0`` for variance-preserving schedules (so a step to 0 lands exactly on ``x0_hat`` even where a
  schedule's float32 formula leaves a tiny ``sigma(0) > 0``)."""
  t = jnp.asarray(t, jnp.float32)
  a, s = schedule.alpha_sigma(t)
  lam, st = schedule.logsnr(t), schedule.sigma_tilde(t)
  if schedule.variance_preserving:
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
  level at which the denoiser is evaluated."""
  st = schedule.sigma_tilde(t)
  in_range = (st >= hp["S_tmin"]) & (st <= hp["S_tmax"])
  gamma = jnp.where(in_range, jnp.minimum(hp["S_churn"] / num_steps, math.sqrt(2.0) - 1.0), 0.0)
  t_hat = jnp.where(gamma > 0, jnp.clip(schedule.t_of_sigma_tilde(st * (1.0 + gamma)), t, 1.0), t)
  s_hat = jnp.where(gamma > 0, schedule.sigma_tilde(t_hat), st)
  # where(): s_hat^2 - st^2 is not exactly 0 for gamma = 0 under XLA's fused multiply-adds.
  extra = jnp.where(gamma > 0, jnp.sqrt(jnp.maximum(s_hat * s_hat - st * st, 0.0)), 0.0) * hp["S_noise"]
  y_hat = x / schedule.alpha(t) + extra * normal_like(keys, x, 0)
  return y_hat, t_hat, s_hat


def _karras(name: str, heun: bool) -> Sampler:

  def step(denoise, schedule, state, t, t_next, keys, hp):
    y_hat, t_hat, s_hat = _churn(schedule, state.x, t, keys, hp, state.num_steps)
    d0 = denoise(schedule.alpha(t_hat) * y_hat, t_hat).x0
    cn = coefs(schedule, t_next)
    s_next, a_next = cn.sigma_tilde, cn.alpha
    # Euler: y + (s_next - s_hat) (y - D) / s_hat, written so that s_next = 0 gives exactly D.
    y_euler = d0 + (s_next / s_hat) * (y_hat - d0)
    if not heun:
      return state._replace(x=a_next * y_euler), jnp.int32(1)

    def correct(_):
      d1 = denoise(a_next * y_euler, t_next).x0
      slope = 0.5 * ((y_hat - d0) / s_hat + (y_euler - d1) / s_next)
      return y_hat + (s_next - s_hat) * slope

    y_next = jax.lax.cond(s_next > 0, correct, lambda _: y_euler, None)
    return state._replace(x=a_next * y_next), 1 + (s_next > 0).astype(jnp.int32)

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
  where the Euler step lands exactly on ``x0_hat``: 2 NFE per step, 1 on such a step."""
  return _karras("heun", heun=True)


# ----------------------------------------------------------------------------------------------------
# DPM-Solver++ (multistep, data prediction)
# ----------------------------------------------------------------------------------------------------


class MultistepState(NamedTuple):
  x: jnp.ndarray
  x0_1: jnp.ndarray  # x0_hat at the previous grid time
  x0_2: jnp.ndarray  # ... and the one before
  lam_1: jnp.ndarray  # lambda at those times
  lam_2: jnp.ndarray
  count: jnp.ndarray  # how many previous predictions are stored (0, 1 or 2+)


def _init_multistep(x, num_steps):
  del num_steps
  z = jnp.zeros((), jnp.float32)
  return MultistepState(x, jnp.zeros_like(x), jnp.zeros_like(x), z, z, jnp.int32(0))


def _dpmpp(name: str, order: int) -> Sampler:
  """Exact-in-the-linear-part step ``x_s = (sigma_s / sigma_t) x_t + sigma_s int_{lam_t}^{lam_s}
  e^lam x0_hat(lam) dlam`` (Lu et al. 2022b, eq. 9) with ``x0_hat`` extrapolated from past predictions."""

  def step(denoise, schedule, state, t, t_next, keys, hp):
    del keys, hp
    x = state.x
    f0 = denoise(x, t).x0
    ct, cs = coefs(schedule, t), coefs(schedule, t_next)
    lam_t, lam_s = 0.5 * ct.logsnr, 0.5 * cs.logsnr
    a_s, s_s = cs.alpha, cs.sigma
    h = lam_s - lam_t
    i0 = -jnp.expm1(-h)  # int_0^h e^{u-h} du (= 1 when h = inf)
    finite = jnp.isfinite(h)  # lam_s = +inf on a step to sigma = 0: first order, x_s = alpha_s x0_hat
    h = jnp.where(finite, h, 1.0)  # keeps the unused higher-order branches finite
    # 1st order (DDIM): f0 ; 2nd order (Lu et al. 2022b, Alg. 2): D = f0 + (f0 - f_1) h / (2 h_0).
    h0 = jnp.where(state.count >= 1, lam_t - state.lam_1, 1.0)
    d1 = (f0 - state.x0_1) / h0  # divided difference f[0, -1]
    d_2nd = f0 + 0.5 * h * d1
    poly = jnp.where(finite & (state.count >= 1), d_2nd, f0) * i0
    if order >= 3:
      # 3rd order: integrate the quadratic through (lam_t, lam_1, lam_2) in Newton form,
      # f0 + d1 u + d2 u (u + h0), exactly against e^{u-h}: I1 = h - I0, I2 = h^2 - 2h + 2 I0.
      h1 = jnp.where(state.count >= 2, state.lam_1 - state.lam_2, 1.0)
      d2 = (d1 - (state.x0_1 - state.x0_2) / h1) / (h0 + h1)
      i1 = h - i0
      i2 = h * h - 2.0 * h + 2.0 * i0
      third = f0 * i0 + d1 * i1 + d2 * (i2 + h0 * i1)
      poly = jnp.where(finite & (state.count >= 2), third, poly)
    ratio = jnp.where(finite, s_s / ct.sigma, 0.0)
    x_next = ratio * x + a_s * poly
    new = MultistepState(x_next, f0, state.x0_1, lam_t, state.lam_1, jnp.minimum(state.count + 1, 2))
    return new, jnp.int32(1)

  return Sampler(name, _init_multistep, step, {}, deterministic=True)


def dpmpp_2m() -> Sampler:
  """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): data-prediction multistep, 2nd order,
  ``x_s = (sigma_s/sigma_t) x_t - alpha_s (e^{-h} - 1) D``, ``D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev``,
  ``r = h_prev / h``. First order on the first step and on a step to ``sigma = 0``."""
  return _dpmpp("dpmpp_2m", 2)


def dpmpp_3m() -> Sampler:
  """DPM-Solver++(3M): as 2M, but on the third and later steps ``x0_hat(lambda)`` is the quadratic
  through the last three predictions, integrated exactly against ``e^lambda`` (the multistep analogue of
  DPM-Solver-3, Lu et al. 2022a, eq. 3.6 / 2022b, Sec. 4): 3rd order."""
  return _dpmpp("dpmpp_3m", 3)


# ----------------------------------------------------------------------------------------------------
# UniPC (Zhao et al. 2023): unified predictor-corrector, data prediction, B(h) variants
# ----------------------------------------------------------------------------------------------------

# lower_order_final acts on grids of fewer steps than this (DPM-Solver's rule for its multistep solvers,
# Lu et al. 2022b and diffusers: "< 15 steps"). The last prediction is never corrected (on VE/EDM the
# last step; on VP the step into t_min, as the step to 0 lands on x0_hat evaluated before the
# correction), so lowering its order on long grids would cap UniPC-3's global order at 2 (VE/EDM) or 3
# (VP). On short grids it stabilises: on the mixture of jdiff.toy at 10 karras steps (median distance
# to the exact ODE solution) UniPC-3 bh2 gives 0.17 with it and 0.65 without on EDM, 0.12 and 0.35 on VE.
UNIPC_LOWER_ORDER_FINAL_BELOW = 15


class UniPCState(NamedTuple):
  x: jnp.ndarray  # x at the current grid time: UniP's prediction, corrected by UniC at the next step
  x0s: tuple  # x0_hat at the previous `order` grid times, newest first
  lams: tuple  # lambda at those times
  count: jnp.ndarray  # steps taken since init
  num_steps: jnp.ndarray  # N, for lower_order_final


def _phis(h, n):
  """``phi_k(-h)``, ``k = 1..n``: ``phi_1(z) = (e^z - 1) / z``, ``phi_{k+1}(z) = (phi_k(z) - 1/k!) / z``
  (Hochbruck & Ostermann 2010). For ``h < 1``, where that recursion cancels catastrophically in float32,
  the Taylor series ``phi_k(z) = sum_j z^j / (j + k)!`` (16 terms: error < 1e-13)."""
  small = h < 1.0
  hs, hl = jnp.where(small, h, 0.0), jnp.where(small, 1.0, h)  # both branches stay finite
  out, rec = [], -jnp.expm1(-hl) / hl
  for k in range(1, n + 1):
    series = jnp.full_like(hs, 1.0 / math.factorial(15 + k))
    for j in range(14, -1, -1):
      series = series * -hs + 1.0 / math.factorial(j + k)
    out.append(jnp.where(small, series, rec))
    rec = (1.0 / math.factorial(k) - rec) / hl
  return out


def _vandermonde_solve(nodes, b):
  """``a`` with ``sum_m a_m r_m^(k-1) = b_k`` for ``k = 1..len(nodes)`` (the ``R_p a_p = b`` system of
  UniPC with ``R_p`` the Vandermonde matrix of the step ratios): ``a_m`` is the Lagrange basis polynomial
  of node ``m`` with ``x^(k-1)`` replaced by ``b_k``."""
  a = []
  for m, r_m in enumerate(nodes):
    poly, den = [1.0], 1.0  # prod_{l != m} (x - r_l), lowest degree first
    for l, r_l in enumerate(nodes):
      if l != m:
        poly = [-r_l * poly[0]] + [poly[j - 1] - r_l * poly[j] for j in range(1, len(poly))] + [poly[-1]]
        den = den * (r_m - r_l)
    a.append(sum(c * bk for c, bk in zip(poly, b)) / den)
  return a


def _select(q, by_order, size):
  """The coefficients of order ``q`` (traced) among ``by_order[q]``, each padded with 0 to ``size``."""
  out = []
  for i in range(size):
    v = jnp.float32(0.0)
    for qq, coeffs in by_order.items():
      if i < len(coeffs):
        v = jnp.where(q == qq, coeffs[i], v)
    out.append(v)
  return out


def unipc(order: int = 2, variant: str = "bh2", lower_order_final: bool = True) -> Sampler:
  """UniPC-p, ``p = order`` (Zhao et al. 2023, arXiv:2302.04867): the predictor UniP-p and the corrector
  UniC-p in data prediction with ``B(h)``, as the authors' multistep UniPC-p algorithm.

  In ``lambda = logsnr / 2`` the exact step from ``t_{i-1}`` to ``t_i``, ``h_i = lambda_{t_i} -
  lambda_{t_{i-1}}``, is ``x_{t_i} = (sigma_{t_i}/sigma_{t_{i-1}}) x_{t_{i-1}} + alpha_{t_i} int_0^{h_i}
  e^{u - h_i} x0(lambda_{t_{i-1}} + u) du`` (Lu et al. 2022b, eq. 9). With ``m_j = x0_hat`` at grid
  time ``t_j`` (one denoiser call per step), ``r_m = (lambda_{t_{i-1-m}} - lambda_{t_{i-1}}) / h_i`` the
  actual step ratios of the grid (``r_m < 0``) and ``D_m = m_{i-1-m} - m_{i-1}``:

  * UniP-p (predictor): ``x_{t_i} = (sigma_{t_i}/sigma_{t_{i-1}}) x^c_{t_{i-1}} - alpha_{t_i}
    (e^{-h_i} - 1) m_{i-1} - alpha_{t_i} B(h_i) sum_{m=1}^{p-1} a_m D_m / r_m``;
  * UniC-p (corrector): the same right-hand side with ``p`` terms, the last one the new evaluation
    ``D_p = m_i - m_{i-1}`` at ``r_p = 1``, gives ``x^c_{t_i}``. ``m_i`` is evaluated at the prediction
    ``x_{t_i}`` and then reused by the next predictor, so the corrector costs no NFE;
  * ``a`` solves ``R a = b`` with ``R_{km} = r_m^{k-1}`` (the order conditions ``R_p(h) a_p =
    g_p(h) / B(h)``) and ``b_k = -h phi_{k+1}(-h) k! / B(h)``, ``phi_1(z) = (e^z - 1) / z``,
    ``phi_{k+1}(z) = (phi_k(z) - 1/k!) / z``; UniC-p uses all ``p`` rows, UniP-p the first ``p - 1``
    rows and nodes; as in the authors' code, UniP-2 and UniC-1 take ``a_1 = 1/2`` (``= b_1 + O(h)``);
  * ``B(h) = -h`` (``bh1``) or ``e^{-h} - 1`` (``bh2``).

  UniP-p is of order ``p``; UniC-p raises it to ``p + 1``. The order is lowered to the available history
  on the first steps (``min(p, i + 1)`` on step ``i``, 0-based) and, with ``lower_order_final`` on grids
  of fewer than ``UNIPC_LOWER_ORDER_FINAL_BELOW`` steps, to ``min(., N - i)``. The last step is not
  corrected (no evaluation follows), and a step to ``sigma = 0`` lands on ``m_i`` (so the correction of
  its starting point changes nothing).

  The corrector is applied as the difference of the UniC and UniP right-hand sides added to the current
  ``x`` (the same update in exact arithmetic; no copy of ``x^c_{t_{i-1}}`` is kept), so an edit of ``x``
  between steps (``after_step``, inpainting) is kept; a restart (``init``, RePaint's jumps) starts a new
  history. Static options: ``order`` (1-3), ``variant`` (``bh1``/``bh2``) and ``lower_order_final``;
  the defaults (2, ``bh2``, on) are diffusers'. On the mixture of ``jdiff.toy`` (uniform-logSNR grids,
  median distance to the exact ODE solution) at 20 steps UniPC-2 is 2-3.6x closer than DPM-Solver++(2M)
  and UniPC-3 1.2-1.4x closer than 3M; at 10 steps the best differs (UniPC-1 bh1 on cosine, 3M on
  linear); from 40 steps on UniPC-3 is the most accurate.
  """
  if order not in (1, 2, 3):
    raise ValueError(f"unipc order must be 1, 2 or 3, got {order!r}")
  _checks.choice("unipc variant", variant, ("bh1", "bh2"))
  lower_order_final = bool(lower_order_final)

  def init(x, num_steps):
    z = jnp.zeros((), jnp.float32)
    return UniPCState(x, (jnp.zeros_like(x),) * order, (z,) * order, jnp.int32(0), jnp.int32(num_steps))

  def order_at(k, n):
    q = jnp.minimum(order, k + 1)  # warm-up: k previous evaluations
    if lower_order_final:
      q = jnp.where(n < UNIPC_LOWER_ORDER_FINAL_BELOW, jnp.minimum(q, n - k), q)
    return jnp.maximum(q, 1)

  def bh(h):
    """``-B(h) = h beta`` and ``b_1..b_p`` for ``h > 0``."""
    phi = _phis(h, order + 1)
    beta = 1.0 if variant == "bh1" else phi[0]
    return h * beta, [math.factorial(k) * phi[k] / beta for k in range(1, order + 1)]

  def ratios(lams, lam0, h, k, first):
    """Step ratios of the history slots ``first..order-1`` (dummy ``-j`` where not yet filled)."""
    return [jnp.where(k >= j + 1, (lams[j] - lam0) / h, -float(j + 1 - first))
            for j in range(first, order)]

  def step(denoise, schedule, state, t, t_next, keys, hp):
    del keys, hp
    k, n = state.count, state.num_steps
    m = denoise(state.x, t).x0
    ct, cs = coefs(schedule, t), coefs(schedule, t_next)
    lam = 0.5 * ct.logsnr

    # UniC-q (q: the order of the predictor that gave state.x), written as x + (UniC - UniP).
    q = order_at(k - 1, n)
    h = jnp.where(k >= 1, lam - state.lams[0], 1.0)
    h_beta, b = bh(h)
    r = ratios(state.lams, state.lams[0], h, k, 1)  # r_1..r_{p-1} of m_{i-2}, m_{i-3}
    a_c = {1: [jnp.float32(0.0)] * (order - 1) + [jnp.float32(0.5)]}
    a_p = {1: []}
    for qq in range(2, order + 1):
      sol = _vandermonde_solve(r[:qq - 1] + [1.0], b[:qq])
      a_c[qq] = sol[:-1] + [jnp.float32(0.0)] * (order - qq) + sol[-1:]
      a_p[qq] = [jnp.float32(0.5)] if qq == 2 else _vandermonde_solve(r[:qq - 1], b[:qq - 1])
    a_c, a_p = _select(q, a_c, order), _select(q, a_p, order - 1)
    corr = a_c[-1] * (m - state.x0s[0])
    for j in range(order - 1):
      corr = corr + (a_c[j] - a_p[j]) * (state.x0s[j + 1] - state.x0s[0]) / r[j]
    x = jnp.where(k >= 1, state.x + ct.alpha * h_beta * corr, state.x)

    # UniP-q.
    q = order_at(k, n)
    h = 0.5 * cs.logsnr - lam
    finite = jnp.isfinite(h)  # a step to sigma = 0: x_next = x0_hat
    h = jnp.where(finite, h, 1.0)
    h_beta, b = bh(h)
    r = ratios(state.lams, lam, h, k, 0)  # r_1..r_{p-1} of m_{i-1}, m_{i-2}
    by_order = {1: [], 2: [jnp.float32(0.5)]}
    if order == 3:
      by_order[3] = _vandermonde_solve(r[:2], b[:2])
    a_p = _select(q, by_order, order - 1)
    pred = jnp.zeros_like(x)
    for j in range(order - 1):
      pred = pred + a_p[j] * (state.x0s[j] - m) / r[j]
    ratio = jnp.where(finite, cs.sigma / ct.sigma, 0.0)
    x_next = ratio * x - cs.alpha * jnp.expm1(-h) * m + cs.alpha * h_beta * pred
    x_next = jnp.where(finite, x_next, cs.alpha * m)
    new = UniPCState(x_next, (m,) + state.x0s[:-1], (lam,) + state.lams[:-1], k + 1, n)
    return new, jnp.int32(1)

  return Sampler("unipc", init, step, {}, deterministic=True)


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
