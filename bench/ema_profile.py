"""Which EMA profile the default model should be sampled with: post-hoc power-function averages of one
run's raw parameters, scored by the project's FD.

One ``train.py`` run of the default config (or ``--workdir`` of an existing one) keeps a checkpoint of
its raw parameters every ``--every`` steps. For each ``gamma`` the parameters of checkpoint step ``k`` are
averaged with weights ``k^gamma`` (Karras et al. 2024, EDM2: the profile of their power-function EMA,
``training.ema_power``, over the saved steps), next to the run's own EMA (``training.ema_decay`` with the
warm-up ``min(decay, (1 + n) / (10 + n))``, about ``gamma = 8``) and the raw last parameters. Each is
sampled with the config's sampler at ``--nfe`` and scored by FD against the real-data floor at ``--num``
samples (``eval.py``'s metric, seed 0).

    python bench/ema_profile.py [--workdir DIR] [--every 50] [--gammas 1,2,4,8,16] [--num 2000] [--nfe 10]

Prints a table and writes ``bench/out/ema_profile.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)

import _harness  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", default="", help="a run with raw checkpoints every --every steps "
                 "(default: train the default config into a temporary folder)")
  p.add_argument("--every", type=int, default=50)
  p.add_argument("--gammas", default="1,2,4,8,16")
  p.add_argument("--num", type=int, default=2000)
  p.add_argument("--nfe", default="10")
  p.add_argument("--out", default=os.path.join(_HERE, "out", "ema_profile.json"))
  args = p.parse_args()
  gammas = [float(g) for g in args.gammas.split(",") if g]
  nfes = _harness.int_list(p, args.nfe, "--nfe")
  wd = args.workdir or os.path.join(tempfile.mkdtemp(prefix="jdiff_ema_"), "run")
  if not os.path.isdir(os.path.join(wd, "checkpoints")):
    minutes = _harness.run_train([f"--config.training.ckpt_every={args.every}",
                                  "--config.training.keep_checkpoints=100000",
                                  "--config.training.sample_every=0"], wd, wd + ".log") / 60.0
    print(f"trained {wd} in {minutes:.1f} min", flush=True)

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np
  from jdiff import eval as jeval
  from jdiff import generation
  from jdiff.eval import model_eval
  from jdiff.generation import restore

  steps = sorted(int(d) for d in os.listdir(os.path.join(wd, "checkpoints")) if d.isdigit())
  if len(steps) < 3:
    p.error(f"{wd} keeps {len(steps)} checkpoints; the profiles need its raw parameters every few "
            f"steps (train it with --config.training.ckpt_every={args.every} "
            f"--config.training.keep_checkpoints=100000)")
  last = restore.restore(workdir=wd, step=steps[-1])
  raw = [jax.tree_util.tree_map(np.asarray, restore.restore(workdir=wd, step=s, use_ema=False).params)
         for s in steps]

  def average(gamma):
    w = np.asarray(steps, np.float64) ** gamma
    w /= w.sum()
    return jax.tree_util.tree_map(lambda *xs: sum(float(wi) * x for wi, x in zip(w, xs)), *raw)

  variants = [("run's EMA", last.params), ("raw (last)", raw[-1])]
  variants += [(f"power gamma={g:g}", average(g)) for g in gammas]
  net = jeval.get_feature_net()
  result = {"machine": _harness.machine_info(), "workdir": wd, "steps": steps, "num": args.num,
            "rows": [], "args": vars(args)}
  for name, params in variants:
    for n in nfes:
      r = model_eval.evaluate_checkpoint(dataclasses.replace(last, params=params),
                                         generation.Settings(num=args.num, steps=n, seed=0), net=net,
                                         progress=False, log=lambda _: None)
      m = r["metrics"]
      row = {"params": name, "nfe": r["nfe"], "fd": m["fd"], "floor": m["floor"]["fd"],
             "ratio": m["fd"] / m["floor"]["fd"]}
      result["rows"].append(row)
      _harness.write_json(args.out, result)
      print(f"{name:18s} NFE {row['nfe']:3d}  FD {row['fd']:.2f}  ({row['ratio']:.2f}x the floor "
            f"{row['floor']:.2f})", flush=True)
  print(_harness.format_table(["parameters", "NFE", "FD", "floor", "FD / floor"], [
      [r["params"], str(r["nfe"]), f"{r['fd']:.2f}", f"{r['floor']:.2f}", f"{r['ratio']:.2f}"]
      for r in result["rows"]]))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
