"""Sampler accuracy against exact Gaussian-mixture denoisers (no training).

Three modes, all scored by the distance to the exact probability-flow ODE solution from the same
starting noise.

Default: every sampler and NFE budget on one schedule and grid, with the default mixture: the NFE
actually spent, sliced Wasserstein-1 to true samples (and the two-sample noise floor), component-weight
error, distance (RMS and median over samples) to the exact ODE solution (diffrax, rtol = atol = 1e-6,
to the grid's last positive time, then ``x0_hat``) from the same starting noise (deterministic
samplers), and wall time of a second (compiled) run. Writes ``bench/out/sampler_accuracy.json``.

    python bench/sampler_accuracy.py [--quick] [--schedule linear] [--grid uniform_logsnr] [--n 10000]

Goal checked at the end: at 10 and 20 NFE, DPM-Solver++ reaches the distance to the exact ODE solution
that DDIM reaches at 50 NFE.

``--vs-diffusers``: jdiff next to diffusers. Two mixtures (``default``: 2-D, data scale 1.2; ``wide``:
2-D, data scale 6.7, anisotropic components, unequal weights), DDPM's linear and the cosine schedule, the same
starting noise ``x_1`` on both sides; jdiff's deterministic samplers on each built-in grid, and
diffusers' DDIM, Euler, Heun, DPM-Solver++(2M) and UniPC (orders 2 and 3) schedulers with each timestep
spacing / sigma grid that starts at the prior, driven by the exact denoiser in torch float64
(``torch_mixture.py``). The reference is the exact ODE solution *at sigma = 0* from ``x_1``: float64,
scipy DOP853 at rtol = atol = 1e-10 on the mixture's closed-form ODE (``exact_flow``), the same for
every solver on either side. Table at 5, 10 and 20 NFE; writes ``bench/out/sampler_vs_diffusers.json``.

    python bench/sampler_accuracy.py --vs-diffusers [--n 4000] [--nfe 5,10,20]

``--grids``: which built-in grid is best, per schedule (linear, cosine, vp_sde, sigmoid, ve, edm) and
data scale (mixtures ``narrow`` ~0.5, ``default`` ~1.2, ``wide`` ~6.7), over jdiff's deterministic
samplers at 5, 10 and 20 NFE, same reference. Writes ``bench/out/grid_choice.json``.

    python bench/sampler_accuracy.py --grids [--n 4000]
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jdiff
from jdiff import grids, ode, sampling, toy
from jdiff.parametrization import make_denoiser

DETERMINISTIC = ("ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc")


def steps_for(name: str, nfe: int, zero_noise: bool) -> int:
  """Grid steps whose NFE is at most ``nfe`` (VE/EDM spend one more on the final denoise)."""
  budget = nfe if zero_noise else nfe - 1
  if name == "heun":  # 2 per step, 1 on a step to sigma = 0
    return max(1, (budget + 1) // 2 if zero_noise else budget // 2)
  if name == "pc":  # predictor + 1 corrector
    return max(1, budget // 2)
  return max(1, budget)


# ----------------------------------------------------------------------------------------------------
# Exact references and the mixtures of --vs-diffusers / --grids
# ----------------------------------------------------------------------------------------------------

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out")
VS_SCHEDULES = ("linear", "cosine")
GRID_SCHEDULES = ("linear", "cosine", "vp_sde", "sigmoid", "ve", "edm")
TIE = 0.01  # jdiff (float32) and diffusers (float64) agree within this on the same algorithm and grid


def wide_mixture() -> toy.GaussianMixture:
  """2-D, 3 components, data scale 6.7 (std 7.6 / 5.7 per axis), anisotropic covariances (eigenvalues
  0.25 to 9, two of them tilted), unequal weights."""
  weights = jnp.array([0.55, 0.3, 0.15])
  means = jnp.array([[-9.0, 4.0], [7.0, 7.0], [2.0, -10.0]])
  covs = jnp.array([[[6.0, 2.5], [2.5, 1.5]],
                    [[1.0, -0.8], [-0.8, 2.0]],
                    [[9.0, 0.0], [0.0, 0.25]]])
  return toy.GaussianMixture(weights, means, covs)


def scaled_default(f: float) -> toy.GaussianMixture:
  """The default mixture with its data scaled by ``f`` (means by f, covariances by f^2)."""
  m = toy.default_mixture()
  return toy.GaussianMixture(m.weights, f * m.means, f * f * m.covs)


def narrow_mixture() -> toy.GaussianMixture:
  """The default mixture scaled by 0.4 (data scale ~0.5, like image pixels in [-1, 1])."""
  return scaled_default(0.4)


MIXTURES = {"narrow": narrow_mixture, "default": toy.default_mixture, "wide": wide_mixture}
VS_MIXTURES = ("default", "wide")


def data_scale(mix: toy.GaussianMixture) -> float:
  """RMS over coordinates of the data's standard deviation."""
  w, mu, cov = (np.asarray(a, np.float64) for a in (mix.weights, mix.means, mix.covs))
  mean = w @ mu
  second = np.einsum("k,kij->ij", w, cov + np.einsum("ki,kj->kij", mu, mu))
  return float(np.sqrt(np.trace(second - np.outer(mean, mean)) / mu.shape[1]))


def exact_flow(mix: toy.GaussianMixture, y0: np.ndarray, s_start: float, s_end: float = 0.0
               ) -> np.ndarray:
  """The probability-flow ODE of the mixture solved in float64 (scipy DOP853, rtol = atol = 1e-10).

  In the scaled variable ``y = x / alpha`` at noise level ``s = sigma_tilde`` the ODE is
  ``dy/ds = (y - D(y; s)) / s`` (Karras et al. 2022, eq. 4) for every schedule. For a Gaussian mixture
  ``y - D = s^2 sum_k p_k(y) C_k^{-1} (y - mu_k)`` with ``C_k = Sigma_k + s^2 I``, so in ``u = s^2``:
  ``dy/du = 1/2 sum_k p_k(y) C_k^{-1} (y - mu_k)``, smooth down to ``u = 0`` (the data). Solved in
  ``log u`` from ``s_start^2`` down to 1 and in ``u`` below, to ``s_end`` (default 0: the exact ODE
  solution at the data). ``y0 [N, D]``: the starting point ``x_1 / alpha(1)``; returns ``y`` at ``s_end``.
  """
  from scipy.integrate import solve_ivp
  w, mu, cov = (np.asarray(a, np.float64) for a in (mix.weights, mix.means, mix.covs))
  lam, u_vec = np.linalg.eigh(cov)
  shape = np.shape(y0)

  def g(u, y):  # 1/2 sum_k p_k C_k^{-1} (y - mu_k)
    var = lam + u
    proj = np.einsum("kji,nkj->nki", u_vec, y[:, None, :] - mu[None]) / np.sqrt(var)
    logc = np.log(w) - 0.5 * (np.sum(proj ** 2, -1) + np.sum(np.log(var), -1))
    p = np.exp(logc - logc.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    sol = np.einsum("kij,nkj->nki", u_vec, proj / np.sqrt(var))
    return 0.5 * np.einsum("nk,nki->ni", p, sol)

  y = np.asarray(y0, np.float64).ravel()
  u0, u1 = float(s_start) ** 2, float(s_end) ** 2
  kw = dict(method="DOP853", rtol=1e-10, atol=1e-10)
  if u0 > max(1.0, u1):
    mid = max(1.0, u1)
    r = solve_ivp(lambda r, y: (math.exp(r) * g(math.exp(r), y.reshape(shape))).ravel(),
                  (math.log(u0), math.log(mid)), y, **kw)
    assert r.success, r.message
    y, u0 = r.y[:, -1], mid
  if u0 > u1:
    r = solve_ivp(lambda u, y: g(u, y.reshape(shape)).ravel(), (u0, u1), y, **kw)
    assert r.success, r.message
    y = r.y[:, -1]
  return y.reshape(shape)


def exact_denoise(mix: toy.GaussianMixture, y: np.ndarray, s: float) -> np.ndarray:
  """``E[x0 | y]`` for ``y = x0 + s eps`` in float64 (numpy)."""
  w, mu, cov = (np.asarray(a, np.float64) for a in (mix.weights, mix.means, mix.covs))
  lam, u_vec = np.linalg.eigh(cov)
  var = lam + s * s
  proj = np.einsum("kji,nkj->nki", u_vec, y[:, None, :] - mu[None])
  logc = np.log(w) - 0.5 * (np.sum(proj ** 2 / var, -1) + np.sum(np.log(var), -1))
  p = np.exp(logc - logc.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  cond = mu[None] + np.einsum("kij,nkj->nki", u_vec, proj * lam / var)
  return np.einsum("nk,nki->ni", p, cond)


def rms(a, b) -> float:
  return float(np.sqrt(np.mean(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2,
                                      -1))))


def jdiff_sampler_labels():
  """The deterministic samplers measured on jdiff's side (UniPC when it is registered)."""
  labels = ["ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m"]
  if "unipc" in sampling.SAMPLERS:
    labels += ["unipc_2", "unipc_3"]  # UniPC of order 2 and 3 (bh2), as on diffusers' side
  return labels


def _jdiff_sampler(label: str):
  if label.startswith("unipc_"):
    return sampling.get_sampler("unipc", order=int(label[-1]))
  return sampling.get_sampler(label)


@functools.partial(jax.jit, static_argnames=("label", "schedule"))
def _run_jdiff(mix, x, ts, *, label, schedule):
  denoise = make_denoiser(mix.model_fn(schedule), None, schedule, "x0")
  return sampling.sample(_jdiff_sampler(label), denoise, schedule, x, ts, jax.random.PRNGKey(1))


class Problem:
  """One schedule and mixture: the starting noise, the exact ODE solution at sigma = 0, and the floor
  of grids that land on ``x0_hat`` at ``t = 1e-3`` (VP) or at ``sigma_min`` (VE, EDM)."""

  def __init__(self, schedule_name: str, mixture_name: str, n: int):
    self.schedule_name, self.mixture_name = schedule_name, mixture_name
    self.sch = jdiff.get_schedule(schedule_name)
    self.mix = MIXTURES[mixture_name]()
    self.zero_noise = grids.reaches_zero_noise(self.sch)
    self.x_init = sampling.initial_noise(jax.random.PRNGKey(0), jnp.arange(n), (2,), self.sch)
    a1 = float(self.sch.alpha(jnp.float32(1.0)))
    self.s_max = float(self.sch.sigma_tilde(jnp.float32(1.0)))
    self.y0 = np.asarray(self.x_init, np.float64) / a1
    self.ref = exact_flow(self.mix, self.y0, self.s_max)
    t_end = grids.DEFAULT_VP_T_MIN if self.zero_noise else 0.0
    s_end = float(self.sch.sigma_tilde(jnp.float32(t_end)))
    self.floor = rms(exact_denoise(self.mix, exact_flow(self.mix, self.y0, self.s_max, s_end), s_end),
                     self.ref)

  def jdiff(self, label: str, grid: str, budget: int) -> dict:
    steps = steps_for(label, budget, self.zero_noise)
    ts = grids.get_grid(grid, self.sch, steps)
    out = _run_jdiff(self.mix, self.x_init, ts, label=label, schedule=self.sch)
    x = np.asarray(out.x, np.float64)
    d = np.linalg.norm(x - self.ref, axis=-1)
    return {"side": "jdiff", "solver": label, "grid": grid, "budget": budget, "steps": steps,
            "nfe": int(out.nfe), "rms": rms(x, self.ref), "median": float(np.median(d))}

  def ode_check(self) -> float:
    """jdiff's adaptive ODE solver (float32, rtol = atol = 1e-6) vs the float64 reference, both to the
    same last positive time and then ``x0_hat``."""
    t_end = 1e-5 if self.zero_noise else 0.0
    ts = jnp.asarray([1.0, t_end, 0.0] if self.zero_noise else [1.0, 0.0], jnp.float32)
    denoise = make_denoiser(self.mix.model_fn(self.sch), None, self.sch, "x0")
    out = ode.sample_ode(denoise, self.sch, self.x_init, ts, rtol=1e-6, atol=1e-6)
    s_end = float(self.sch.sigma_tilde(jnp.float32(t_end)))
    want = exact_denoise(self.mix, exact_flow(self.mix, self.y0, self.s_max, s_end), s_end)
    return rms(out.x, want)


def _fmt(v: float) -> str:
  return f"{v:.2e}"


def _write(path: str, obj) -> None:
  sys.path.insert(0, HERE)
  import _harness as H
  H.write_json(path, obj)


# ----------------------------------------------------------------------------------------------------
# --vs-diffusers
# ----------------------------------------------------------------------------------------------------


def _diffusers_table(schedule_name: str, sch):
  """The trained_betas for diffusers (None: its own linear table) and a note on how it matches jdiff."""
  import diffusers
  import torch_mixture as tm
  t = np.arange(1, 1001, dtype=np.float64) / 1000
  jd = np.asarray(jax.nn.sigmoid(sch.logsnr(jnp.asarray(t, jnp.float32))), np.float64)
  logsnr = lambda ac: np.log(ac) - np.log1p(-ac)
  if schedule_name == "linear":
    ac = diffusers.DDIMScheduler(beta_start=1e-4, beta_end=0.02,
                                 beta_schedule="linear").alphas_cumprod.numpy().astype(np.float64)
    return None, {"diffusers_table": "beta_schedule='linear' (beta 1e-4..0.02, 1000 steps)",
                  "max_rel_diff_alpha_bar": float(np.max(np.abs(ac / jd - 1)))}
  native = diffusers.DDIMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod.numpy().astype(
      np.float64)
  betas = tm.trained_betas_from(lambda tt: sch.logsnr(jnp.asarray(tt, jnp.float32)))
  ac = diffusers.DDIMScheduler(trained_betas=betas).alphas_cumprod.numpy().astype(np.float64)
  return betas, {
      "diffusers_table": "trained_betas from jdiff's cosine schedule at t_i = (i + 1) / 1000",
      "max_rel_diff_alpha_bar": float(np.max(np.abs(ac / jd - 1))),
      "native_squaredcos_cap_v2_max_abs_logsnr_diff_t0_998": float(
          np.max(np.abs(logsnr(native[:-1]) - logsnr(jd[:-1])))),
      "native_squaredcos_cap_v2_logsnr_999": float(logsnr(native[-1])),
      "jdiff_logsnr_1": float(logsnr(jd[-1]))}


def vs_diffusers(args) -> None:
  have_torch = False
  if not args.no_torch:
    sys.path.insert(0, HERE)
    import _harness as H
    have_torch, why = H.torch_available()
    if not have_torch:
      print(f"note: {why}: the diffusers columns are skipped (jdiff only). To compare, install a CPU "
            "build of torch first (`pip install torch`, e.g. torch==2.13.0+cpu) and then "
            "`pip install diffusers`; both are bench-only, jdiff never imports them.")
  if have_torch:
    import diffusers
    import torch
    import torch_mixture as tm
    torch.set_num_threads(1)
  budgets = args.nfe
  labels = jdiff_sampler_labels()
  if "unipc" not in sampling.SAMPLERS:
    print("note: jdiff has no 'unipc' sampler registered yet; measuring the others")
  rows, problems, tables = [], [], {}
  t_start = time.perf_counter()
  for schedule_name in VS_SCHEDULES:
    sch = jdiff.get_schedule(schedule_name)
    if have_torch:
      betas, tb = _diffusers_table(schedule_name, sch)
      tables[schedule_name] = tb
      print(f"\n{schedule_name}: diffusers table = {tb['diffusers_table']}; alpha_bar equals jdiff's at "
            f"t = (i + 1) / 1000 within {tb['max_rel_diff_alpha_bar']:.1e} (relative)")
      if "native_squaredcos_cap_v2_logsnr_999" in tb:
        print(f"  (diffusers' own squaredcos_cap_v2 agrees within "
              f"{tb['native_squaredcos_cap_v2_max_abs_logsnr_diff_t0_998']:.1e} in logSNR at timesteps "
              f"0..998; at 999 its beta is clipped to 0.999: logSNR "
              f"{tb['native_squaredcos_cap_v2_logsnr_999']:.2f}, jdiff's clamp gives "
              f"{tb['jdiff_logsnr_1']:.2f})")
    for mixture_name in VS_MIXTURES:
      pb = Problem(schedule_name, mixture_name, args.n)
      info = {"schedule": schedule_name, "mixture": mixture_name, "data_scale": data_scale(pb.mix),
              "sigma_tilde_max": pb.s_max, "floor_t_min": pb.floor, "jdiff_ode_vs_reference": pb.ode_check()}
      print(f"\n{schedule_name} / {mixture_name}: data scale {info['data_scale']:.2f}, start sigma_tilde "
            f"{pb.s_max:.4g}; floor of landing on x0_hat at t=1e-3: {pb.floor:.2e}; jdiff ODE "
            f"(rtol=atol=1e-6) vs float64 reference: {info['jdiff_ode_vs_reference']:.1e}", flush=True)
      for label in labels:
        for grid in grids.SOLVER_GRIDS:
          for b in budgets:
            rows.append(dict(pb.jdiff(label, grid, b), schedule=schedule_name, mixture=mixture_name))
        print(".", end="", flush=True)
      if have_torch:
        tmix = tm.TorchMixture(pb.mix.weights, pb.mix.means, pb.mix.covs)
        for kind in tm.SCHEDULERS:
          for spacing in tm.SPACINGS[kind]:
            for b in budgets:
              sched = tm.make_scheduler(kind, spacing, trained_betas=betas,
                                        cosine=schedule_name == "cosine")
              x, nfe, levels = tm.run_scheduler(sched, tmix, np.asarray(pb.x_init, np.float64), b, kind)
              rel = abs(levels[0] / pb.s_max - 1)
              assert rel < 1e-4, (kind, spacing, levels[0], pb.s_max)  # same start on both sides
              d = np.linalg.norm(x - pb.ref, axis=-1)
              rows.append({"side": "diffusers", "solver": kind, "grid": spacing, "budget": b,
                           "steps": tm.steps_for(kind, b), "nfe": nfe, "rms": rms(x, pb.ref),
                           "median": float(np.median(d)), "schedule": schedule_name,
                           "mixture": mixture_name, "start_rel_diff": rel,
                           "last_sigma_tilde": levels[-1]})
          print("+", end="", flush=True)
      problems.append(info)
  print(f"\n({time.perf_counter() - t_start:.0f} s)")
  summary = _print_vs(rows, problems, budgets, have_torch)
  out = args.out or os.path.join(OUT, "sampler_vs_diffusers.json")
  meta = {"n": args.n, "budgets": budgets, "device": str(jax.devices()[0]), "jax": jax.__version__}
  if have_torch:
    meta.update(torch=torch.__version__, diffusers=diffusers.__version__, tables=tables)
  _write(out, {"meta": meta, "problems": problems, "rows": rows, "summary": summary})
  print(f"wrote {out}")


def _best(rows):
  return min(rows, key=lambda r: r["rms"]) if rows else None


def _print_vs(rows, problems, budgets, have_torch):
  summary = []
  for info in problems:
    key = (info["schedule"], info["mixture"])
    cell = [r for r in rows if (r["schedule"], r["mixture"]) == key]
    print(f"\n{key[0]} schedule, {key[1]} mixture (data scale {info['data_scale']:.2f}): RMS distance to "
          f"the exact ODE solution at sigma = 0 (floor at t_min = 1e-3: {info['floor_t_min']:.1e})")
    head = f"{'side':9s} {'solver':9s} {'grid':15s} " + " ".join(f"{f'{b} NFE':>14s}" for b in budgets)
    print(head)
    print("-" * len(head))
    combos = sorted({(r["side"], r["solver"], r["grid"]) for r in cell},
                    key=lambda c: (c[0] != "jdiff", [r["solver"] for r in cell].index(c[1]), c[2]))
    for side, solver, grid in combos:
      vals = []
      for b in budgets:
        r = [x for x in cell if (x["side"], x["solver"], x["grid"], x["budget"]) == (side, solver, grid, b)]
        vals.append(f"{_fmt(r[0]['rms'])} ({r[0]['nfe']:2d})" if r else "-")
      print(f"{side:9s} {solver:9s} {grid:15s} " + " ".join(f"{v:>14s}" for v in vals))
    for b in budgets:
      j = _best([r for r in cell if r["side"] == "jdiff" and r["budget"] == b])
      d = _best([r for r in cell if r["side"] == "diffusers" and r["budget"] == b])
      s = {"schedule": key[0], "mixture": key[1], "budget": b, "jdiff_best": j, "diffusers_best": d}
      if d is not None:
        s["ratio"] = j["rms"] / d["rms"]
        s["target_met"] = j["rms"] <= d["rms"]
        s["tie"] = abs(s["ratio"] - 1.0) <= TIE
      summary.append(s)
  print(f"\nBest of each side per NFE budget (RMS; ratio = jdiff / diffusers, target <= 1; 'tie': within "
        f"{TIE:.0%}, the spread of one algorithm on one grid between the two sides):")
  head = (f"{'schedule':8s} {'mixture':8s} {'NFE':>4s}  {'jdiff best':34s} {'diffusers best':34s} "
          f"{'ratio':>6s}  target")
  print(head)
  print("-" * len(head))
  for s in summary:
    j, d = s["jdiff_best"], s["diffusers_best"]
    jt = f"{j['solver']}/{j['grid']} {_fmt(j['rms'])}"
    dt = f"{d['solver']}/{d['grid']} {_fmt(d['rms'])}" if d else "-"
    ratio = f"{s['ratio']:6.3f}" if d else "     -"
    met = ("met" if s["target_met"] else "tie" if s["tie"] else "MISSED") if d else "-"
    print(f"{s['schedule']:8s} {s['mixture']:8s} {s['budget']:4d}  {jt:34s} {dt:34s} {ratio}  {met}")
  return summary


# ----------------------------------------------------------------------------------------------------
# --grids
# ----------------------------------------------------------------------------------------------------


def grid_choice(args) -> None:
  budgets = args.nfe
  labels = args.samplers or jdiff_sampler_labels()
  rows, problems = [], []
  t_start = time.perf_counter()
  for schedule_name in args.schedules:
    for mixture_name in args.mixtures:
      pb = Problem(schedule_name, mixture_name, args.n)
      problems.append({"schedule": schedule_name, "mixture": mixture_name,
                       "data_scale": data_scale(pb.mix), "floor_t_min": pb.floor})
      for label in labels:
        for grid in grids.SOLVER_GRIDS:
          for b in budgets:
            rows.append(dict(pb.jdiff(label, grid, b), schedule=schedule_name, mixture=mixture_name))
      print(".", end="", flush=True)
  print(f" ({time.perf_counter() - t_start:.0f} s)")
  summary = []
  print("\nPer schedule and mixture, per grid: geometric mean over the samplers and NFE budgets of the RMS "
        "distance to the exact ODE solution at sigma = 0;\nwins = (sampler, NFE) cells where the grid is "
        "the best of the three; then each grid's best solver at each NFE budget.")
  head = (f"{'schedule':8s} {'mixture':12s} {'grid':15s} {'geo-mean':>9s} {'wins':>5s} "
          + " ".join(f"{f'best@{b}':>9s}" for b in budgets) + "  best solver at each budget")
  print(head)
  print("-" * len(head))
  for info in problems:
    key = (info["schedule"], info["mixture"])
    cell = [r for r in rows if (r["schedule"], r["mixture"]) == key]
    cells = {(r["solver"], r["budget"]) for r in cell}
    winner = {c: _best([r for r in cell if (r["solver"], r["budget"]) == c])["grid"] for c in cells}
    for grid in grids.SOLVER_GRIDS:
      g = [r for r in cell if r["grid"] == grid]
      geo = float(np.exp(np.mean([np.log(max(r["rms"], 1e-12)) for r in g])))
      wins = sum(1 for c in cells if winner[c] == grid)
      bests = [_best([r for r in g if r["budget"] == b]) for b in budgets]
      s = {"schedule": key[0], "mixture": key[1], "grid": grid, "geo_mean": geo, "wins": wins,
           "cells": len(cells), "best": {str(b): {"solver": r["solver"], "rms": r["rms"]}
                                           for b, r in zip(budgets, bests)}}
      summary.append(s)
      print(f"{key[0]:8s} {key[1]:12s} {grid:15s} {geo:9.2e} {wins:3d}/{len(cells):<2d}"
            + " ".join(f"{r['rms']:9.2e}" for r in bests) + "  " + ",".join(r["solver"] for r in bests))
  print("\nBest grid per schedule and data scale (lowest geometric mean over samplers and budgets; in "
        "brackets the runner-up's geometric mean / the best's):")
  choice = {}
  mixtures = list(args.mixtures)
  print(f"{'schedule':8s} " + " ".join(f"{m + ' (%.2f)' % data_scale(MIXTURES[m]()):>34s}"
                                       for m in mixtures))
  for schedule_name in args.schedules:
    line = f"{schedule_name:8s} "
    for m in mixtures:
      per = {s["grid"]: s["geo_mean"] for s in summary
             if s["schedule"] == schedule_name and s["mixture"] == m}
      order = sorted(per, key=per.get)
      tied = [g for g in order if per[g] <= per[order[0]] * (1 + 1e-4)]  # identical grids (VE, EDM)
      rest = [g for g in order if g not in tied]
      choice[f"{schedule_name}/{m}"] = "=".join(tied)
      ratio = f" ({per[rest[0]] / per[order[0]]:.2f}x)" if rest else ""
      line += f"{'='.join(tied) + ratio:>34s} "
    print(line)
  out = args.out or os.path.join(OUT, "grid_choice.json")
  _write(out, {"meta": {"n": args.n, "budgets": budgets, "samplers": labels,
                        "device": str(jax.devices()[0]), "jax": jax.__version__},
               "problems": problems, "rows": rows, "summary": summary, "choice": choice})
  print(f"wrote {out}")


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="fewer samples and budgets")
  p.add_argument("--schedule", default="linear")
  p.add_argument("--grid", default="uniform_logsnr", choices=grids.SOLVER_GRIDS)
  p.add_argument("--n", type=int, default=None, help="samples (default 10000, --quick 2000)")
  p.add_argument("--vs-diffusers", action="store_true",
                 help="jdiff next to diffusers' schedulers on two mixtures, linear and cosine schedules")
  p.add_argument("--grids", action="store_true", help="which built-in grid is best per schedule")
  p.add_argument("--nfe", default="5,10,20", help="NFE budgets of --vs-diffusers / --grids")
  p.add_argument("--schedules", default=",".join(GRID_SCHEDULES), help="schedules of --grids")
  p.add_argument("--mixtures", default=",".join(MIXTURES), help="mixtures of --grids ('' for none)")
  p.add_argument("--scales", default="",
                 help="--grids also on the default mixture scaled by these factors (e.g. 0.55,0.7)")
  p.add_argument("--samplers", default="", help="jdiff samplers of --grids (default: all deterministic)")
  p.add_argument("--no-torch", action="store_true", help="--vs-diffusers without the diffusers side")
  p.add_argument("--out", default=None, help="JSON output (default bench/out/<mode>.json)")
  args = p.parse_args()
  if args.vs_diffusers or args.grids:
    args.nfe = [int(b) for b in args.nfe.split(",")]
    args.schedules = [x for x in args.schedules.split(",") if x]
    args.mixtures = [x for x in args.mixtures.split(",") if x]
    for f in [float(x) for x in args.scales.split(",") if x]:
      MIXTURES[f"default*{f:g}"] = functools.partial(scaled_default, f)
      args.mixtures.append(f"default*{f:g}")
    args.samplers = [x for x in args.samplers.split(",") if x]
    args.n = args.n or (1000 if args.quick else 4000)
    return vs_diffusers(args) if args.vs_diffusers else grid_choice(args)
  args.out = args.out or os.path.join(OUT, "sampler_accuracy.json")
  n = args.n or (2000 if args.quick else 10_000)
  budgets = (10, 20, 50) if args.quick else (10, 20, 50, 100)
  sch = jdiff.get_schedule(args.schedule)
  zero_noise = grids.reaches_zero_noise(sch)
  mix = toy.default_mixture()
  model = mix.model_fn(sch)
  denoise = make_denoiser(model, None, sch, "x0")
  key = jax.random.PRNGKey(0)
  x_init = sampling.initial_noise(key, jnp.arange(n), (2,), sch)

  proj = jax.random.PRNGKey(7)
  sw = jax.jit(lambda a, b: toy.sliced_wasserstein(a, b, proj))
  sets = [mix.sample(jax.random.PRNGKey(100 + j), n)[0] for j in range(12)]
  refs = sets[:4]
  floor = float(np.mean([sw(sets[4 + 2 * j], sets[5 + 2 * j]) for j in range(4)]))

  exact_cache = {}

  def exact(ts):
    """Exact ODE solution for a grid: depends only on ts[0] and the last positive time."""
    ends = (float(ts[0]), float(ts[-2]) if zero_noise else 0.0)
    if ends not in exact_cache:
      fn = jax.jit(lambda x, ts: ode.sample_ode(denoise, sch, x, ts, rtol=1e-6, atol=1e-6))
      exact_cache[ends] = fn(x_init, ts).x
    return exact_cache[ends]

  def measure(name, ts, fn):
    out = fn(x_init, ts)
    jax.block_until_ready(out.x)
    t0 = time.perf_counter()
    out = fn(x_init, ts)
    jax.block_until_ready(out.x)
    wall = time.perf_counter() - t0
    row = {"sampler": name, "steps": int(ts.shape[0] - 1), "nfe": int(out.nfe),
           "sw1": float(np.mean([sw(out.x, r) for r in refs])), "sw1_floor": floor,
           "weight_error": toy.component_weight_error(mix, out.x), "wall_s": wall}
    if name in DETERMINISTIC or name.startswith("ode"):
      dist = np.linalg.norm(np.asarray(out.x - exact(ts)), axis=-1)
      row["rms_to_exact"] = float(np.sqrt(np.mean(dist ** 2)))
      row["median_to_exact"] = float(np.median(dist))
    return row

  names = ["ddpm", "ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m"]
  if "unipc" in sampling.SAMPLERS:
    names.append("unipc")
  if not sch.variance_preserving:
    names += ["pc", "langevin"]
  rows = []
  for name in names:
    for budget in budgets:
      steps = steps_for(name, budget, zero_noise)
      if name == "langevin":
        steps = max(1, (budget - 1) // 5)  # 5 updates per level
      ts = grids.get_grid(args.grid, sch, steps)
      hp = {"n_steps_each": 5, "step_size": float(sch.sigma(0.0)) ** 2} if name == "langevin" else {}

      @jax.jit
      def fn(x, ts, name=name, hp=hp):
        return sampling.sample(name, denoise, sch, x, ts, jax.random.PRNGKey(1), **hp)

      rows.append(measure(name, ts, fn))
      print(".", end="", flush=True)
  ts = grids.get_grid(args.grid, sch, 10)
  for rtol in (1e-2, 1e-3, 1e-4):
    fn = jax.jit(lambda x, ts, rtol=rtol: ode.sample_ode(denoise, sch, x, ts, rtol=rtol, atol=rtol))
    rows.append(measure(f"ode(rtol={rtol:g})", ts, fn))
  print()

  hdr = (f"{'sampler':16s} {'steps':>5s} {'NFE':>5s} {'SW1':>7s} {'/floor':>6s} {'w.err':>6s} "
         f"{'RMS-exact':>9s} {'med-exact':>9s} {'wall ms':>8s}")
  print(f"schedule={args.schedule} grid={args.grid} N={n} SW1 floor={floor:.4f}")
  print(hdr)
  print("-" * len(hdr))
  for r in rows:
    rms = f"{r['rms_to_exact']:9.2e}" if "rms_to_exact" in r else f"{'-':>9s}"
    med = f"{r['median_to_exact']:9.2e}" if "median_to_exact" in r else f"{'-':>9s}"
    print(f"{r['sampler']:16s} {r['steps']:5d} {r['nfe']:5d} {r['sw1']:7.4f} {r['sw1'] / floor:6.2f} "
          f"{r['weight_error']:6.4f} {rms} {med} {1e3 * r['wall_s']:8.1f}")

  goal = []
  ddim50 = [r for r in rows if r["sampler"] == "ddim" and r["nfe"] <= 50]
  if ddim50:
    ref = max(ddim50, key=lambda r: r["nfe"])
    for name in ("dpmpp_2m", "dpmpp_3m"):
      for budget in (10, 20):
        cand = [r for r in rows if r["sampler"] == name and r["nfe"] <= budget]
        if not cand:
          continue
        r = max(cand, key=lambda r: r["nfe"])
        for metric in ("rms_to_exact", "median_to_exact"):
          ok = r[metric] <= ref[metric]
          goal.append({"sampler": name, "nfe": r["nfe"], "metric": metric, "value": r[metric],
                       "ddim_nfe": ref["nfe"], "ddim_value": ref[metric], "reached": ok})
          print(f"goal: {name} at {r['nfe']} NFE {metric}={r[metric]:.2e} vs DDIM at {ref['nfe']} NFE "
                f"{ref[metric]:.2e}: {'reached' if ok else 'NOT reached'}")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"schedule": args.schedule, "grid": args.grid, "n": n, "sw1_floor": floor,
               "device": str(jax.devices()[0]), "rows": rows, "goal": goal}, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
