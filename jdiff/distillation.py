"""Progressive distillation (Salimans & Ho 2022): a student learns one DDIM step that matches two of its
teacher's, so each round halves the number of sampling steps.

On the uniform grid of the student's ``N`` steps over ``[0, t_max]`` an example draws ``i ~ U{1..N}`` and
``t = i t_max / N``, ``t' = t - t_max / (2N)``, ``t'' = t - t_max / N``, noises ``z_t = alpha_t x0 +
sigma_t eps`` and runs two deterministic DDIM steps of the teacher (Song et al. 2021a, eq. 12 with eta = 0;
``ddim_step``) ``z_t -> z_t' -> z_t''``. The student's target is the ``x0`` whose single DDIM step from
``z_t`` lands on ``z_t''`` (Salimans & Ho 2022, Alg. 2):

    x_tilde = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t)

and the loss is ``w(t) ||x0_hat_student(z_t, t) - x_tilde||^2 / d`` with the truncated-SNR weight
``w = max(alpha_t^2 / sigma_t^2, 1)`` (Sec. 4, "truncated SNR weighting"), whatever the student's
parametrization (its output is converted to ``x0``; x0 and v are the paper's stable choices).

The student then samples with ``ddim`` on the ``uniform_t`` grid of ``N`` steps (``t_max = 1``).
Randomness: example ``i`` uses keys ``fold_in(k, i)`` with ``i`` its global index.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jdiff import _checks
from jdiff._checks import check_cond, check_data
from jdiff.keys import example_normal, per_example_keys, resolve_indices
from jdiff.noising import bcast
from jdiff.parametrization import ModelFn, check_parametrization, to_x0_eps
from jdiff.samplers import coefs
from jdiff.schedules import Schedule


def check_student_steps(teacher_steps: int, student_steps: int) -> int:
  """``teacher_steps / student_steps`` as an int, which must be a power of two >= 2 (one round halves,
  several rounds chain): one clear error otherwise."""
  teacher_steps = _checks.positive_int(teacher_steps, "teacher_steps")
  student_steps = _checks.positive_int(student_steps, "student_steps")
  ratio, rem = divmod(teacher_steps, student_steps)
  if rem or ratio < 2 or ratio & (ratio - 1):
    raise ValueError(f"the student's step count must be the teacher's divided by a power of two "
                     f"(teacher {teacher_steps} -> student {teacher_steps // 2}, "
                     f"{teacher_steps // 4}, ...), got {student_steps}")
  return ratio


def ddim_step(schedule: Schedule, x0_hat, z_t, t, s):
  """Deterministic DDIM from ``t`` to ``s < t``: ``z_s = alpha_s x0_hat + (sigma_s / sigma_t)(z_t -
  alpha_t x0_hat)`` (Song et al. 2021a, eq. 12, eta = 0); ``t = 0`` pinned to ``alpha = 1, sigma = 0``."""
  ct, cs = coefs(schedule, t), coefs(schedule, s)
  ratio = bcast(cs.sigma / ct.sigma, z_t)
  return bcast(cs.alpha, z_t) * x0_hat + ratio * (z_t - bcast(ct.alpha, z_t) * x0_hat)


def two_step_target(teacher_x0: Callable, schedule: Schedule, z_t, t, t_mid, t_end):
  """The student's ``x0`` target for one step ``t -> t_end`` that matches the teacher's two DDIM steps
  ``t -> t_mid -> t_end`` (Salimans & Ho 2022, Alg. 2). ``teacher_x0(z, t) -> x0_hat``."""
  z_mid = ddim_step(schedule, teacher_x0(z_t, t), z_t, t, t_mid)
  z_end = ddim_step(schedule, teacher_x0(z_mid, t_mid), z_mid, t_mid, t_end)
  ct, ce = coefs(schedule, t), coefs(schedule, t_end)
  r = ce.sigma / ct.sigma
  return (z_end - bcast(r, z_t) * z_t) / bcast(ce.alpha - r * ct.alpha, z_t)


def progressive_distillation_loss(model_fn: ModelFn, params, teacher_x0: Callable, schedule: Schedule,
                                  x0, key, student_steps: int, cond: Any = None,
                                  parametrization: str = "v", indices=None, *, t_max: float = 1.0):
  """Per-example progressive-distillation loss, shape ``[batch]`` (see the module docstring).

  Args:
    model_fn: the student ``fn(params, z, t, cond) -> out`` in ``parametrization``.
    teacher_x0: ``teacher_x0(z, t) -> x0_hat`` (close over the teacher's parameters and ``cond``).
    student_steps: ``N``, the student's number of sampling steps (the teacher's is ``2N``).
    t_max: the grid's top time (1: the ``uniform_t`` grid of the samplers).
  """
  batch = check_data(x0)
  _checks.check_key(key)
  check_parametrization(parametrization)
  check_cond(cond, batch)
  n = _checks.positive_int(student_steps, "student_steps")
  if not 0.0 < t_max <= 1.0:
    raise ValueError(f"t_max must be in (0, 1], got {t_max}")
  indices, _ = resolve_indices(batch, indices, None, False)
  x0 = jnp.asarray(x0)
  k_t, k_eps = jax.random.split(key)
  i = jax.vmap(lambda k: jax.random.randint(k, (), 1, n + 1))(per_example_keys(k_t, indices))
  dt = t_max / n
  t = i.astype(jnp.float32) * dt
  t_mid, t_end = t - 0.5 * dt, jnp.maximum(t - dt, 0.0)
  eps = example_normal(k_eps, indices, x0.shape[1:], x0.dtype)
  c = coefs(schedule, t)
  z_t = bcast(c.alpha, x0) * x0 + bcast(c.sigma, x0) * eps
  target = jax.lax.stop_gradient(two_step_target(teacher_x0, schedule, z_t, t, t_mid, t_end))
  out = model_fn(params, z_t, t, cond)
  x0_hat, _ = to_x0_eps(parametrization, out, z_t, c.alpha, c.sigma)
  weight = jnp.maximum(jnp.exp(c.logsnr), 1.0)
  return weight * jnp.mean(jnp.square(x0_hat - target).reshape(batch, -1), axis=1)
