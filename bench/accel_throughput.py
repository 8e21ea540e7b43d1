"""Train-step (and sampling) throughput of the DDPM CIFAR-10 U-Net on an accelerator, with MFU.

The DDPM paper trained its 35.7M-parameter CIFAR-10 U-Net at batch 128 at about 21 steps/s on a TPU v3-8
(Ho et al. 2020, App. B: 10.6 h for 800k steps). This script measures jdiff's train step for that model
(``make_train_step``: eps-prediction with the simple loss, global-norm clipping, AdamW, EMA, the
non-finite guard; the state donated) on the default JAX backend, in float32 and in bfloat16 compute
(``UNet(dtype=bfloat16)``: parameters, optimizer state, the loss and the EMA stay float32).

Reported per dtype:

* steps/s and images/s: the median over timed blocks of ``--block-steps`` steps (dispatched
  asynchronously, one ``block_until_ready`` per block, as a training loop runs);
* compile time (``lower`` + ``compile``) and XLA's memory analysis of the compiled step;
* **model FLOPs per step** from XLA's cost analysis of the *lowered* (unoptimized) step, i.e. the
  arithmetic the model needs, not what XLA may recompute; and the compiled program's own count;
* **MFU**: achieved model FLOP/s over the chip's dense peak for that compute type (datasheet: H100/H200
  SXM bf16 989 TFLOP/s; float32 matmuls and convolutions run as TF32 on the tensor cores under JAX's
  default precision, peak 495), and over the ceiling measured in the same run (an 8192^3 matmul at the
  same precision).

With ``--sample``, also images/s of sample.py's pmapped sampling program (DDIM, ``--sample-steps``) at
the same batch, per dtype.

Usage::

  python bench/accel_throughput.py                      # batch 128, float32 and bfloat16
  python bench/accel_throughput.py --sample             # plus DDIM-50 sampling
  python bench/accel_throughput.py --tiny --batch 4     # a smoke test of the script on a CPU

Writes ``bench/out/accel_throughput.json`` (``--out`` to change) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)  # _harness.py and the runners of train_throughput.py and sample_throughput.py
import _harness as H  # noqa: E402

TINY = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), dropout=0.1)
DDPM_PAPER_STEPS_PER_S = 21.0  # Ho et al. 2020, App. B (TPU v3-8, batch 128)

# Dense peak TFLOP/s by device kind (vendor datasheets, SXM parts): (bf16, tf32).
PEAKS = {"H100": (989.4, 494.7), "H200": (989.4, 494.7), "A100": (312.0, 156.0)}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--blocks", type=int, default=5, help="timed blocks per measurement")
  p.add_argument("--block-steps", type=int, default=20, help="steps per timed block")
  p.add_argument("--sample", action="store_true", help="also time DDIM sampling at the same batch")
  p.add_argument("--sample-steps", type=int, default=50)
  p.add_argument("--tiny", action="store_true", help="a tiny U-Net (smoke test of this script)")
  p.add_argument("--budget-s", type=float, default=0.0,
                 help="skip optional measurements (sampling) once this many seconds have passed (0: none)")
  p.add_argument("--out", default=os.path.join(HERE, "out", "accel_throughput.json"))
  a = p.parse_args(argv)
  a.dtypes = [d.strip() for d in a.dtypes.split(",") if d.strip()]
  bad = [d for d in a.dtypes if d not in ("float32", "bfloat16")]
  if bad or not a.dtypes:
    p.error(f"--dtypes takes float32 and/or bfloat16, got {bad or a.dtypes}")
  if a.batch < 1 or a.blocks < 1 or a.block_steps < 1:
    p.error("--batch, --blocks and --block-steps must be >= 1")
  return a


def _flops(analysis) -> float:
  """The 'flops' entry of a cost analysis (a dict, or a list of one dict in older JAX)."""
  if analysis is None:
    return float("nan")
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float(analysis.get("flops", float("nan")))


def _peak(device_kind: str):
  for key, v in PEAKS.items():
    if key in device_kind:
      return v
  return (float("nan"), float("nan"))


def matmul_ceiling(dtype, n: int = 8192, reps: int = 10) -> float:
  """Measured TFLOP/s of an n^3 matmul in ``dtype`` at JAX's default precision."""
  import jax
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(k1, (n, n), dtype)
  b = jax.random.normal(k2, (n, n), dtype)
  f = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(f(a, b))
  jax.block_until_ready(f(a, b))
  t0 = time.perf_counter()
  for _ in range(reps):
    out = f(a, b)
  jax.block_until_ready(out)
  return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


def time_blocks(run_block, blocks: int) -> list:
  times = []
  for _ in range(blocks):
    t0 = time.perf_counter()
    run_block()
    times.append(time.perf_counter() - t0)
  return times


def _model(args, dtype_name: str) -> dict:
  import train_throughput
  return dict(TINY if args.tiny else train_throughput.CASES["ddpm32"].model, dtype=dtype_name)


def measure_train(args, dtype_name: str) -> dict:
  """train_throughput.py's jdiff runner (the same step, compiled and run once), timed in asynchronous
  blocks, with the model FLOPs of its unoptimized program."""
  import jax

  import train_throughput as T
  r = T.JdiffRunner(H.Case("ddpm32", 32, 3, _model(args, dtype_name), 1.0), args.batch, T.Variant("accel"))
  model_flops, flops_source = _flops(r.lowered.cost_analysis()), "lowered"
  if model_flops != model_flops:  # some backends (GPU) give no analysis of the unoptimized program:
    # the same program lowered for the CPU has the same arithmetic
    model_flops = _flops(r.jitted.trace(r.state, r.batch).lower(lowering_platforms=("cpu",)).cost_analysis())
    flops_source = "lowered for cpu"
  out = {}

  def one_block():
    for _ in range(args.block_steps):
      r.state, metrics = r.compiled(r.state, r.batch)
    out["loss"] = float(jax.block_until_ready(metrics["loss"]))

  times = time_blocks(one_block, args.blocks)
  per_step = statistics.median(times) / args.block_steps
  return {"dtype": dtype_name, "num_params": r.num_params, "lower_s": r.info["lower_s"],
          "compile_s": r.info["compile_s"], "first_step_s": r.info["first_step_s"],
          "step_s": per_step, "steps_per_s": 1.0 / per_step, "images_per_s": args.batch / per_step,
          "block_times_s": times, "model_flops_per_step": model_flops, "model_flops_source": flops_source,
          "compiled_flops_per_step": _flops(r.compiled.cost_analysis()),
          "peak_memory_mb": r.info["memory"].get("peak_mb"), "final_loss": out["loss"],
          "skipped_updates": int(jax.device_get(r.state.skipped))}


def measure_sampling(args, dtype_name: str) -> dict:
  """sample_throughput.py's jdiff runner (sample.py's pmapped program, random weights), timed."""
  import jax

  import sample_throughput as S
  r = S.JdiffRunner(H.Case("ddpm32", 32, 3, _model(args, dtype_name), 1.0), args.batch,
                    {"ddim": args.sample_steps})
  results = []
  times = time_blocks(lambda: results.append(r.run("ddim")), max(2, args.blocks // 2))
  per_batch = statistics.median(times)
  nfe = results[-1]["nfe"]
  return {"dtype": dtype_name, "sampler": "ddim", "steps": args.sample_steps, "nfe": int(nfe),
          "compile_s": r.info["compile_s"]["ddim"], "batch_s": per_batch,
          "images_per_s": args.batch / per_batch, "nfe_per_s": nfe / per_batch,
          "finite": all(x["finite"] for x in results), "devices": len(jax.local_devices())}


def main(argv=None) -> int:
  args = parse_args(argv)
  start = time.perf_counter()
  import jax
  import jax.numpy as jnp
  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", str(dev))
  info = {"jax": jax.__version__, "backend": jax.default_backend(), "device_kind": kind,
          "devices": len(jax.devices()), "batch": args.batch, "model": "tiny" if args.tiny else "ddpm"}
  print(json.dumps(info), flush=True)
  peak_bf16, peak_tf32 = _peak(kind)
  n = 1024 if args.tiny else 8192
  ceilings = {"bfloat16": matmul_ceiling(jnp.bfloat16, n), "float32": matmul_ceiling(jnp.float32, n)}
  print("measured matmul ceilings (TFLOP/s):", {k: round(v, 1) for k, v in ceilings.items()}, flush=True)
  train = []
  for d in args.dtypes:
    r = measure_train(args, d)
    peak = peak_bf16 if d == "bfloat16" else peak_tf32
    achieved = r["model_flops_per_step"] * r["steps_per_s"] / 1e12
    r.update(model_tflops=achieved, datasheet_peak_tflops=peak, mfu=achieved / peak,
             measured_ceiling_tflops=ceilings[d], fraction_of_measured=achieved / ceilings[d])
    train.append(r)
    print(json.dumps(r), flush=True)
  sampling = []
  if args.sample:
    for d in args.dtypes:
      if args.budget_s and time.perf_counter() - start > args.budget_s:
        print(f"skipping sampling in {d}: past the {args.budget_s:.0f} s budget", flush=True)
        continue
      r = measure_sampling(args, d)
      sampling.append(r)
      print(json.dumps(r), flush=True)

  print(f"\nDDPM CIFAR-10 U-Net train step, batch {args.batch}, on {kind} "
        f"(target: >= {DDPM_PAPER_STEPS_PER_S:.0f} steps/s)")
  print(H.markdown_table(
      ["dtype", "params", "steps/s", "img/s", "compile s", "GFLOP/step (model)", "TFLOP/s",
       "MFU (datasheet)", "of measured matmul", "peak MB"],
      [[r["dtype"], f"{r['num_params'] / 1e6:.2f}M", f"{r['steps_per_s']:.2f}", f"{r['images_per_s']:.0f}",
        f"{r['compile_s']:.1f}", f"{r['model_flops_per_step'] / 1e9:.0f}", f"{r['model_tflops']:.1f}",
        f"{100 * r['mfu']:.1f}%", f"{100 * r['fraction_of_measured']:.1f}%",
        f"{r['peak_memory_mb'] or float('nan'):.0f}"] for r in train]))
  if sampling:
    print(f"\nDDIM sampling ({args.sample_steps} steps), batch {args.batch}")
    print(H.markdown_table(["dtype", "img/s", "NFE/s", "compile s", "finite"],
                           [[r["dtype"], f"{r['images_per_s']:.1f}", f"{r['nfe_per_s']:.1f}",
                             f"{r['compile_s']:.1f}", str(r["finite"])] for r in sampling]))
  H.write_json(args.out, {"info": info, "matmul_ceilings_tflops": ceilings, "train": train,
                          "sampling": sampling})
  print(f"wrote {args.out} ({time.perf_counter() - start:.0f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
