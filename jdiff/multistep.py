"""Multistep solvers of the probability-flow ODE in data prediction: DPM-Solver++ 2M/3M (Lu et al.
2022b) and UniPC (Zhao et al. 2023). They keep past ``x0_hat`` predictions in their state and use the
actual step ratios of the grid; the step rules follow ``jdiff.samplers`` (``init(x, num_steps)``,
``step(denoise, schedule, state, t, t_next, keys, hp)``), with its notation.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp

from jdiff import _checks
from jdiff.samplers import Sampler, coefs


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
    # h = inf on a step to sigma = 0 (lam_s = +inf: first order, x_s = alpha_s x0_hat) and on a step from
    # pure noise (lam_t = -inf, flow matching at t = 1: first order, the DDIM step). The history then
    # holds lam = -inf, and the divided differences over it are 0: the next steps lower their order.
    to_zero = jnp.isposinf(lam_s)
    finite = jnp.isfinite(h)
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
    ratio = jnp.where(to_zero, 0.0, s_s / ct.sigma)
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

# lower_order_final acts on every grid of a schedule that reaches zero noise (VP, flow; diffusers' rule),
# and on VE/EDM grids of fewer steps than this (DPM-Solver's rule, Lu et al. 2022b: "< 15 steps").
# Measured on the mixtures of bench/sampler_accuracy.py (UniPC-3, RMS distance to the exact ODE solution,
# 10-80 steps, 3 grids): on VP the last lowered step is the one into t_min (the step to 0 then lands on
# x0_hat), and lowering there is 0.35-0.8x the error on uniform_t grids at 20-80 steps and within the
# noise of the measurement (+-15%) on the others; on EDM the lowered steps are the last ODE steps, and
# lowering them on 15-30 step grids costs 1.03-1.46x (at 10 steps it stabilises: 0.17 vs 0.65 on EDM,
# 0.12 vs 0.35 on VE). The last prediction is never corrected, so lowering on long VE/EDM grids would
# also cap UniPC-3's global order at 2.
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
  on the first steps (``min(p, i + 1)`` on step ``i``, 0-based; a history point at ``lambda = -inf``,
  flow matching's pure noise, does not count) and, with ``lower_order_final``, to ``min(., N - i)`` on
  every grid of a schedule that reaches zero noise and on VE/EDM grids of fewer than
  ``UNIPC_LOWER_ORDER_FINAL_BELOW`` steps. The last step is not
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

  def order_at(k, n, history, lower_final):
    """Order of a step from the ``k``-th grid time (0-based) with ``history`` usable previous evaluations."""
    q = jnp.minimum(order, history + 1)  # warm-up
    if lower_order_final:
      q = jnp.where(lower_final | (n < UNIPC_LOWER_ORDER_FINAL_BELOW), jnp.minimum(q, n - k), q)
    return jnp.maximum(q, 1)

  def bh(h):
    """``-B(h) = h beta`` and ``b_1..b_p`` for ``h > 0``."""
    phi = _phis(h, order + 1)
    beta = 1.0 if variant == "bh1" else phi[0]
    return h * beta, [math.factorial(k) * phi[k] / beta for k in range(1, order + 1)]

  def ratios(lams, lam0, h, valid, first):
    """Step ratios of the history slots ``first..order-1`` (dummy ``-j`` where not usable)."""
    return [jnp.where(valid[j], (lams[j] - lam0) / h, -float(j + 1 - first)) for j in range(first, order)]

  def step(denoise, schedule, state, t, t_next, keys, hp):
    del keys, hp
    k, n = state.count, state.num_steps
    lower_final = schedule.reaches_zero_noise  # static: every grid length (see above)
    m = denoise(state.x, t).x0
    ct, cs = coefs(schedule, t), coefs(schedule, t_next)
    lam = 0.5 * ct.logsnr
    # History slot j holds the evaluation j + 1 grid times back; it is usable when filled and at a finite
    # lambda (flow matching starts at lambda = -inf, pure noise: no extrapolation over it).
    valid = [(k >= j + 1) & jnp.isfinite(state.lams[j]) for j in range(order)]
    n_valid = lambda slots: sum(valid[j].astype(jnp.int32) for j in slots)

    # UniC-q (q: the order of the predictor that gave state.x), written as x + (UniC - UniP); none after
    # a step from lambda = -inf.
    q = order_at(k - 1, n, n_valid(range(1, order)), lower_final)
    h = jnp.where(valid[0], lam - state.lams[0], 1.0)
    h_beta, b = bh(h)
    r = ratios(state.lams, state.lams[0], h, valid, 1)  # r_1..r_{p-1} of m_{i-2}, m_{i-3}
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
    x = jnp.where(valid[0], state.x + ct.alpha * h_beta * corr, state.x)

    # UniP-q.
    q = order_at(k, n, n_valid(range(order)), lower_final)
    h_exact = 0.5 * cs.logsnr - lam  # inf on a step to sigma = 0 (x_next = x0_hat) or from lambda = -inf
    to_zero = jnp.isposinf(cs.logsnr)
    h = jnp.where(jnp.isfinite(h_exact), h_exact, 1.0)  # the higher-order terms (0 when h_exact = inf)
    h_beta, b = bh(h)
    r = ratios(state.lams, lam, h, valid, 0)  # r_1..r_{p-1} of m_{i-1}, m_{i-2}
    by_order = {1: [], 2: [jnp.float32(0.5)]}
    if order == 3:
      by_order[3] = _vandermonde_solve(r[:2], b[:2])
    a_p = _select(q, by_order, order - 1)
    pred = jnp.zeros_like(x)
    for j in range(order - 1):
      pred = pred + a_p[j] * (state.x0s[j] - m) / r[j]
    ratio = jnp.where(to_zero, 0.0, cs.sigma / ct.sigma)
    x_next = ratio * x - cs.alpha * jnp.expm1(-jnp.where(to_zero, 1.0, h_exact)) * m + cs.alpha * h_beta * pred
    x_next = jnp.where(to_zero, cs.alpha * m, x_next)
    new = UniPCState(x_next, (m,) + state.x0s[:-1], (lam,) + state.lams[:-1], k + 1, n)
    return new, jnp.int32(1)

  return Sampler("unipc", init, step, {}, deterministic=True)
