"""Consistency models: the boundary-condition parametrization, the noise-level discretization, the
consistency distillation and training losses, and multistep consistency sampling.

A consistency model ``f(x_sigma, sigma)`` maps any point of a probability-flow ODE trajectory straight to
its end ``x_{sigma_min}`` (Song et al. 2023, "Consistency Models"). It needs ``alpha = 1`` (the VE / EDM
process ``x_sigma = x0 + sigma z``); here ``sigma = schedule.sigma(t)`` with ``t`` in [0, 1] as everywhere
in jdiff, so ``sigma_min = sigma(0)`` and, on the ``edm`` schedule, a uniform grid in ``t`` is the
discretization ``sigma_i = (sigma_min^(1/rho) + (i-1)/(N-1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho``
of the papers (Song et al. 2023, eq. 6's grid; Karras et al. 2022, eq. 5).

* ``precondition``: ``f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in x, c_noise)`` with
  ``c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2)`` and
  ``c_out = (sigma - sigma_min) sigma_data / sqrt(sigma^2 + sigma_data^2)`` (Song et al. 2023, App. C,
  eq. 40): ``c_skip(sigma_min) = 1`` and ``c_out(sigma_min) = 0``, so ``f(x, sigma_min) = x`` exactly.
  It is an ``x0`` model for the rest of jdiff. ``precondition_over``: the same boundary condition over a
  trained denoiser's ``x0`` (a student that starts from a diffusion model's weights).
* ``consistency_distillation_loss`` (CD; Song et al. 2023, Alg. 2): ``x_{n+1} = x0 + sigma_{n+1} z``, one
  Heun step of the teacher's probability-flow ODE to ``sigma_n`` gives ``x_n``; the loss is
  ``lambda(sigma_n) d(f_theta(x_{n+1}, sigma_{n+1}), f_target(x_n, sigma_n))`` with the target network an
  EMA of ``theta`` (passed in).
* ``consistency_training_loss`` (CT / iCT; Song & Dhariwal 2023, "Improved techniques for training
  consistency models"): no teacher, ``x_n = x0 + sigma_n z`` with the *same* ``z``; the target network is
  ``stop_gradient(theta)`` (no EMA target, Sec. 3.2); ``lambda(sigma_n) = 1 / (sigma_{n+1} - sigma_n)``
  (Sec. 3.3); the pseudo-Huber metric (Sec. 3.3); the exponential discretization curriculum
  ``N(k) = min(s0 2^floor(k / K'), s1) + 1`` (eq. 8) and log-normal noise levels over the grid (eq. 9).
* ``multistep``: the sampler of Song et al. 2023, Alg. 1: ``x0_hat = f(x, tau_n)``, then
  ``x = x0_hat + sqrt(tau_{n+1}^2 - sigma_min^2) z`` at the next noise level; ``grid`` gives the noise
  levels (one step: ``sigma_max``; two: ``sigma_max, 0.821``, the papers' CIFAR-10 choice).

Randomness: example ``i`` uses keys ``fold_in(k, i)`` (``indices``: the global example indices), so its
noise level and noise do not depend on the batch split.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import _checks
from jdiff._checks import check_cond, check_data
from jdiff.keys import example_normal, normal_like, per_example_keys, resolve_indices
from jdiff.noising import bcast
from jdiff.parametrization import ModelFn, broadcast_t
from jdiff.samplers import Sampler, XState
from jdiff.schedules import Schedule

WEIGHTINGS = ("ict", "uniform")
METRICS = ("pseudo_huber", "l2")
TWO_STEP_SIGMA = 0.821  # Song et al. 2023, Sec. 6 / Song & Dhariwal 2023, Sec. 6: CIFAR-10 two-step level


def check_schedule(schedule: Schedule) -> None:
  """Consistency models here live on an ``alpha = 1`` (VE / EDM) schedule: one clear error otherwise."""
  if not schedule.alpha_is_one:
    raise ValueError(f"consistency models need a schedule with alpha = 1 (VE / EDM), got "
                     f"{type(schedule).__name__}: use diffusion.schedule='edm'")


def sigma_min(schedule: Schedule):
  """``sigma(0)``, the noise level where the boundary condition ``f(x, sigma_min) = x`` holds."""
  return schedule.sigma(jnp.float32(0.0))


def coefficients(sigma, sig_min, sigma_data: float = 0.5):
  """``c_skip, c_out, c_in, c_noise`` of a consistency model (Song et al. 2023, App. C; ``c_in`` and
  ``c_noise = log(sigma) / 4`` as in EDM, Karras et al. 2022, Table 1)."""
  d2 = sigma_data * sigma_data
  shifted = sigma - sig_min
  c_skip = d2 / (shifted * shifted + d2)
  c_out = shifted * sigma_data / jnp.sqrt(sigma * sigma + d2)
  c_in = 1.0 / jnp.sqrt(sigma * sigma + d2)
  return c_skip, c_out, c_in, 0.25 * jnp.log(sigma)


def precondition(raw_fn: ModelFn, schedule: Schedule, sigma_data: float = 0.5) -> ModelFn:
  """The consistency function ``f(x, t) = c_skip x + c_out F(c_in x, c_noise)`` as an ``x0`` model
  (``fn(params, x, t, cond)``); the raw network receives ``c_noise`` where other models receive ``t``.
  At ``t = 0`` (``sigma = sigma_min``) it returns ``x`` exactly, whatever the network."""
  check_schedule(schedule)

  def fn(params, x, t, cond):
    tb = broadcast_t(t, x)
    sig = schedule.sigma(tb)
    c_skip, c_out, c_in, c_noise = coefficients(sig, sigma_min(schedule), sigma_data)
    f = raw_fn(params, bcast(c_in, x) * x, c_noise, cond)
    return bcast(c_skip, x) * x + bcast(c_out, x) * f

  return fn


def precondition_over(base_x0: Callable, schedule: Schedule, sigma_data: float = 0.5) -> ModelFn:
  """The boundary condition over a denoiser: ``f(x, t) = c_skip x + (1 - c_skip) D(params, x, sigma,
  cond)`` with ``D`` an ``x0`` prediction on the VE process ``x = x0 + sigma z`` (e.g. a trained
  flow-matching or VP network read through :func:`ve_denoiser`) and ``c_skip`` of :func:`coefficients`:
  ``f(x, sigma_min) = x`` exactly, and ``f`` tends to ``D`` as ``sigma`` grows. A consistency model whose
  network starts from a trained diffusion model's weights starts as that model's one-step denoiser, as
  consistency distillation initialised from its teacher does (Song et al. 2023, their released training
  code copies the teacher's weights into the student; there both are EDM-preconditioned)."""
  check_schedule(schedule)

  def fn(params, x, t, cond):
    sig = schedule.sigma(broadcast_t(t, x))
    c_skip = coefficients(sig, sigma_min(schedule), sigma_data)[0]
    return bcast(c_skip, x) * x + bcast(1.0 - c_skip, x) * base_x0(params, x, sig, cond)

  return fn


# ----------------------------------------------------------------------------------------------------
# Metric, discretization, noise levels
# ----------------------------------------------------------------------------------------------------


def default_huber_c(data_shape) -> float:
  """``c = 0.00054 sqrt(d)`` for data of ``d`` dimensions (Song & Dhariwal 2023, Sec. 3.3)."""
  return 0.00054 * math.sqrt(int(np.prod(data_shape)))


def distance(a, b, metric: str = "pseudo_huber", huber_c: Optional[float] = None):
  """Per-example ``d(a, b)``: ``pseudo_huber``: ``sqrt(||a - b||^2 + c^2) - c`` (Charbonnier 1997;
  Song & Dhariwal 2023, eq. 7); ``l2``: ``||a - b||^2 / d`` (the mean squared error)."""
  _checks.choice("consistency metric", metric, METRICS)
  sq = jnp.sum(jnp.square(a - b).reshape(a.shape[0], -1), axis=1)
  if metric == "l2":
    return sq / math.prod(a.shape[1:])
  c = default_huber_c(a.shape[1:]) if huber_c is None else huber_c
  return jnp.sqrt(sq + c * c) - c


def num_scales(step, total_steps: int, s0: int = 10, s1: int = 1280):
  """The iCT discretization curriculum (Song & Dhariwal 2023, eq. 8): ``N(k) = min(s0 2^floor(k / K'),
  s1) + 1`` with ``K' = floor(K / (log2(s1 / s0) + 1))``: the number of noise levels at training step
  ``k`` of ``K`` (traced ``step`` allowed; an int32)."""
  k_prime = max(int(total_steps // (math.log2(s1 / s0) + 1)), 1)
  doublings = jnp.asarray(step, jnp.int32) // k_prime
  cap = math.ceil(math.log2(s1 / s0))  # s0 2^cap >= s1 (and no int32 overflow)
  n = jnp.minimum(s0 * jnp.left_shift(jnp.int32(1), jnp.minimum(doublings, cap)), s1)
  return (n + 1).astype(jnp.int32)


def grid_times(n, max_n: int):
  """``t_i = i / (n - 1)`` for ``i = 0 .. max_n - 1`` (entries ``i >= n`` are clipped to 1): the uniform
  ``t`` grid of ``n`` levels, padded to a static length (``n`` may be traced)."""
  i = jnp.arange(max_n, dtype=jnp.float32)
  return jnp.minimum(i / (jnp.asarray(n, jnp.float32) - 1.0), 1.0)


def lognormal_level_logits(sigmas, n, p_mean: float = -1.1, p_std: float = 2.0):
  """Log-probabilities of the pair ``(sigma_i, sigma_{i+1})``, ``i = 0 .. n - 2``, under the discretized
  log-normal of Song & Dhariwal 2023, eq. 9: ``p(i) ∝ erf((ln sigma_{i+1} - P_mean) / (sqrt 2 P_std)) -
  erf((ln sigma_i - P_mean) / (sqrt 2 P_std))``; ``-inf`` for ``i >= n - 1`` (``sigmas`` padded)."""
  z = jax.scipy.special.erf((jnp.log(sigmas) - p_mean) / (math.sqrt(2.0) * p_std))
  mass = z[1:] - z[:-1]
  valid = jnp.arange(mass.shape[0]) < n - 1
  return jnp.where(valid & (mass > 0), jnp.log(jnp.where(mass > 0, mass, 1.0)), -jnp.inf)


def _weight(weighting: str, s_lo, s_hi):
  if weighting == "ict":
    return 1.0 / (s_hi - s_lo)
  return jnp.ones_like(s_lo)


# ----------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------


def _check_common(schedule, x0, key, cond, weighting, metric):
  batch = check_data(x0)
  _checks.check_key(key)
  check_schedule(schedule)
  _checks.choice("consistency weighting", weighting, WEIGHTINGS)
  _checks.choice("consistency metric", metric, METRICS)
  check_cond(cond, batch)
  return batch


def consistency_training_loss(model_fn: ModelFn, params, schedule: Schedule, x0, key, step,
                              total_steps: int, cond: Any = None, indices=None, *,
                              target_params=None, s0: int = 10, s1: int = 1280, p_mean: float = -1.1,
                              p_std: float = 2.0, weighting: str = "ict", metric: str = "pseudo_huber",
                              huber_c: Optional[float] = None):
  """Per-example improved consistency-training loss (Song & Dhariwal 2023, Alg. 1 with Secs. 3.2-3.5),
  shape ``[batch]``.

  ``model_fn(params, x, t, cond) -> x0`` is the consistency function (``precondition``). At training step
  ``step`` of ``total_steps`` the grid has ``N = num_scales(step, total_steps, s0, s1)`` levels (uniform in
  ``t``); each example draws a pair ``(sigma_n, sigma_{n+1})`` from ``lognormal_level_logits`` and
  ``z ~ N(0, I)``, and the loss is ``lambda d(f(x0 + sigma_{n+1} z, sigma_{n+1}),
  sg(f_target(x0 + sigma_n z, sigma_n)))``. ``target_params`` defaults to ``stop_gradient(params)``.
  """
  batch = _check_common(schedule, x0, key, cond, weighting, metric)
  indices, _ = resolve_indices(batch, indices, None, False)
  total_steps = _checks.positive_int(total_steps, "total_steps")
  if not (isinstance(s0, int) and isinstance(s1, int) and 2 <= s0 <= s1):
    raise ValueError(f"need integers 2 <= s0 <= s1 for the discretization curriculum, got s0={s0!r}, "
                     f"s1={s1!r}")
  x0 = jnp.asarray(x0)
  n = num_scales(step, total_steps, s0, s1)
  ts = grid_times(n, s1 + 1)
  logits = lognormal_level_logits(schedule.sigma(ts), n, p_mean, p_std)
  k_level, k_noise = jax.random.split(key)
  level = jax.vmap(lambda k: jax.random.categorical(k, logits))(per_example_keys(k_level, indices))
  t_lo, t_hi = ts[level], ts[level + 1]
  z = example_normal(k_noise, indices, x0.shape[1:], x0.dtype)
  s_lo, s_hi = schedule.sigma(t_lo), schedule.sigma(t_hi)
  target_params = jax.lax.stop_gradient(params if target_params is None else target_params)
  pred = model_fn(params, x0 + bcast(s_hi, x0) * z, t_hi, cond)
  tgt = jax.lax.stop_gradient(model_fn(target_params, x0 + bcast(s_lo, x0) * z, t_lo, cond))
  return _weight(weighting, s_lo, s_hi) * distance(pred, tgt, metric, huber_c)


def heun_step(teacher_x0: Callable, x, sigma, sigma_next):
  """One Heun step of the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` from ``sigma``
  to ``sigma_next > 0`` (Karras et al. 2022, Alg. 1), ``teacher_x0(x, sigma) -> D``, per-example
  ``sigma``."""
  d = (x - teacher_x0(x, sigma)) / bcast(sigma, x)
  h = bcast(sigma_next - sigma, x)
  x_euler = x + h * d
  d_next = (x_euler - teacher_x0(x_euler, sigma_next)) / bcast(sigma_next, x)
  return x + 0.5 * h * (d + d_next)


def ve_denoiser(denoise: Callable, schedule: Schedule) -> Callable:
  """``D(x, sigma)`` on the VE process ``x = x0 + sigma z`` from a jdiff denoiser ``denoise(x_t, t) ->
  Prediction`` of *any* schedule: ``x_t = alpha(t) x`` at the ``t`` where ``sigma_tilde(t) = sigma``
  (Karras et al. 2022, eq. 4), so a VP or flow-matching teacher distills into a VE consistency model."""

  def d(x, sigma):
    t = schedule.t_of_sigma_tilde(sigma)
    return denoise(bcast(schedule.alpha(t), x) * x, t).x0

  return d


def consistency_distillation_loss(model_fn: ModelFn, params, target_params, teacher_x0: Callable,
                                  schedule: Schedule, x0, key, cond: Any = None, indices=None, *,
                                  num_levels: int = 18, weighting: str = "uniform",
                                  metric: str = "pseudo_huber", huber_c: Optional[float] = None):
  """Per-example consistency-distillation loss (Song et al. 2023, Alg. 2), shape ``[batch]``.

  ``n ~ U{0 .. N-2}`` on the uniform-``t`` grid of ``N = num_levels`` levels; ``x_{n+1} = x0 +
  sigma_{n+1} z``; ``x_n`` is one Heun step of the teacher ``teacher_x0(x, sigma) -> x0_hat`` (see
  ``ve_denoiser``; close over the teacher's parameters and condition) from ``sigma_{n+1}`` to ``sigma_n``;
  the loss is ``lambda d(f(x_{n+1}, sigma_{n+1}), f_target(x_n, sigma_n))`` with ``target_params`` (the EMA
  target network, held fixed here). ``weighting``: ``uniform`` (``lambda = 1``, the paper) or ``ict``.
  """
  batch = _check_common(schedule, x0, key, cond, weighting, metric)
  num_levels = _checks.int_at_least(num_levels, "num_levels", 2)
  indices, _ = resolve_indices(batch, indices, None, False)
  x0 = jnp.asarray(x0)
  k_level, k_noise = jax.random.split(key)
  level = jax.vmap(lambda k: jax.random.randint(k, (), 0, num_levels - 1))(
      per_example_keys(k_level, indices))
  t_lo = level.astype(jnp.float32) / (num_levels - 1)
  t_hi = (level + 1).astype(jnp.float32) / (num_levels - 1)
  s_lo, s_hi = schedule.sigma(t_lo), schedule.sigma(t_hi)
  z = example_normal(k_noise, indices, x0.shape[1:], x0.dtype)
  x_hi = x0 + bcast(s_hi, x0) * z
  x_lo = jax.lax.stop_gradient(heun_step(teacher_x0, x_hi, s_hi, s_lo))
  pred = model_fn(params, x_hi, t_hi, cond)
  tgt = jax.lax.stop_gradient(model_fn(target_params, x_lo, t_lo, cond))
  return _weight(weighting, s_lo, s_hi) * distance(pred, tgt, metric, huber_c)


# ----------------------------------------------------------------------------------------------------
# Multistep consistency sampling
# ----------------------------------------------------------------------------------------------------


def multistep() -> Sampler:
  """Multistep consistency sampling (Song et al. 2023, Alg. 1) as a jdiff sampler: at each grid time
  ``t`` take ``x0_hat = f(x, t)`` (one call), then re-noise to the next level: ``x = x0_hat +
  sqrt(sigma(t_next)^2 - sigma_min^2) z``; the step to ``t_next = 0`` returns ``x0_hat``. The time grid
  holds the noise levels (``grid``); a one-step grid is ``[1, 0]``."""

  def step(denoise, schedule, state, t, t_next, keys, hp):
    del hp
    x0 = denoise(state.x, t).x0
    s_next, s_min = schedule.sigma(t_next), sigma_min(schedule)
    std = jnp.sqrt(jnp.maximum(s_next * s_next - s_min * s_min, 0.0))
    return XState(x0 + std * normal_like(keys, x0, 0)), jnp.int32(1)

  return Sampler("consistency", lambda x, num_steps: XState(x), step, {}, deterministic=False,
                 ve_only=True, lands_on_x0=True)


def grid(schedule: Schedule, steps: int, levels: Optional[tuple] = None, t_max: float = 1.0):
  """The time grid (descending, ``steps + 1`` entries ending at 0) of multistep consistency sampling:
  ``t_max`` (1: ``sigma_max``; less for editing from a partly noised input), then the intermediate noise
  levels ``levels`` (``steps - 1`` of them, descending, strictly between ``sigma(0)`` and
  ``sigma(t_max)``), then 0. By default: none for one step, ``0.821`` for two (the papers' CIFAR-10
  choice; when it lies below ``sigma(t_max)``), and otherwise the uniform-``t`` grid (on ``edm``:
  rho-spaced). Levels are noise levels ``sigma / alpha`` of the scaled variable, so the grid is defined
  on every schedule (a consistency model itself needs ``alpha = 1``)."""
  steps = _checks.positive_int(steps, "steps")
  if not 0.0 < float(t_max) <= 1.0:
    raise ValueError(f"t_max must be in (0, 1], got {t_max!r}")
  lo, hi = (float(schedule.sigma_tilde(jnp.float32(v))) for v in (0.0, t_max))
  if levels is None:
    if steps == 2 and lo < TWO_STEP_SIGMA < hi:
      levels = (TWO_STEP_SIGMA,)
    else:
      return jnp.linspace(t_max, 0.0, steps + 1, dtype=jnp.float32)
  levels = tuple(float(v) for v in levels)
  if len(levels) != steps - 1 or any(not lo < v < hi for v in levels) or any(
      a <= b for a, b in zip(levels, levels[1:])):
    raise ValueError(f"{steps} consistency steps need {steps - 1} descending noise levels strictly "
                     f"between sigma_min={lo:g} and sigma_max={hi:g}, got {list(levels)}")
  inner = np.asarray(schedule.t_of_sigma_tilde(jnp.asarray(levels, jnp.float32)), np.float32)
  return jnp.asarray(np.concatenate([[t_max], inner, [0.0]]), jnp.float32)
