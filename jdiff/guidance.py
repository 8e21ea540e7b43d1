"""Guidance and x0 post-processing, as wrappers over models and denoisers.

* ``classifier_free``: Ho & Salimans 2022, eq. 6, ``out = (1 + w) out(x, c) - w out(x, null)``, i.e.
  ``cond + w (cond - uncond)``: ``w = 0`` is the conditional model, ``w = -1`` the unconditional one.
  Both branches run in ONE model call on a doubled batch. The combination is affine (coefficients sum to
  1) and every parametrization (``eps``, ``x0``, ``v``, ``score``, EDM-preconditioned ``x0``) is an
  affine function of ``x0_hat`` for fixed ``(x_t, alpha, sigma)``, so guiding the raw output is exactly
  guiding ``eps`` (or ``x0``) whatever the parametrization. With a learned variance only the mean
  channels are guided; the variance comes from the conditional branch (as in GLIDE).
* ``classifier_guidance``: Dhariwal & Nichol 2021, Alg. 2 in eps form,
  ``eps <- eps - s sigma grad_x log p(y | x_t)`` (the score gains ``s grad log p(y | x_t)``);
  ``classifier_log_prob`` makes its ``log p(y | x_t)`` from a noise-conditional classifier's logits.
* ``clip_x0`` and ``dynamic_threshold`` (Saharia et al. 2022, Sec. 2.3): change ``x0_hat`` and recompute
  ``eps = (x - alpha x0) / sigma`` so the prediction stays consistent with ``x_t``.

Guidance scales are traced arguments: changing them does not recompile a jitted sampler.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import _checks
from jdiff._checks import check_cond
from jdiff.noising import bcast
from jdiff.parametrization import ModelFn, Prediction, broadcast_t, make_denoiser
from jdiff.schedules import Schedule

Denoiser = Callable[[jnp.ndarray, jnp.ndarray], Prediction]


def check_scale(scale, x, name: str = "guidance_scale") -> None:
  """A scale is a finite scalar or one value per example ``[batch]``."""
  shape = np.shape(scale)
  if len(shape) > 1 or (len(shape) == 1 and shape[0] != np.shape(x)[0]):
    raise ValueError(f"{name} must be a scalar or have shape [batch]=({np.shape(x)[0]},), got shape "
                     f"{shape}")
  if _checks.is_concrete(scale) and not np.all(np.isfinite(np.asarray(scale, np.float64))):
    raise ValueError(f"{name} must be finite, got {np.asarray(scale)!r}")


def _null_like(null_cond, cond):
  """Broadcast the null condition to the structure, shapes and dtypes of ``cond``."""
  s_null, s_cond = jax.tree_util.tree_structure(null_cond), jax.tree_util.tree_structure(cond)
  if s_null != s_cond:
    raise ValueError(f"null_cond must have the structure of cond; got {s_null} for null_cond and "
                     f"{s_cond} for cond")

  def one(n, c):
    c = jnp.asarray(c)
    try:
      return jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape)
    except ValueError:
      raise ValueError(f"null_cond leaf of shape {np.shape(n)} does not broadcast to the cond leaf "
                       f"shape {c.shape}; give it the per-example shape {c.shape[1:]} or "
                       f"{c.shape}") from None

  return jax.tree_util.tree_map(one, null_cond, cond)


def classifier_free(model_fn: ModelFn, null_cond: Any, *, learned_variance: bool = False):
  """Wrap a conditional model into ``guided(params, x, t, cond, guidance_scale) -> out``.

  ``null_cond`` (e.g. the null label ``num_classes`` or a zero embedding) has the structure of ``cond``
  and broadcasts to each leaf (per-example or batched); or it is a function ``cond -> null cond`` (e.g.
  ``Conditions.null_like``, which keeps the parts of a condition that are never dropped). ``guidance_scale`` ``w`` is a traced scalar or
  ``[batch]`` array: ``out = cond + w (cond - uncond)`` (Ho & Salimans 2022, eq. 6).
  """

  def guided(params, x, t, cond, guidance_scale):
    if cond is None:
      raise ValueError("classifier-free guidance needs a condition; got cond=None")
    batch = np.shape(x)[0]
    check_cond(cond, batch)
    if any(np.ndim(c) == 0 for c in jax.tree_util.tree_leaves(cond)):
      raise ValueError("classifier-free guidance needs every cond leaf to have a leading batch axis "
                       "(it concatenates cond and null_cond along it); got a scalar leaf")
    check_scale(guidance_scale, x)
    _checks.check_t(t)
    _checks.check_batch_t(x, t)
    null = null_cond(cond) if callable(null_cond) else _null_like(null_cond, cond)
    tb = broadcast_t(t, x)
    both = jax.tree_util.tree_map(lambda c, n: jnp.concatenate([jnp.asarray(c), n], 0), cond, null)
    out = model_fn(params, jnp.concatenate([x, x], 0), jnp.concatenate([tb, tb], 0), both)
    out_c, out_u = out[:batch], out[batch:]
    w = bcast(jnp.asarray(guidance_scale, out.dtype), out_c)
    if learned_variance:
      mean_c, var_c = jnp.split(out_c, 2, axis=-1)
      mean_u = jnp.split(out_u, 2, axis=-1)[0]
      return jnp.concatenate([mean_c + w * (mean_c - mean_u), var_c], axis=-1)
    return out_c + w * (out_c - out_u)

  return guided


def classifier_free_denoiser(model_fn: ModelFn, params, schedule: Schedule, parametrization: str,
                             cond: Any, null_cond: Any, guidance_scale,
                             learned_variance: bool = False) -> Denoiser:
  """``denoise(x, t) -> Prediction`` of the classifier-free guided model (for the samplers)."""
  guided = classifier_free(model_fn, null_cond, learned_variance=learned_variance)
  fn = lambda p, x, t, c: guided(p, x, t, c, guidance_scale)
  return make_denoiser(fn, params, schedule, parametrization, cond, learned_variance)


def _replace_x0(schedule: Schedule, x, t, pred: Prediction, x0) -> Prediction:
  """``Prediction`` with a new ``x0`` and ``eps = (x - alpha x0) / sigma`` (kept where sigma = 0)."""
  alpha, sigma = schedule.alpha_sigma(broadcast_t(t, x))
  a, s = bcast(alpha, x), bcast(sigma, x)
  ok = s > 0
  eps = jnp.where(ok, (x - a * x0) / jnp.where(ok, s, 1.0), pred.eps)
  return Prediction(x0, eps, pred.var_frac)


def clip_x0(denoise: Denoiser, schedule: Schedule, lo: float = -1.0, hi: float = 1.0) -> Denoiser:
  """Clip ``x0_hat`` to ``[lo, hi]`` (static thresholding, as in Ho et al. 2020's sampler); recompute
  eps."""
  if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
    raise ValueError(f"clip_x0 needs finite lo < hi, got lo={lo!r}, hi={hi!r}")

  def clipped(x, t):
    pred = denoise(x, t)
    return _replace_x0(schedule, x, t, pred, jnp.clip(pred.x0, lo, hi))

  return clipped


def dynamic_threshold(denoise: Denoiser, schedule: Schedule, percentile=0.995) -> Denoiser:
  """Imagen's dynamic thresholding (Saharia et al. 2022, Sec. 2.3), then recompute eps.

  Per sample, ``s`` is the ``percentile`` quantile of ``|x0_hat|`` (a fraction, e.g. 0.995),
  ``s = max(s, 1)``, and ``x0_hat <- clip(x0_hat, -s, s) / s``: samples already inside [-1, 1] are
  unchanged; saturated ones are pushed inwards. ``percentile`` may be traced.
  """
  if _checks.is_concrete(percentile):
    p = np.asarray(percentile)
    if p.shape != () or not np.isfinite(p) or not 0.0 < p <= 1.0:
      raise ValueError(f"percentile must be a scalar fraction in (0, 1] such as 0.995 (not 99.5), "
                       f"got {percentile!r}")

  def thresholded(x, t):
    pred = denoise(x, t)
    flat = jnp.abs(pred.x0).reshape(pred.x0.shape[0], -1)
    s = jnp.maximum(jnp.quantile(flat, percentile, axis=1), 1.0)
    s = bcast(s, pred.x0)
    return _replace_x0(schedule, x, t, pred, jnp.clip(pred.x0, -s, s) / s)

  return thresholded


def classifier_guidance(denoise: Denoiser, schedule: Schedule,
                        log_prob_fn: Callable[[jnp.ndarray, jnp.ndarray, Any], jnp.ndarray], y: Any,
                        scale) -> Denoiser:
  """Classifier guidance (Dhariwal & Nichol 2021, Alg. 2, in eps form for any alpha, sigma).

  ``log_prob_fn(x_t, t, y) -> [batch]`` is ``log p(y | x_t)`` per example (``t`` shape ``[batch]``).
  The guided prediction is ``eps' = eps - scale sigma grad_x log p(y | x_t)`` and
  ``x0' = (x - sigma eps') / alpha = x0 + scale (sigma^2 / alpha) grad``. ``scale`` may be traced
  (scalar or ``[batch]``); with an exact classifier, ``scale = 1`` gives the exact conditional model.
  """

  def guided(x, t):
    check_scale(scale, x, "scale")
    pred = denoise(x, t)
    tb = broadcast_t(t, x)

    def total_log_prob(xx):
      lp = log_prob_fn(xx, tb, y)
      if np.shape(lp) != (np.shape(x)[0],):
        raise ValueError(f"log_prob_fn must return one log-probability per example, shape "
                         f"({np.shape(x)[0]},), got {np.shape(lp)}")
      return jnp.sum(lp)

    grad = jax.grad(total_log_prob)(x)
    alpha, sigma = schedule.alpha_sigma(tb)
    a, s = bcast(alpha, x), bcast(sigma, x)
    w = bcast(jnp.asarray(scale, x.dtype), x)
    eps = pred.eps - w * s * grad
    x0 = pred.x0 + w * (s * s / a) * grad
    return Prediction(x0, eps, pred.var_frac)

  return guided


def classifier_log_prob(logits_fn: Callable, params, schedule: Schedule | None = None,
                        classifier_schedule: Schedule | None = None):
  """``log_prob_fn(x_t, t, y) -> [batch]`` for ``classifier_guidance``, from a noise-conditional
  classifier ``logits_fn(params, x, t) -> [batch, K]`` trained on ``x_t`` of ``classifier_schedule``.

  ``log p(y | x_t) = log_softmax(logits)_y``. A classifier trained with another schedule than the
  sampler's is queried at equal log-SNR: ``x_t / alpha = x0 + (sigma / alpha) eps`` is the same
  variable under both, so with ``lambda = logsnr(t)``, ``t_c = classifier_schedule.t_of_logsnr(lambda)``
  and ``x_c = (alpha_c(t_c) / alpha(t)) x_t``, ``p(y | x_t) = p_c(y | x_c)`` (and ``jax.grad`` carries
  the factor ``alpha_c / alpha`` into the guidance gradient). With equal schedules (or either left
  ``None``) ``x`` and ``t`` pass unchanged.
  """
  same = schedule is None or classifier_schedule is None or schedule == classifier_schedule

  def log_prob(x, t, y):
    tb = broadcast_t(t, x)
    if same:
      xc, tc = x, tb
    else:
      alpha = schedule.alpha_sigma(tb)[0]
      tc = jnp.clip(classifier_schedule.t_of_logsnr(schedule.logsnr(tb)), 0.0, 1.0)
      xc = bcast(classifier_schedule.alpha_sigma(tc)[0] / alpha, x) * x
    logits = logits_fn(params, xc, tc)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    y = jnp.broadcast_to(jnp.asarray(y, jnp.int32), (x.shape[0],))
    return jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]

  return log_prob
