"""Editing with the stepping samplers: SDEdit (image-to-image), inpainting by replacement, RePaint.

Notation as in ``jdiff.samplers``: ``x_t = alpha_t x0 + sigma_t eps``; ``x_known`` is the input, ``mask``
is 1 where the input is known (kept) and 0 where it is generated (values in between blend).

* **SDEdit** (Meng et al. 2022, Alg. 1): start from the input noised to the strength ``s = t0``,
  ``x_{t0} = alpha_{t0} x_known + sigma_{t0} eps`` (a draw of ``q(x_{t0} | x_known)``, eq. 2 of Ho et al.
  2020's forward process), and run the reverse process on a grid from ``t0`` down to 0. ``s = 1`` forgets
  the input (almost: ``alpha_1`` is 6e-3 for the linear schedule), small ``s`` keeps it.
* **Inpainting by replacement** (Song et al. 2021b, App. I.2; Lugmayr et al. 2022, eq. 8): after every
  step to ``t_s`` the known region is replaced by a fresh draw of ``q(x_s | x_known) = N(alpha_s
  x_known, sigma_s^2 I)``: ``x_s <- m (alpha_s x_known + sigma_s z) + (1 - m) x_s``. The generated region
  only sees the known one through the denoiser, so it is not an exact sample of ``p(x_unknown |
  x_known)``; tests/test_editing.py measures how far on a Gaussian mixture.
* **RePaint resampling** (Lugmayr et al. 2022, Alg. 1 and Sec. 4.3): after reaching a grid level that is
  a multiple of ``jump_length`` the sample is diffused forward ``jump_length`` levels with
  ``q(x_u | x_s) = N(alpha_{u|s} x_s, sigma_{u|s}^2 I)``, ``alpha_{u|s} = alpha_u / alpha_s``,
  ``sigma_{u|s}^2 = sigma_u^2 - alpha_{u|s}^2 sigma_s^2`` (Kingma et al. 2021, eq. 22), and denoised
  again, ``resample - 1`` times, which lets the two regions harmonise. A multistep sampler (DPM-Solver++)
  restarts its history after each jump.

All three run through the one sampling driver (``jdiff.sampling.sample``): inpainting is its
``after_step`` hook, RePaint its ``walk`` with jumps back up the grid. Randomness follows it: the SDEdit
noise of example ``i`` is ``fold_in(key, i)`` (the ``eps`` of ``initial_noise``); the ``n``-th transition
uses the per-step keys ``fold_in(fold_in(key, i), n)`` and the known-region and jump noise are derived
from them with their own salts, so an example never depends on its batch.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import _checks
from jdiff import grids
from jdiff import sampling
from jdiff import samplers as samplers_lib
from jdiff.keys import check_indices, normal_like, per_example_keys
from jdiff.samplers import SampleOutput
from jdiff.schedules import Schedule

# Salts for the noise this module draws from a step's keys (the samplers use salts 0, 1, 2, ...).
_KNOWN_SALT = 0x5EED0001
_JUMP_SALT = 0x5EED0002


def check_strength(strength) -> float:
  """SDEdit strength ``s`` in (0, 1]: the time the input is noised to."""
  s = float(strength)
  if not 0.0 < s <= 1.0:
    raise ValueError(f"strength must be in (0, 1] (the time the input is noised to; 1 = start from "
                     f"noise), got {strength!r}")
  return s


def check_mask(mask, x_known, name: str = "mask"):
  """``mask`` must broadcast to ``x_known``'s shape without changing it, with values in [0, 1]."""
  xs, ms = np.shape(x_known), np.shape(mask)
  try:
    out = np.broadcast_shapes(ms, xs)
  except ValueError:
    out = None
  if out != tuple(xs) or len(ms) > len(xs):
    raise ValueError(f"{name} shape {ms} does not match the input of shape {xs}; give a mask of the "
                     f"input's shape (size-1 axes broadcast, e.g. {xs[:-1] + (1,)})")
  if _checks.is_concrete(mask):
    m = np.asarray(mask, np.float64)
    if m.size and (not np.all(np.isfinite(m)) or m.min() < 0.0 or m.max() > 1.0):
      raise ValueError(f"{name} values must lie in [0, 1] (1 = known, keep; 0 = generate), got "
                       f"[{np.nanmin(m):.4g}, {np.nanmax(m):.4g}]")


def repaint_transitions(steps: int, resample: int = 1, jump_length: int = 1) -> np.ndarray:
  """The RePaint schedule over grid indices (Lugmayr et al. 2022, Sec. 4.3), as rows ``(from, to)``.

  Grid index ``k`` runs from 0 (``t_max``) to ``steps`` (``t = 0``); level ``L = steps - k``. The walk
  descends one index at a time; on reaching a level ``L`` that is a multiple of ``jump_length`` with
  ``L + jump_length <= steps`` it jumps back up ``jump_length`` levels (a row with ``to < from``) and
  descends again, ``resample - 1`` times per such level. ``resample = 1``: the plain grid.
  """
  steps = _checks.positive_int(steps, "steps")
  resample = _checks.positive_int(resample, "resample")
  jump_length = _checks.positive_int(jump_length, "jump_length")
  if resample > 1 and jump_length > steps:
    raise ValueError(f"jump_length={jump_length} is longer than the grid ({steps} steps); use "
                     f"jump_length <= steps")
  left = {lvl: resample - 1 for lvl in range(0, steps - jump_length + 1, jump_length)}
  rows, k = [], 0
  while True:
    lvl = steps - k
    if left.get(lvl, 0) > 0:
      left[lvl] -= 1
      rows.append((k, k - jump_length))
      k -= jump_length
      continue
    if k == steps:
      break
    rows.append((k, k + 1))
    k += 1
  return np.asarray(rows, np.int32).reshape(-1, 2)


def noised_input(key, indices, x_known, schedule: Schedule, t):
  """SDEdit's start ``alpha_t x_known + sigma_t eps`` with ``eps`` of example ``i`` from
  ``fold_in(key, i)`` (the same ``eps`` as ``sampling.initial_noise``)."""
  x_known = jnp.asarray(x_known, jnp.float32)
  keys = per_example_keys(key, indices)
  eps = jax.vmap(lambda k: jax.random.normal(k, x_known.shape[1:], jnp.float32))(keys)
  c = samplers_lib.coefs(schedule, t)
  return c.alpha * x_known + c.sigma * eps


def _blend(mask, known, x):
  return mask * known + (1.0 - mask) * x


def edit(sampler, denoise, schedule: Schedule, x_known, ts, key, *, mask=None, indices=None,
         resample: int = 1, jump_length: int = 1, final_denoise: Optional[bool] = None,
         **hparams) -> SampleOutput:
  """SDEdit / inpainting / RePaint from ``x_known`` over the grid ``ts`` (its first time is the strength).

  Args:
    sampler: a ``Sampler`` or a name for ``sampling.get_sampler``.
    denoise: ``denoise(x, t) -> Prediction``.
    schedule: the noise schedule.
    x_known: ``[batch, ...]`` inputs (the data space of the model, e.g. images in [-1, 1]).
    ts: descending grid ending at 0 (``jdiff.grids``, e.g. ``get_grid(..., t_max=strength)``); traced.
    key: PRNG key (see the module docstring for how it is used).
    mask: ``None`` (SDEdit: no region is kept) or an array broadcasting to ``x_known``, 1 = known.
    indices: global example indices ``[batch]`` (default ``arange(batch)``).
    resample, jump_length: RePaint's resampling count (1 = none) and jump length (static: they fix the
      length of the loop).
    final_denoise: as in ``sampling.sample`` (VE/EDM only).
    **hparams: the sampler's traced hyperparameters.
  Returns ``SampleOutput(x, nfe)``; with a mask the known region of ``x`` equals ``x_known`` blended by
  the mask (exactly ``x_known`` where ``mask = 1``).
  """
  _checks.check_float(x_known, "x_known")
  if np.ndim(x_known) < 1:
    raise ValueError(f"x_known must have a leading batch axis, got shape {np.shape(x_known)}")
  _checks.check_finite(x_known, "x_known")
  grids.check_grid(ts)
  batch = np.shape(x_known)[0]
  indices = jnp.arange(batch, dtype=jnp.int32) if indices is None else check_indices(indices, batch)
  walk = repaint_transitions(np.shape(ts)[0] - 1, resample, jump_length)
  if mask is None and resample > 1:
    raise ValueError("RePaint resampling (resample > 1) needs a mask of the known region")
  if mask is not None:
    check_mask(mask, x_known)
  ts = jnp.asarray(ts, jnp.float32)
  x_known = jnp.asarray(x_known, jnp.float32)
  x_init = noised_input(key, indices, x_known, schedule, ts[0])
  if mask is None:
    return sampling.sample(sampler, denoise, schedule, x_init, ts, key, indices=indices,
                           final_denoise=final_denoise, **hparams)
  mask = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), x_known.shape)

  def replace_known(x, t_next, step_keys):
    c = samplers_lib.coefs(schedule, t_next)
    return _blend(mask, c.alpha * x_known + c.sigma * normal_like(step_keys, x, _KNOWN_SALT), x)

  def jump(x, t_from, t_to, step_keys):
    cs, cu = samplers_lib.coefs(schedule, t_from), samplers_lib.coefs(schedule, t_to)
    a = cu.alpha / cs.alpha
    s = jnp.sqrt(jnp.maximum(cu.sigma ** 2 - (a * cs.sigma) ** 2, 0.0))
    return a * x + s * normal_like(step_keys, x, _JUMP_SALT)

  out = sampling.sample(sampler, denoise, schedule, x_init, ts, key, indices=indices,
                        final_denoise=final_denoise, walk=walk, after_step=replace_known, jump=jump,
                        **hparams)
  return SampleOutput(_blend(mask, x_known, out.x), out.nfe)
