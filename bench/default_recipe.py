"""Which recipe to make the default: FD against training wall-clock, at 10 and 20 NFE and 50-step ancestral.

Every candidate is the default config (``configs/fashion_mnist.py``: same U-Net, data, batch, optimizer
unless the candidate says otherwise) with the process fields (and whether it reads labels) overridden,
trained by ``train.py`` (the real CLI, fresh workdir, both CPU cores as JAX devices) for the same
wall-clock budget counted from the process start (compilation included, as a user waits for it), then
``SIGTERM`` (the loop saves a checkpoint at the end of the current step). A checkpoint every ``--ckpt_every`` steps; the bench notes the second each one
appears, and scores the newest one before every ``--every`` minutes and the last one with ``eval.py``
(FD of ``--num`` EMA samples in the Fashion-MNIST feature space, as a ratio to the real-data floor at the
same N; the share of noise tiles) with UniPC (Zhao et al. 2023), the best fast sampler of
``bench/sampler_accuracy.py``, at each ``--nfe`` budget on the candidate's grid, and the last one also
with 50-step ancestral sampling (Ho et al. 2020, Alg. 2).

Candidates (``CANDIDATES``):

* ``eps_linear``: DDPM linear schedule, eps-prediction, simple loss, uniform t (Ho et al. 2020): the
  default until this bench;
* ``v_cosine_minsnr``: cosine schedule (Nichol & Dhariwal 2021), v-prediction (Salimans & Ho 2022),
  min-SNR-5 weighting (Hang et al. 2023);
* ``edm``: EDM preconditioning, loss weighting and log-normal noise levels (Karras et al. 2022);
* ``flow``: flow matching / rectified flow with logit-normal t (Lipman et al. 2023; Liu et al. 2023;
  Esser et al. 2024);
* ``flow_lr2e-3``: the same at twice the learning rate;
* ``flow_cond``: ``flow_lr2e-3`` with the class labels as a condition (the U-Net's label embedding),
  dropped to the null label with probability 0.1 (classifier-free guidance, Ho & Salimans 2022): the
  default since 2026-12-03. The other candidates are unconditional, as they were measured.

    python bench/default_recipe.py [--minutes 5] [--every 2.5] [--num 500] [--nfe 10,20] \
        [--candidates flow,eps_linear] [--workdir DIR]

Prints a table of FD / floor and writes ``bench/out/default_recipe.json`` (after every evaluation) and
``bench/out/default_recipe.png`` (FD / floor against minutes). With ``--workdir``, a candidate whose run
is already there (``timing.json``) is not trained again. Note whether the machine was quiet: the budget is
wall-clock, so other load changes the number of steps each candidate gets.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)
sys.path.insert(0, _HERE)

import _harness  # noqa: E402

BASE = "configs/fashion_mnist.py"
# The process candidates are unconditional, as measured (2026-12-01); ``flow_cond`` adds the class labels.
_UNCOND = {"training.conditional": "False"}
_FLOW = {**_UNCOND, "diffusion.schedule": "flow", "diffusion.parametrization": "flow",
         "diffusion.weighting": "simple", "diffusion.time_sampling": "logit_normal", "sampling.grid": "uniform_t"}
CANDIDATES = {
    "eps_linear": {**_UNCOND, "diffusion.schedule": "linear", "diffusion.parametrization": "eps",
                   "diffusion.weighting": "simple", "diffusion.time_sampling": "uniform",
                   "sampling.grid": "uniform_logsnr"},
    "v_cosine_minsnr": {**_UNCOND, "diffusion.schedule": "cosine", "diffusion.parametrization": "v",
                        "diffusion.weighting": "min_snr", "diffusion.time_sampling": "uniform",
                        "sampling.grid": "uniform_t"},
    "edm": {**_UNCOND, "diffusion.schedule": "edm", "diffusion.parametrization": "edm",
            "diffusion.weighting": "edm", "diffusion.time_sampling": "lognormal", "sampling.grid": "karras"},
    "flow": dict(_FLOW),
    "flow_lr2e-3": {**_FLOW, "optim.lr": "2e-3"},
    "flow_cond": {**_FLOW, "optim.lr": "2e-3", "training.conditional": "True",
                  "training.cond_drop_prob": "0.1"},
}
ANCESTRAL = ("ddpm", 50)
COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207),
          (140, 86, 75)]


def train_for(overrides: dict, workdir: str, seconds: float, ckpt_every: int, log_path: str) -> dict:
  """The default config with ``overrides`` for ``seconds`` of wall-clock (``_harness.train_for``), a
  checkpoint every ``ckpt_every`` steps, all kept."""
  args = [f"--config={BASE}", "--config.training.num_steps=1000000", "--config.training.sample_every=0",
          f"--config.training.ckpt_every={ckpt_every}", "--config.training.keep_checkpoints=1000",
          "--config.training.log_every=50"] + [f"--config.{k}={v}" for k, v in overrides.items()]
  return _harness.train_for(args, workdir, seconds, log_path)


def pick_checkpoints(checkpoints: dict, minutes: float, every: float) -> list[tuple[int, float]]:
  """The newest checkpoint at or before each ``every``-minute mark, and the last one: ``(step, s)``."""
  known = sorted((int(s), t) for s, t in checkpoints.items() if t is not None)
  picked = []
  marks = list(np.arange(every, minutes + 1e-9, every)) if every > 0 else []
  for mark in marks[:-1] if marks and abs(marks[-1] - minutes) < 1e-6 else marks:
    before = [(s, t) for s, t in known if t <= 60.0 * mark]
    if before and before[-1] not in picked:
      picked.append(before[-1])
  if known and known[-1] not in picked:
    picked.append(known[-1])
  return picked


def evaluate(workdir: str, step: int, sampler: str, steps: int, num: int, out: str) -> dict:
  return _harness.eval_fd(workdir, out, num, step=step, sampler=sampler, steps=steps)


def plot(rows: list, path: str, title: str) -> None:
  """FD / floor (log scale) against training minutes: one panel per sampler budget, a line per
  candidate, the targets (3x and 4x the floor) dashed."""
  from PIL import Image, ImageDraw, ImageFont
  font = ImageFont.load_default()
  panels = list(dict.fromkeys(r["label"] for r in rows))
  cands = list(dict.fromkeys(r["candidate"] for r in rows))
  pw, ph, m = 420, 300, 52
  img = Image.new("RGB", (len(panels) * pw + 30, ph + 90), "white")
  d = ImageDraw.Draw(img)
  d.text((20, 8), title, fill="black", font=font)
  ratios = np.array([r["fd_ratio"] for r in rows] + [2.0, 5.0])
  lo, hi = np.log10(ratios.min()) - 0.05, np.log10(ratios.max()) + 0.05
  tmax = max(r["minutes"] for r in rows) * 1.05
  for k, label in enumerate(panels):
    ox = 15 + k * pw
    x0, y0, x1, y1 = ox + m, 45, ox + pw - 15, ph
    px = lambda t: x0 + t / tmax * (x1 - x0)
    py = lambda v: y1 - (np.log10(v) - lo) / (hi - lo) * (y1 - y0)
    d.rectangle([x0, y0, x1, y1], outline="black")
    d.text((x0, 30), f"FD / floor, {label} (log scale)", fill="black", font=font)
    for j in range(5):
      v = 10 ** (lo + (hi - lo) * j / 4)
      d.line([x0 - 4, py(v), x0, py(v)], fill="black")
      d.text((ox, py(v) - 6), f"{v:.3g}", fill="black", font=font)
    for t in range(0, int(tmax) + 1, max(1, int(tmax) // 6)):
      d.line([px(t), y1, px(t), y1 + 4], fill="black")
      d.text((px(t) - 3, y1 + 6), str(t), fill="black", font=font)
    d.text(((x0 + x1) / 2 - 45, y1 + 20), "training minutes", fill="black", font=font)
    for target in (3.0, 4.0):
      for xs in np.arange(x0, x1, 10):
        d.line([xs, py(target), min(xs + 5, x1), py(target)], fill=(150, 150, 150), width=1)
      d.text((x1 - 20, py(target) - 12), f"{target:g}x", fill=(110, 110, 110), font=font)
    for i, cand in enumerate(cands):
      pts = sorted((r["minutes"], r["fd_ratio"]) for r in rows if r["label"] == label and
                   r["candidate"] == cand)
      xy = [(px(t), py(v)) for t, v in pts]
      color = COLORS[i % len(COLORS)]
      if len(xy) > 1:
        d.line(xy, fill=color, width=2)
      for x, y in xy:
        d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
  for i, cand in enumerate(cands):  # legend
    lx, ly = 30 + i * 150, ph + 60
    d.line([lx, ly + 6, lx + 22, ly + 6], fill=COLORS[i % len(COLORS)], width=3)
    d.text((lx + 27, ly), cand, fill="black", font=font)
  img.save(path)


def table(rows: list) -> str:
  labels = list(dict.fromkeys(r["label"] for r in rows))
  keys = list(dict.fromkeys((r["candidate"], r["step"]) for r in rows))
  head = ["candidate", "minutes", "step"] + [f"FD/floor {lb}" for lb in labels] + [
      f"noisy {lb}" for lb in labels]
  out = []
  for cand, step in keys:
    cells = {r["label"]: r for r in rows if r["candidate"] == cand and r["step"] == step}
    minutes = next(iter(cells.values()))["minutes"]
    out.append([cand, f"{minutes:.1f}", str(step)] +
               [f"{cells[lb]['fd_ratio']:.2f}" if lb in cells else "-" for lb in labels] +
               [f"{cells[lb]['noisy']:.3f}" if lb in cells else "-" for lb in labels])
  return _harness.format_table(head, out)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--candidates", default=",".join(CANDIDATES))
  p.add_argument("--minutes", type=float, default=5.0, help="training wall-clock per candidate")
  p.add_argument("--every", type=float, default=2.5, help="score a checkpoint every this many minutes")
  p.add_argument("--ckpt_every", type=int, default=100, help="checkpoint every this many steps")
  p.add_argument("--num", type=int, default=500, help="samples per FD")
  p.add_argument("--nfe", default="10,20", help="UniPC budgets")
  p.add_argument("--no_ancestral", action="store_true", help="skip 50-step ancestral on the last step")
  p.add_argument("--workdir", default="", help="keep the runs here (default: a temporary folder)")
  p.add_argument("--out", default=os.path.join(_HERE, "out", "default_recipe.json"))
  args = p.parse_args()
  cands = _harness.name_list(p, args.candidates, "candidate", CANDIDATES)
  budgets = _harness.int_list(p, args.nfe, "--nfe")
  if args.minutes <= 0 or args.every < 0 or args.num < 4 or args.ckpt_every < 1:
    p.error("--minutes > 0, --every >= 0, --num >= 4 and --ckpt_every >= 1 are needed")
  root = args.workdir or tempfile.mkdtemp(prefix="jdiff_recipe_")
  os.makedirs(root, exist_ok=True)
  result = {"machine": _harness.machine_info(), "base": BASE, "minutes": args.minutes, "num": args.num,
            "candidates": {c: CANDIDATES[c] for c in cands}, "runs": {}, "rows": []}
  png = os.path.splitext(args.out)[0] + ".png"
  for cand in cands:
    wd = os.path.join(root, cand)
    timing_path = os.path.join(root, f"{cand}.timing.json")
    if os.path.exists(timing_path):
      info = json.load(open(timing_path))
    else:
      if os.path.exists(wd):
        sys.exit(f"error: {wd} holds a run without its timing file (an interrupted bench?): remove it")
      info = train_for(CANDIDATES[cand], wd, 60.0 * args.minutes, args.ckpt_every,
                       os.path.join(root, f"{cand}.log"))
      _harness.write_json(timing_path, info)
    result["runs"][cand] = info
    picked = pick_checkpoints(info["checkpoints"], args.minutes, args.every)
    grid_steps = {n: n for n in budgets}  # UniPC steps that spend at most n NFE on this process
    for i, (step, sec) in enumerate(picked):
      evals = [("unipc", n, f"UniPC {n} NFE") for n in budgets]
      if i == len(picked) - 1 and not args.no_ancestral:
        evals.append((*ANCESTRAL, f"ancestral {ANCESTRAL[1]} steps"))
      for sampler, budget, label in evals:
        steps = grid_steps.get(budget, budget) if sampler == "unipc" else budget
        out = lambda k: os.path.join(root, f"{cand}_{step}_{sampler}{k}.json")
        ev = evaluate(wd, step, sampler, steps, args.num, out(steps))
        if sampler == "unipc" and ev["nfe"] > budget:  # e.g. a last denoising call on VE/EDM grids
          steps = grid_steps[budget] = steps - (ev["nfe"] - budget)
          ev = evaluate(wd, step, sampler, steps, args.num, out(steps))
        row = {"candidate": cand, "step": step, "minutes": sec / 60.0, "sampler": sampler,
               "steps": steps, "label": label, **ev}
        result["rows"].append(row)
        _harness.write_json(args.out, result)
        print(json.dumps(row), flush=True)
    plot(result["rows"], png, f"Fashion-MNIST, N={args.num}: FD / real-data floor vs training time")
  print(table(result["rows"]))
  print(f"wrote {args.out} and {png}; runs in {root}")


if __name__ == "__main__":
  main()
