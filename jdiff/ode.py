"""The probability-flow ODE solved with an adaptive Runge-Kutta method (diffrax).

The probability-flow ODE (Song et al. 2021b, eq. 13) of ``x_t = alpha x0 + sigma eps`` is, in the scaled
variable ``y = x / alpha`` and ``sigma = sigma_tilde = sigma / alpha`` (Karras et al. 2022, eq. 4),
``dy / dsigma = (y - D(y; sigma)) / sigma`` with ``D = E[x0 | x_t]`` the denoiser. We integrate it in
``s = log sigma_tilde = -logsnr / 2``: ``dy / ds = y - D``, which needs no derivative of the schedule and
is smooth for every schedule here (DDPM's piecewise-linear table included). The denoiser is evaluated at
``t(s) = schedule.t_of_sigma_tilde(exp(s))`` and ``x = alpha(t) y``.

A schedule that reaches pure noise at ``t = 1`` (flow matching: ``alpha(1) = 0``, ``sigma_tilde(1) =
inf``) has no finite ``s`` there; it is integrated in ``t`` itself, ``dx / dt = alpha'(t) x0_hat +
sigma'(t) eps_hat`` (the velocity of ``x_t = alpha x0 + sigma eps`` at fixed ``(x0, eps)``, averaged
over the posterior; for flow matching ``eps_hat - x0_hat``, Lipman et al. 2023, eq. 20), finite at
``t = 1``; ``rtol``/``atol`` then apply to ``x``.

With an exact denoiser (``jdiff.toy``) and tight tolerances this is the reference "exact ODE solution"
that every deterministic sampler converges to as its grid is refined.
"""
from __future__ import annotations

from typing import Optional

import diffrax
import jax
import jax.numpy as jnp

from jdiff import _checks
from jdiff import grids
from jdiff.samplers import Sampler, SampleOutput, XState, coefs

SOLVERS = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5}
# Both are 7-stage FSAL methods: 6 new vector-field evaluations per attempted step (accepted or
# rejected) plus 1 at the start; tests/test_ode.py checks this against counted calls.
_EVALS_PER_STEP = {"tsit5": 6, "dopri5": 6}


def check_options(solver: str = "tsit5", rtol: float = 1e-5, atol: float = 1e-5,
                  max_steps: int = 4096) -> None:
  _checks.choice("ODE solver", solver, SOLVERS)
  for name, v in (("rtol", rtol), ("atol", atol)):
    if not (isinstance(v, (int, float)) and 0.0 < v < 1.0):
      raise ValueError(f"{name} must be a number in (0, 1), got {v!r}")
  _checks.positive_int(max_steps, "max_steps")


def solve_pf_ode(denoise, schedule, x, t0, t1, *, solver: str = "tsit5", rtol: float = 1e-5,
                 atol: float = 1e-5, max_steps: int = 4096):
  """Solve the probability-flow ODE from ``x`` at ``t0`` to ``t1 <= t0`` (both with ``sigma > 0``).

  The whole batch is one ODE system (one adaptive step size, as in score_sde's ``ode_sampler``).
  ``rtol``/``atol`` apply to ``y = x / alpha``. Returns ``(x_t1, nfe)`` with ``nfe`` the number of
  denoiser calls, from diffrax's step statistics. Raises (at run time, from diffrax) if ``max_steps`` is
  not enough.
  """
  check_options(solver, rtol, atol, max_steps)
  t0 = jnp.asarray(t0, jnp.float32)
  t1 = jnp.asarray(t1, jnp.float32)
  if schedule.pure_noise_at_one:
    return _solve_in_t(denoise, schedule, x, t0, t1, solver, rtol, atol, max_steps)
  s0 = jnp.log(schedule.sigma_tilde(t0))
  s1 = jnp.log(schedule.sigma_tilde(t1))

  def vector_field(s, y, args):
    del args
    t = jnp.clip(schedule.t_of_sigma_tilde(jnp.exp(s)), 0.0, 1.0)
    return y - denoise(schedule.alpha(t) * y, t).x0

  sol = diffrax.diffeqsolve(
      diffrax.ODETerm(vector_field), SOLVERS[solver](), t0=s0, t1=s1, dt0=None,
      y0=jnp.asarray(x, jnp.float32) / schedule.alpha(t0),
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
      saveat=diffrax.SaveAt(t1=True), max_steps=max_steps)
  num_steps = jnp.asarray(sol.stats["num_steps"], jnp.int32)
  nfe = jnp.where(num_steps > 0, _EVALS_PER_STEP[solver] * num_steps + 1, 0)
  return schedule.alpha(t1) * sol.ys[0], nfe


def _solve_in_t(denoise, schedule, x, t0, t1, solver, rtol, atol, max_steps):
  """``dx/dt = alpha'(t) x0_hat + sigma'(t) eps_hat`` from ``t0`` to ``t1`` (module docstring)."""

  def vector_field(t, x, args):
    del args
    _, (da, ds) = jax.jvp(schedule.alpha_sigma, (t,), (jnp.ones_like(t),))
    pred = denoise(x, t)
    return da * pred.x0 + ds * pred.eps

  sol = diffrax.diffeqsolve(
      diffrax.ODETerm(vector_field), SOLVERS[solver](), t0=t0, t1=t1, dt0=None,
      y0=jnp.asarray(x, jnp.float32), stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
      saveat=diffrax.SaveAt(t1=True), max_steps=max_steps)
  num_steps = jnp.asarray(sol.stats["num_steps"], jnp.int32)
  nfe = jnp.where(num_steps > 0, _EVALS_PER_STEP[solver] * num_steps + 1, 0)
  return sol.ys[0], nfe


def sample_ode(denoise, schedule, x_init, ts, *, final_denoise: Optional[bool] = None,
               solver: str = "tsit5", rtol: float = 1e-5, atol: float = 1e-5, max_steps: int = 4096):
  """The exact-ODE counterpart of a grid sampler on ``ts``: only the grid's ends are used.

  From ``x_init`` at ``ts[0]``: when ``sigma(0) = 0`` (VP) solve to the last positive time ``ts[-2]``
  and return ``x0_hat`` there (what every deterministic grid sampler's last step does); otherwise (VE,
  EDM) solve to ``t = 0`` and, with ``final_denoise`` (default True), return ``x0_hat(x, 0)``. Returns
  ``SampleOutput(x, nfe)``, ``nfe`` counting the solver's calls and the final denoise.
  """
  grids.check_grid(ts)
  ts = jnp.asarray(ts, jnp.float32)
  if grids.reaches_zero_noise(schedule):
    t_end, denoise_last = ts[-2], True
  else:
    t_end, denoise_last = ts[-1], final_denoise is None or final_denoise
  x, nfe = solve_pf_ode(denoise, schedule, x_init, ts[0], t_end, solver=solver, rtol=rtol, atol=atol,
                        max_steps=max_steps)
  if denoise_last:
    x = denoise(x, t_end).x0
    nfe = nfe + 1
  return SampleOutput(x, nfe)


def ode_sampler(solver: str = "tsit5", rtol: float = 1e-5, atol: float = 1e-5,
                max_steps: int = 4096) -> Sampler:
  """The adaptive probability-flow ODE solver as a grid sampler: each step ``t -> t_next`` is one
  adaptive solve (``solve_pf_ode``); a step to ``sigma(t_next) = 0`` (VP) returns ``x0_hat(x, t)``, as
  every deterministic grid sampler's last step does. The grid only fixes where the solution is
  reported, not the solver's steps: ``steps=2`` (``ts = [t_max, t_min, 0]``) is one solve and a final
  denoise, exactly ``sample_ode``; a longer grid restarts the step-size controller at each grid time.
  ``solver``, ``rtol``, ``atol`` and ``max_steps`` are static options. The whole batch is one system
  (``Sampler.adaptive``)."""
  check_options(solver, rtol, atol, max_steps)

  def step(denoise, schedule, state, t, t_next, keys, hp):
    del keys, hp
    to_zero = coefs(schedule, t_next).sigma <= 0

    def solve(x):
      return solve_pf_ode(denoise, schedule, x, t, t_next, solver=solver, rtol=rtol, atol=atol,
                          max_steps=max_steps)

    def land(x):
      return denoise(x, t).x0, jnp.int32(1)

    x, nfe = jax.lax.cond(to_zero, land, solve, state.x)
    return XState(x), nfe

  return Sampler("ode", lambda x, num_steps: XState(x), step, {}, deterministic=True, adaptive=True)


def nfe_per_step(solver: str) -> int:
  """Denoiser calls per attempted step of ``solver``."""
  _checks.choice("ODE solver", solver, SOLVERS)
  return _EVALS_PER_STEP[solver]

