"""Time grids optimized through the sampler (Watson et al. 2021, "Learning to efficiently sample from
diffusion probabilistic models"; Shaul et al. 2023, "Bespoke solvers for generative flow models").

The driver (``jdiff.sampling.sample``) is one differentiable ``lax.scan`` that takes the grid ``ts`` as an
argument, so the K-step result of a deterministic sampler is a differentiable function of the grid.
``fit`` minimizes, by Adam on the grid's parameters, the mean distance between that result and the
probability-flow ODE solution from the same starting noise (``reference_fn``: ``jdiff.ode.sample_ode``
at tight tolerance, computed once), and measures the same distance on held-out noises.

* **Parametrization** (``grid_from_logits``): ``K`` logits ``theta``; fractions ``f = e + (1 - K e)
  softmax(theta)`` (each at least ``e = floor_fraction(K)``, a few float32 ulps of 1 or more) are the
  successive decrements of ``t`` from ``t_max`` down to ``t_lo``; the first ``K - 1`` partial sums place
  the interior times, and the grid ends at exactly 0. ``t_lo`` is ``t_floor`` (default ``1e-3``, where the
  built-in grids stop) for variance-preserving schedules (``sigma(0) = 0``: the last step lands on
  ``x0_hat`` at the last positive time, which is learned and stays above ``t_floor``) and 0 for VE/EDM.
  Every value of ``theta`` gives a strictly descending float32 grid in ``(0, t_max]`` ending at 0
  (``jdiff.grids.check_grid`` passes); ``logits_from_grid`` inverts it (up to the floor).
* **Distance**: the per-sample RMS over the data dimensions, averaged over samples (``rms_distance``).
  The reference is the ODE solution from ``t_max`` to ``t_floor`` followed by ``x0_hat`` there (VP), or
  to 0 followed by the final denoise (VE/EDM): one fixed target for every grid, built-in or fitted.
* **Recompilation**: the grid is an argument of every jitted function here; one fit compiles its step
  once and its evaluation once per batch shape, whatever the grid values.
* **Grid files**: ``make_record`` / ``read_grid_file`` / ``check_grid_file``: JSON with the times, the
  sampler, steps, the schedule (its ``repr``), the SHA-256 of the parameters it was fit for
  (``params_hash``) and the distances. ``jdiff.generation`` accepts such a file wherever a grid name goes
  (``sample.py --grid=FILE``) and refuses one fit for another model or schedule.

Pure JAX and NumPy (the Adam update is written out here): no Optax, as everywhere in the core.
Only deterministic grid samplers whose step is differentiable in ``t`` can be fit (``check_fit_sampler``
and a finite first gradient): DPM-Solver++ 2M/3M and UniPC; DDIM and Euler/Heun currently give NaN
gradients in ``t`` (``sqrt(0)`` of their unused noise terms at ``eta = 0`` / no churn).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import _checks
from jdiff import grids
from jdiff import ode
from jdiff import sampling
from jdiff.schedules import Schedule

FORMAT = "jdiff-grid"
VERSION = 1
MAX_STEPS = 256
DEFAULT_T_FLOOR = grids.DEFAULT_VP_T_MIN
DEFAULT_SAMPLER = "dpmpp_2m"

# ----------------------------------------------------------------------------------------------------
# Parametrization
# ----------------------------------------------------------------------------------------------------


def floor_fraction(steps: int) -> float:
  """The least fraction of ``t_max - t_lo`` between two neighbouring grid times: ``max(1e-5, 4e-7 K)``,
  far above the float32 rounding of the partial sums (about ``K`` ulps of 1)."""
  return max(1e-5, 4e-7 * int(steps))


def t_low(schedule: Schedule, t_floor: Optional[float] = None) -> float:
  """Where the decrements end: ``t_floor`` (default ``1e-3``) when ``sigma(0) = 0``, else 0."""
  if not grids.reaches_zero_noise(schedule):
    return 0.0
  t_floor = DEFAULT_T_FLOOR if t_floor is None else float(t_floor)
  if not 0.0 < t_floor < 1.0:
    raise ValueError(f"t_floor must lie in (0, 1), got {t_floor}")
  return t_floor


def _check_steps(steps) -> int:
  steps = _checks.positive_int(steps, "steps")
  if steps > MAX_STEPS:
    raise ValueError(f"steps={steps}: grids are fit for at most {MAX_STEPS} steps (the point of a fitted "
                     f"grid is few steps)")
  return steps


def grid_from_logits(logits, t_max: float = 1.0, t_lo: float = DEFAULT_T_FLOOR) -> jnp.ndarray:
  """The ``K``-step grid of ``K`` logits (module docstring): ``[t_max, t_1, ..., t_{K-1}, 0]`` with
  ``t_max > t_1 > ... > t_{K-1} > t_lo >= 0``. Differentiable; ``t_max`` and the final 0 are constants."""
  logits = jnp.asarray(logits, jnp.float32)
  k = logits.shape[0]
  e = floor_fraction(k)
  frac = e + (1.0 - k * e) * jax.nn.softmax(logits)
  inner = t_max - (t_max - t_lo) * jnp.cumsum(frac)[:k - 1]
  return jnp.concatenate([jnp.full((1,), t_max, jnp.float32), inner, jnp.zeros((1,), jnp.float32)])


def logits_from_grid(ts, t_lo: float = DEFAULT_T_FLOOR) -> np.ndarray:
  """Logits whose ``grid_from_logits(., ts[0], t_lo)`` is ``ts`` (a decrement below the floor fraction,
  e.g. a built-in VP grid's last positive time at exactly ``t_lo``, comes back at the floor)."""
  ts = np.asarray(ts, np.float64)
  k = ts.shape[0] - 1
  t_max = ts[0]
  if not t_max > t_lo:
    raise ValueError(f"the grid starts at {t_max:.4g}, not above t_lo={t_lo:.4g}")
  pts = np.concatenate([ts[:k], [t_lo]])
  frac = -np.diff(pts) / (t_max - t_lo)
  e = floor_fraction(k)
  soft = np.maximum(frac - e, 1e-3 * e) / (1.0 - k * e)
  logits = np.log(soft)
  return (logits - logits.mean()).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# The sampler, the reference, the distance
# ----------------------------------------------------------------------------------------------------


def check_fit_sampler(name: str):
  """The ``Sampler`` ``name`` if a grid can be fit through it: a deterministic grid sampler (not
  ancestral, not the adaptive ``ode``)."""
  sampler = sampling.get_sampler(name)
  if not sampler.deterministic or sampler.adaptive or sampler.needs_var_frac:
    raise ValueError(f"sampler {name!r} cannot have its grid fit: it is "
                     f"{'adaptive' if sampler.adaptive else 'stochastic'}; fit with a deterministic "
                     f"grid sampler such as dpmpp_2m, dpmpp_3m or unipc")
  return sampler


def sample_fn(make_denoise: Callable, schedule: Schedule, sampler: str = DEFAULT_SAMPLER) -> Callable:
  """``fn(params, x_init, ts) -> x``: the sampler's result from ``x_init`` at ``ts[0]`` down the grid
  ``ts`` (default hyperparameters), with ``make_denoise(params) -> denoise(x, t)``. Pure; jit it."""
  s = check_fit_sampler(sampler)
  sampling.check_sampler_schedule(s, schedule)

  def fn(params, x_init, ts):
    return sampling.sample(s, make_denoise(params), schedule, x_init, ts, jax.random.PRNGKey(0)).x

  return fn


def reference_fn(make_denoise: Callable, schedule: Schedule, *, t_floor: Optional[float] = None,
                 solver: str = "tsit5", rtol: float = 1e-5, atol: float = 1e-5,
                 max_steps: int = 4096) -> Callable:
  """``fn(params, x_init, t_max) -> (x, nfe)``: the probability-flow ODE solution (adaptive diffrax
  solve, ``jdiff.ode.sample_ode``) from ``t_max`` to ``t_floor`` then ``x0_hat`` there (VP), or to 0 then
  the final denoise (VE/EDM), and the denoiser calls it took. The whole batch is one ODE system."""
  ode.check_options(solver, rtol, atol, max_steps)
  lo = t_low(schedule, t_floor)

  def fn(params, x_init, t_max):
    t_max = jnp.asarray(t_max, jnp.float32)
    ends = [t_max, jnp.float32(lo), jnp.float32(0.0)] if lo > 0 else [t_max, jnp.float32(0.0)]
    out = ode.sample_ode(make_denoise(params), schedule, x_init, jnp.stack(ends), solver=solver,
                         rtol=rtol, atol=atol, max_steps=max_steps)
    return out.x, out.nfe

  return fn


def rms_distance(x, ref) -> jnp.ndarray:
  """Per-sample RMS distance ``[batch]`` over all non-batch axes."""
  d = jnp.asarray(x, jnp.float32) - jnp.asarray(ref, jnp.float32)
  d = d.reshape(d.shape[0], -1)
  return jnp.sqrt(jnp.mean(d * d, axis=1) + 1e-20)


def _batches(n: int, batch_size: int):
  for lo in range(0, n, batch_size):
    idx = np.arange(lo, lo + batch_size) % n  # the last batch is padded by wrapping (discarded)
    yield idx, min(batch_size, n - lo)


def map_batches(fn: Callable, params, x, batch_size: int, *args) -> np.ndarray:
  """``fn(params, x[batch], *args)`` over fixed-size batches of ``x`` (one compiled shape), as one
  host array."""
  x = np.asarray(x, np.float32)
  outs = []
  for idx, keep in _batches(x.shape[0], batch_size):
    outs.append(np.asarray(fn(params, x[idx], *args))[:keep])
  return np.concatenate(outs)


def distances(run_jit: Callable, params, x, ref, ts, batch_size: int) -> np.ndarray:
  """Per-sample RMS distance ``[N]`` between ``run_jit(params, x, ts)`` and ``ref``."""
  out = map_batches(run_jit, params, x, batch_size, jnp.asarray(ts, jnp.float32))
  return np.asarray(rms_distance(out, ref))


# ----------------------------------------------------------------------------------------------------
# Adam, written out (the core imports no Optax)
# ----------------------------------------------------------------------------------------------------


class AdamState(NamedTuple):
  m: jnp.ndarray
  v: jnp.ndarray
  count: jnp.ndarray


def adam_init(p) -> AdamState:
  return AdamState(jnp.zeros_like(p), jnp.zeros_like(p), jnp.int32(0))


def adam_update(p, g, state: AdamState, lr, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
  """One Adam step (Kingma & Ba 2015, Alg. 1); returns ``(p, state)``."""
  count = state.count + 1
  m = b1 * state.m + (1.0 - b1) * g
  v = b2 * state.v + (1.0 - b2) * g * g
  c = count.astype(jnp.float32)
  m_hat = m / (1.0 - b1 ** c)
  v_hat = v / (1.0 - b2 ** c)
  return p - lr * m_hat / (jnp.sqrt(v_hat) + eps), AdamState(m, v, count)


# ----------------------------------------------------------------------------------------------------
# The fit
# ----------------------------------------------------------------------------------------------------


class FitResult(NamedTuple):
  ts: np.ndarray  # the fitted grid
  logits: np.ndarray
  init_ts: np.ndarray  # the grid the fit started from (grid_from_logits of the initial logits)
  train_distance: float  # mean per-sample RMS distance to the reference, training noises, fitted grid
  init_train_distance: float
  heldout_distance: Optional[float]  # the same on the held-out noises
  init_heldout_distance: Optional[float]
  history: list  # [(iteration, minibatch distance)] before each update
  iters: int
  skipped: int  # updates skipped for a non-finite loss or gradient
  seconds: float


def fit(run: Callable, params, x_train, ref_train, init_ts, *, t_lo: float, x_heldout=None,
        ref_heldout=None, iters: int = 200, lr: float = 0.05, batch_size: Optional[int] = None,
        seed: int = 0, log: Optional[Callable[[str], None]] = None, log_every: int = 25,
        run_jit: Optional[Callable] = None) -> FitResult:
  """Fit the grid of ``run(params, x_init, ts) -> x`` (e.g. ``sample_fn``) to the references.

  Adam on the logits of ``grid_from_logits`` from ``init_ts``, learning rate ``lr`` decayed by a cosine
  to ``lr / 10``, minibatches of ``batch_size`` training noises (default all of them: full batch). With
  a full batch the best iterate is kept, otherwise the last; in both cases the starting grid is returned
  if the fit did not lower the training distance. A non-finite loss or gradient skips the update; a
  non-finite first gradient raises (the sampler is not differentiable in ``t``). ``run_jit``: an
  already jitted ``run`` to evaluate with (shares its compilation), default ``jax.jit(run)``.
  """
  t0 = time.perf_counter()
  grids.check_grid(init_ts, "init_ts")
  init_ts = np.asarray(init_ts, np.float32)
  _check_steps(init_ts.shape[0] - 1)
  x_train = np.asarray(x_train, np.float32)
  ref_train = np.asarray(ref_train, np.float32)
  n = x_train.shape[0]
  if ref_train.shape != x_train.shape:
    raise ValueError(f"ref_train has shape {ref_train.shape} but x_train {x_train.shape}")
  if (x_heldout is None) != (ref_heldout is None):
    raise ValueError("pass both x_heldout and ref_heldout, or neither")
  _checks.int_at_least(iters, "iters", 0)
  if not (math.isfinite(lr) and lr > 0):
    raise ValueError(f"lr must be a positive number, got {lr!r}")
  batch_size = n if batch_size is None else min(_checks.positive_int(batch_size, "batch_size"), n)
  full = batch_size == n
  t_max = float(init_ts[0])
  log = log or (lambda msg: None)

  run_jit = run_jit or jax.jit(run)

  def loss_fn(logits, params, xb, rb):
    return jnp.mean(rms_distance(run(params, xb, grid_from_logits(logits, t_max, t_lo)), rb))

  @jax.jit
  def step(logits, opt, params, xb, rb, lr_now):
    loss, g = jax.value_and_grad(loss_fn)(logits, params, xb, rb)
    ok = jnp.isfinite(loss) & jnp.all(jnp.isfinite(g))
    new, new_opt = adam_update(logits, jnp.where(ok, g, 0.0), opt, lr_now)
    new = jnp.where(ok, new, logits)
    new_opt = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new_opt, opt)
    return new, new_opt, loss, ok

  def mean_distance(logits_or_ts, x, ref, is_ts=False):
    ts = logits_or_ts if is_ts else grid_from_logits(logits_or_ts, t_max, t_lo)
    return float(np.mean(distances(run_jit, params, x, ref, ts, batch_size)))

  logits = jnp.asarray(logits_from_grid(init_ts, t_lo))
  start_ts = np.asarray(grid_from_logits(logits, t_max, t_lo))
  grids.check_grid(start_ts)
  init_train = mean_distance(start_ts, x_train, ref_train, True)
  opt = adam_init(logits)
  rng = np.random.default_rng(seed)
  best, best_loss = logits, init_train
  history, skipped = [], 0
  for it in range(iters):
    idx = np.arange(n) if full else rng.choice(n, batch_size, replace=False)
    lr_now = lr * (0.1 + 0.45 * (1.0 + math.cos(math.pi * it / max(iters, 1))))
    new, opt, loss, ok = step(logits, opt, params, x_train[idx], ref_train[idx], np.float32(lr_now))
    loss, ok = float(loss), bool(ok)
    if it == 0 and not ok:
      raise ValueError("the distance or its gradient with respect to the grid is not finite at the "
                       "starting grid: the sampler's step is not differentiable in t there (DDIM and "
                       "Euler/Heun take sqrt(0) in their unused noise terms); fit with dpmpp_2m, "
                       "dpmpp_3m or unipc")
    skipped += not ok
    history.append((it, loss))
    if full and ok and loss < best_loss:
      best, best_loss = logits, loss
    if it % log_every == 0 or it == iters - 1:
      log(f"iter {it:4d}  distance {loss:.5g}  lr {lr_now:.3g}")
    logits = new
  final_train = mean_distance(logits, x_train, ref_train)
  if full and best_loss < final_train:
    logits, final_train = best, best_loss
  if final_train >= init_train:  # never return a grid worse (on the training noises) than the start
    logits, final_train = jnp.asarray(logits_from_grid(init_ts, t_lo)), init_train
  ts = np.asarray(grid_from_logits(logits, t_max, t_lo))
  grids.check_grid(ts)
  held = init_held = None
  if x_heldout is not None:
    x_heldout = np.asarray(x_heldout, np.float32)
    ref_heldout = np.asarray(ref_heldout, np.float32)
    held = mean_distance(ts, x_heldout, ref_heldout, True)
    init_held = mean_distance(start_ts, x_heldout, ref_heldout, True)
  return FitResult(ts=ts, logits=np.asarray(logits), init_ts=start_ts, train_distance=final_train,
                   init_train_distance=init_train, heldout_distance=held, init_heldout_distance=init_held,
                   history=history, iters=iters, skipped=skipped, seconds=time.perf_counter() - t0)


class References(NamedTuple):
  """The ODE solutions from the training and held-out noises (``fit_grid`` computes them once; pass
  them back to fit other step counts or samplers from the same noises and model)."""
  train: np.ndarray
  heldout: Optional[np.ndarray]
  info: dict  # solver, tolerances, seconds, NFE per batch


class GridFit(NamedTuple):
  """What ``fit_grid`` returns: the fit, the distances of every built-in grid and the settings."""
  result: FitResult
  builtin: dict  # {grid name: {"train": d, "heldout": d}}
  init: str  # the starting grid's name
  sampler: str
  steps: int
  t_floor: Optional[float]  # VP: the reference's end and the grid's lower bound; None for VE/EDM
  reference: dict  # the ODE solver's settings and seconds
  options: dict  # iters, lr, batch_size, seed, num_train, num_heldout
  references: References


def fit_grid(make_denoise: Callable, params, schedule: Schedule, x_train, x_heldout=None, *,
             steps: int, sampler: str = DEFAULT_SAMPLER, init: str = "best", iters: int = 200,
             lr: float = 0.05, batch_size: Optional[int] = None, seed: int = 0,
             t_floor: Optional[float] = None, rtol: float = 1e-5, atol: float = 1e-5,
             solver: str = "tsit5", max_steps: int = 4096, t_max: float = 1.0,
             references: Optional[References] = None,
             log: Optional[Callable[[str], None]] = None) -> GridFit:
  """Everything from noises to a fitted grid: the ODE references (once), every built-in grid's distance,
  then ``fit`` from ``init`` (a built-in grid name, or ``"best"``: the built-in grid with the lowest
  training distance).

  ``make_denoise(params) -> denoise(x, t)``; ``x_train`` / ``x_heldout``: starting noises at ``t_max``
  (``jdiff.sampling.initial_noise``); ``batch_size``: noises per compiled call and per Adam step
  (default: all training noises in one). ``references``: the ``GridFit.references`` of an earlier call
  with the same model, noises, ``t_max`` and ``t_floor`` (the ODE is then not solved again).
  """
  steps = _check_steps(steps)
  log = log or (lambda msg: None)
  if init != "best":
    _checks.choice("init grid", init, grids.SOLVER_GRIDS)
  lo = t_low(schedule, t_floor)
  run = sample_fn(make_denoise, schedule, sampler)
  ref = reference_fn(make_denoise, schedule, t_floor=t_floor, solver=solver, rtol=rtol, atol=atol,
                     max_steps=max_steps)
  x_train = np.asarray(x_train, np.float32)
  n = x_train.shape[0]
  bs = n if batch_size is None else min(_checks.positive_int(batch_size, "batch_size"), n)
  if references is None:
    t0 = time.perf_counter()
    ref_jit = jax.jit(ref)
    nfes = []

    def ref_x(params, x, t):
      out, nfe = ref_jit(params, x, t)
      nfes.append(int(nfe))
      return out

    ref_train = map_batches(ref_x, params, x_train, bs, np.float32(t_max))
    ref_held = (None if x_heldout is None else
                map_batches(ref_x, params, x_heldout, bs, np.float32(t_max)))
    seconds = time.perf_counter() - t0
    log(f"ODE references of {n} + {0 if x_heldout is None else len(x_heldout)} noises in "
        f"{seconds:.1f} s ({min(nfes)}-{max(nfes)} NFE per batch of {bs})")
    references = References(ref_train, ref_held, {"solver": solver, "rtol": rtol, "atol": atol,
                                                  "seconds": seconds, "nfe_per_batch": nfes,
                                                  "batch_size": bs})
  ref_train, ref_held = references.train, references.heldout
  if ref_train.shape != x_train.shape or (ref_held is None) != (x_heldout is None) or (
      ref_held is not None and ref_held.shape != np.shape(x_heldout)):
    raise ValueError("references do not match the noises (shapes differ); pass the references "
                     "computed from these noises")
  run_jit = jax.jit(run)
  builtin = {}
  for name in grids.SOLVER_GRIDS:
    kwargs = {"t_max": t_max}
    if name != "uniform_t" and lo > 0:
      kwargs["t_min"] = lo
    ts = grids.get_grid(name, schedule, steps, **kwargs)
    row = {"ts": [float(t) for t in np.asarray(ts)],
           "train": float(np.mean(distances(run_jit, params, x_train, ref_train, ts, bs)))}
    if x_heldout is not None:
      row["heldout"] = float(np.mean(distances(run_jit, params, x_heldout, ref_held, ts, bs)))
    builtin[name] = row
    log(f"{name:15s} train {row['train']:.5g}" + (f"  held-out {row['heldout']:.5g}"
                                                   if "heldout" in row else ""))
  if init == "best":
    init = min(builtin, key=lambda k: builtin[k]["train"])
  result = fit(run, params, x_train, ref_train, np.asarray(builtin[init]["ts"], np.float32), t_lo=lo,
               x_heldout=x_heldout, ref_heldout=ref_held, iters=iters, lr=lr, batch_size=bs, seed=seed,
               log=log, run_jit=run_jit)
  log(f"fitted from {init}: train {result.init_train_distance:.5g} -> {result.train_distance:.5g}"
      + (f", held-out {result.init_heldout_distance:.5g} -> {result.heldout_distance:.5g}"
         if x_heldout is not None else "") + f" ({result.seconds:.1f} s)")
  return GridFit(result=result, builtin=builtin, init=init, sampler=sampler, steps=steps,
                 t_floor=lo if lo > 0 else None,
                 reference=references.info,
                 options={"iters": iters, "lr": lr, "batch_size": bs, "seed": seed, "num_train": n,
                          "num_heldout": 0 if x_heldout is None else int(np.shape(x_heldout)[0])},
                 references=references)


# ----------------------------------------------------------------------------------------------------
# Grid files
# ----------------------------------------------------------------------------------------------------


def params_hash(params) -> str:
  """``"sha256:<hex>"`` of a parameter pytree: every leaf's path, dtype, shape and bytes, in path order
  (so it does not depend on how the tree was restored, only on the values)."""
  h = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  for path, leaf in sorted(leaves, key=lambda pl: jax.tree_util.keystr(pl[0])):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}\n".encode())
    h.update(a.tobytes())
  return "sha256:" + h.hexdigest()


def schedule_id(schedule: Schedule) -> str:
  """The schedule as the grid file names it: its dataclass ``repr`` (type and every parameter)."""
  return repr(schedule)


def make_record(g: GridFit, schedule: Schedule, model_hash: str, model: Optional[dict] = None) -> dict:
  """The JSON object of a grid file for a ``fit_grid`` result."""
  r = g.result
  out = {
      "format": FORMAT, "version": VERSION,
      "ts": [float(t) for t in r.ts], "steps": g.steps, "sampler": g.sampler,
      "schedule": schedule_id(schedule), "model_hash": model_hash, "model": model or {},
      "distance": {
          "what": "mean over noises of the per-sample RMS distance to the probability-flow ODE solution "
                  "from the same noise",
          "train": r.train_distance, "heldout": r.heldout_distance,
          "init": {"grid": g.init, "train": r.init_train_distance, "heldout": r.init_heldout_distance},
          "builtin": {k: {kk: vv for kk, vv in v.items() if kk != "ts"} for k, v in g.builtin.items()},
      },
      "fit": dict(g.options, t_floor=g.t_floor, reference=g.reference, skipped=r.skipped,
                  seconds=r.seconds, logits=[float(v) for v in r.logits],
                  history=[[int(i), float(l)] for i, l in r.history[::max(1, len(r.history) // 50)]]),
  }
  return out


class GridFile(NamedTuple):
  path: str
  ts: np.ndarray  # float32 [steps + 1]
  steps: int
  sampler: str
  schedule: str
  model_hash: str
  record: dict


def parse_grid_record(record, path: str = "<grid>") -> GridFile:
  """Validate a grid file's JSON object; one ``ValueError`` naming ``path`` and the problem."""
  where = f"grid file {path}"
  if not isinstance(record, dict) or record.get("format") != FORMAT:
    raise ValueError(f"{where} is not a jdiff grid file (no \"format\": \"{FORMAT}\"); write one with "
                     f"tools/fit_grid.py")
  version = record.get("version")
  if not isinstance(version, int) or version < 1:
    raise ValueError(f"{where} has no valid \"version\" (an integer >= 1)")
  if version > VERSION:
    raise ValueError(f"{where} has version {version}, newer than this jdiff reads ({VERSION}); update "
                     f"jdiff or refit the grid")
  for key in ("sampler", "schedule", "model_hash"):
    if not isinstance(record.get(key), str) or not record[key]:
      raise ValueError(f"{where} lacks \"{key}\" (a non-empty string)")
  if not record["model_hash"].startswith("sha256:"):
    raise ValueError(f"{where}: \"model_hash\" must look like sha256:<hex>, got {record['model_hash']!r}")
  steps = record.get("steps")
  if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
    raise ValueError(f"{where}: \"steps\" must be an integer >= 1, got {steps!r}")
  ts = record.get("ts")
  if (not isinstance(ts, list) or
      not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in ts)):
    raise ValueError(f"{where}: \"ts\" must be a list of numbers")
  if len(ts) != steps + 1:
    raise ValueError(f"{where}: \"ts\" has {len(ts)} times but steps={steps} needs {steps + 1}")
  arr = np.asarray(ts, np.float32)
  try:
    grids.check_grid(arr, "ts")
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from None
  return GridFile(os.fspath(path), arr, steps, record["sampler"], record["schedule"],
                  record["model_hash"], record)


def read_grid_file(path) -> GridFile:
  """Read and validate a grid file (``parse_grid_record``)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"grid file {path} does not exist; a grid is uniform_t, uniform_logsnr, karras or "
                     f"a grid file written by tools/fit_grid.py")
  try:
    with open(path, "rb") as f:
      record = json.loads(f.read().decode("utf-8"))
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise ValueError(f"grid file {path} is not readable JSON ({type(e).__name__}); write it with "
                     f"tools/fit_grid.py") from None
  return parse_grid_record(record, path)


def check_grid_file(g: GridFile, *, schedule: Schedule, model_hash: str,
                    steps: Optional[int] = None) -> None:
  """Refuse a grid file fit for another schedule, another model (parameters) or step count."""
  where = f"grid file {g.path}"
  if steps is not None and int(steps) != g.steps:
    raise ValueError(f"{where} has {g.steps} steps but steps={steps} was asked; drop --steps or pass "
                     f"--steps={g.steps}")
  if g.schedule != schedule_id(schedule):
    raise ValueError(f"{where} was fit for the schedule {g.schedule}, but this model uses "
                     f"{schedule_id(schedule)}; fit a grid for this model with tools/fit_grid.py")
  if g.model_hash != model_hash:
    raise ValueError(f"{where} was fit for another model (parameters {g.model_hash[:19]}..., this one "
                     f"{model_hash[:19]}...); fit a grid for this model with tools/fit_grid.py")
