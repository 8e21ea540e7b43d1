"""Sampling time grids: descending arrays of times from ``t_max`` (default 1) down to exactly 0.

A grid for ``steps`` steps has ``steps + 1`` entries ``ts[0] = t_max > ts[1] > ... > ts[steps] = 0``.
Grids are plain ``float32`` arrays: pass them to a jitted sampler as an argument and changing their
values does not recompile.

``t = 0`` is special. For variance-preserving schedules ``sigma(0) = 0`` (``logsnr(0) = +inf``), so a grid
uniform in logsnr or rho-spaced in ``sigma_tilde`` cannot reach it; it is spaced down to a small ``t_min``
(default ``1e-3``, the ``sampling_eps`` of Song et al. 2021) and then ends with 0, so that the last step
lands on the denoised ``x0_hat``. For VE and EDM schedules ``sigma(0) = sigma_min > 0`` and the default
``t_min`` is 0 itself: all ``steps + 1`` points are spaced down to 0.

Where a schedule is steeper near ``t_max`` than float32 t can follow (the sigmoid schedule near t = 1),
the uniform-logSNR and Karras grids start their spacing at the noisiest level float32 t resolves, after
``ts[0] = t_max`` (``_spaced``); every other grid is the plain formula.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import _checks
from jdiff import consistency
from jdiff.schedules import Schedule

DEFAULT_VP_T_MIN = 1e-3


def reaches_zero_noise(schedule: Schedule) -> bool:
  """True when ``sigma(0) = 0``: variance-preserving and flow schedules (``logsnr(0) = +inf``), as
  opposed to VE and EDM (``sigma(0) = sigma_min > 0``). Decided by ``schedule.reaches_zero_noise``."""
  return bool(schedule.reaches_zero_noise)


def _resolve_range(schedule: Schedule, steps, t_max, t_min):
  steps = _checks.positive_int(steps, "steps")
  zero_noise = reaches_zero_noise(schedule)
  if t_min is None:
    t_min = DEFAULT_VP_T_MIN if zero_noise else 0.0
  t_max, t_min = float(t_max), float(t_min)
  if not 0.0 < t_max <= 1.0:
    raise ValueError(f"t_max must lie in (0, 1], got {t_max}")
  if not 0.0 <= t_min < t_max:
    raise ValueError(f"t_min must lie in [0, t_max={t_max}), got {t_min}")
  if t_min == 0.0 and zero_noise:
    raise ValueError("t_min=0 is not allowed for this schedule: sigma(0)=0 (logsnr=+inf) there; pass "
                     f"a small positive t_min such as {DEFAULT_VP_T_MIN} (the grid still ends at 0)")
  # Number of spaced points (the rest of the grid is the final 0).
  n = steps + 1 if t_min == 0.0 else steps
  return n, t_max, t_min


def _noisy_end(schedule: Schedule, t_max: float, t_min: float, n: int) -> float:
  """Where a logsnr- or sigma-spaced grid starts its spacing: ``t_max``, except at pure noise
  (``schedule.pure_noise_at_one`` and ``t_max = 1``: ``logsnr = -inf``, ``sigma_tilde = inf``, no
  finite level to space from), where the grid takes one step from ``t_max`` to the level a uniform-t grid
  of the same points would reach first, ``t_max - (t_max - t_min) / (n - 1)``, and spaces the rest from
  there."""
  if not (schedule.pure_noise_at_one and t_max == 1.0) or n < 3:
    return t_max
  return t_max - (t_max - t_min) / (n - 1)


def _assemble(inner: np.ndarray, t_max: float, n: int, steps: int) -> np.ndarray:
  """Pin the end points exactly and append the final 0 (float32; not checked)."""
  ts = np.zeros(steps + 1, np.float32)
  ts[:n] = inner
  ts[0] = t_max
  ts[steps] = 0.0
  return ts


def _descending(ts: np.ndarray) -> bool:
  return bool(np.all(np.isfinite(ts)) and np.all(np.diff(ts) < 0))


_UNRESOLVABLE = ("the grid is not strictly descending after mapping to t: float32 cannot resolve "
                 "that many steps between t_min and t_max on this schedule (its noise levels are closer "
                 "than float32 t can tell apart); use fewer steps or a wider t range")


def _finish(inner: np.ndarray, t_max: float, n: int, steps: int) -> jnp.ndarray:
  """Pin the end points exactly, append the final 0 and check the grid is strictly descending."""
  ts = _assemble(inner, t_max, n, steps)
  if not _descending(ts):
    raise ValueError(_UNRESOLVABLE)
  return jnp.asarray(ts)


def _spaced(inner_from, t_max: float, n: int, steps: int) -> jnp.ndarray:
  """A grid spaced by ``inner_from(f)``, moving its noisy end inward where float32 t cannot follow.

  ``inner_from(0.0)`` gives the ``n`` spaced points in t (their first is replaced by ``t_max``);
  ``inner_from(f)`` for ``f > 0`` gives ``t_max`` followed by ``n - 1`` points spaced the same way from
  the level a fraction ``f`` of the spacing range away from the noisy end. Near ``t = 1`` a schedule can
  be steeper than float32 t resolves (the sigmoid schedule: ``logsnr ~ log(1 - t)``, so the largest
  float32 below 1 is at logsnr -17.8 while ``logsnr(1)`` is the clamp -20); the levels between cannot be
  told apart in t and the grid would not be strictly descending. Then the spacing starts instead from
  the noisiest level where float32 t resolves it (the smallest such ``f``, by bisection), and the first
  step runs from ``t_max`` to that level. Grids float32 resolves as they are (``f = 0``) are unchanged.
  """
  ts = _assemble(inner_from(0.0), t_max, n, steps)
  if _descending(ts):
    return jnp.asarray(ts)
  if n < 3:
    raise ValueError(_UNRESOLVABLE)
  build = lambda f: _assemble(inner_from(f), t_max, n, steps)
  bad, good = 0.0, None
  for j in range(1, 16):  # coarse scan for a resolvable start, then bisect the boundary
    if _descending(build(j / 16)):
      good = j / 16
      break
    bad = j / 16
  if good is None:
    raise ValueError(_UNRESOLVABLE)
  for _ in range(16):
    mid = 0.5 * (bad + good)
    if _descending(build(mid)):
      good = mid
    else:
      bad = mid
  return jnp.asarray(build(good))


def uniform_t(steps: int, t_max: float = 1.0) -> jnp.ndarray:
  """Uniform in time: ``ts = linspace(t_max, 0, steps + 1)`` (Ho et al. 2020; Song et al. 2021a,
  "uniform" skip of DDIM Sec. 4.2 / App. D.2)."""
  steps = _checks.positive_int(steps, "steps")
  t_max = float(t_max)
  if not 0.0 < t_max <= 1.0:
    raise ValueError(f"t_max must lie in (0, 1], got {t_max}")
  return _finish(np.linspace(t_max, 0.0, steps + 1), t_max, steps + 1, steps)


def uniform_logsnr(schedule: Schedule, steps: int, t_max: float = 1.0, t_min: float | None = None
                   ) -> jnp.ndarray:
  """Uniform in ``logsnr`` between ``logsnr(t_max)`` and ``logsnr(t_min)``, ending at 0.

  DPM-Solver's recommended "logSNR" spacing (Lu et al. 2022a, Sec. 3.4): equal steps in
  ``lambda = logsnr / 2``. ``t_min`` defaults to ``1e-3`` when ``sigma(0) = 0`` (then the grid is
  ``steps`` uniform points followed by 0) and to 0 otherwise (``steps + 1`` uniform points).
  """
  n, t_max, t_min = _resolve_range(schedule, steps, t_max, t_min)
  t_a = _noisy_end(schedule, t_max, t_min, n)
  with jax.ensure_compile_time_eval():
    lo, hi, lo_a = (schedule.logsnr(jnp.float32(t)) for t in (t_max, t_min, t_a))

  def inner_from(f):
    if not np.isfinite(float(lo)) and n < 3:  # pure noise at t_max and nothing to space
      return np.array([t_max, t_min][:n], np.float64)
    with jax.ensure_compile_time_eval():
      if t_a != t_max:  # pure noise at t_max: t_max, then n - 1 levels from t_a
        lams = jnp.concatenate([lo[None], jnp.linspace(lo_a + f * (hi - lo_a), hi, n - 1)])
      elif f == 0.0:
        lams = jnp.linspace(lo, hi, n)
      else:  # t_max, then n - 1 levels from a fraction f of the way in (see _spaced)
        lams = jnp.concatenate([lo[None], jnp.linspace(lo + f * (hi - lo), hi, n - 1)])
      inner = np.asarray(schedule.t_of_logsnr(lams), np.float64)
    inner[n - 1] = t_min
    return inner

  return _spaced(inner_from, t_max, n, steps)


def karras(schedule: Schedule, steps: int, t_max: float = 1.0, t_min: float | None = None,
           rho: float = 7.0) -> jnp.ndarray:
  """Noise levels ``rho``-spaced in ``sigma_tilde = sigma / alpha``, ending at 0 (Karras et al. 2022,
  eq. 5): ``sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
  with ``sigma_max = sigma_tilde(t_max)``, ``sigma_min = sigma_tilde(t_min)``, mapped to ``t`` with
  ``schedule.t_of_sigma_tilde``. ``t_min`` defaults as in ``uniform_logsnr``.
  """
  n, t_max, t_min = _resolve_range(schedule, steps, t_max, t_min)
  if not float(rho) > 0.0:
    raise ValueError(f"rho must be > 0, got {rho}")
  t_a = _noisy_end(schedule, t_max, t_min, n)
  with jax.ensure_compile_time_eval():
    s_hi, s_lo, s_a = (float(schedule.sigma_tilde(jnp.float32(t))) for t in (t_max, t_min, t_a))
  u_hi, u_lo, u_a = s_hi ** (1.0 / rho), s_lo ** (1.0 / rho), s_a ** (1.0 / rho)

  def inner_from(f):
    if not np.isfinite(s_hi) and n < 3:  # pure noise at t_max and nothing to space: [t_max, t_min]
      return np.array([t_max, t_min][:n], np.float64)
    if t_a != t_max:  # pure noise at t_max: t_max, then n - 1 levels from t_a
      u0 = u_a + f * (u_lo - u_a)
      i = np.arange(n - 1, dtype=np.float64) / max(n - 2, 1)
      sig = np.concatenate([[s_hi], (u0 + i * (u_lo - u0)) ** rho])
    elif f == 0.0:
      i = np.arange(n, dtype=np.float64) / max(n - 1, 1)
      sig = (u_hi + i * (u_lo - u_hi)) ** rho
    else:  # t_max, then n - 1 levels from a fraction f of the way in (see _spaced)
      u0 = u_hi + f * (u_lo - u_hi)
      i = np.arange(n - 1, dtype=np.float64) / max(n - 2, 1)
      sig = np.concatenate([[s_hi], (u0 + i * (u_lo - u0)) ** rho])
    with jax.ensure_compile_time_eval():
      inner = np.asarray(schedule.t_of_sigma_tilde(jnp.asarray(sig, jnp.float32)), np.float64)
    inner[n - 1] = t_min
    return inner

  return _spaced(inner_from, t_max, n, steps)


# The grids of the ODE / SDE samplers (grid_fit starts from these), and every grid by name.
SOLVER_GRIDS = ("uniform_t", "uniform_logsnr", "karras")
GRIDS = SOLVER_GRIDS + ("consistency",)


def get_grid(name: str, schedule: Schedule, steps: int, **kwargs) -> jnp.ndarray:
  """A grid by name: ``uniform_t``, ``uniform_logsnr``, ``karras`` or ``consistency`` (the noise levels
  of multistep consistency sampling, ``jdiff.consistency.grid``; alpha = 1 schedules)."""
  _checks.choice("grid", name, GRIDS)
  if name == "uniform_t":
    return uniform_t(steps, **kwargs)
  if name == "consistency":
    return consistency.grid(schedule, steps, **kwargs)
  return {"uniform_logsnr": uniform_logsnr, "karras": karras}[name](schedule, steps, **kwargs)


def check_grid(ts, name: str = "ts") -> None:
  """Validate a grid at a public boundary (no-op on traced values): a 1-D array of at least 2 finite
  times in [0, 1], strictly descending, ending at exactly 0."""
  if np.ndim(ts) != 1 or np.shape(ts)[0] < 2:
    raise ValueError(f"{name} must be a 1-D array of at least 2 times (steps + 1 for steps >= 1), got "
                     f"shape {np.shape(ts)}; build one with jdiff.grids.uniform_t(steps)")
  if not _checks.is_concrete(ts):
    return
  a = np.asarray(ts, np.float64)
  _checks.check_t(a, name)
  if np.any(np.diff(a) >= 0):
    raise ValueError(f"{name} must be strictly descending (from the prior at 1 to the data at 0), got "
                     f"{np.array2string(a, precision=4, threshold=8)}")
  if a[-1] != 0.0:
    raise ValueError(f"{name} must end at exactly 0.0 (the data), got last value {a[-1]:.4g}; append 0")
