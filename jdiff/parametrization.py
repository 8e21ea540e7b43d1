"""Model parametrizations and the one converter from any model output to ``(x0_hat, eps_hat)``.

A denoiser network is ``fn(params, x_t, t, cond) -> out``; ``out`` is interpreted by a parametrization:

* ``eps``: the noise (Ho et al. 2020, eq. 11);
* ``x0``: the clean data;
* ``v``: ``v = alpha eps - sigma x0`` (Salimans & Ho 2022, Sec. 4; here for any alpha, sigma, with
  ``x0 = (alpha x - sigma v) / (alpha^2 + sigma^2)``);
* ``score``: ``grad log p(x_t) = -eps / sigma`` (Song & Ermon 2019);
* ``flow``: the flow-matching velocity ``u = eps - x0`` (Lipman et al. 2023, eq. 23; Liu et al. 2023,
  eq. 1), ``dx_t/dt`` of ``x_t = (1 - t) x0 + t eps``; for any ``alpha, sigma`` with ``alpha + sigma > 0``
  ``x0 = (x - sigma u) / (alpha + sigma)`` and ``eps = (x + alpha u) / (alpha + sigma)``.

EDM preconditioning (Karras et al. 2022, Table 1) wraps a raw network into an ``x0`` model.

Samplers only ever see ``denoise(x, t) -> Prediction(x0, eps, var_frac)``, built by ``make_denoiser``.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax.numpy as jnp

from jdiff import _checks
from jdiff.noising import bcast
from jdiff.schedules import Schedule

PARAMETRIZATIONS = ("eps", "x0", "v", "score", "flow")

ModelFn = Callable[[Any, jnp.ndarray, jnp.ndarray, Any], jnp.ndarray]


class Prediction(NamedTuple):
  """What a denoiser predicts at ``(x_t, t)``.

  ``var_frac`` is the learned-variance interpolation of Nichol & Dhariwal 2021 (eq. 15), in [0, 1]
  (``log var = frac log beta + (1 - frac) log beta_tilde``), or ``None`` when the model has none.
  """
  x0: jnp.ndarray
  eps: jnp.ndarray
  var_frac: Optional[jnp.ndarray] = None


def check_parametrization(name: str) -> str:
  return _checks.choice("parametrization", name, PARAMETRIZATIONS)


def _safe_div(num, den):
  ok = den != 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def to_x0_eps(parametrization: str, out, x, alpha, sigma):
  """Convert a model output to ``(x0_hat, eps_hat)`` given ``x_t`` and per-example ``alpha, sigma``."""
  a, s = bcast(alpha, x), bcast(sigma, x)
  if parametrization == "eps":
    return _safe_div(x - s * out, a), out
  if parametrization == "x0":
    return out, _safe_div(x - a * out, s)
  if parametrization == "v":
    n = a * a + s * s
    return (a * x - s * out) / n, (s * x + a * out) / n
  if parametrization == "score":
    return _safe_div(x + s * s * out, a), -s * out
  if parametrization == "flow":
    n = a + s
    return (x - s * out) / n, (x + a * out) / n
  check_parametrization(parametrization)
  raise AssertionError


def from_x0_eps(parametrization: str, x0, eps, x, alpha, sigma):
  """The output a perfect model of the given parametrization would produce (inverse of ``to_x0_eps``)."""
  a, s = bcast(alpha, x), bcast(sigma, x)
  if parametrization == "eps":
    return eps
  if parametrization == "x0":
    return x0
  if parametrization == "v":
    return a * eps - s * x0
  if parametrization == "score":
    return _safe_div(-eps, s)
  if parametrization == "flow":
    return eps - x0
  check_parametrization(parametrization)
  raise AssertionError


def target(parametrization: str, x0, eps, x, alpha, sigma):
  """The regression target of a parametrization (same as ``from_x0_eps``)."""
  return from_x0_eps(parametrization, x0, eps, x, alpha, sigma)


def broadcast_t(t, x):
  """``t`` as one value per example, shape ``[batch]``."""
  t = jnp.asarray(t, jnp.float32)
  return jnp.broadcast_to(t, (jnp.shape(x)[0],)) if t.ndim == 0 else t


def make_denoiser(model_fn: ModelFn, params, schedule: Schedule, parametrization: str, cond=None,
                  learned_variance: bool = False) -> Callable[[jnp.ndarray, jnp.ndarray], Prediction]:
  """Wrap ``model_fn(params, x_t, t, cond)`` into ``denoise(x, t) -> Prediction``.

  With ``learned_variance`` the model's last axis holds twice the data channels: the first half is the
  parametrized mean output, the second half ``v`` in [-1, 1] with ``var_frac = (v + 1) / 2``
  (Nichol & Dhariwal 2021, eq. 15).
  """
  check_parametrization(parametrization)

  def denoise(x, t):
    tb = broadcast_t(t, x)
    out = model_fn(params, x, tb, cond)
    frac = None
    if learned_variance:
      out, v = jnp.split(out, 2, axis=-1)
      frac = (v + 1.0) / 2.0
    alpha, sigma = schedule.alpha_sigma(tb)
    x0, eps = to_x0_eps(parametrization, out, x, alpha, sigma)
    return Prediction(x0, eps, frac)

  return denoise


# ----------------------------------------------------------------------------------------------------
# EDM preconditioning
# ----------------------------------------------------------------------------------------------------


def edm_coefficients(sigma, sigma_data: float = 0.5):
  """``c_skip, c_out, c_in, c_noise`` of Karras et al. 2022, Table 1 (EDM column)."""
  s2, d2 = sigma * sigma, sigma_data * sigma_data
  c_skip = d2 / (s2 + d2)
  c_out = sigma * sigma_data / jnp.sqrt(s2 + d2)
  c_in = 1.0 / jnp.sqrt(s2 + d2)
  c_noise = 0.25 * jnp.log(sigma)
  return c_skip, c_out, c_in, c_noise


def edm_precondition(raw_fn: ModelFn, schedule: Schedule, sigma_data: float = 0.5) -> ModelFn:
  """``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`` (Karras et al. 2022, eq. 7) as an ``x0`` model.

  For a schedule with ``alpha != 1`` the network sees the scaled variable ``x / alpha`` at noise level
  ``sigma / alpha`` (Karras et al. 2022, eq. 4), so the same raw network works for VP and VE schedules.
  The raw network receives ``c_noise`` (shape ``[batch]``) where other models receive ``t``.
  """

  def fn(params, x, t, cond):
    tb = broadcast_t(t, x)
    alpha = schedule.alpha(tb)
    sig = schedule.sigma_tilde(tb)
    c_skip, c_out, c_in, c_noise = edm_coefficients(sig, sigma_data)
    xs = x / bcast(alpha, x)
    f = raw_fn(params, bcast(c_in, x) * xs, c_noise, cond)
    return bcast(c_skip, x) * xs + bcast(c_out, x) * f

  return fn
