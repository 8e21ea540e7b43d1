"""Time grids optimized through the sampler vs the built-in grids, on the exact Gaussian-mixture denoiser.

For each schedule, sampler and step count K: the mean per-sample RMS distance between the K-step result
and the probability-flow ODE solution from the same noise (diffrax, rtol = atol = 1e-6, to t = 1e-3 then
x0_hat on VP schedules), on held-out noises, for uniform_t / uniform_logsnr / karras and for the grid
fitted on separate training noises (``jdiff.grid_fit.fit_grid``: Adam on the grid, full batch, from the
built-in grid closest on the training noises). Prints a markdown table and writes
``bench/out/optimized_grids.json``.

    python bench/optimized_grids.py [--schedules linear,cosine] [--samplers dpmpp_2m] [--steps 5,10]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp

import jdiff
from jdiff import grid_fit, grids, sampling, toy
from jdiff.parametrization import make_denoiser


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--schedules", default="linear,cosine")
  p.add_argument("--samplers", default="dpmpp_2m")
  p.add_argument("--steps", default="5,10")
  p.add_argument("--num_train", type=int, default=256)
  p.add_argument("--num_heldout", type=int, default=1024)
  p.add_argument("--iters", type=int, default=200)
  p.add_argument("--lr", type=float, default=0.05)
  p.add_argument("--tol", type=float, default=1e-6)
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out",
                                               "optimized_grids.json"))
  args = p.parse_args()
  mix = toy.default_mixture()
  rows = []
  for sname in args.schedules.split(","):
    sch = jdiff.get_schedule(sname)
    md = (lambda s: lambda params: make_denoiser(mix.model_fn(s), params, s, "x0"))(sch)
    key = jax.random.PRNGKey(1)
    x_train = sampling.initial_noise(key, jnp.arange(args.num_train), (2,), sch)
    x_held = sampling.initial_noise(key, jnp.arange(args.num_train, args.num_train + args.num_heldout),
                                    (2,), sch)
    for sampler in args.samplers.split(","):
      for k in (int(v) for v in args.steps.split(",")):
        t0 = time.perf_counter()
        g = grid_fit.fit_grid(md, mix, sch, x_train, x_held, steps=k, sampler=sampler,
                              iters=args.iters, lr=args.lr, rtol=args.tol, atol=args.tol)
        r = g.result
        row = {"schedule": sname, "sampler": sampler, "steps": k,
               **{name: g.builtin[name]["heldout"] for name in grids.SOLVER_GRIDS},
               "init": g.init, "optimized": r.heldout_distance, "optimized_train": r.train_distance,
               "ts": [round(float(t), 5) for t in r.ts], "seconds": time.perf_counter() - t0}
        best = min(row[name] for name in grids.SOLVER_GRIDS)
        row["best_builtin_over_optimized"] = best / r.heldout_distance
        rows.append(row)
        print(json.dumps({k2: v for k2, v in row.items() if k2 != "ts"}), flush=True)
  print()
  print("| schedule | sampler | K | uniform_t | uniform_logsnr | karras | optimized (from) | best built-in / "
        "optimized | fitted grid |")
  print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
  for r in rows:
    print(f"| {r['schedule']} | {r['sampler']} | {r['steps']} | {r['uniform_t']:.4f} | "
          f"{r['uniform_logsnr']:.4f} | {r['karras']:.4f} | **{r['optimized']:.4f}** ({r['init']}) | "
          f"{r['best_builtin_over_optimized']:.1f}x | {', '.join(f'{t:.3g}' for t in r['ts'])} |")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"args": vars(args), "rows": rows}, f, indent=1)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
