"""Denoising (regression) losses: per-example weighted MSE over a sampled noise level.

``denoising_loss`` draws ``t`` and ``eps`` per example, forms ``x_t = alpha x0 + sigma eps`` and
regresses the model output on its parametrization's target. Every weighting is written as a weight
``w_x0(t)`` on the x0 error and converted to a weight on the parametrization's own target, because the
target errors are all proportional to the x0 error (``d`` = x0_hat - x0, ``x_t`` fixed):
``eps: -(alpha / sigma) d``, ``v: -((alpha^2 + sigma^2) / sigma) d``, ``score: (alpha / sigma^2) d``,
``flow: -((alpha + sigma) / sigma) d``.

Randomness: example ``i`` of the *global* batch uses keys ``fold_in(k, i)``, so its ``t`` and noise do
not depend on how the batch is split over devices or hosts (pass ``indices``, the global example
indices).

``noisy_classifier_loss`` is the cross-entropy of a classifier of ``x_t`` (for classifier guidance), with
``t`` and noise drawn the same way.

Per-example losses are means over the data dimensions; ``mean_loss`` turns any of this package's
per-example losses into the batch mean to differentiate. Under data parallelism with equal per-device
batches, ``lax.pmean`` of the per-device means is the global mean.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import _checks
from jdiff._checks import check_cond, check_data, check_time_bound, logsnr_is_finite
from jdiff.keys import example_normal, per_example_keys, resolve_indices
from jdiff.noising import bcast
from jdiff.parametrization import ModelFn, check_parametrization, target
from jdiff.schedules import Schedule

WEIGHTINGS = ("simple", "snr", "min_snr", "edm")
TIME_SAMPLINGS = ("uniform", "low_discrepancy", "lognormal", "logit_normal")


def _check_positive(v, name: str) -> float:
  if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
    raise ValueError(f"{name} must be a positive finite number, got {v!r}")
  return float(v)


# ----------------------------------------------------------------------------------------------------
# Time sampling
# ----------------------------------------------------------------------------------------------------


def sample_times(key, indices, method: str = "uniform", *, t_min: float = 1e-5, t_max: float = 1.0,
                 global_batch_size: Optional[int] = None, schedule: Optional[Schedule] = None,
                 p_mean: float = -1.2, p_std: float = 1.2, logit_mean: float = 0.0,
                 logit_std: float = 1.0):
  """Per-example times in ``[t_min, t_max]``, shape ``[batch]``.

  * ``uniform``: ``t = t_min + (t_max - t_min) u``, ``u ~ U[0, 1)`` from ``fold_in(key, i)``.
  * ``low_discrepancy``: ``u_i = mod(u + i / B, 1)`` with one shared ``u ~ U[0, 1)`` and ``B`` the
    global batch size (Kingma et al. 2021, App. I.1): the global batch covers ``[0, 1)`` in ``B`` strata.
  * ``lognormal``: ``ln sigma_tilde ~ N(p_mean, p_std^2)`` (Karras et al. 2022, Sec. 5, "Noise
    distribution"), mapped to ``t = schedule.t_of_sigma_tilde(sigma_tilde)`` and clipped into
    ``[t_min, t_max]`` (noise levels outside the schedule's range land on the end points).
  * ``logit_normal``: ``t = sigmoid(logit_mean + logit_std n)``, ``n ~ N(0, 1)`` (Esser et al. 2024, eq.
    19: more weight on the middle times of flow matching), clipped into ``[t_min, t_max]``.
  """
  _checks.choice("time sampling", method, TIME_SAMPLINGS)
  k_shared, k_each = jax.random.split(key)
  if method == "lognormal":
    if schedule is None:
      raise ValueError("time_sampling='lognormal' needs the schedule (to map sigma to t)")
    n = jax.vmap(lambda k: jax.random.normal(k, ()))(per_example_keys(k_each, indices))
    t = schedule.t_of_sigma_tilde(jnp.exp(p_mean + p_std * n))
    return jnp.clip(t, t_min, t_max).astype(jnp.float32)
  if method == "logit_normal":
    n = jax.vmap(lambda k: jax.random.normal(k, ()))(per_example_keys(k_each, indices))
    return jnp.clip(jax.nn.sigmoid(logit_mean + logit_std * n), t_min, t_max).astype(jnp.float32)
  if method == "uniform":
    u = jax.vmap(lambda k: jax.random.uniform(k, ()))(per_example_keys(k_each, indices))
  else:
    g = global_batch_size if global_batch_size is not None else indices.shape[0]
    u0 = jax.random.uniform(k_shared, ())
    u = jnp.mod(u0 + jnp.mod(indices, g).astype(jnp.float32) / g, 1.0)
  return (t_min + (t_max - t_min) * u).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------------
# Weightings
# ----------------------------------------------------------------------------------------------------


def _log_target_scale(parametrization: str, logsnr, alpha, sigma):
  """``log(||target error||^2 / ||x0 error||^2)`` for a parametrization (see the module docstring)."""
  if parametrization == "x0":
    return jnp.zeros_like(logsnr)
  if parametrization == "eps":
    return logsnr
  if parametrization == "v":
    return 2.0 * jnp.log(alpha * alpha + sigma * sigma) - 2.0 * jnp.log(sigma)
  if parametrization == "flow":
    return 2.0 * jnp.log(alpha + sigma) - 2.0 * jnp.log(sigma)
  return 2.0 * jnp.log(alpha) - 4.0 * jnp.log(sigma)  # score


def loss_weight(schedule: Schedule, t, parametrization: str = "eps", weighting: str = "simple", *,
                min_snr_gamma: float = 5.0, sigma_data: float = 0.5):
  """Weight on the parametrization's target MSE at times ``t`` (shape of ``t``).

  In terms of the x0 error (``snr = alpha^2 / sigma^2``):

  * ``simple``: unit weight on the target MSE (Ho et al. 2020, eq. 14; for ``eps`` the x0 weight is snr).
  * ``snr``: ``snr`` on the x0 MSE, i.e. the eps MSE whatever the parametrization (Salimans & Ho
    2022, Sec. 4).
  * ``min_snr``: ``min(snr, gamma)`` on the x0 MSE (Hang et al. 2023, Min-SNR-gamma): on the eps
    target ``min(snr, gamma) / snr``, on v (VP) ``min(snr, gamma) / (snr + 1)``, on x0
    ``min(snr, gamma)``.
  * ``edm``: ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = snr + 1/sigma_data^2``
    on the x0 MSE, ``sigma`` the noise level of ``x_t / alpha`` (Karras et al. 2022, eq. 8, Table 1).
  """
  check_parametrization(parametrization)
  _checks.choice("weighting", weighting, WEIGHTINGS)
  t = jnp.asarray(t, jnp.float32)
  if weighting == "simple":
    return jnp.ones_like(t)
  logsnr = schedule.logsnr(t)
  alpha, sigma = schedule.alpha_sigma(t)
  if weighting == "snr":
    log_w = logsnr
  elif weighting == "min_snr":
    log_w = jnp.minimum(logsnr, math.log(min_snr_gamma))
  else:
    log_w = jnp.logaddexp(logsnr, -2.0 * math.log(sigma_data))
  return jnp.exp(log_w - _log_target_scale(parametrization, logsnr, alpha, sigma))


# ----------------------------------------------------------------------------------------------------
# The denoising loss
# ----------------------------------------------------------------------------------------------------


def model_output(model_fn: ModelFn, params, x_t, t, cond, data_shape, learned_variance: bool = False):
  """Call the model and split off the variance channels; returns ``(mean_out, v_or_None)``."""
  out = model_fn(params, x_t, t, cond)
  want = tuple(data_shape[:-1]) + (2 * data_shape[-1],) if learned_variance else tuple(data_shape)
  if tuple(np.shape(out)) != want:
    extra = " (learned variance: twice the data channels)" if learned_variance else ""
    raise ValueError(f"model output has shape {tuple(np.shape(out))}, expected {want}{extra}")
  if learned_variance:
    mean_out, v = jnp.split(out, 2, axis=-1)
    return mean_out, v
  return out, None


def mean_flat(x):
  """Mean over all axes but the first."""
  return jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def denoising_loss(model_fn: ModelFn, params, schedule: Schedule, x0, key, cond: Any = None,
                   parametrization: str = "eps", weighting: str = "simple",
                   time_sampling: Optional[str] = None, indices=None, *,
                   global_batch_size: Optional[int] = None, t_eps: float = 1e-5,
                   min_snr_gamma: float = 5.0, sigma_data: float = 0.5, p_mean: float = -1.2,
                   p_std: float = 1.2, logit_mean: float = 0.0, logit_std: float = 1.0,
                   learned_variance: bool = False, noise=None, t=None):
  """Per-example denoising loss ``w(t) mean_d (out - target)^2``, shape ``[batch]``.

  Args:
    model_fn: ``fn(params, x_t, t, cond) -> out``; close over dropout keys and ``train=True`` as needed.
    params: model parameters (the argument to differentiate).
    schedule: the noise schedule.
    x0: clean data ``[batch, ...]`` (float).
    key: PRNG key; example ``i`` uses keys folded with ``indices[i]``.
    cond: conditioning pytree passed to the model (leaves with a leading batch axis), or None.
    parametrization: ``eps``, ``x0``, ``v``, ``score`` or ``flow`` (an EDM-preconditioned model is
      ``x0``).
    weighting: ``simple``, ``snr``, ``min_snr`` or ``edm`` (see ``loss_weight``).
    time_sampling: ``uniform``, ``low_discrepancy``, ``lognormal`` or ``logit_normal`` (see
      ``sample_times``); by default
      ``lognormal`` for the ``edm`` weighting and ``uniform`` otherwise.
    indices: global example indices ``[batch]`` (default ``arange(batch)``).
    global_batch_size: examples over all devices (for ``low_discrepancy``; default ``batch``).
    t_eps: times are drawn in ``[t_eps, 1]``; VP schedules have infinite log-SNR at ``t = 0``.
    min_snr_gamma: ``gamma`` of the ``min_snr`` weighting (Hang et al. 2023 use 5).
    sigma_data: data standard deviation of the ``edm`` weighting.
    p_mean, p_std: the log-normal noise distribution (Karras et al. 2022 use -1.2 and 1.2).
    logit_mean, logit_std: the logit-normal time distribution (Esser et al. 2024 use 0 and 1).
    learned_variance: the model outputs twice the channels; the variance half is ignored here.
    noise: the ``eps`` of each example, ``[batch, ...]`` like ``x0``, instead of a fresh draw: a coupled
      (noise, data) pair as in reflow (Liu et al. 2023; ``jdiff.reflow``). Default: drawn per example.
    t: the time of each example, ``[batch]`` or a scalar, instead of a draw from ``time_sampling``.
  """
  batch = check_data(x0)
  _checks.check_key(key)
  check_parametrization(parametrization)
  _checks.choice("weighting", weighting, WEIGHTINGS)
  if time_sampling is None:
    time_sampling = "lognormal" if weighting == "edm" else "uniform"
  _checks.choice("time sampling", time_sampling, TIME_SAMPLINGS)
  t_eps = check_time_bound(t_eps, "t_eps")
  min_snr_gamma = _check_positive(min_snr_gamma, "min_snr_gamma")
  sigma_data = _check_positive(sigma_data, "sigma_data")
  p_std = _check_positive(p_std, "p_std")
  logit_std = _check_positive(logit_std, "logit_std")
  for name, v in (("p_mean", p_mean), ("logit_mean", logit_mean)):
    if not (isinstance(v, (int, float)) and math.isfinite(v)):
      raise ValueError(f"{name} must be a finite number, got {v!r}")
  check_cond(cond, batch)
  indices, gbs = resolve_indices(batch, indices, global_batch_size,
                                 time_sampling == "low_discrepancy")
  if t_eps == 0.0 and not logsnr_is_finite(schedule, 0.0):
    raise ValueError("t_eps=0 reaches t=0 where this schedule has infinite log-SNR (sigma=0); "
                     "use t_eps > 0, e.g. 1e-5")

  if noise is not None and np.shape(noise) != np.shape(x0):
    raise ValueError(f"noise must have the shape of x0 {np.shape(x0)}, got {np.shape(noise)}")
  if t is not None and (np.ndim(t) > 1 or np.ndim(t) == 1 and np.shape(t)[0] != batch):
    raise ValueError(f"t must be a scalar or one time per example [{batch}], got shape {np.shape(t)}")
  x0 = jnp.asarray(x0)
  t, eps, alpha, sigma, x_t = _noised(schedule, x0, key, indices, time_sampling, t_eps, gbs, p_mean,
                                      p_std, logit_mean, logit_std, noise=noise, t=t)
  out, _ = model_output(model_fn, params, x_t, t, cond, x0.shape, learned_variance)
  tgt = target(parametrization, x0, eps, x_t, alpha, sigma)
  w = loss_weight(schedule, t, parametrization, weighting, min_snr_gamma=min_snr_gamma,
                  sigma_data=sigma_data)
  return w * mean_flat(jnp.square(out - tgt))


def _noised(schedule: Schedule, x0, key, indices, time_sampling, t_eps, gbs, p_mean, p_std,
            logit_mean=0.0, logit_std=1.0, noise=None, t=None):
  """Per-example ``t`` and ``eps`` from keys folded with ``indices`` (or the given ``noise`` / ``t``),
  and ``x_t = alpha x0 + sigma eps`` (Ho et al. 2020, eq. 4): the draw shared by the denoising and the
  noisy-classifier losses."""
  k_t, k_eps = jax.random.split(key)
  if t is None:
    t = sample_times(k_t, indices, time_sampling, t_min=t_eps, global_batch_size=gbs,
                     schedule=schedule, p_mean=p_mean, p_std=p_std, logit_mean=logit_mean,
                     logit_std=logit_std)
  else:
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x0.shape[:1])
  eps = (example_normal(k_eps, indices, x0.shape[1:], x0.dtype) if noise is None
         else jnp.asarray(noise, x0.dtype))
  alpha, sigma = schedule.alpha_sigma(t)
  return t, eps, alpha, sigma, bcast(alpha, x0) * x0 + bcast(sigma, x0) * eps


def mean_loss(loss_fn: Callable[..., Any]) -> Callable[..., jnp.ndarray]:
  """Wrap a per-example loss into one returning the batch mean (of ``.total`` for loss tuples)."""

  def fn(*args, **kwargs):
    out = loss_fn(*args, **kwargs)
    return jnp.mean(getattr(out, "total", out))

  return fn


# ----------------------------------------------------------------------------------------------------
# Noise-conditional classifier (for classifier guidance)
# ----------------------------------------------------------------------------------------------------


class ClassifierTerms(NamedTuple):
  total: jnp.ndarray  # [batch] cross-entropy -log p(y | x_t)
  correct: jnp.ndarray  # [batch] 1.0 where argmax_k p(k | x_t) == y
  t: jnp.ndarray  # [batch] the sampled times


def noisy_classifier_loss(logits_fn: Callable, params, schedule: Schedule, x0, labels, key,
                          time_sampling: str = "uniform", indices=None, *,
                          global_batch_size: Optional[int] = None, t_eps: float = 1e-5,
                          p_mean: float = -1.2, p_std: float = 1.2) -> ClassifierTerms:
  """Cross-entropy of a classifier of *noisy* data, per example (Dhariwal & Nichol 2021, Sec. 4.1).

  ``L = E_{t, eps} [-log softmax(f(x_t, t))_y]`` with ``x_t = alpha(t) x0 + sigma(t) eps`` and ``t``,
  ``eps`` drawn exactly as in ``denoising_loss`` (per example, from keys folded with ``indices``), so
  the classifier sees the noise levels the sampler will query. Its gradient
  ``grad_x log p(y | x_t)`` is what ``guidance.classifier_guidance`` adds to the score.

  Args:
    logits_fn: ``fn(params, x_t, t) -> [batch, K]`` logits.
    labels: int ``[batch]`` class labels in ``[0, K)``.
    key, time_sampling, indices, global_batch_size, t_eps, p_mean, p_std: as for ``denoising_loss``.
  """
  batch = check_data(x0)
  _checks.check_key(key)
  _checks.choice("time sampling", time_sampling, TIME_SAMPLINGS)
  t_eps = check_time_bound(t_eps, "t_eps")
  if np.shape(labels) != (batch,):
    raise ValueError(f"labels must have shape [batch]=({batch},), got {np.shape(labels)}")
  indices, gbs = resolve_indices(batch, indices, global_batch_size,
                                 time_sampling == "low_discrepancy")
  x0 = jnp.asarray(x0)
  t, _, _, _, x_t = _noised(schedule, x0, key, indices, time_sampling, t_eps, gbs, p_mean, p_std)
  logits = logits_fn(params, x_t, t)
  if np.ndim(logits) != 2 or np.shape(logits)[0] != batch:
    raise ValueError(f"logits_fn must return logits of shape [batch, K]=({batch}, K), got "
                     f"{np.shape(logits)}")
  labels = jnp.asarray(labels, jnp.int32)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return ClassifierTerms(nll, correct, t)
