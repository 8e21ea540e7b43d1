"""Sampler accuracy on the default Gaussian mixture with its exact denoiser (no training).

For every sampler and NFE budget: the NFE actually spent, sliced Wasserstein-1 to true samples (and the
two-sample noise floor), component-weight error, distance (RMS and median over samples) to the exact
probability-flow ODE solution from the same starting noise (deterministic samplers), and wall time of
a second (compiled) run. Prints a table and writes ``bench/out/sampler_accuracy.json``.

    python bench/sampler_accuracy.py [--quick] [--schedule linear] [--grid uniform_logsnr] [--n 10000]

Goal checked at the end: at 10 and 20 NFE, DPM-Solver++ reaches the distance to the exact ODE solution
that DDIM reaches at 50 NFE.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import jdiff
from jdiff import grids, ode, sampling, toy
from jdiff.parametrization import make_denoiser

DETERMINISTIC = ("ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m")


def steps_for(name: str, nfe: int, zero_noise: bool) -> int:
  """Grid steps whose NFE is at most ``nfe`` (VE/EDM spend one more on the final denoise)."""
  budget = nfe if zero_noise else nfe - 1
  if name == "heun":  # 2 per step, 1 on a step to sigma = 0
    return max(1, (budget + 1) // 2 if zero_noise else budget // 2)
  if name == "pc":  # predictor + 1 corrector
    return max(1, budget // 2)
  return max(1, budget)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="fewer samples and budgets")
  p.add_argument("--schedule", default="linear")
  p.add_argument("--grid", default="uniform_logsnr", choices=grids.GRIDS)
  p.add_argument("--n", type=int, default=None, help="samples (default 10000, --quick 2000)")
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out",
                                               "sampler_accuracy.json"))
  args = p.parse_args()
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
