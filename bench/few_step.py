"""Few-step generation on Fashion-MNIST: FD against NFE for a teacher and the methods that distill it or
replace it, with the CPU minutes each took.

* **teacher**: a ``train.py`` workdir (default ``runs/fashion_mnist``, the default model) sampled with its
  config's sampler at ``--teacher_nfe`` (50, 20, 10, 5);
* **pd**: progressive distillation (Salimans & Ho 2022; ``configs/fashion_mnist_pd.py``) from
  ``--pd_teacher_steps`` DDIM steps of the teacher down to ``--pd_student_steps`` (1), one round of ``--pd_round_steps`` training
  steps per halving (each round its own ``train.py`` run, so each is timed), each round's student scored
  at its own step count with DDIM;
* **cd**: consistency distillation (Song et al. 2023; ``configs/fashion_mnist_cd.py``) for ``--cd_steps``;
* **ct**: improved consistency training from scratch (Song & Dhariwal 2023; ``configs/fashion_mnist_ict.py``)
  for ``--ct_steps``;
* **ct_init**: the same loss (no teacher in it) from the teacher's network and weights
  (``--config.training.init_from``, at the fine-tuning rate 1e-4; the idea of "consistency models made
  easy", Geng et al. 2024) for ``--ct_steps``;

* **reflow**: reflow of the (flow-matching) teacher (Liu et al. 2023; ``configs/fashion_mnist_reflow.py``):
  ``--reflow_pairs`` (noise, sample) pairs drawn with the teacher's sampler, ``--reflow_steps`` of training
  on them, scored with Euler at ``--reflow_nfe`` (1, 2, 4, 8), next to the teacher with Euler at the same
  NFE (``teacher_euler``: how much straighter the paths became; the straightness of both, ``jdiff.reflow``,
  is printed and recorded); then **reflow_1step**, its one-step
  distillation (``configs/fashion_mnist_reflow_distill.py``, ``--reflow_distill_steps``) at 1 NFE. The
  minutes include drawing the pairs;

the consistency models scored with the multistep consistency sampler at ``--cm_nfe`` (1, 2, 4, 8). FD is the
project's (``eval.py``: Fashion-MNIST feature space, ``--num`` samples, seed 0), reported with its real-data
floor at the same N and as a ratio to the teacher's FD at its largest NFE. The issue's targets: PD at 4
steps within 1.5x, CD at 2 steps within 2x and CT at 2 steps within 3x of the teacher's 50-NFE FD.

    python bench/few_step.py [--teacher runs/fashion_mnist] [--methods pd,cd,ct] [--num 1000] \\
        [--workdir DIR]

Prints a table, writes ``bench/out/few_step.json`` (after every evaluation) and ``bench/out/few_step.png``
(FD against NFE, log-log). With ``--workdir``, runs and evaluations already there are reused (not
trained or sampled again).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)

import _harness  # noqa: E402

METHODS = ("pd", "cd", "ct", "ct_init", "reflow")
CONFIGS = {"pd": "configs/fashion_mnist_pd.py", "cd": "configs/fashion_mnist_cd.py",
           "ct": "configs/fashion_mnist_ict.py", "ct_init": "configs/fashion_mnist_ict.py", "reflow": "configs/fashion_mnist_reflow.py",
           "reflow_1step": "configs/fashion_mnist_reflow_distill.py"}
TARGETS = {("pd", 4): 1.5, ("cd", 2): 2.0, ("ct", 2): 3.0}
COLORS = {"teacher": (0, 0, 0), "pd": (31, 119, 180), "cd": (214, 39, 40), "ct": (44, 160, 44),
          "ct_init": (23, 190, 207),
          "teacher_euler": (150, 150, 150), "reflow": (148, 103, 189), "reflow_1step": (255, 127, 14)}
QUIET = ["--config.training.sample_every=0", "--config.training.log_every=50"]


def _train(root: str, name: str, args: list) -> float:
  """Train ``name`` into ``root/name`` unless it is there already; its wall-clock minutes (recorded)."""
  wd, timing = os.path.join(root, name), os.path.join(root, f"{name}.timing.json")
  if os.path.exists(timing):
    return json.load(open(timing))["minutes"]
  if os.path.exists(wd):
    sys.exit(f"error: {wd} holds a run without its timing file (an interrupted bench?): remove it")
  minutes = _harness.run_train(args + QUIET, wd, os.path.join(root, f"{name}.log")) / 60.0
  _harness.write_json(timing, {"minutes": minutes})
  return minutes


def straightness(workdir: str, num: int = 256, steps: int = 50) -> float:
  """Mean straightness of a flow model's ODE paths (``jdiff.reflow.straightness``: Euler with ``steps``
  steps from the prior noise of samples ``0 .. num - 1``, seed 0); 0 for straight paths."""
  import jax
  import jax.numpy as jnp
  from jdiff import reflow, sampling
  from jdiff.generation import restore
  from jdiff.parametrization import make_denoiser
  r = restore.restore(workdir=workdir)
  x1 = sampling.initial_noise(jax.random.PRNGKey(0), jnp.arange(num), tuple(r.data_shape), r.schedule)
  fn = jax.jit(lambda p, x: reflow.straightness(
      make_denoiser(r.model_fn, p, r.schedule, r.parametrization), x, steps))
  return float(jnp.mean(jnp.concatenate([fn(r.params, x1[i:i + 64]) for i in range(0, num, 64)])))


def plot(rows: list, path: str, title: str) -> None:
  """FD against NFE on log-log axes, a line per method."""
  from PIL import Image, ImageDraw, ImageFont
  font = ImageFont.load_default()
  w, h, m = 560, 380, 60
  img = Image.new("RGB", (w, h + 40), "white")
  d = ImageDraw.Draw(img)
  d.text((20, 8), title, fill="black", font=font)
  nfe = [r["nfe"] for r in rows]
  fd = [r["fd"] for r in rows]
  lx0, lx1 = math.log10(min(nfe)) - 0.1, math.log10(max(nfe)) + 0.1
  ly0, ly1 = math.log10(min(fd)) - 0.05, math.log10(max(fd)) + 0.05
  x0, y0, x1, y1 = m, 40, w - 20, h - 40
  px = lambda v: x0 + (math.log10(v) - lx0) / (lx1 - lx0) * (x1 - x0)
  py = lambda v: y1 - (math.log10(v) - ly0) / (ly1 - ly0) * (y1 - y0)
  d.rectangle([x0, y0, x1, y1], outline="black")
  for v in sorted(set(nfe)):
    d.text((px(v) - 4, y1 + 5), str(v), fill="black", font=font)
  for j in range(5):
    v = 10 ** (ly0 + (ly1 - ly0) * j / 4)
    d.text((5, py(v) - 6), f"{v:.3g}", fill="black", font=font)
  d.text(((x0 + x1) / 2 - 10, y1 + 18), "NFE", fill="black", font=font)
  d.text((x0, 25), "FD (log scale)", fill="black", font=font)
  for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
    pts = sorted((r["nfe"], r["fd"]) for r in rows if r["method"] == method)
    color = COLORS.get(method, (120, 120, 120))
    xy = [(px(a), py(b)) for a, b in pts]
    if len(xy) > 1:
      d.line(xy, fill=color, width=2)
    for x, y in xy:
      d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
    d.line([x1 - 110, y0 + 12 + 14 * i, x1 - 90, y0 + 12 + 14 * i], fill=color, width=3)
    d.text((x1 - 85, y0 + 6 + 14 * i), method, fill="black", font=font)
  img.save(path)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--teacher", default="runs/fashion_mnist", help="the teacher's train.py workdir")
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--num", type=int, default=1000, help="samples per FD")
  p.add_argument("--teacher_nfe", default="50,20,10,5")
  p.add_argument("--cm_nfe", default="1,2,4,8", help="consistency-sampler step counts")
  p.add_argument("--pd_teacher_steps", type=int, default=16)
  p.add_argument("--pd_student_steps", type=int, default=1, help="the last round's step count")
  p.add_argument("--pd_round_steps", type=int, default=1000)
  p.add_argument("--cd_steps", type=int, default=3000)
  p.add_argument("--ct_steps", type=int, default=3000)
  p.add_argument("--reflow_pairs", type=int, default=10000)
  p.add_argument("--reflow_steps", type=int, default=2000)
  p.add_argument("--reflow_distill_steps", type=int, default=1000)
  p.add_argument("--reflow_nfe", default="1,2,4,8", help="Euler step counts for reflow")
  p.add_argument("--workdir", default="", help="keep the runs here (default: a temporary folder)")
  p.add_argument("--out", default=os.path.join(_HERE, "out", "few_step.json"))
  args = p.parse_args()
  methods = _harness.name_list(p, args.methods, "method", METHODS)
  teacher_nfe = _harness.int_list(p, args.teacher_nfe, "--teacher_nfe")
  cm_nfe = _harness.int_list(p, args.cm_nfe, "--cm_nfe")
  reflow_nfe = _harness.int_list(p, args.reflow_nfe, "--reflow_nfe")
  t = args.pd_teacher_steps
  ratio = t // max(args.pd_student_steps, 1)
  if t % max(args.pd_student_steps, 1) or ratio < 2 or ratio & (ratio - 1):
    p.error("--pd_teacher_steps / --pd_student_steps must be a power of two >= 2")
  teacher = os.path.abspath(args.teacher)
  if not os.path.isfile(os.path.join(teacher, "config.json")):
    p.error(f"--teacher {teacher} is not a train.py workdir; train one first (python train.py)")
  root = args.workdir or tempfile.mkdtemp(prefix="jdiff_few_step_")
  os.makedirs(root, exist_ok=True)
  result = {"machine": _harness.machine_info(), "teacher": teacher, "num": args.num, "rows": [],
            "minutes": {}, "args": vars(args)}
  rows = result["rows"]

  def score(method, wd, nfe, minutes, **kw):
    ev = _harness.eval_fd(wd, os.path.join(root, f"{method}_{os.path.basename(wd)}_{nfe}.json"),
                          args.num, reuse=True, **kw)
    rows.append({"method": method, "nfe": ev["nfe"], "minutes": minutes, **ev})
    _harness.write_json(args.out, result)
    print(f"{method:8s} NFE {ev['nfe']:3d}  FD {ev['fd']:.2f}  (floor {ev['fd_floor']:.2f})  "
          f"{minutes:.1f} min", flush=True)

  for n in teacher_nfe:
    score("teacher", teacher, n, 0.0, steps=n)
  if "pd" in methods:
    prev, total, k = teacher, 0.0, 0
    while t > args.pd_student_steps:
      k += 1
      name = f"pd_round_{k}"
      total += _train(root, name, [f"--config={CONFIGS['pd']}", f"--config.distill.teacher_workdir={prev}",
                                   f"--config.distill.teacher_steps={t}",
                                   f"--config.distill.student_steps={t // 2}",
                                   f"--config.training.num_steps={args.pd_round_steps}"])
      result["minutes"][name] = total
      prev, t = os.path.join(root, name), t // 2
      score("pd", prev, t, total)
  for method, steps_flag in (("cd", args.cd_steps), ("ct", args.ct_steps), ("ct_init", args.ct_steps)):
    if method not in methods:
      continue
    extra = {"cd": [f"--config.distill.teacher_workdir={teacher}",
                    f"--config.training.init_from={teacher}"],
             "ct_init": [f"--config.training.init_from={teacher}",
                         "--config.optim.lr=1e-4"]}.get(method, [])
    minutes = _train(root, method, [f"--config={CONFIGS[method]}", *extra,
                                    f"--config.training.num_steps={steps_flag}"])
    result["minutes"][method] = minutes
    for n in cm_nfe:
      score(method, os.path.join(root, method), n, minutes, steps=n)

  if "reflow" in methods:
    result["straightness"] = {"teacher": straightness(teacher)}
    for n in reflow_nfe:
      score("teacher_euler", teacher, n, 0.0, sampler="euler", steps=n)
    pairs = f"--config.reflow.num_pairs={args.reflow_pairs}"
    minutes = _train(root, "reflow", [f"--config={CONFIGS['reflow']}", pairs,
                                      f"--config.distill.teacher_workdir={teacher}",
                                      f"--config.training.num_steps={args.reflow_steps}"])
    result["minutes"]["reflow"] = minutes
    result["straightness"]["reflow"] = straightness(os.path.join(root, "reflow"))
    print(f"straightness of the ODE paths (50 Euler steps, 256 samples; 0 = straight): teacher "
          f"{result['straightness']['teacher']:.4f}, reflow {result['straightness']['reflow']:.4f}",
          flush=True)
    for n in reflow_nfe:
      score("reflow", os.path.join(root, "reflow"), n, minutes, sampler="euler", steps=n)
    minutes += _train(root, "reflow_1step", [
        f"--config={CONFIGS['reflow_1step']}", pairs,
        f"--config.distill.teacher_workdir={os.path.join(root, 'reflow')}",
        f"--config.training.num_steps={args.reflow_distill_steps}"])
    result["minutes"]["reflow_1step"] = minutes
    score("reflow_1step", os.path.join(root, "reflow_1step"), 1, minutes, sampler="euler", steps=1)

  ref = max((r for r in rows if r["method"] == "teacher"), key=lambda r: r["nfe"])
  for r in rows:
    r["vs_teacher"] = r["fd"] / ref["fd"]
    target = TARGETS.get((r["method"], r["nfe"]))
    r["target"] = target
    r["met"] = None if target is None else bool(r["vs_teacher"] <= target)
  _harness.write_json(args.out, result)
  head = ["method", "NFE", "FD", "floor", "FD / teacher@" + str(ref["nfe"]), "target", "CPU min"]
  print(_harness.format_table(head, [
      [r["method"], str(r["nfe"]), f"{r['fd']:.2f}", f"{r['fd_floor']:.2f}", f"{r['vs_teacher']:.2f}",
       "-" if r["target"] is None else f"<= {r['target']:g}x ({'met' if r['met'] else 'not met'})",
       f"{r['minutes']:.1f}"] for r in rows]))
  png = os.path.splitext(args.out)[0] + ".png"
  plot(rows, png, f"Fashion-MNIST, FD of {args.num} samples against NFE")
  print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
  main()
