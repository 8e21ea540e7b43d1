"""Noise schedules on continuous time t in [0, 1] (data at t=0, prior at t=1).

Every schedule gives ``alpha(t)`` and ``sigma(t)`` with ``x_t = alpha(t) * x0 + sigma(t) * eps``, the
log signal-to-noise ratio ``logsnr(t) = 2 log(alpha / sigma)`` (Kingma et al. 2021, eq. 3), and its inverse
``t_of_logsnr``. Variance-preserving (VP) schedules have ``alpha^2 + sigma^2 = 1`` and are written through
``logsnr`` alone: ``alpha^2 = sigmoid(logsnr)``, ``sigma^2 = sigmoid(-logsnr)``. Variance-exploding (VE,
NCSN) and EDM schedules have ``alpha = 1``. The flow-matching (rectified-flow) schedule has ``alpha = 1 - t``,
``sigma = t``: it reaches pure noise at ``t = 1`` (``alpha(1) = 0``, ``logsnr(1) = -inf``).

Schedules are small frozen dataclasses: hashable, so they can be closed over or passed as static
arguments to ``jax.jit``; their methods are pure ``jax.numpy`` functions of ``t`` (scalar or array).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import _checks


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Base class. Subclasses implement ``logsnr`` and ``t_of_logsnr`` (VP) or ``sigma`` (VE)."""

  variance_preserving = True
  alpha_is_one = False      # alpha(t) = 1 for every t (VE, EDM): sigma(0) > 0, no zero-noise end
  pure_noise_at_one = False  # alpha(1) = 0 (flow matching): sigma_tilde(1) = inf, logsnr(1) = -inf

  @property
  def reaches_zero_noise(self) -> bool:
    """``sigma(0) = 0`` (``logsnr(0) = +inf``): every schedule except the ``alpha = 1`` ones."""
    return not self.alpha_is_one

  def logsnr(self, t):
    raise NotImplementedError

  def t_of_logsnr(self, logsnr):
    raise NotImplementedError

  def alpha(self, t):
    return jnp.sqrt(jax.nn.sigmoid(self.logsnr(t)))

  def sigma(self, t):
    return jnp.sqrt(jax.nn.sigmoid(-self.logsnr(t)))

  def alpha_sigma(self, t):
    return self.alpha(t), self.sigma(t)

  def sigma_tilde(self, t):
    """Noise level of the scaled variable ``x_t / alpha``: ``sigma / alpha = exp(-logsnr / 2)``."""
    return jnp.exp(-0.5 * self.logsnr(t))

  def t_of_sigma_tilde(self, sigma_tilde):
    return self.t_of_logsnr(-2.0 * jnp.log(sigma_tilde))

  def prior_std(self) -> float:
    """Standard deviation of ``x_1`` for unit-variance data: ``sqrt(alpha(1)^2 + sigma(1)^2)``."""
    with jax.ensure_compile_time_eval():  # a Python float even when called under jit
      a, s = self.alpha_sigma(jnp.float32(1.0))
      return float(jnp.sqrt(a * a + s * s))


# ----------------------------------------------------------------------------------------------------
# Variance-preserving schedules
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LinearSchedule(Schedule):
  """DDPM's linear-beta schedule (Ho et al. 2020, Sec. 4) as a continuous VP process.

  The discrete process has ``beta_i = linspace(beta_start, beta_end, num_steps)`` and
  ``alpha_bar_i = prod_{j<=i} (1 - beta_j)`` at ``t_i = i / num_steps``. The continuous process has a
  piecewise-constant rate ``beta(t) = -num_steps * log(1 - beta_i)`` on ``((i-1)/N, i/N]``, so that
  ``log alpha_bar(t)`` is piecewise linear and equals the discrete table exactly at the grid points: the
  discrete N-step DDPM is a view of this continuous schedule. ``logsnr(0) = +inf`` (``sigma(0) = 0``).
  """

  beta_start: float = 1e-4
  beta_end: float = 0.02
  num_steps: int = 1000

  def _table(self):
    # float64 table on the host, cast once: -log(alpha_bar) at t = i / N, i = 0..N (increasing).
    betas = np.linspace(self.beta_start, self.beta_end, self.num_steps, dtype=np.float64)
    neg_log_abar = np.concatenate([[0.0], -np.cumsum(np.log1p(-betas))])
    grid = np.arange(self.num_steps + 1, dtype=np.float64) / self.num_steps
    return jnp.asarray(neg_log_abar, jnp.float32), jnp.asarray(grid, jnp.float32)

  def discrete_alphas_cumprod(self) -> np.ndarray:
    """The discrete table ``alpha_bar_i``, i = 1..N (Ho et al. 2020, eq. 4), in float64."""
    betas = np.linspace(self.beta_start, self.beta_end, self.num_steps, dtype=np.float64)
    return np.cumprod(1.0 - betas)

  def neg_log_alpha_bar(self, t):
    nla, grid = self._table()
    return jnp.interp(t, grid, nla)

  def logsnr(self, t):
    nla = self.neg_log_alpha_bar(t)
    # logsnr = log(abar / (1 - abar)) = -log(expm1(nla)); +inf at t = 0.
    return -jnp.log(jnp.expm1(nla))

  def t_of_logsnr(self, logsnr):
    nla_tab, grid = self._table()
    nla = jax.nn.softplus(-logsnr)  # -log sigmoid(logsnr)
    return jnp.interp(nla, nla_tab, grid)

  def alpha(self, t):
    return jnp.exp(-0.5 * self.neg_log_alpha_bar(t))

  def sigma(self, t):
    return jnp.sqrt(-jnp.expm1(-self.neg_log_alpha_bar(t)))


@dataclasses.dataclass(frozen=True)
class VPSDESchedule(Schedule):
  """The VP SDE of Song et al. 2021 (eq. 11) with linear ``beta(t) = beta_min + t (beta_max - beta_min)``.

  ``log alpha_bar(t) = -(beta_min t + (beta_max - beta_min) t^2 / 2)``. This is the smooth limit of DDPM's
  linear schedule with ``beta_min = N beta_start``, ``beta_max = N beta_end``; it differs from the
  1000-step table by up to ~7% in alpha_bar at t=1 (``log(1-b)`` vs ``-b``); use ``LinearSchedule`` to
  match DDPM checkpoints.
  """

  beta_min: float = 0.1
  beta_max: float = 20.0

  def _nla(self, t):
    return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

  def logsnr(self, t):
    return -jnp.log(jnp.expm1(self._nla(t)))

  def t_of_logsnr(self, logsnr):
    nla = jax.nn.softplus(-logsnr)
    a = 0.5 * (self.beta_max - self.beta_min)
    b = self.beta_min
    # Solve a t^2 + b t - nla = 0 for t >= 0, in the cancellation-free form.
    return 2.0 * nla / (b + jnp.sqrt(b * b + 4.0 * a * nla))

  def alpha(self, t):
    return jnp.exp(-0.5 * self._nla(t))

  def sigma(self, t):
    return jnp.sqrt(-jnp.expm1(-self._nla(t)))


@dataclasses.dataclass(frozen=True)
class CosineSchedule(Schedule):
  """Cosine schedule (Nichol & Dhariwal 2021, eq. 17): ``alpha_bar(t) = f(t)/f(0)``,
  ``f(t) = cos^2(pi/2 * (t + s)/(1 + s))``.

  ``alpha_bar(1) = 0`` exactly, so logsnr is clamped below at ``logsnr_min`` (the role of the paper's
  clipping of beta to 0.999); ``logsnr(0) = +inf``.
  """

  s: float = 0.008
  logsnr_min: float = -20.0

  def _angle(self, t):
    return 0.5 * math.pi * (t + self.s) / (1.0 + self.s)

  def _theta0(self):
    return 0.5 * math.pi * self.s / (1.0 + self.s)

  def logsnr(self, t):
    # abar / (1 - abar) = cos^2(theta) / (cos^2(theta0) - cos^2(theta)), and the denominator is
    # sin(theta - theta0) sin(theta + theta0): no cancellation near t = 0.
    theta, theta0 = self._angle(t), self._theta0()
    num = 2.0 * jnp.log(jnp.abs(jnp.cos(theta)))
    den = jnp.log(jnp.sin(theta - theta0)) + jnp.log(jnp.sin(theta + theta0))
    return jnp.maximum(num - den, self.logsnr_min)

  def t_of_logsnr(self, logsnr):
    theta0 = self._theta0()
    f0 = math.cos(theta0) ** 2
    # cos^2(theta) = f0 abar and sin^2(theta) = sin^2(theta0) + f0 (1 - abar); atan2 is accurate at
    # both ends.
    cos_t = jnp.sqrt(f0 * jax.nn.sigmoid(logsnr))
    sin_t = jnp.sqrt(math.sin(theta0) ** 2 + f0 * jax.nn.sigmoid(-logsnr))
    theta = jnp.arctan2(sin_t, cos_t)
    return jnp.clip(theta * 2.0 / math.pi * (1.0 + self.s) - self.s, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class SigmoidSchedule(Schedule):
  """Sigmoid schedule (Jabri et al. 2022; Chen 2023, Alg. 1):
  ``alpha_bar(t) = (v_end - sigmoid((t (end - start) + start)/tau)) / (v_end - v_start)``
  with ``v = sigmoid(start/tau), sigmoid(end/tau)``; clamped below at ``logsnr_min``.

  Computed without cancellation: with ``sigmoid(u) - sigmoid(w) = sinh((u - w)/2) / (2 cosh(u/2)
  cosh(w/2))`` the ``cosh`` of the running argument cancels from ``alpha_bar / (1 - alpha_bar)``, leaving
  ``logsnr(t) = log sinh(a (1 - t)) - log sinh(a t) + log cosh(start / 2tau) - log cosh(end / 2tau)``
  with ``a = (end - start) / (2 tau)``. Near ``t = 1``, where ``alpha_bar ~ (1 - t)``, the direct formula
  subtracts two float32 numbers near ``v_end`` and turns logsnr into a staircase (it gave -20, the
  clamp, at the largest float32 below 1, where the true value is -17.8); this form is accurate to
  float32 rounding for every float32 ``t``, and so is its inverse ``t_of_logsnr``. ``logsnr(0) = +inf``.
  """

  start: float = -3.0
  end: float = 3.0
  tau: float = 1.0
  logsnr_min: float = -20.0

  def _a_c(self):
    def log_cosh(x):
      x = abs(x)
      return x + math.log1p(math.exp(-2.0 * x)) - math.log(2.0)
    a = (self.end - self.start) / (2.0 * self.tau)
    return a, log_cosh(self.start / (2.0 * self.tau)) - log_cosh(self.end / (2.0 * self.tau))

  def logsnr(self, t):
    a, c = self._a_c()
    t = jnp.clip(t, 0.0, 1.0)
    # log sinh(x) = x + log(1 - e^{-2x}) - log 2: no overflow for large x, accurate for small x, -inf at 0.
    log_sinh = lambda x: x + jnp.log(-jnp.expm1(-2.0 * x)) - math.log(2.0)
    ls = log_sinh(a * (1.0 - t)) - log_sinh(a * t) + c
    return jnp.maximum(ls, self.logsnr_min)

  def t_of_logsnr(self, logsnr):
    # sinh(a (1 - t)) / sinh(a t) = r = e^l, l = logsnr - c, solves to t = log((r + e^a) / (r + e^{-a}))
    # / 2a = (softplus(a - l) - softplus(-a - l)) / 2a; by symmetry 1 - t is the same expression of -l.
    # Each branch is taken where it is the small one (l >= 0: t <= 1/2), so t near 0 and 1 - t near
    # t = 1 are both accurate. (Clipped: logsnr = +-inf maps to t = 0, 1.)
    a, c = self._a_c()
    lr = jnp.clip(logsnr - c, -1e30, 1e30)
    small = lambda l: (jax.nn.softplus(a - l) - jax.nn.softplus(-a - l)) / (2.0 * a)
    t = jnp.where(lr >= 0, small(jnp.maximum(lr, 0.0)), 1.0 - small(jnp.maximum(-lr, 0.0)))
    return jnp.clip(t, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------------
# Variance-exploding schedules (alpha = 1)
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _AlphaOne(Schedule):
  variance_preserving = False
  alpha_is_one = True

  def alpha(self, t):
    return jnp.ones_like(jnp.asarray(t, jnp.float32))

  def logsnr(self, t):
    return -2.0 * jnp.log(self.sigma(t))

  def sigma_tilde(self, t):
    return self.sigma(t)

  def t_of_logsnr(self, logsnr):
    return self.t_of_sigma(jnp.exp(-0.5 * logsnr))

  def t_of_sigma_tilde(self, sigma_tilde):
    return self.t_of_sigma(sigma_tilde)


@dataclasses.dataclass(frozen=True)
class VESchedule(_AlphaOne):
  """NCSN / VE SDE noise levels (Song & Ermon 2019; Song et al. 2021, eq. 9): geometric
  ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``."""

  sigma_min: float = 0.01
  sigma_max: float = 50.0

  def sigma(self, t):
    lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
    return jnp.exp(lo + jnp.asarray(t, jnp.float32) * (hi - lo))

  def t_of_sigma(self, sigma):
    lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
    return (jnp.log(sigma) - lo) / (hi - lo)


@dataclasses.dataclass(frozen=True)
class EDMSchedule(_AlphaOne):
  """EDM (Karras et al. 2022, eq. 5 and Table 1): ``alpha = 1`` and
  ``sigma(t) = (sigma_min^(1/rho) + t (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho``, so that a uniform
  grid in t is the paper's rho-spaced grid of noise levels."""

  sigma_min: float = 0.002
  sigma_max: float = 80.0
  rho: float = 7.0

  def sigma(self, t):
    a, b = self.sigma_min ** (1.0 / self.rho), self.sigma_max ** (1.0 / self.rho)
    return (a + jnp.asarray(t, jnp.float32) * (b - a)) ** self.rho

  def t_of_sigma(self, sigma):
    a, b = self.sigma_min ** (1.0 / self.rho), self.sigma_max ** (1.0 / self.rho)
    return (sigma ** (1.0 / self.rho) - a) / (b - a)


# ----------------------------------------------------------------------------------------------------
# Flow matching / rectified flow
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FlowSchedule(Schedule):
  """The linear interpolant ``x_t = (1 - t) x0 + t eps`` of flow matching and rectified flow (Lipman et
  al. 2023, eq. 23 with ``sigma_min = 0``; Liu et al. 2023, eq. 1): ``alpha = 1 - t``, ``sigma = t``.

  Not variance preserving (``alpha + sigma = 1``); ``logsnr = 2 log((1 - t) / t)`` runs from ``+inf`` at
  the data to ``-inf`` at ``t = 1``, where ``x_1 = eps`` is pure noise (``sigma_tilde = t / (1 - t)``
  is infinite there). The samplers take their first step from ``t = 1`` in a form that stays finite
  (see ``jdiff.samplers``). With the ``flow`` parametrization the model predicts the velocity
  ``dx_t/dt = eps - x0``, and DDIM / Euler on this schedule are the rectified-flow Euler sampler
  ``x_s = x_t + (s - t) v`` (Liu et al. 2023, Alg. 1), as a DDIM step ``alpha_s x0_hat + sigma_s
  eps_hat`` is exactly that update for ``alpha = 1 - t``, ``sigma = t``.
  """

  variance_preserving = False
  pure_noise_at_one = True

  def alpha(self, t):
    return 1.0 - jnp.asarray(t, jnp.float32)

  def sigma(self, t):
    return jnp.asarray(t, jnp.float32)

  def logsnr(self, t):
    t = jnp.asarray(t, jnp.float32)
    return 2.0 * (jnp.log1p(-t) - jnp.log(t))

  def t_of_logsnr(self, logsnr):
    # (1 - t) / t = exp(logsnr / 2)  =>  t = sigmoid(-logsnr / 2)
    return jax.nn.sigmoid(-0.5 * jnp.asarray(logsnr, jnp.float32))

  def sigma_tilde(self, t):
    t = jnp.asarray(t, jnp.float32)
    return t / (1.0 - t)

  def t_of_sigma_tilde(self, sigma_tilde):
    s = jnp.asarray(sigma_tilde, jnp.float32)
    return jnp.where(jnp.isinf(s), 1.0, s / (1.0 + s))


SCHEDULES = {
    "linear": LinearSchedule,
    "vp_sde": VPSDESchedule,
    "cosine": CosineSchedule,
    "sigmoid": SigmoidSchedule,
    "ve": VESchedule,
    "edm": EDMSchedule,
    "flow": FlowSchedule,
}


def get_schedule(name: str, **kwargs) -> Schedule:
  """Build a schedule by name: ``linear`` (DDPM), ``vp_sde``, ``cosine``, ``sigmoid``, ``ve``, ``edm``,
  ``flow``."""
  _checks.choice("schedule", name, SCHEDULES)
  fields = {f.name for f in dataclasses.fields(SCHEDULES[name])}
  bad = sorted(set(kwargs) - fields)
  if bad:
    raise ValueError(f"schedule {name!r} has no parameter(s) {', '.join(bad)}; its parameters are: "
                     f"{', '.join(sorted(fields)) or 'none'}")
  return SCHEDULES[name](**kwargs)
