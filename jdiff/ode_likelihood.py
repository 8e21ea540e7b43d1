"""Exact likelihood of the probability-flow ODE (Song et al. 2021b, Sec. 4.3 and App. D.2).

The probability-flow ODE is a continuous normalizing flow (Chen et al. 2018), so the instantaneous change
of variables gives the log density of the model's marginal at the data end:
``log p_0(y(0)) = log p_1(y(1)) + int_0^1 div f(y(s), s) ds`` for ``dy/ds = f(y, s)``.

As in ``jdiff.ode`` we integrate in ``y = x / alpha`` and ``s = log sigma_tilde = -logsnr / 2``, where
the ODE is ``dy/ds = f(y, s) = y - D(alpha y, t(s))`` (``D = x0_hat``; Karras et al. 2022, eq. 4), from
``s_0 = s(t_min)`` to ``s_1 = s(1)``, carrying ``div_y f`` alongside ``y``. The data ``x0`` is taken as
the point ``y(s_0)``: the marginal of ``y`` at ``s_0`` is the data blurred by ``N(0, sigma_tilde(t_min)^2)``
(negligible for ``t_min = 1e-5``: ``sigma_tilde ~ 1e-3`` for DDPM's schedule, an eighth of an 8-bit bin).
The end density is the prior ``x_1 = alpha(1) y(1) ~ N(0, prior_std^2 I)``, so
``-log p(x0) = -log N(alpha_1 y_1; 0, prior_std^2) - D log alpha_1 - int div f ds``.

``div f = D - tr(dD/dy)`` is computed exactly (``trace='exact'``: one Jacobian-vector product per data
dimension, for small ``D``) or with the Hutchinson estimator ``E[eps^T J eps] = tr J`` (Hutchinson 1989;
Grathwohl et al. 2019, FFJORD) with one Rademacher or Gaussian probe per example, held fixed along the
trajectory (Song et al. 2021b, App. D.2). One ``jax.jvp`` gives ``f`` and ``J eps`` together. The solve is
adaptive (diffrax, ``rtol = atol = 1e-5`` as in Song et al.); ``nfe`` counts vector-field evaluations
(each one denoiser call with its tangent, or ``D`` of them for the exact trace).

Discrete data (Theis et al. 2016; Ho et al. 2019, Flow++ Sec. 3.1; Song et al. 2021b, App. D.2): 8-bit
values ``v`` stored as ``x = v / 127.5 - 1`` are dequantized ``x~ = x + (u - 1/2) w``, ``u ~ U[0, 1)^D``,
``w = 2 / 255`` the bin width; by Jensen ``-log P(v) <= E_u[-log p(x~)] + D log(1 / w)``, so
``nll = -log p(x~) + D log 127.5`` is an (unbiased estimate of an) upper bound on the 8-bit NLL, and
``bits_per_dim(nll, x)`` is the usual figure.

The batch is one ODE system (one adaptive step size, as score_sde's ``likelihood.py``); examples must not
interact inside the denoiser (no batch statistics), otherwise the trace picks up cross terms.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from jdiff import _checks
from jdiff import ode
from jdiff._checks import check_cond, check_data, check_time_bound, logsnr_is_finite
from jdiff.keys import per_example_keys, resolve_indices
from jdiff.parametrization import ModelFn, check_parametrization, make_denoiser
from jdiff.schedules import Schedule

TRACES = ("exact", "rademacher", "gaussian")


class ODENLL(NamedTuple):
  """Per-example results, in nats: ``nll = prior - delta + dequantization``.

  ``prior``: ``-log p_1(y_1)`` of the end point; ``delta``: ``int div f ds`` (the log volume change);
  ``dequantization``: ``D log((num_bins - 1) / 2)`` with dequantization, else 0; ``z``: the end point
  ``x_1 = alpha(1) y_1`` (the encoding of the data); ``nfe``: vector-field evaluations (scalar).
  """
  nll: jnp.ndarray
  prior: jnp.ndarray
  delta: jnp.ndarray
  dequantization: jnp.ndarray
  z: jnp.ndarray
  nfe: jnp.ndarray


def _sum_flat(x):
  return jnp.sum(x.reshape(x.shape[0], -1), axis=1)


def probes(key, indices, shape, kind: str):
  """One probe per example ``[batch, *shape]`` (row ``i`` from ``fold_in(key, indices[i])``):
  Rademacher (+-1) or standard normal; both have ``E[eps eps^T] = I``."""
  _checks.choice("trace estimator", kind, ("rademacher", "gaussian"))
  draw = jax.random.rademacher if kind == "rademacher" else jax.random.normal
  return jax.vmap(lambda k: draw(k, shape, jnp.float32))(per_example_keys(key, indices))


def divergence(fn, y, probe=None):
  """``(fn(y), div fn(y))`` per example for ``fn: [batch, ...] -> [batch, ...]`` acting on each example
  separately. ``probe=None``: the exact trace of the Jacobian (one ``jvp`` per data dimension);
  otherwise the Hutchinson estimate ``sum(probe * J probe)`` (one ``jvp``)."""
  if probe is not None:
    out, jp = jax.jvp(fn, (y,), (probe,))
    return out, _sum_flat(probe * jp)
  out = fn(y)
  batch, d = y.shape[0], int(np.prod(y.shape[1:]))

  def column(i, acc):  # d(fn)_i / dy_i for every example at once (examples are independent)
    e = jnp.zeros((batch, d), y.dtype).at[:, i].set(1.0).reshape(y.shape)
    jp = jax.jvp(fn, (y,), (e,))[1]
    return acc + jp.reshape(batch, d)[:, i]

  return out, jax.lax.fori_loop(0, d, column, jnp.zeros((batch,), jnp.float32))


def check_dequantization(x0, num_bins: int = 256) -> None:
  """Concrete data must lie on the ``num_bins``-level grid in [-1, 1] (one clear error otherwise)."""
  if not _checks.is_concrete(x0):
    return
  a = np.asarray(x0, np.float64)
  if a.min() < -1.0 - 1e-6 or a.max() > 1.0 + 1e-6:
    raise ValueError(f"dequantize=True needs data in [-1, 1] ({num_bins} levels v mapped to "
                     f"v / {(num_bins - 1) / 2} - 1), got values in [{a.min():.4g}, {a.max():.4g}]")
  level = (a + 1.0) * (num_bins - 1) / 2.0
  off = float(np.max(np.abs(level - np.round(level)))) if a.size else 0.0
  if off > 1e-3:
    raise ValueError(f"dequantize=True needs data on the {num_bins}-level grid v / "
                     f"{(num_bins - 1) / 2} - 1 (e.g. 8-bit images), but some values are "
                     f"{off:.3g} levels off it; pass dequantize=False for continuous data")


def ode_nll(model_fn: ModelFn, params, schedule: Schedule, x0, key, cond: Any = None,
            parametrization: str = "eps", *, trace: str = "rademacher", dequantize: bool = False,
            num_bins: int = 256, t_min: float = 1e-5, learned_variance: bool = False,
            prior_std: Optional[float] = None, solver: str = "tsit5", rtol: float = 1e-5,
            atol: float = 1e-5, max_steps: int = 4096, indices=None) -> ODENLL:
  """``-log p(x0)`` per example (nats) under the probability-flow ODE of ``model_fn``; jit-able.

  Args:
    model_fn, params, cond, parametrization, learned_variance: the denoiser, as for the samplers
      (``jdiff.make_denoiser``); ``parametrization='x0'`` for EDM-preconditioned models.
    schedule: the noise schedule.
    x0: data ``[batch, ...]`` (on the ``num_bins``-level grid in [-1, 1] with ``dequantize``).
    key: PRNG key for the probes and the dequantization noise; example ``i`` uses
      ``fold_in(key_part, indices[i])``, so its value does not depend on the batch it is in (up to the
      shared adaptive step size).
    trace: ``'exact'`` (``D`` Jacobian-vector products per evaluation: small ``D`` only),
      ``'rademacher'`` or ``'gaussian'`` (Hutchinson, unbiased; Rademacher has the lower variance).
    dequantize: add uniform noise within each bin and the ``D log((num_bins - 1) / 2)`` offset.
    t_min: the data end of the integration (Song et al. 2021b use ``1e-5`` for VP); ``sigma(t_min)``
      must be positive.
    prior_std: standard deviation of the Gaussian prior on ``x_1`` (default ``schedule.prior_std()``).
    solver, rtol, atol, max_steps: diffrax options as in ``jdiff.ode`` (tolerances apply to ``y``
      and to the accumulated divergence).
    indices: global example indices (default ``arange(batch)``).
  """
  batch = check_data(x0)
  check_parametrization(parametrization)
  check_cond(cond, batch)
  _checks.choice("trace", trace, TRACES)
  ode.check_options(solver, rtol, atol, max_steps)
  num_bins = _checks.positive_int(num_bins, "num_bins")
  if num_bins < 2:
    raise ValueError(f"num_bins must be >= 2, got {num_bins}")
  t_min = check_time_bound(t_min, "t_min")
  if not logsnr_is_finite(schedule, t_min):
    raise ValueError(f"sigma(t_min={t_min}) is 0 for this schedule, so the ODE starts at a singular "
                     f"point; use t_min > 0, e.g. 1e-5")
  if prior_std is not None and not (isinstance(prior_std, (int, float)) and prior_std > 0):
    raise ValueError(f"prior_std must be a positive number or None (the schedule's), got {prior_std!r}")
  if dequantize:
    check_dequantization(x0, num_bins)
  indices, _ = resolve_indices(batch, indices, None, False)
  with jax.ensure_compile_time_eval():  # Schedule.prior_std() calls float()
    p_std = schedule.prior_std() if prior_std is None else float(prior_std)

  x0 = jnp.asarray(x0, jnp.float32)
  shape = x0.shape[1:]
  d = int(np.prod(shape))
  k_probe, k_deq = jax.random.split(key)
  offset = jnp.zeros((batch,), jnp.float32)
  if dequantize:
    width = 2.0 / (num_bins - 1)
    u = jax.vmap(lambda k: jax.random.uniform(k, shape, jnp.float32))(per_example_keys(k_deq, indices))
    x0 = x0 + (u - 0.5) * width
    offset = offset + d * math.log(1.0 / width)
  probe = None if trace == "exact" else probes(k_probe, indices, shape, trace)
  denoise = make_denoiser(model_fn, params, schedule, parametrization, cond, learned_variance)

  def vector_field(s, state, args):
    del args
    y, _ = state
    t = jnp.clip(schedule.t_of_sigma_tilde(jnp.exp(s)), 0.0, 1.0)
    a = schedule.alpha(t)
    dy, div = divergence(lambda v: v - denoise(a * v, t).x0, y, probe)
    return dy, div

  s0 = jnp.log(schedule.sigma_tilde(jnp.float32(t_min)))
  s1 = jnp.log(schedule.sigma_tilde(jnp.float32(1.0)))
  sol = diffrax.diffeqsolve(
      diffrax.ODETerm(vector_field), ode.SOLVERS[solver](), t0=s0, t1=s1, dt0=None,
      y0=(x0, jnp.zeros((batch,), jnp.float32)),
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
      saveat=diffrax.SaveAt(t1=True), max_steps=max_steps)
  y1, delta = sol.ys[0][0], sol.ys[1][0]
  a1 = schedule.alpha(jnp.float32(1.0))
  z = a1 * y1
  prior = (0.5 * _sum_flat(jnp.square(z / p_std)) + 0.5 * d * math.log(2 * math.pi * p_std ** 2)
           - d * jnp.log(a1))
  num_steps = jnp.asarray(sol.stats["num_steps"], jnp.int32)
  nfe = jnp.where(num_steps > 0, ode.nfe_per_step(solver) * num_steps + 1, 0)
  return ODENLL(prior - delta + offset, prior, delta, offset, z, nfe)


__all__ = ["ODENLL", "TRACES", "check_dequantization", "divergence", "ode_nll", "probes"]
