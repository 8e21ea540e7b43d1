"""One 3x3 convolution's forward, input-gradient and weight-gradient times: XLA (jax) against PyTorch.

This isolates where jdiff's U-Net train step loses to diffusers on a CPU (``train_throughput.py``). For
each shape ``(B, H, W, C_in, C_out)`` (the U-Nets' levels), it times, as GFLOP/s of the 2*B*H*W*9*C_in*C_out
multiply-adds:

* jax: the forward conv (``lax.conv_general_dilated``, NHWC/HWIO, what ``flax.linen.Conv`` emits), the
  gradient with respect to the input (``dX``), and the gradient with respect to the weights (``dW``), the
  last two taken from ``jax.vjp`` exactly as autodiff builds them in a train step;
* jax ``dW`` written as nine shifted matmuls (``x[:, i:i+H, j:j+W, :]^T @ g`` for each tap), the
  reformulation that came closest to torch among those tried (bench/README.md lists the others);
* torch: ``conv2d`` and ``aten.convolution_backward`` for the input and the weight gradients (NCHW,
  oneDNN), in a separate process with ``torch.set_num_threads(os.cpu_count())``.

Each time is the median of repeated calls after warm-up (``block_until_ready`` for jax).

Usage::

  python bench/conv_kernels.py             # jax and torch (torch is skipped when it is not installed)
  python bench/conv_kernels.py --no-torch

Writes ``bench/out/conv_kernels.json`` (``--out`` to change).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import _harness as H

HERE = H.HERE
# (B, H, W, C_in, C_out): the small U-Net's 32x32/16x16 levels at batch 8 and 32, the DDPM U-Net's
# 32x32 (128 channels) and 16x16 (256 channels) levels.
SHAPES = ((8, 32, 32, 32, 32), (32, 32, 32, 32, 32), (32, 16, 16, 64, 64), (8, 32, 32, 128, 128),
          (32, 32, 32, 128, 128), (8, 16, 16, 256, 256), (32, 16, 16, 256, 256))


def _median_ms(fn, min_seconds: float = 0.7, min_reps: int = 5) -> float:
  fn()
  fn()
  times = []
  start = time.perf_counter()
  while len(times) < min_reps or time.perf_counter() - start < min_seconds:
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  times.sort()
  return 1e3 * times[len(times) // 2]


def measure_jax(shapes) -> list:
  import jax
  import jax.numpy as jnp
  from jax import lax

  def conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def dw_shifted(x, g):
    b, h, w_, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    gg = g.reshape(b * h * w_, -1)
    taps = [lax.dot_general(xp[:, i:i + h, j:j + w_, :].reshape(b * h * w_, c), gg,
                            (((0,), (0,)), ((), ())))
            for i in range(3) for j in range(3)]
    return jnp.stack(taps).reshape(3, 3, c, -1)

  fwd = jax.jit(conv)
  dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
  dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
  dw_alt = jax.jit(dw_shifted)
  rows = []
  for shape in shapes:
    b, h, w_, c, d = shape
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (b, h, w_, c))
    w = jax.random.normal(kw, (3, 3, c, d)) * 0.1
    g = jax.random.normal(kg, (b, h, w_, d))
    ref, alt = dw(x, w, g), dw_alt(x, g)
    rel = float(jnp.abs(alt - ref).max() / jnp.abs(ref).max())
    run = lambda f, *a: _median_ms(lambda: jax.block_until_ready(f(*a)))
    rows.append({"shape": list(shape), "fwd_ms": run(fwd, x, w), "dx_ms": run(dx, x, w, g),
                 "dw_ms": run(dw, x, w, g), "dw_shifted_ms": run(dw_alt, x, g),
                 "dw_shifted_rel_err": rel})
  return rows


def measure_torch(shapes) -> list:
  import torch
  torch.set_num_threads(os.cpu_count())
  rows = []
  with torch.no_grad():
    for shape in shapes:
      b, h, w_, c, d = shape
      gen = torch.Generator().manual_seed(0)
      x = torch.randn(b, c, h, w_, generator=gen)
      w = torch.randn(d, c, 3, 3, generator=gen) * 0.1
      g = torch.randn(b, d, h, w_, generator=gen)
      back = lambda mask: torch.ops.aten.convolution_backward(
          g, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)
      rows.append({"shape": list(shape),
                   "fwd_ms": _median_ms(lambda: torch.nn.functional.conv2d(x, w, padding=1)),
                   "dx_ms": _median_ms(lambda: back([True, False, False])),
                   "dw_ms": _median_ms(lambda: back([False, True, False]))})
  return rows, torch.__version__


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--out", default=os.path.join(HERE, "out", "conv_kernels.json"))
  p.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.torch_worker:
    rows, version = measure_torch(SHAPES)
    print(json.dumps({"torch": version, "rows": rows}))
    return 0
  import jax
  jax_rows = measure_jax(SHAPES)
  torch_rows, torch_version = None, None
  if not args.no_torch and H.torch_available(("torch",))[0]:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--torch-worker"],
                         capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    torch_rows, torch_version = res["rows"], res["torch"]
  gf = lambda s, ms: 2 * s[0] * s[1] * s[2] * 9 * s[3] * s[4] / ms / 1e6
  print(f"3x3 conv, float32, {os.cpu_count()} CPUs, jax {jax.__version__}"
        + (f", torch {torch_version}" if torch_version else "") + "  (GFLOP/s; higher is faster)")
  head = ["B, H, W, Cin, Cout", "jax fwd", "jax dX", "jax dW", "jax dW, 9 shifted matmuls"]
  if torch_rows:
    head += ["torch fwd", "torch dX", "torch dW", "dW: torch / jax"]
  lines = []
  for i, r in enumerate(jax_rows):
    s = r["shape"]
    line = [", ".join(map(str, s))] + [f"{gf(s, r[k]):.0f}" for k in ("fwd_ms", "dx_ms", "dw_ms",
                                                                       "dw_shifted_ms")]
    if torch_rows:
      t = torch_rows[i]
      line += [f"{gf(s, t[k]):.0f}" for k in ("fwd_ms", "dx_ms", "dw_ms")] + [
          f"{r['dw_ms'] / t['dw_ms']:.1f}x"]
    lines.append(line)
  print(H.markdown_table(head, lines))
  H.write_json(args.out, {"jax": jax.__version__, "torch": torch_version, "cpus": os.cpu_count(),
                          "jax_rows": jax_rows, "torch_rows": torch_rows})
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
