"""Sample quality against NFE for every sampler, on a trained Fashion-MNIST model.

For each sampler and NFE budget: FD, KID (± std over subsets), precision and recall of N EMA samples in
the Fashion-MNIST feature space (``jdiff.eval.report``), next to the floor (N real test images against
the same N real training images: what a perfect model scores at this N). Steps are chosen so that the
NFE actually spent is at most the budget (Heun: 2 per step, 1 on the last step to sigma = 0, so 5, 9,
19, 49 NFE); the NFE spent is measured and reported. Every cell uses the same seed, so sample ``i``
starts from the same noise in every cell (common random numbers: differences between cells are not
noise-draw differences). As in ``sample.py`` / ``eval.py``, x0_hat is clipped to [-1, 1] at every step
when the model's config says so (``sampling.clip_x0``, the default for images; recorded per row), and
the samples are clipped to [-1, 1] before scoring. A sampler may carry hyperparameters, ``NAME:k=v[:k=v]``
(e.g. ``heun:S_churn=10``, Heun with the churn of Karras et al. 2022, Alg. 2): they replace the ones the
model's config records for it (``sampling.hparams``), and ``:`` alone means none of them.

    python bench/quality_vs_nfe.py [--workdir runs/fashion_mnist] [--num 1000] \
        [--samplers ddim,euler,heun,dpmpp_2m,dpmpp_3m,ddpm] [--nfe 5,10,20,50]

Writes ``bench/out/quality_vs_nfe.json`` (after every cell, so a partial run keeps its results) and
``bench/out/quality_vs_nfe.png`` (drawn with PIL: four panels, one line per sampler, the floor dashed).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)
if _REPO not in sys.path:
  sys.path.insert(0, _REPO)

METRICS = ("fd", "kid", "precision", "recall")
COLORS = {"ddim": (31, 119, 180), "euler": (255, 127, 14), "heun": (44, 160, 44),
          "dpmpp_2m": (214, 39, 40), "dpmpp_3m": (148, 103, 189), "ddpm": (140, 86, 75),
          "unipc": (227, 119, 194)}


def parse_sampler(spec: str):
  """``NAME`` or ``NAME:k=v[:k=v...]`` -> (name, hyperparameters or None: the config's)."""
  name, sep, rest = spec.partition(":")
  if not sep:
    return name, None
  hp = {}
  for item in (i for i in rest.split(":") if i):
    k, eq, v = item.partition("=")
    if not eq or not k:
      raise SystemExit(f"--samplers: {spec!r}: hyperparameters look like NAME:k=v (heun:S_churn=10)")
    hp[k] = float(v)
  return name, hp


def steps_for(sampler: str, nfe: int, from_infinity: bool = False) -> int:
  """Grid steps spending at most ``nfe`` denoiser calls on a schedule that reaches sigma = 0. Heun spends
  2 per step but 1 on the last step (to sigma = 0) and, with ``from_infinity`` (flow matching's t = 1,
  sigma_tilde = inf), 1 on the first."""
  if sampler == "heun":
    return max(1, (nfe + 1 + int(from_infinity)) // 2)
  return max(1, nfe)


def _fmt(v, spec):
  return "-" if v is None else format(v, spec)


def table(rows, floor) -> str:
  head = (f"{'sampler':>9} {'NFE':>4} {'steps':>5} {'FD':>8} {'KID':>9} {'±std':>7} {'prec':>6} "
          f"{'recall':>6} {'s':>6}")
  lines = [head, "-" * len(head)]
  for r in rows:
    lines.append(f"{r['sampler']:>9} {r['nfe']:>4} {r['steps']:>5} {r['fd']:>8.3f} {r['kid']:>9.5f} "
                 f"{r['kid_std']:>7.5f} {r['precision']:>6.3f} {r['recall']:>6.3f} "
                 f"{r['sample_seconds']:>6.0f}")
  lines.append(f"{'floor':>9} {'-':>4} {'-':>5} {floor['fd']:>8.3f} {floor['kid']:>9.5f} "
               f"{floor['kid_std']:>7.5f} {floor['precision']:>6.3f} {floor['recall']:>6.3f} {'':>6}")
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# The plot, with PIL only (matplotlib is not a dependency).


def plot(rows, floor, path: str, title: str) -> None:
  """Four panels (FD and KID on a log scale when positive), x = NFE spent (log scale, ticks at the
  budgets), one line per sampler, the floor dashed."""
  from PIL import Image, ImageDraw, ImageFont
  font = ImageFont.load_default()
  pw, ph, m = 440, 300, 62  # panel size and left margin
  img = Image.new("RGB", (2 * pw + 40, 2 * ph + 100), "white")
  d = ImageDraw.Draw(img)
  d.text((20, 8), title, fill="black", font=font)
  samplers = list(dict.fromkeys(r["sampler"] for r in rows))
  nfes = [r["nfe"] for r in rows]
  ticks = sorted({r.get("nfe_budget", r["nfe"]) for r in rows})
  lx0, lx1 = np.log(min(nfes) * 0.85), np.log(max(nfes) * 1.2)
  for k, metric in enumerate(METRICS):
    ox, oy = 20 + (k % 2) * pw, 30 + (k // 2) * ph
    x0, y0, x1, y1 = ox + m, oy + 20, ox + pw - 15, oy + ph - 40
    vals = np.array([r[metric] for r in rows] + [floor[metric]], np.float64)
    log_y = metric in ("fd", "kid") and np.all(vals > 0)
    f = np.log10 if log_y else (lambda v: v)
    lo, hi = float(np.min(f(vals))), float(np.max(f(vals)))
    if metric in ("precision", "recall"):
      lo, hi = min(lo, 0.0), max(hi, 1.0)
    pad = 0.05 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    px = lambda n: x0 + (np.log(n) - lx0) / (lx1 - lx0) * (x1 - x0)
    py = lambda v: y1 - (f(v) - lo) / (hi - lo) * (y1 - y0)
    d.rectangle([x0, y0, x1, y1], outline="black")
    name = {"fd": "FD", "kid": "KID"}.get(metric, metric) + (" (log scale)" if log_y else "")
    d.text((x0, oy + 2), name, fill="black", font=font)
    for n in ticks:  # x ticks at the NFE budgets
      d.line([px(n), y1, px(n), y1 + 4], fill="black")
      d.text((px(n) - 6, y1 + 6), str(n), fill="black", font=font)
    d.text(((x0 + x1) / 2 - 40, y1 + 20), "NFE (log scale)", fill="black", font=font)
    for j in range(5):  # y ticks
      u = lo + (hi - lo) * j / 4
      v = 10 ** u if log_y else u
      d.line([x0 - 4, py(v), x0, py(v)], fill="black")
      d.text((ox + 2, py(v) - 6), f"{v:.3g}", fill="black", font=font)
    fy = py(floor[metric])  # the floor, dashed
    for xs in np.arange(x0, x1, 10):
      d.line([xs, fy, min(xs + 5, x1), fy], fill=(120, 120, 120), width=2)
    for i, smp in enumerate(samplers):
      pts = sorted((r["nfe"], r[metric]) for r in rows if r["sampler"] == smp)
      xy = [(px(n), py(v)) for n, v in pts]
      color = COLORS.get(smp, (0, 0, 0) if ":" not in smp else (23, 190, 207))
      if len(xy) > 1:
        d.line(xy, fill=color, width=2)
      rad = 5 if smp == "ddim" else 3  # ddim = euler without churn: a ring around euler's dots
      for x, y in xy:
        if smp == "ddim":
          d.ellipse([x - rad, y - rad, x + rad, y + rad], outline=color, width=2)
        else:
          d.ellipse([x - rad, y - rad, x + rad, y + rad], fill=color)
  ly = 2 * ph + 45  # legend
  for i, smp in enumerate(samplers + ["floor"]):
    lx = 30 + i * 122
    color = COLORS.get(smp, (120, 120, 120) if smp == "floor" else
                       (0, 0, 0) if ":" not in smp else (23, 190, 207))
    d.line([lx, ly + 6, lx + 22, ly + 6], fill=color, width=3)
    d.text((lx + 27, ly), smp if smp != "floor" else "floor (real)", fill="black", font=font)
  img.save(path)


# ---------------------------------------------------------------------------------------------------


def _without_hparams(config):
  """A copy of a model config without recorded sampler hyperparameters."""
  c = config.copy_and_resolve_references() if hasattr(config, "copy_and_resolve_references") else config
  if "sampling" in c and "hparams" in c.sampling:
    c.sampling.hparams = type(c.sampling.hparams)()
  return c


def _title(info: dict) -> str:
  return (f"Fashion-MNIST (default model), step {info['step']} EMA, N={info['num']} samples per point; "
          f"feature-space metrics (jdiff.eval); dashed: floor = N real test vs N real train images")


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default=os.path.join(_REPO, "runs", "fashion_mnist"))
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
  p.add_argument("--num", type=int, default=1000, help="samples per cell (and real images of the floor)")
  p.add_argument("--samplers", default="ddim,euler,heun,dpmpp_2m,dpmpp_3m,ddpm")
  p.add_argument("--nfe", default="5,10,20,50")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--batch_size", type=int, default=250)
  p.add_argument("--grid", default=None, help="time grid (default: the model config's)")
  p.add_argument("--out", default=os.path.join(_HERE, "out", "quality_vs_nfe.json"))
  p.add_argument("--replot", action="store_true", help="only redraw the PNG (and table) from --out")
  args = p.parse_args()
  if args.replot:
    with open(args.out) as f:
      saved = json.load(f)
    info, rows, floor = saved["info"], saved["results"], saved["floor"]
    plot(rows, floor, os.path.splitext(args.out)[0] + ".png", _title(info))
    print(table(rows, floor))
    return
  samplers = [s for s in args.samplers.split(",") if s]
  budgets = [int(v) for v in args.nfe.split(",") if v]

  import jax
  from jdiff import eval as jeval
  from jdiff import generation as gen
  from jdiff.generation import restore

  t_start = time.time()
  restored = restore.restore(args.workdir, step=args.step)
  print(f"EMA parameters of step {restored.step} from {restored.checkpoint_dir}; N={args.num} per cell; "
        f"{jax.local_device_count()} device(s)", flush=True)
  net = jeval.get_feature_net()
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  png = os.path.splitext(args.out)[0] + ".png"
  rows, floor = [], None
  info = {"workdir": os.path.abspath(args.workdir), "checkpoint": restored.checkpoint_dir,
          "step": restored.step, "params": "ema", "num": args.num, "seed": args.seed,
          "feature_net_test_accuracy": net.test_accuracy, "jax": jax.__version__,
          "cpu_count": os.cpu_count()}
  from_inf = not np.isfinite(float(restored.schedule.sigma_tilde(1.0)))
  bare = dataclasses.replace(restored, config=_without_hparams(restored.config))
  for spec in samplers:
    sampler, hp = parse_sampler(spec)
    for budget in budgets:
      steps = steps_for(sampler, budget, from_inf)
      s = gen.Settings(num=args.num, seed=args.seed, sampler=sampler, steps=steps, grid=args.grid,
                       batch_size=args.batch_size, hparams=hp or {})
      model = restored if hp is None else bare  # these hyperparameters instead of the config's
      res = gen.generate(model, s, progress=False)
      x = res.samples
      if not np.all(np.isfinite(x)):
        print(f"{sampler} {steps} steps: non-finite samples, skipped", flush=True)
        continue
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = jeval.report(np.clip(x, -1.0, 1.0), res.labels, net=net, seed=args.seed)
      floor = r["floor"]
      row = {"sampler": spec, "hparams": res.settings.hparams, "nfe_budget": budget, "nfe": res.nfe_per_batch, "steps": steps,
             "grid": res.settings.grid, "clip_x0": bool(res.settings.clip_x0), **{k: r[k] for k in ("fd", "kid", "kid_std", "kid_stderr",
                                                           "precision", "recall", "accuracy", "noisy")},
             "sample_seconds": res.sample_seconds, "compile_seconds": res.compile_seconds}
      rows.append(row)
      print(f"{spec:>9} NFE {row['nfe']:>3} ({steps} steps): FD {row['fd']:.3f}, KID "
            f"{row['kid']:.5f}±{row['kid_std']:.5f}, precision {row['precision']:.3f}, recall "
            f"{row['recall']:.3f} [{row['sample_seconds']:.0f} s + {row['compile_seconds']:.0f} s "
            f"compile]", flush=True)
      info["total_seconds"] = time.time() - t_start
      with open(args.out, "w") as f:
        json.dump({"info": info, "floor": floor, "results": rows}, f, indent=1)
      plot(rows, floor, png, _title(info))
  if not rows:
    raise SystemExit("no results")
  print()
  print(f"step {restored.step}, N={args.num}; floor = N real test vs N real train images")
  print(table(rows, floor))
  print(f"wrote {args.out} and {png} ({time.time() - t_start:.0f} s)")


if __name__ == "__main__":
  main()
