"""Which model and process to train on Fashion-MNIST: FD at equal training wall-clock.

Each case trains with ``train.py`` (the real CLI, fresh workdir) for the same wall-clock budget, counted
from the process start (compilation included, as a user waits for it); then ``SIGTERM``, on which the
loop saves a checkpoint at the end of the current step and exits. Each checkpoint is scored with
``eval.py`` (FD and KID of ``--num`` EMA samples in the Fashion-MNIST feature space, same seed for every
cell) with the same sampler at each NFE budget. Cases (see ``configs/``):

* ``unet_ddpm``: ``fashion_mnist_ddpm`` (the default U-Net with the DDPM recipe: linear schedule, eps);
* ``unet_flow``: ``fashion_mnist`` (the default: the same U-Net, flow matching: velocity, logit-normal t);
* ``dit_flow``: ``fashion_mnist_dit`` (a small DiT, flow matching).

    python bench/process_comparison.py [--minutes 6] [--num 1000] [--nfe 10,50] [--sampler unipc]

Prints a table and writes ``bench/out/process_comparison.json`` (after every cell). Note whether the
machine was quiet: the budget is wall-clock, so other load changes the number of steps each case gets.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)
sys.path.insert(0, _HERE)

import _harness  # noqa: E402

CASES = {"unet_ddpm": "configs/fashion_mnist_ddpm.py", "unet_flow": "configs/fashion_mnist.py",
         "dit_flow": "configs/fashion_mnist_dit.py"}


def train_for(config: str, workdir: str, seconds: float, log_path: str) -> dict:
  """``config`` for ``seconds`` of wall-clock (``_harness.train_for``); steps reached and timings."""
  args = [f"--config={config}", "--config.training.num_steps=1000000", "--config.training.sample_every=0",
          "--config.training.ckpt_every=1000000", "--config.training.log_every=50"]
  info = _harness.train_for(args, workdir, seconds, log_path)
  return {k: info[k] for k in ("steps", "seconds", "images_per_sec")}


def evaluate(workdir: str, sampler: str, nfe: int, num: int, out: str) -> dict:
  return _harness.eval_fd(workdir, out, num, sampler=sampler, steps=nfe)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--cases", default=",".join(CASES))
  p.add_argument("--minutes", type=float, default=6.0, help="training wall-clock per case")
  p.add_argument("--num", type=int, default=1000, help="samples per FD")
  p.add_argument("--nfe", default="10,50")
  p.add_argument("--sampler", default="unipc", help="the same sampler for every model")
  p.add_argument("--workdir", default="", help="keep the runs here (default: a temporary folder)")
  p.add_argument("--out", default=os.path.join(_HERE, "out", "process_comparison.json"))
  args = p.parse_args()
  cases = _harness.name_list(p, args.cases, "case", CASES)
  budgets = _harness.int_list(p, args.nfe, "--nfe")
  root = args.workdir or tempfile.mkdtemp(prefix="jdiff_process_")
  result = {"machine": _harness.machine_info(), "minutes": args.minutes, "num": args.num,
            "sampler": args.sampler, "rows": []}
  for case in cases:
    wd = os.path.join(root, case)
    info = train_for(CASES[case], wd, 60.0 * args.minutes, os.path.join(root, f"{case}.log"))
    for nfe in budgets:
      ev = evaluate(wd, args.sampler, nfe, args.num, os.path.join(root, f"{case}_{nfe}.json"))
      row = {"case": case, "config": CASES[case], "nfe": nfe, **info, **ev}
      result["rows"].append(row)
      _harness.write_json(args.out, result)
      print(json.dumps(row), flush=True)
  head = ["case", "train steps", "img/s", "NFE", "FD", "KID"]
  rows = [[r["case"], str(r["steps"]), f"{r['images_per_sec']:.1f}" if r["images_per_sec"] else "-",
           str(r["nfe"]), f"{r['fd']:.4g}", f"{r['kid']:.4g}"] for r in result["rows"]]
  print(_harness.format_table(head, rows))
  print(f"wrote {args.out}; runs in {root}")


if __name__ == "__main__":
  main()
