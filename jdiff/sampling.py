"""The sampling driver: run any ``Sampler`` over a time grid in one ``lax.scan``.

``jdiff.samplers`` holds the step rules (``init``/``step`` pairs); this module runs them.

* ``SAMPLERS`` / ``get_sampler(name, **options)``: every sampler by name, the adaptive
  probability-flow ODE solver (``"ode"``, ``jdiff.ode``) included.
* ``initial_noise(key, indices, shape, schedule)``: the prior draw ``x_1 = prior_std * eps`` with ``eps``
  of sample ``i`` from ``fold_in(key, i)`` (``i`` its global index).
* ``sample(sampler, denoise, schedule, x_init, ts, key, **hparams)``: the whole grid; per-step noise of
  sample ``i`` at step ``j`` comes from ``fold_in(fold_in(key, i), j)``, so sample ``i`` is the same
  whatever batch it is in. Hyperparameters are traced values: jit it once, change them freely. Editing
  (``jdiff.editing``) runs through the same driver with its two hooks (``after_step`` and a ``walk`` with
  jumps back up the grid).
* ``make_sample_fn(model_fn, schedule, parametrization, sampler_name, steps)``: a jitted convenience.

Sampling returns ``SampleOutput(x, nfe)`` with ``nfe`` the number of denoiser calls actually spent.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import _checks
from jdiff import consistency
from jdiff import grids
from jdiff import multistep
from jdiff import ode
from jdiff import samplers as samplers_lib
from jdiff.keys import check_indices, per_example_keys
from jdiff.parametrization import check_parametrization, make_denoiser
from jdiff.samplers import Sampler, SampleOutput
from jdiff.schedules import Schedule

SAMPLERS = {
    "ddpm": samplers_lib.ddpm,
    "ddim": samplers_lib.ddim,
    "euler": samplers_lib.euler,
    "heun": samplers_lib.heun,
    "dpmpp_2m": multistep.dpmpp_2m,
    "dpmpp_3m": multistep.dpmpp_3m,
    "unipc": multistep.unipc,
    "langevin": samplers_lib.langevin,
    "pc": samplers_lib.pc,
    "ode": ode.ode_sampler,
    "consistency": consistency.multistep,
}
SAMPLER_NAMES = tuple(sorted(SAMPLERS))
_OPTIONS = {"ddpm": ("variance",), "pc": ("step_rule",), "ode": ("solver", "rtol", "atol", "max_steps"),
            "unipc": ("order", "variant", "lower_order_final")}


def get_sampler(name: str, **options) -> Sampler:
  """A sampler by name (see ``SAMPLERS``); ``options`` are its structural (static) options, e.g.
  ``get_sampler("ddpm", variance="large")`` or ``get_sampler("ode", rtol=1e-6)``. Tunable
  hyperparameters are passed to the driver instead."""
  _checks.choice("sampler", name, SAMPLERS)
  allowed = _OPTIONS.get(name, ())
  bad = sorted(set(options) - set(allowed))
  if bad:
    raise ValueError(f"sampler {name!r} has no option(s) {', '.join(bad)}; its options are: "
                     f"{', '.join(allowed) or 'none'} (tunable hyperparameters go to sample())")
  return SAMPLERS[name](**options)


def draws_noise(sampler: Sampler, hparams: dict) -> bool:
  """Whether ``sampler`` with ``hparams`` (over its defaults) draws noise after the starting point, i.e.
  is not an ODE solver: a stochastic sampler, or DDIM with ``eta > 0`` (Song et al. 2021a, eq. 16), or
  Euler/Heun with churn (Karras et al. 2022, Alg. 2, ``S_churn > 0`` and ``S_noise != 0``)."""
  if not sampler.deterministic:
    return True
  hp = {**sampler.hparams, **hparams}
  churn = float(hp.get("S_churn", 0.0)) > 0 and float(hp.get("S_noise", 1.0)) != 0
  return churn or float(hp.get("eta", 0.0)) > 0


def initial_noise(key, indices, shape_per_sample, schedule: Schedule):
  """Prior samples ``x_1 = prior_std * eps``, ``eps`` of example ``i`` drawn from ``fold_in(key, i)``.

  ``prior_std = sqrt(alpha(1)^2 + sigma(1)^2)`` (``Schedule.prior_std``; 1 for VP, about ``sigma_max``
  for VE) matches the marginal of unit-variance data at ``t = 1``.
  """
  indices = check_indices(indices)
  shape = tuple(int(d) for d in shape_per_sample)
  eps = jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(per_example_keys(key, indices))
  return schedule.prior_std() * eps


def resolve_hparams(sampler: samplers_lib.Sampler, hparams: dict) -> dict:
  """Merge user hyperparameters with the sampler's defaults, as float32/int32 arrays (so that changing
  a value never recompiles). Raises on unknown names."""
  bad = sorted(set(hparams) - set(sampler.hparams))
  if bad:
    raise ValueError(f"sampler {sampler.name!r} has no hyperparameter(s) {', '.join(bad)}; its "
                     f"hyperparameters are: {', '.join(sorted(sampler.hparams)) or 'none'}")
  out = {}
  for k, default in sampler.hparams.items():
    v = hparams.get(k, default)
    if isinstance(default, int):
      if _checks.is_concrete(v) and (np.ndim(v) != 0 or int(v) != v or int(v) < 0):
        raise ValueError(f"hyperparameter {k} must be an integer >= 0, got {v!r}")
      out[k] = jnp.asarray(v, jnp.int32)
    else:
      if _checks.is_concrete(v) and (np.ndim(v) != 0 or np.isnan(float(v))):
        raise ValueError(f"hyperparameter {k} must be a scalar number, got {v!r}")
      out[k] = jnp.asarray(v, jnp.float32)
  return out


def _check_x(x, name="x_init"):
  _checks.check_float(x, name)
  if np.ndim(x) < 1:
    raise ValueError(f"{name} must have a leading batch axis, got shape {np.shape(x)}")
  _checks.check_finite(x, name)


def check_sampler_schedule(sampler: samplers_lib.Sampler, schedule: Schedule) -> None:
  if sampler.ve_only and not schedule.alpha_is_one:
    raise ValueError(f"sampler {sampler.name!r} is for variance-exploding schedules (alpha = 1: 've', "
                     f"'edm'), got {type(schedule).__name__}; use ddpm/ddim/euler/heun/dpmpp_*/unipc on it")


def sample(sampler, denoise, schedule: Schedule, x_init, ts, key, *, indices=None,
           final_denoise: Optional[bool] = None, walk=None, after_step: Optional[Callable] = None,
           jump: Optional[Callable] = None, **hparams) -> SampleOutput:
  """Run ``sampler`` from ``x_init`` at ``ts[0]`` down the grid ``ts`` (ending at 0) in one ``lax.scan``.

  Args:
    sampler: a ``Sampler`` or a name for ``get_sampler``.
    denoise: ``denoise(x, t) -> Prediction``.
    schedule: the noise schedule.
    x_init: ``[batch, ...]`` samples at ``ts[0]`` (e.g. ``initial_noise``).
    ts: descending grid of ``steps + 1`` times ending at 0 (``jdiff.grids``); traced.
    key: PRNG key; the keys of example ``i`` at transition ``n`` are ``fold_in(fold_in(key, i), n)``.
    indices: global example indices ``[batch]`` (default ``arange(batch)``).
    final_denoise: for schedules with ``sigma(0) > 0`` (VE, EDM), finish with ``x0_hat(x, 0)`` (one
      more NFE), as score_sde and k-diffusion do; default True. No effect when ``sigma(0) = 0`` (VP),
      where the last step already lands on ``x0_hat``.
    walk: ``int [n, 2]`` rows ``(from, to)`` of grid indices, static (default: the plain descent
      ``(k, k + 1)``). A row with ``to < from`` goes back up the grid: ``jump(x, t_from, t_to, keys)``
      re-noises the sample and the sampler restarts (``init``) from it (RePaint, ``jdiff.editing``).
    after_step: ``after_step(x, t_next, keys) -> x``, applied after every step down (e.g. inpainting's
      replacement of the known region).
    **hparams: the sampler's traced hyperparameters (``sampler.hparams`` lists them and the defaults).
  """
  if isinstance(sampler, str):
    sampler = get_sampler(sampler)
  _check_x(x_init)
  grids.check_grid(ts)
  _checks.check_key(key)
  check_sampler_schedule(sampler, schedule)
  batch = np.shape(x_init)[0]
  indices = jnp.arange(batch, dtype=jnp.int32) if indices is None else check_indices(indices, batch)
  hp = resolve_hparams(sampler, hparams)
  ts = jnp.asarray(ts, jnp.float32)
  if sampler.needs_var_frac:
    probe = jax.eval_shape(denoise, x_init, ts[0])
    if probe.var_frac is None:
      raise ValueError(f"sampler {sampler.name!r} with learned variance needs a denoiser that predicts "
                       "var_frac; build it with make_denoiser(..., learned_variance=True)")
  steps = ts.shape[0] - 1
  if walk is None:
    walk = np.stack([np.arange(steps), np.arange(1, steps + 1)], axis=1)
  walk = np.asarray(walk, np.int32).reshape(-1, 2)
  has_jumps = bool(np.any(walk[:, 1] < walk[:, 0]))
  if has_jumps and jump is None:
    raise ValueError("a walk that goes back up the grid needs a jump function")
  keys = per_example_keys(key, indices)

  def down(state, t, t_next, step_keys):
    state, n = sampler.step(denoise, schedule, state, t, t_next, step_keys, hp)
    if after_step is not None:
      state = state._replace(x=after_step(state.x, t_next, step_keys))
    return state, n

  def up(state, t, t_next, step_keys):
    return sampler.init(jump(state.x, t, t_next, step_keys), steps), jnp.int32(0)

  def body(carry, inputs):
    state, nfe = carry
    n, k_from, k_to = inputs
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, n))(keys)
    args = (state, ts[k_from], ts[k_to], step_keys)
    if has_jumps:
      state, c = jax.lax.cond(k_to < k_from, lambda a: up(*a), lambda a: down(*a), args)
    else:
      state, c = down(*args)
    return (state, nfe + c), None

  carry = (sampler.init(jnp.asarray(x_init, jnp.float32), steps), jnp.int32(0))
  xs = (jnp.arange(walk.shape[0], dtype=jnp.int32), jnp.asarray(walk[:, 0]), jnp.asarray(walk[:, 1]))
  (state, nfe), _ = jax.lax.scan(body, carry, xs)
  x = state.x
  if ((final_denoise is None or final_denoise) and not grids.reaches_zero_noise(schedule)
      and not sampler.lands_on_x0):
    x = denoise(x, ts[-1]).x0
    nfe = nfe + 1
  return SampleOutput(x, nfe)


def make_sample_fn(model_fn, schedule: Schedule, parametrization: str, sampler_name: str, steps: int,
                   *, learned_variance: bool = False, final_denoise: Optional[bool] = None,
                   **sampler_options):
  """A jitted sampler ``fn(params, x_init_or_shape, ts, key, cond=None, *, indices=None, **hparams)``.

  ``x_init_or_shape`` is either the starting samples ``[batch, ...]`` or a shape tuple, in which case
  ``initial_noise(key, indices, shape[1:], schedule)`` is drawn. ``ts`` must have ``steps + 1`` entries;
  its values, the key, ``cond``, ``indices`` and ``hparams`` are traced (no recompilation when they
  change). ``sampler_name`` is one of ``SAMPLER_NAMES``; ``sampler_options`` are its static options
  (``get_sampler``; e.g. ``rtol`` for ``"ode"``, the adaptive probability-flow ODE solver).
  Returns ``SampleOutput(x, nfe)``.
  """
  check_parametrization(parametrization)
  steps = _checks.positive_int(steps, "steps")
  sampler = get_sampler(sampler_name, **sampler_options)
  check_sampler_schedule(sampler, schedule)
  if sampler.needs_var_frac and not learned_variance:
    raise ValueError(f"sampler {sampler_name!r} with variance='learned' needs a model that predicts "
                     "the variance; pass learned_variance=True")

  @jax.jit
  def run(params, x_init, ts, key, cond, indices, hp):
    denoise = make_denoiser(model_fn, params, schedule, parametrization, cond, learned_variance)
    return sample(sampler, denoise, schedule, x_init, ts, key, indices=indices,
                  final_denoise=final_denoise, **hp)

  def fn(params, x_init_or_shape, ts, key, cond=None, *, indices=None, **hparams) -> SampleOutput:
    grids.check_grid(ts)
    _checks.check_key(key)
    if np.shape(ts)[0] != steps + 1:
      raise ValueError(f"ts has {np.shape(ts)[0]} entries but this sample fn was built for steps={steps}"
                       f" (needs {steps + 1}); rebuild with steps={np.shape(ts)[0] - 1}")
    hp = resolve_hparams(sampler, hparams)
    if isinstance(x_init_or_shape, (tuple, list)):
      shape = tuple(x_init_or_shape)
      if len(shape) < 1 or any(not isinstance(d, (int, np.integer)) or d < 1 for d in shape):
        raise ValueError(f"shape must be a tuple of positive ints (batch, ...), got {shape}")
      idx = jnp.arange(shape[0], dtype=jnp.int32) if indices is None else check_indices(
          indices, shape[0])
      x_init = initial_noise(key, idx, shape[1:], schedule)
    else:
      x_init = x_init_or_shape
      _check_x(x_init)
      idx = (jnp.arange(np.shape(x_init)[0], dtype=jnp.int32) if indices is None
             else check_indices(indices, np.shape(x_init)[0]))
    return run(params, jnp.asarray(x_init, jnp.float32), jnp.asarray(ts, jnp.float32), key, cond, idx,
               hp)

  return fn
