"""The text-to-image table: caption accuracy and FD per place of a text model (configs/fashion_mnist_text.py
or configs/fashion_mnist_compose.py) over the guidance scale w, with and without Imagen's dynamic
thresholding, and for the base model alone vs the cascade (``--sr_workdir``, configs/fashion_mnist_sr.py).

Every row samples ``--num`` images per prompt set through ``jdiff.generation`` (what ``sample.py`` runs;
seed 0, so every row starts from the same noise; EMA parameters; the config's sampler) and scores them
with ``jdiff.eval.caption_report``: the Fashion-MNIST classifier per canvas place, caption accuracy (every
place right) and FD per place against real canvases of the same prompt set, each next to its floor
(real canvases). Prompt sets: single items (one prompt per class), or pairs on training combinations
and on the 10 held-out ones. Guidance scales are traced: one compiled program serves every w.

  python bench/text_to_image.py --workdir=runs/fashion_mnist_text                      # w 0,1,3,5
  python bench/text_to_image.py --workdir=runs/fashion_mnist_compose --num=500
  python bench/text_to_image.py --workdir=runs/fashion_mnist_text14 --sr_workdir=runs/fashion_mnist_sr
  python bench/text_to_image.py --workdir=runs/fashion_mnist_text --steps_curve   # accuracy per checkpoint

``--steps_curve`` scores every checkpoint of the run (at the first w) instead: the training curve
(``--curve_steps=1000,3000`` scores only those checkpoints).
Writes ``bench/out/text_to_image_<run>.json`` after every row (a stopped run keeps its rows).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import _harness  # pylint: disable=wrong-import-position


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="a text model's train.py workdir")
  p.add_argument("--sr_workdir", default=None, help="a super-resolution stage: also score the cascade")
  p.add_argument("--sr_level", type=float, default=None, help="the cascade's noise-augmentation level")
  p.add_argument("--num", type=int, default=1000, help="samples per prompt set")
  p.add_argument("--guidance", default="0,1,3,5", help="comma-separated guidance scales w")
  p.add_argument("--threshold", type=float, default=0.995, help="dynamic thresholding percentile")
  p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the config's)")
  p.add_argument("--sampler", default=None, help="sampler (default: the config's)")
  p.add_argument("--steps_curve", action="store_true", help="score every checkpoint at the first w")
  p.add_argument("--curve_steps", default=None,
                 help="with --steps_curve: only these checkpoints (comma-separated steps)")
  p.add_argument("--out", default=None, help="output JSON (default bench/out/text_to_image_<run>.json)")
  args = p.parse_args(argv)
  args.scales = [float(v) for v in args.guidance.split(",") if v.strip()]
  if not args.scales:
    p.error("--guidance needs at least one scale")
  if args.curve_steps is not None:
    if not args.steps_curve:
      p.error("--curve_steps selects checkpoints for --steps_curve; pass --steps_curve too")
    args.curve_steps = sorted(set(_harness.int_list(p, args.curve_steps, "curve_steps")))
    ckpts = os.path.join(args.workdir, "checkpoints")
    saved = _saved_steps(args.workdir)
    missing = [v for v in args.curve_steps if v not in saved]
    if missing:
      p.error(f"--curve_steps {missing} have no checkpoint in {ckpts} (saved: {saved})")
  return args


def _saved_steps(workdir):
  ckpts = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(ckpts) if d.isdigit()) if os.path.isdir(ckpts) else []


def main(argv=None):
  args = parse_args(argv)
  from jdiff import generation  # pylint: disable=g-import-not-at-top
  from jdiff.eval import caption_report  # pylint: disable=g-import-not-at-top
  from jdiff.generation import restore  # pylint: disable=g-import-not-at-top
  scales = args.scales
  run = os.path.basename(os.path.normpath(args.workdir))
  out = args.out or os.path.join(HERE, "out", f"text_to_image_{run}.json")
  base = restore.restore(args.workdir)
  sr = restore.restore(args.sr_workdir) if args.sr_workdir else None
  settings = generation.Settings(num=args.num, seed=0, steps=args.steps, sampler=args.sampler)
  report = {"workdir": os.path.abspath(args.workdir), "step": base.step, "num": args.num,
            "sr_workdir": args.sr_workdir, "machine": _harness.machine_info(), "rows": []}
  rows = []
  if args.steps_curve:
    cases = [(step, scales[0], None, False) for step in args.curve_steps or _saved_steps(args.workdir)]
  else:
    stages = [False, True] if sr is not None else [False]
    cases = [(base.step, w, th, cascade) for cascade in stages for th in (None, args.threshold)
             for w in scales]
  for step, w, th, cascade in cases:
    model = base if step == base.step else restore.restore(args.workdir, step=step)
    if cascade is False and sr is not None and tuple(model.data_shape[:2]) != (28, 28 * (
        2 if "pairs" in model.config.data.name else 1)):
      continue  # a low-resolution base is scored through its cascade only
    s = dataclasses.replace(settings, guidance=w if w else None, threshold=th)
    t0 = time.perf_counter()
    res = caption_report.report(model, s, sr=sr if cascade else None, sr_level=args.sr_level,
                                progress=False, log=lambda *a: None)
    row = {"step": step, "guidance": w, "threshold": th, "cascade": cascade,
           "seconds": time.perf_counter() - t0, "sets": res}
    report["rows"].append(row)
    _harness.write_json(out, report)
    for name, r in res.items():
      rows.append([str(step), f"{w:g}", "-" if th is None else f"{th:g}", "yes" if cascade else "no", name,
                   f"{r['accuracy']:.3f}", f"{r['floor']['accuracy']:.3f}", f"{r['fd']:.2f}",
                   "-" if r["floor"]["fd"] is None else f"{r['floor']['fd']:.2f}"])
      print(_harness.format_table(["step", "w", "threshold", "cascade", "set", "accuracy", "real",
                                   "FD/place", "real FD"], rows[-1:]).splitlines()[-1], flush=True)
  print()
  print(_harness.format_table(["step", "w", "threshold", "cascade", "set", "accuracy", "real", "FD/place",
                               "real FD"], rows))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
