"""Reflow (Liu et al. 2023, "Flow straight and fast", Alg. 1): a flow-matching model retrained on the
(noise, sample) pairs of its own ODE, so that its paths straighten and few Euler steps suffice.

A flow-matching model (the "1-rectified flow", ``schedule='flow'``: ``x_t = (1 - t) x0 + t eps``, data
at ``t = 0``) defines by its probability-flow ODE a deterministic map from noise ``z`` at ``t = 1`` to a
sample ``x = ODE(z)`` at ``t = 0``. Reflow draws pairs ``(z, x)`` with an ODE sampler and trains a new
flow on the *coupled* interpolant

    x_t = (1 - t) x + t z,    target velocity  z - x

(the flow-matching loss with the pair's noise in place of an independent draw:
``losses.denoising_loss(..., noise=z)``). The new flow transports the same marginals with straighter
paths (Liu et al. 2023, Thm. 3.3 and 3.7), so a coarse Euler discretisation of its ODE loses less.

One-step distillation (Liu et al. 2023, Sec. 2.3, "distillation" of a k-rectified flow): the same pairs,
trained only at ``t = 1``, where ``x_1 = z``: the model's single Euler (= DDIM) step ``x0_hat(z, 1)`` learns
to land on ``x``. Liu et al. use LPIPS for this step; here it is the squared error of the
parametrization's output (for a velocity model ``||v(z, 1) - (z - x)||^2 = ||x0_hat - x||^2``).

Straightness (Liu et al. 2023, Sec. 2, ``S(Z) = int_0^1 E ||(Z_1 - Z_0) - dZ_t/dt||^2 dt``), estimated
along the model's own Euler trajectory by :func:`straightness`: 0 for straight paths, where one Euler
step is exact.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import _checks, losses
from jdiff._checks import check_data
from jdiff.parametrization import ModelFn
from jdiff.schedules import Schedule


def check_flow(schedule: Schedule, what: str = "reflow") -> None:
  """Reflow is defined for the flow-matching interpolant ``alpha = 1 - t``, ``sigma = t``: one clear
  error for another schedule."""
  if not isinstance(schedule, Schedule):
    raise ValueError(f"schedule must be a jdiff.schedules.Schedule, got {type(schedule).__name__}")
  with jax.ensure_compile_time_eval():  # also when called while tracing a train step
    a, s = (np.asarray(v, np.float64) for v in schedule.alpha_sigma(jnp.asarray([0.0, 0.5, 1.0])))
  ah, sh = a[1], s[1]
  if not (np.allclose(a, [1.0, 0.5, 0.0], atol=1e-6) and np.allclose(s, [0.0, 0.5, 1.0], atol=1e-6)):
    raise ValueError(f"{what} needs a flow-matching model (diffusion.schedule='flow': alpha = 1 - t, "
                     f"sigma = t); this one has alpha(0.5)={ah:.4g}, sigma(0.5)={sh:.4g}. Train the "
                     f"teacher with configs/fashion_mnist.py (flow matching)")


def reflow_loss(model_fn: ModelFn, params, schedule: Schedule, x0, noise, key, cond: Any = None, *,
                parametrization: str = "flow", one_step: bool = False, **loss_kwargs):
  """Per-example reflow loss ``[batch]`` on pairs ``(noise, x0)`` (``noise`` at ``t = 1``, ``x0`` its ODE
  sample): the flow-matching loss of ``losses.denoising_loss`` with ``eps = noise`` and ``t`` drawn as
  ``loss_kwargs`` say (``time_sampling``, ``indices``, ...); with ``one_step``, every example at
  ``t = 1`` (one-step distillation, Liu et al. 2023, Sec. 2.3)."""
  check_flow(schedule)
  check_data(x0)
  if np.shape(noise) != np.shape(x0):
    raise ValueError(f"reflow pairs: noise {np.shape(noise)} and samples {np.shape(x0)} must have the "
                     f"same shape")
  t = jnp.ones((np.shape(x0)[0],), jnp.float32) if one_step else None
  return losses.denoising_loss(model_fn, params, schedule, x0, key, cond,
                               parametrization=parametrization, noise=noise, t=t, **loss_kwargs)


def straightness(denoise: Callable, x1, steps: int = 100):
  """Per-example straightness ``[batch]`` of the ODE paths of ``denoise(x, t) -> Prediction`` (a flow
  model, ``jdiff.parametrization.make_denoiser``) from ``x1`` at ``t = 1``: Euler steps on a uniform
  grid of ``steps``, the velocity ``v = eps_hat - x0_hat`` at each, and

      S = (1 / steps) sum_k mean_d ((x_1 - x_0) - v_k)^2

  with ``x_0`` the trajectory's end (Liu et al. 2023, Sec. 2: ``S(Z)``, a Riemann sum of its integral
  along the discretised path). 0 when every step has the same velocity (a straight path)."""
  steps = _checks.positive_int(steps, "steps")
  x1 = jnp.asarray(x1, jnp.float32)
  check_data(x1)
  ts = jnp.linspace(1.0, 0.0, steps + 1, dtype=jnp.float32)

  def body(x, k):
    t, t_next = ts[k], ts[k + 1]
    p = denoise(x, jnp.full(x.shape[:1], t))
    v = p.eps - p.x0
    return x + (t_next - t) * v, v

  x0, vs = jax.lax.scan(body, x1, jnp.arange(steps))
  axes = tuple(range(2, vs.ndim))
  return jnp.mean(jnp.mean(jnp.square((x1 - x0)[None] - vs), axis=axes), axis=0)
