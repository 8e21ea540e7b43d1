"""The sampling driver: run any ``Sampler`` over a time grid in one ``lax.scan``.

* ``initial_noise(key, indices, shape, schedule)``: the prior draw ``x_1 = prior_std * eps`` with ``eps``
  of sample ``i`` from ``fold_in(key, i)`` (``i`` its global index).
* ``sample(sampler, denoise, schedule, x_init, ts, key, **hparams)``: the whole grid; per-step noise of
  sample ``i`` at step ``j`` comes from ``fold_in(fold_in(key, i), j)``, so sample ``i`` is the same
  whatever batch it is in. Hyperparameters are traced values: jit it once, change them freely.
* ``make_sample_fn(model_fn, schedule, parametrization, sampler_name, steps)``: a jitted convenience.

Sampling returns ``SampleOutput(x, nfe)`` with ``nfe`` the number of denoiser calls actually spent.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import _checks
from jdiff import grids
from jdiff import ode
from jdiff import samplers as samplers_lib
from jdiff.parametrization import check_parametrization, make_denoiser
from jdiff.samplers import SampleOutput
from jdiff.schedules import Schedule


def _check_indices(indices, batch: Optional[int] = None, name: str = "indices"):
  if np.ndim(indices) != 1:
    raise ValueError(f"{name} must be a 1-D array of global sample indices, got shape "
                     f"{np.shape(indices)}")
  dt = indices.dtype if hasattr(indices, "dtype") else np.asarray(indices).dtype
  if not np.issubdtype(np.dtype(dt), np.integer):
    raise ValueError(f"{name} must be integers (global sample indices), got dtype {dt}")
  if batch is not None and np.shape(indices)[0] != batch:
    raise ValueError(f"{name} has {np.shape(indices)[0]} entries but x has batch size {batch}; pass one "
                     "global index per example")
  if _checks.is_concrete(indices) and np.size(indices) and np.min(np.asarray(indices)) < 0:
    raise ValueError(f"{name} must be >= 0, got min {np.min(np.asarray(indices))}")
  return jnp.asarray(indices, jnp.int32)


def per_example_keys(key, indices):
  """``fold_in(key, i)`` for every global index ``i`` (one key per example)."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(indices, jnp.int32))


def initial_noise(key, indices, shape_per_sample, schedule: Schedule):
  """Prior samples ``x_1 = prior_std * eps``, ``eps`` of example ``i`` drawn from ``fold_in(key, i)``.

  ``prior_std = sqrt(alpha(1)^2 + sigma(1)^2)`` (``Schedule.prior_std``; 1 for VP, about ``sigma_max``
  for VE) matches the marginal of unit-variance data at ``t = 1``.
  """
  indices = _check_indices(indices)
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
  if sampler.ve_only and schedule.variance_preserving:
    raise ValueError(f"sampler {sampler.name!r} is for variance-exploding schedules (alpha = 1: 've', "
                     f"'edm'), got {type(schedule).__name__}; use ddpm/ddim/euler/heun/dpmpp_* on VP")


def sample(sampler, denoise, schedule: Schedule, x_init, ts, key, *, indices=None,
           final_denoise: Optional[bool] = None, **hparams) -> SampleOutput:
  """Run ``sampler`` from ``x_init`` at ``ts[0]`` down the grid ``ts`` (ending at 0) in one ``lax.scan``.

  Args:
    sampler: a ``Sampler`` or a name for ``get_sampler``.
    denoise: ``denoise(x, t) -> Prediction``.
    schedule: the noise schedule.
    x_init: ``[batch, ...]`` samples at ``ts[0]`` (e.g. ``initial_noise``).
    ts: descending grid of ``steps + 1`` times ending at 0 (``jdiff.grids``); traced.
    key: PRNG key; per-step noise of example ``i`` at step ``j``: ``fold_in(fold_in(key, i), j)``.
    indices: global example indices ``[batch]`` (default ``arange(batch)``).
    final_denoise: for schedules with ``sigma(0) > 0`` (VE, EDM), finish with ``x0_hat(x, 0)`` (one
      more NFE), as score_sde and k-diffusion do; default True. No effect when ``sigma(0) = 0`` (VP),
      where the last step already lands on ``x0_hat``.
    **hparams: the sampler's traced hyperparameters (``sampler.hparams`` lists them and the defaults).
  """
  if isinstance(sampler, str):
    sampler = samplers_lib.get_sampler(sampler)
  _check_x(x_init)
  grids.check_grid(ts)
  _checks.check_key(key)
  check_sampler_schedule(sampler, schedule)
  batch = np.shape(x_init)[0]
  indices = jnp.arange(batch, dtype=jnp.int32) if indices is None else _check_indices(indices, batch)
  hp = resolve_hparams(sampler, hparams)
  ts = jnp.asarray(ts, jnp.float32)
  if sampler.needs_var_frac:
    probe = jax.eval_shape(denoise, x_init, ts[0])
    if probe.var_frac is None:
      raise ValueError(f"sampler {sampler.name!r} with learned variance needs a denoiser that predicts "
                       "var_frac; build it with make_denoiser(..., learned_variance=True)")
  steps = ts.shape[0] - 1
  hp["num_steps"] = jnp.float32(steps)
  keys = per_example_keys(key, indices)

  def body(carry, inputs):
    state, nfe = carry
    i, t, t_next = inputs
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)
    state, n = sampler.step(denoise, schedule, state, i, t, t_next, step_keys, hp)
    return (state, nfe + n), None

  carry = (sampler.init(jnp.asarray(x_init, jnp.float32)), jnp.int32(0))
  (state, nfe), _ = jax.lax.scan(body, carry, (jnp.arange(steps), ts[:-1], ts[1:]))
  x = state.x
  if (final_denoise is None or final_denoise) and not grids.reaches_zero_noise(schedule):
    x = denoise(x, ts[-1]).x0
    nfe = nfe + 1
  return SampleOutput(x, nfe)


SAMPLER_NAMES = tuple(sorted(samplers_lib.SAMPLERS)) + ("ode",)


def make_sample_fn(model_fn, schedule: Schedule, parametrization: str, sampler_name: str, steps: int,
                   *, learned_variance: bool = False, final_denoise: Optional[bool] = None,
                   ode_options: Optional[dict] = None, **sampler_options):
  """A jitted sampler ``fn(params, x_init_or_shape, ts, key, cond=None, *, indices=None, **hparams)``.

  ``x_init_or_shape`` is either the starting samples ``[batch, ...]`` or a shape tuple, in which case
  ``initial_noise(key, indices, shape[1:], schedule)`` is drawn. ``ts`` must have ``steps + 1`` entries;
  its values, the key, ``cond``, ``indices`` and ``hparams`` are traced (no recompilation when they
  change). ``sampler_name`` is one of ``SAMPLER_NAMES``; ``"ode"`` solves the probability-flow ODE with
  diffrax (``ode_options``: ``solver``, ``rtol``, ``atol``, ``max_steps``), using only the grid's ends.
  Returns ``SampleOutput(x, nfe)``.
  """
  _checks.choice("sampler", sampler_name, SAMPLER_NAMES)
  check_parametrization(parametrization)
  steps = _checks.positive_int(steps, "steps")
  if sampler_name == "ode":
    if sampler_options:
      raise ValueError(f"sampler 'ode' takes no options {sorted(sampler_options)}; pass ode_options")
    opts = dict(ode_options or {})
    ode.check_options(**opts)
    sampler = samplers_lib.Sampler("ode", None, None, {}, deterministic=True)
  else:
    if ode_options:
      raise ValueError("ode_options only apply to sampler_name='ode'")
    sampler = samplers_lib.get_sampler(sampler_name, **sampler_options)
    check_sampler_schedule(sampler, schedule)
    if sampler.needs_var_frac and not learned_variance:
      raise ValueError(f"sampler {sampler_name!r} with variance='learned' needs a model that predicts "
                       "the variance; pass learned_variance=True")

  @jax.jit
  def run(params, x_init, ts, key, cond, indices, hp):
    denoise = make_denoiser(model_fn, params, schedule, parametrization, cond, learned_variance)
    if sampler_name == "ode":
      return ode.sample_ode(denoise, schedule, x_init, ts, final_denoise=final_denoise, **opts)
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
      idx = jnp.arange(shape[0], dtype=jnp.int32) if indices is None else _check_indices(
          indices, shape[0])
      x_init = initial_noise(key, idx, shape[1:], schedule)
    else:
      x_init = x_init_or_shape
      _check_x(x_init)
      idx = (jnp.arange(np.shape(x_init)[0], dtype=jnp.int32) if indices is None
             else _check_indices(indices, np.shape(x_init)[0]))
    return run(params, jnp.asarray(x_init, jnp.float32), jnp.asarray(ts, jnp.float32), key, cond, idx,
               hp)

  return fn
