"""Forward noising ``q(x_t | x0)`` and the Gaussian posterior ``q(x_s | x_t, x0)``, for any data shape.

Per-example scalars (``t``, ``alpha``, ``sigma`` of shape ``[batch]``) broadcast over the trailing data
axes; scalars broadcast over everything.
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from jdiff import _checks
from jdiff.schedules import Schedule


def bcast(a, x):
  """Reshape a scalar or per-example ``[batch]`` array so it broadcasts against ``x`` (``[batch, ...]``)."""
  a = jnp.asarray(a)
  if a.ndim == 0:
    return a
  return a.reshape(a.shape + (1,) * (jnp.ndim(x) - a.ndim))


def add_noise(schedule: Schedule, x0, t, eps):
  """``x_t = alpha(t) x0 + sigma(t) eps`` (Ho et al. 2020, eq. 4; Kingma et al. 2021, eq. 1)."""
  _checks.check_t(t)
  _checks.check_float(x0, "x0")
  _checks.check_batch_t(x0, t, "x0")
  if jnp.shape(eps) != jnp.shape(x0):
    raise ValueError(f"eps must have the shape of x0 {jnp.shape(x0)}, got {jnp.shape(eps)}")
  _checks.check_finite(x0, "x0")
  _checks.check_finite(eps, "eps")
  alpha, sigma = schedule.alpha_sigma(t)
  return bcast(alpha, x0) * x0 + bcast(sigma, x0) * eps


class Gaussian(NamedTuple):
  mean: jnp.ndarray
  var: jnp.ndarray  # broadcastable against mean


def posterior_coefficients(schedule: Schedule, t, s):
  """Coefficients of ``q(x_s | x_t, x0) = N(c_xt x_t + c_x0 x0, var)`` for ``s < t``.

  With ``alpha_{t|s} = alpha_t / alpha_s`` and ``sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2``
  (Kingma et al. 2021, eqs. 30-33):
  ``c_xt = alpha_{t|s} sigma_s^2 / sigma_t^2``, ``c_x0 = alpha_s sigma_{t|s}^2 / sigma_t^2`` and
  ``var = sigma_{t|s}^2 sigma_s^2 / sigma_t^2``. Written with ``sigma_{t|s}^2 / sigma_t^2 =
  -expm1(logsnr_t - logsnr_s)`` so that ``s = 0`` (``sigma_s = 0``, ``logsnr_s = inf``) gives
  ``c_xt = 0``, ``c_x0 = alpha_s``, ``var = 0`` without division by zero.
  """
  a_t, s_t = schedule.alpha_sigma(t)
  a_s, s_s = schedule.alpha_sigma(s)
  frac = -jnp.expm1(schedule.logsnr(t) - schedule.logsnr(s))  # sigma_{t|s}^2 / sigma_t^2
  c_xt = a_t * s_s * s_s / (a_s * s_t * s_t)
  c_x0 = a_s * frac
  var = s_s * s_s * frac
  return c_xt, c_x0, var


def posterior(schedule: Schedule, x_t, x0, t, s) -> Gaussian:
  """``q(x_s | x_t, x0)`` for ``s < t`` (Ho et al. 2020, eqs. 6-7 in continuous time)."""
  c_xt, c_x0, var = posterior_coefficients(schedule, t, s)
  mean = bcast(c_xt, x_t) * x_t + bcast(c_x0, x_t) * x0
  return Gaussian(mean, bcast(var, x_t))
