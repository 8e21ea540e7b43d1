"""Conditional generation on Fashion-MNIST, measured: classifier-free guidance (Ho & Salimans 2022) of the
class-conditional model at several scales w, and classifier guidance (Dhariwal & Nichol 2021) of the
unconditional model with jdiff's noise-conditional classifier at several scales s.

Every row samples ``--num`` images (sample i gets label i % 10, so N/10 per class) with the same sampler
(DPM-Solver++(2M), 20 steps, uniform-logSNR grid, x0 clipped to [-1, 1], EMA parameters; seed 0, so
every row starts from the same noise) through ``jdiff.generation`` (what ``sample.py`` runs),
and scores them with ``jdiff.eval.report`` in the feature space of the Fashion-MNIST evaluation
classifier: its accuracy on the samples against the requested labels, FD and KID against N real
training images, and the floor of each number (N real test images against the same training images).
Guidance scales are traced: one compiled program per model serves every scale.

Rows: ``cfg w=W`` (the conditional model; w = 0 is the plain conditional model) and ``cg s=S`` (the
unconditional model guided by the classifier; s = 0 is the unconditional model, whose accuracy against
the requested labels is chance). Goal of the issue: accuracy >= 90% at some w with FD <= 2x FD(w=0).

The models: ``--cond_workdir`` (default ``runs/fashion_mnist``: ``python train.py``, class-conditional with
label dropout 0.1), ``--uncond_workdir`` (default ``runs/fashion_mnist_uncond``: ``python train.py
--config.training.conditional=False --workdir=runs/fashion_mnist_uncond``) and ``--classifier``.

  python bench/conditional_guidance.py                              # N=1000, w 0,1,2,4, s 0,1,2,4,8,16
  python bench/conditional_guidance.py --num 200 --cfg 0,2 --cg 0,2  # quick look

Writes ``bench/out/conditional_guidance.json`` (after every row, so a stopped run keeps its rows) and
``bench/out/conditional_guidance.png``: one row per class, one block of columns per table row. Each
row's samples are kept in ``--cache`` (default ``runs/bench_cache/conditional_guidance``) and reused by
a later run with the same settings and checkpoints, so rows can be added (or the table re-scored)
without sampling again.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

CLASSES = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Boot")


def _floats(text: str) -> list:
  return [float(v) for v in text.split(",") if v.strip()]


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--cond_workdir", default=os.path.join(REPO, "runs", "fashion_mnist"))
  p.add_argument("--uncond_workdir", default=os.path.join(REPO, "runs", "fashion_mnist_uncond"))
  p.add_argument("--uncond_step", type=int, default=None, help="checkpoint step (default: newest)")
  p.add_argument("--classifier", default=os.path.join(REPO, "runs", "fashion_mnist_classifier"))
  p.add_argument("--num", type=int, default=1000, help="samples per row (N/10 per class)")
  p.add_argument("--cfg", default="0,1,2,4", help="classifier-free guidance scales w ('' = none)")
  p.add_argument("--cg", default="0,1,2,4,8,16", help="classifier guidance scales s ('' = none)")
  p.add_argument("--sampler", default="dpmpp_2m")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--batch", type=int, default=250, help="samples per compiled call")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--per_class", type=int, default=6, help="images per class and row in the PNG")
  p.add_argument("--out", default=os.path.join(HERE, "out", "conditional_guidance"),
                 help="output prefix: writes PREFIX.json and PREFIX.png")
  p.add_argument("--cache", default=os.path.join(REPO, "runs", "bench_cache", "conditional_guidance"),
                 help="keep each row's samples here and reuse them when a row's settings, model and "
                      "classifier checkpoints are unchanged ('' = off)")
  return p.parse_args(argv)


def _sample(restored, settings, classifier, cache):
  """``(samples, labels, timing)``, from ``cache`` when this exact row was sampled before."""
  import dataclasses
  import hashlib
  from jdiff import generation as gen
  key = json.dumps([dataclasses.asdict(settings), restored.checkpoint_dir, restored.which,
                    classifier.checkpoint_dir if classifier is not None else None], sort_keys=True)
  path = os.path.join(cache, hashlib.sha256(key.encode()).hexdigest()[:20] + ".npz") if cache else None
  if path and os.path.exists(path):
    with np.load(path, allow_pickle=False) as z:
      return z["samples"], z["labels"], json.loads(str(z["timing"]))
  t0 = time.perf_counter()
  res = gen.generate(restored, settings, classifier=classifier, progress=False)
  timing = {"sample_seconds": res.sample_seconds, "compile_seconds": res.compile_seconds,
            "wall_seconds": time.perf_counter() - t0, "nfe_per_batch": res.nfe_per_batch}
  if path:
    os.makedirs(cache, exist_ok=True)
    np.savez(path + ".tmp.npz", samples=res.samples, labels=res.labels, timing=json.dumps(timing),
             key=key)
    os.replace(path + ".tmp.npz", path)
  return res.samples, res.labels, timing


def run_row(restored, settings, classifier, net, cache):
  from jdiff.eval import evaluate
  samples, labels, timing = _sample(restored, settings, classifier, cache)
  finite = np.isfinite(samples).all(axis=(1, 2, 3))
  x = np.where(np.isfinite(samples), samples, 0.0)
  rep = evaluate.report(x, labels, net=net, seed=0)
  pred = np.argmax(net.features_and_logits(x)[1], axis=-1)
  per_class = [float(np.mean(pred[labels == c] == c)) for c in range(10)]
  row = {k: rep[k] for k in ("num_samples", "accuracy", "fd", "kid", "kid_std", "precision", "recall")}
  row.update(per_class_accuracy=per_class, nonfinite=int(np.sum(~finite)), step=restored.step,
             checkpoint=restored.checkpoint_dir, **timing)
  return row, rep["floor"], samples, labels


def grid_png(blocks, path, per_class: int):
  """One row per class; one block of ``per_class`` columns per table row, titled."""
  from PIL import Image, ImageDraw
  from jdiff.utils import images as image_utils
  h = w = 28
  pad, gap, head, left = 1, 10, 14, 56
  ncols = len(blocks)
  width = left + ncols * (per_class * (w + pad) + gap)
  height = head + 10 * (h + pad)
  canvas = np.full((height, width), 255, np.uint8)
  for b, (_, x, labels) in enumerate(blocks):
    u8 = image_utils.to_uint8(x)[..., 0]
    x0 = left + b * (per_class * (w + pad) + gap)
    for c in range(10):
      idx = np.flatnonzero(labels == c)[:per_class]
      for j, i in enumerate(idx):
        r0, c0 = head + c * (h + pad), x0 + j * (w + pad)
        canvas[r0:r0 + h, c0:c0 + w] = u8[i]
  img = Image.fromarray(canvas).convert("RGB")
  draw = ImageDraw.Draw(img)
  for b, (title, _, _) in enumerate(blocks):
    draw.text((left + b * (per_class * (w + pad) + gap), 1), title, fill=(200, 0, 0))
  for c in range(10):
    draw.text((2, head + c * (h + pad) + 9), CLASSES[c], fill=(0, 0, 0))
  img = img.resize((img.width * 2, img.height * 2), Image.NEAREST)
  tmp = path + ".tmp.png"
  img.save(tmp)
  os.replace(tmp, path)


def main(argv=None):
  args = parse_args(argv)
  import jax
  from jdiff.eval import features
  from jdiff import generation as gen
  from jdiff.generation import restore

  cfg_scales, cg_scales = _floats(args.cfg), _floats(args.cg)
  net = features.get_feature_net()
  base = dict(num=args.num, seed=args.seed, sampler=args.sampler, steps=args.steps, grid="uniform_logsnr",
              batch_size=args.batch, labels=tuple(range(10)))
  out = {"settings": {**base, "labels": "i % 10", "clip_x0": True, "params": "ema"},
         "versions": {"jax": jax.__version__, "python": platform.python_version()},
         "command": "python bench/conditional_guidance.py " + " ".join(sys.argv[1:] if argv is None
                                                                     else argv),
         "rows": [], "floor": None}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  blocks = []

  def save():
    tmp = args.out + ".json.tmp"
    with open(tmp, "w") as f:
      json.dump(out, f, indent=1)
    os.replace(tmp, args.out + ".json")
    if blocks:
      grid_png(blocks, args.out + ".png", args.per_class)

  header = (f"{'row':>10} {'step':>5} {'N':>5} {'accuracy':>9} {'FD':>8} {'FD/FD0':>7} {'KID':>9} "
            f"{'prec':>5} {'rec':>5} {'s/row':>6}")
  print(header, flush=True)

  def show(name, row, fd0):
    ratio = row["fd"] / fd0 if fd0 else float("nan")
    print(f"{name:>10} {row['step']:>5} {row['num_samples']:>5} {row['accuracy']:>9.3f} "
          f"{row['fd']:>8.3f} {ratio:>7.2f} {row['kid']:>9.5f} {row['precision']:>5.2f} "
          f"{row['recall']:>5.2f} {row['sample_seconds']:>6.0f}", flush=True)

  if cfg_scales:
    cond = restore.restore(args.cond_workdir)
    fd0 = None
    for w in cfg_scales:
      row, floor, x, labels = run_row(cond, gen.Settings(guidance=w, **base), None, net, args.cache)
      row.update(kind="cfg", scale=w, model=cond.workdir)
      fd0 = row["fd"] if w == 0 else fd0
      out["rows"].append(row)
      out["floor"] = floor
      blocks.append((f"cfg w={w:g}", x, labels))
      show(f"cfg w={w:g}", row, fd0)
      save()
  if cg_scales:
    uncond = restore.restore(args.uncond_workdir, step=args.uncond_step)
    clf = restore.restore(args.classifier, task="classifier")
    out["classifier"] = {"checkpoint": clf.checkpoint_dir, "step": clf.step}
    fd0 = None
    for s in cg_scales:
      row, floor, x, labels = run_row(uncond, gen.Settings(classifier_scale=s, **base), clf, net,
                                      args.cache)
      row.update(kind="cg", scale=s, model=uncond.workdir, classifier=clf.checkpoint_dir)
      fd0 = row["fd"] if s == 0 else fd0
      out["rows"].append(row)
      out["floor"] = floor
      blocks.append((f"cg s={s:g}", x, labels))
      show(f"cg s={s:g}", row, fd0)
      save()

  f = out["floor"]
  if f:
    print(f"{'floor':>10} {'':>5} {f['num_samples']:>5} {f['accuracy']:>9.3f} {f['fd']:>8.3f} "
          f"{'':>7} {f['kid']:>9.5f} {f['precision']:>5.2f} {f['recall']:>5.2f}   (real test vs train)")
  cfg_rows = [r for r in out["rows"] if r["kind"] == "cfg"]
  fd_w0 = next((r["fd"] for r in cfg_rows if r["scale"] == 0), None)
  if fd_w0:
    ok = [r["scale"] for r in cfg_rows if r["accuracy"] >= 0.9 and r["fd"] <= 2 * fd_w0]
    out["goal"] = {"accuracy_min": 0.9, "fd_max_ratio": 2.0, "met_at_w": ok}
    print(f"goal (accuracy >= 0.90 with FD <= 2 x FD(w=0) = {2 * fd_w0:.3f}): "
          + (f"met at w = {', '.join(f'{w:g}' for w in ok)}" if ok else "not met"))
  save()
  print(f"wrote {args.out}.json and {args.out}.png")


if __name__ == "__main__":
  main()
