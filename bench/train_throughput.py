"""Training throughput of jdiff's U-Net train step against PyTorch diffusers on the same CPU.

For each case (model x image shape x batch size) this measures:

* jdiff: ``jdiff.training.step.make_train_step`` (DDPM eps-prediction with the simple loss, Ho et al.
  2020, Alg. 1; global-norm clipping; AdamW; EMA; the non-finite guard), ``jax.jit`` with the state
  donated. Compile time is ``lower`` (trace + lower to StableHLO) plus ``compile`` (XLA); the first
  execution is reported separately. Peak memory: **XLA's memory analysis** of the compiled step
  (arguments + outputs - donated aliases + temporaries: the buffers one step needs), and the peak RSS of
  the process that ran it (which also holds the compiler's own peak).
* diffusers: ``UNet2DModel`` with the same configuration and the same step (``bench/torch_reference.py``),
  with its process peak RSS.

DiT cases (``--cases dit_small28,dit_s4[,dit_s2]``; not in the default run): jdiff's ``DiT`` (Peebles & Xie
2023), class-conditional with label dropout 0.1, next to diffusers' ``DiTTransformer2DModel`` of the same
configuration trained with the same step (``TorchDiTTrainer`` below). Their parameter counts differ by
exactly ``(depth - 1)`` copies of the timestep + label embedder, which diffusers keeps in every block (the
coordinator checks this and prints both counts); the extra compute is per example, not per token.

Every runner lives in its own worker process (so each can have its own ``XLA_FLAGS``, and the two
runtimes' thread pools never share a process; the protocol, the quiet-machine detection and the output
helpers are ``bench/_harness.py``'s); one coordinator drives them **interleaved**: each round
runs one timed block of steps per runner, one runner at a time (order reversed every other round), so
all see the same load on a shared machine. Reported: images/s from the median step time; the ratio
jdiff/diffusers per round (from the rounds' median step times) and its median over rounds (the
headline), plus the ratio of the fastest steps ("best", the least disturbed by other processes).
Data are random (uniform in [-1, 1]).

Threads: torch uses ``torch.set_num_threads(os.cpu_count())``; XLA's CPU client uses every core by
default (its intra-op thread pool is sized to the machine; JAX has no switch for it).

Usage::

  python bench/train_throughput.py                 # full run (< ~10 min on 2 cores)
  python bench/train_throughput.py --quick         # fewer rounds and shorter blocks
  python bench/train_throughput.py --no-torch      # jdiff only
  python bench/train_throughput.py --cases dit_small28,dit_s4   # DiT vs. diffusers' DiTTransformer2DModel
  python bench/train_throughput.py --sweep --cases small32 --batches 8   # XLA options and layouts
  python bench/train_throughput.py --xla-flags=--xla_cpu_enable_fast_math=true --attention-impl xla

Writes ``bench/out/train_throughput.json`` (``--out`` to change).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from typing import Optional

import _harness as H
from _harness import Case

HERE = H.HERE

SMALL = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, dropout=0.0)
DDPM = dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, dropout=0.1)


# DiT cases: ``model["name"] == "dit"``; the other fields are jdiff DiT fields (mapped onto diffusers'
# DiTTransformer2DModel by ``dit_kwargs``). dit_small28 is configs/fashion_mnist_dit.py's network; dit_s4 is
# DiT-S/4 (Peebles & Xie 2023, Table 4) on 32x32x4 latents (64 tokens); dit_s2 is DiT-S/2 (256 tokens,
# ~4x the cost of S/4: ~5 s per batch-8 jdiff step on 2 busy cores, too slow for the default run).
DIT_SMALL = dict(name="dit", hidden_size=192, depth=6, num_heads=3, patch_size=4, num_classes=10)
DIT_S = dict(name="dit", size="S", num_classes=10)

CASES = {
    "small32": Case("small32", 32, 3, dict(SMALL, attn_resolutions=(16,)), 1.5),
    "small28": Case("small28", 28, 1, dict(SMALL, attn_resolutions=(14,)), 1.5),
    "ddpm32": Case("ddpm32", 32, 3, dict(DDPM, attn_resolutions=(16,)), 1.0),
    "dit_small28": Case("dit_small28", 28, 1, DIT_SMALL, 1.2),
    "dit_s4": Case("dit_s4", 32, 4, dict(DIT_S, patch_size=4), 1.2),
    "dit_s2": Case("dit_s2", 32, 4, dict(DIT_S, patch_size=2), 1.2),
}
DEFAULT_CASES = ("small32", "small28", "ddpm32")


def is_dit(case: Case) -> bool:
  return case.model.get("name") == "dit"


def dit_fields(case: Case) -> dict:
  """The jdiff DiT fields of a DiT case (without ``name``)."""
  return {k: v for k, v in case.model.items() if k != "name"}


def dit_kwargs(*, image_size: int, channels: int, size: str = "", hidden_size: int = 0, depth: int = 0,
               num_heads: int = 0, patch_size: int = 2, num_classes: int = 0) -> dict:
  """``DiTTransformer2DModel`` keyword arguments for a jdiff DiT with these fields: same width, depth,
  heads, patch, MLP ratio 4 with GELU(tanh), LayerNorms without affine parameters, ``num_classes``
  labels plus the NULL row (diffusers' label dropout 0.1), the input's channels out."""
  import jdiff.models
  hidden, depth, heads = jdiff.models.DiT(size=size, hidden_size=hidden_size, depth=depth,
                                          num_heads=num_heads, patch_size=patch_size).dims
  return dict(num_attention_heads=heads, attention_head_dim=hidden // heads, in_channels=channels,
              out_channels=channels, num_layers=depth, sample_size=image_size, patch_size=patch_size,
              num_embeds_ada_norm=num_classes, norm_eps=1e-6, activation_fn="gelu-approximate")


@dataclasses.dataclass(frozen=True)
class Variant:
  """One runner configuration: the framework and, for jdiff, the XLA / model options it runs with."""
  label: str
  kind: str = "jdiff"  # or "diffusers"
  xla_flags: str = ""
  attention_impl: str = "einsum"
  matmul_precision: Optional[str] = None
  torch_channels_last: bool = False


# What --sweep tries against the default configuration (each in its own process).
SWEEP = (
    Variant("attention=xla", attention_impl="xla"),
    Variant("matmul_precision=highest", matmul_precision="highest"),
    Variant("no_ynnpack", xla_flags="--xla_cpu_experimental_ynn_fusion_type="),
    Variant("onednn", xla_flags="--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true"),
    Variant("xnn_graph_greedy",
            xla_flags="--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"),
    Variant("fast_math", xla_flags="--xla_cpu_enable_fast_math=true"),
    Variant("single_thread_eigen", xla_flags="--xla_cpu_multi_thread_eigen=false"),
    Variant("diffusers_channels_last", kind="diffusers", torch_channels_last=True),
)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="fewer rounds and shorter timed blocks")
  p.add_argument("--no-torch", action="store_true", help="measure jdiff only")
  p.add_argument("--sweep", action="store_true",
                 help="also run jdiff under other XLA options / attention / precision (see SWEEP)")
  p.add_argument("--cases", default=",".join(DEFAULT_CASES),
                 help=f"comma-separated subset of {list(CASES)} (default: {','.join(DEFAULT_CASES)})")
  p.add_argument("--batches", default="8,32", help="comma-separated batch sizes")
  p.add_argument("--rounds", type=int, default=None,
                 help="max interleaved rounds per case (default 7, quick 3)")
  p.add_argument("--block-seconds", type=float, default=None,
                 help="target length of one timed block (default 1.5, quick 0.5)")
  p.add_argument("--case-seconds", type=float, default=None,
                 help="stop adding rounds after this long once 3 are done (default 45, quick 15); "
                      "after 3x this long stop even before 3")
  p.add_argument("--quiet-wait", type=float, default=None,
                 help="seconds to wait before each block for other processes to leave the CPU (default "
                      "5, quick 2; 0: never wait)")
  p.add_argument("--attention-impl", default="einsum", choices=("einsum", "xla"),
                 help="jdiff UNet attention_impl")
  p.add_argument("--matmul-precision", default=None,
                 help="jax_default_matmul_precision for jdiff (e.g. 'highest'); default: JAX's")
  p.add_argument("--xla-flags", default="",
                 help="extra XLA_FLAGS for the jdiff worker (appended to the environment's)")
  p.add_argument("--torch-channels-last", action="store_true",
                 help="run diffusers in channels_last memory format (default: NCHW contiguous)")
  p.add_argument("--out", default=os.path.join(HERE, "out", "train_throughput.json"))
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run as a worker
  args = p.parse_args(argv)
  if args.worker:
    return args
  args.cases = H.name_list(p, args.cases, "case", CASES)
  args.batches = H.int_list(p, args.batches, "batches")
  if args.rounds is not None and args.rounds < 1:
    p.error(f"--rounds must be >= 1, got {args.rounds}")
  args.rounds = args.rounds or (3 if args.quick else 7)
  args.block_seconds = args.block_seconds or (0.5 if args.quick else 1.5)
  args.case_seconds = args.case_seconds or (15.0 if args.quick else 45.0)
  if args.quiet_wait is None:
    args.quiet_wait = 2.0 if args.quick else 5.0
  return args


# ----------------------------------------------------------------------------------------------------
# Workers (one process per variant and case, serving bench/_harness.py's protocol)
# ----------------------------------------------------------------------------------------------------


class JdiffRunner:
  """A compiled, donated jdiff train step for one case and batch size."""

  def __init__(self, case: Case, batch: int, variant: Variant, seed: int = 0):
    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np

    import jdiff.models
    from jdiff.schedules import LinearSchedule
    from jdiff.experiment.state import create_state, make_optimizer
    from jdiff.training.step import make_train_step

    self._jax = jax
    if is_dit(case):
      model = jdiff.models.create("dit", **dit_fields(case))
    else:
      model = jdiff.models.create("unet", attention_impl=variant.attention_impl, **case.model)
    num_classes = case.model.get("num_classes", 0)
    init, apply = jdiff.models.functional(model)
    shape = (batch, case.image_size, case.image_size, case.channels)
    params = init(jax.random.PRNGKey(seed), jnp.zeros(shape, jnp.float32), jnp.zeros((batch,)))
    self.num_params = jdiff.models.count_params(params)
    cfg = ml_collections.ConfigDict(dict(optimizer="adamw", lr=2e-4, warmup_steps=0, decay="constant",
                                         grad_clip=1.0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0))
    opt = make_optimizer(cfg, total_steps=1000)
    step = make_train_step(apply, LinearSchedule(), opt, parametrization_name="eps", axis_name=None,
                           global_batch_size=batch, ema_decay=0.9999, num_classes=num_classes,
                           cond_drop_prob=0.1 if num_classes else 0.0)
    self.state = create_state(params, opt, seed)
    rng = np.random.default_rng(seed)
    self.batch = {"image": jnp.asarray(rng.uniform(-1, 1, shape), jnp.float32),
                  "index": jnp.arange(batch, dtype=jnp.int32)}
    if num_classes:
      self.batch["label"] = jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32)
    jitted = jax.jit(step, donate_argnums=(0,))
    t0 = time.perf_counter()
    lowered = jitted.lower(self.state, self.batch)
    t1 = time.perf_counter()
    self.compiled = lowered.compile()
    t2 = time.perf_counter()
    self.jitted, self.lowered = jitted, lowered  # for callers that analyse the program
    self.info = {"num_params": self.num_params, "lower_s": t1 - t0, "compile_s": t2 - t1,
                 "memory": self._memory_analysis()}
    if is_dit(case):  # what diffusers' DiT repeats in every block
      self.info["embedder_params"] = jdiff.models.count_params(params["params"]["noise_embed"])
      self.info["depth"] = model.dims[1]
    t0 = time.perf_counter()
    self.step()
    self.info["first_step_s"] = time.perf_counter() - t0

  def _memory_analysis(self) -> dict:
    m = self.compiled.memory_analysis()
    if m is None:
      return {}
    mb = lambda v: v / 2 ** 20
    out = {"argument_mb": mb(m.argument_size_in_bytes), "output_mb": mb(m.output_size_in_bytes),
           "alias_mb": mb(m.alias_size_in_bytes), "temp_mb": mb(m.temp_size_in_bytes)}
    out["peak_mb"] = out["argument_mb"] + out["output_mb"] - out["alias_mb"] + out["temp_mb"]
    return out

  def step(self) -> float:
    self.state, metrics = self.compiled(self.state, self.batch)
    return float(self._jax.block_until_ready(metrics["loss"]))


class TorchDiTTrainer:
  """diffusers' ``DiTTransformer2DModel`` and the train step of ``torch_reference.TorchTrainer`` (DDPM
  eps-prediction with the simple loss, global-norm clipping, AdamW, EMA) with class labels: diffusers'
  label embedder drops them to the NULL label with probability 0.1 in training mode, as jdiff's step
  does with ``cond_drop_prob=0.1``."""

  def __init__(self, model_kwargs: dict, num_classes: int, *, lr: float = 2e-4, grad_clip: float = 1.0,
               ema_decay: float = 0.9999, seed: int = 0):
    import torch
    from diffusers import DiTTransformer2DModel

    import torch_reference as ref
    self._torch = torch
    torch.manual_seed(seed)
    self.model = DiTTransformer2DModel(**model_kwargs)
    self.model.train()
    self.params = [p for p in self.model.parameters() if p.requires_grad]
    self.opt = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    self.ema = [p.detach().clone() for p in self.params]
    self.grad_clip, self.ema_decay, self.num_classes = grad_clip, ema_decay, num_classes
    self.alphas_cumprod = ref.linear_alphas_cumprod()
    self.num_params = sum(p.numel() for p in self.params)
    self.labels = torch.randint(0, num_classes, (1 << 16,), generator=torch.Generator().manual_seed(seed))

  def step(self, x0) -> float:
    torch = self._torch
    b = x0.shape[0]
    t = torch.randint(0, self.alphas_cumprod.shape[0], (b,))
    eps = torch.randn_like(x0)
    abar = self.alphas_cumprod[t].view(b, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1.0 - abar).sqrt() * eps
    pred = self.model(x_t, t, self.labels[:b]).sample
    loss = torch.nn.functional.mse_loss(pred, eps)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
    self.opt.step()
    with torch.no_grad():
      torch._foreach_lerp_(self.ema, self.params, 1.0 - self.ema_decay)
    return float(loss.detach())


class TorchRunner:
  """The diffusers reference step for one case and batch size."""

  def __init__(self, case: Case, batch: int, variant: Variant, seed: int = 0):
    sys.path.insert(0, HERE)
    import torch_reference as ref
    if is_dit(case):
      fields = dit_fields(case)
      self.trainer = TorchDiTTrainer(dit_kwargs(image_size=case.image_size, channels=case.channels,
                                                **fields), fields["num_classes"], seed=seed)
      self.x = ref.random_batch(batch, case.channels, case.image_size, seed)
      self.info = {"num_params": self.trainer.num_params}
      t0 = time.perf_counter()
      self.step()
      self.info["first_step_s"] = time.perf_counter() - t0
      return
    self.trainer = ref.make_trainer(image_size=case.image_size, channels=case.channels,
                                    channels_last=variant.torch_channels_last, seed=seed,
                                    ema_decay=0.9999, **case.model)
    self.x = ref.random_batch(batch, case.channels, case.image_size, seed, variant.torch_channels_last)
    self.info = {"num_params": self.trainer.num_params}
    t0 = time.perf_counter()
    self.step()
    self.info["first_step_s"] = time.perf_counter() - t0

  def step(self) -> float:
    return self.trainer.step(self.x)


def worker_main(spec: dict) -> int:
  """Serve the coordinator's commands (``_harness.serve``): one runner of ``spec``'s variant and case."""
  variant = Variant(**spec["variant"])
  case = CASES[spec["case"]]
  if variant.kind == "jdiff":
    hello, make = lambda: H.jax_hello(variant.matmul_precision), JdiffRunner
  else:
    hello, make = H.torch_hello, TorchRunner
  return H.serve(hello, lambda cmd: make(case, cmd["batch"], variant),
                 lambda runner, cmd: {"loss": runner.step()})


def start_worker(variant: Variant, case: Case) -> H.Worker:
  return H.Worker(__file__, variant.label, {"variant": dataclasses.asdict(variant), "case": case.name},
                  xla_flags=variant.xla_flags if variant.kind == "jdiff" else "")


# ----------------------------------------------------------------------------------------------------
# Interleaved timing
# ----------------------------------------------------------------------------------------------------


def measure(workers: dict, batch: int, args):
  """Interleaved rounds over ``workers`` (label -> Worker), one block per worker per round.

  Each block waits briefly for a quiet CPU and records the load other processes put on it
  (``_harness.timed_block``); a round is "quiet" when every block in it stayed below
  ``_harness.QUIET_CORES``.
  """
  labels = list(workers)
  sizes = {k: max(1, round(args.block_seconds / workers[k].ask(cmd="run", n=1)["times"][0]))
           for k in labels}
  steps = {k: [] for k in labels}
  per_round = {k: [] for k in labels}
  foreign = {k: [] for k in labels}
  rss = {}
  t_start = time.perf_counter()
  load = [os.getloadavg()[0]]
  rounds = 0
  while rounds < args.rounds:
    elapsed = time.perf_counter() - t_start
    if rounds >= 1 and (elapsed > 3 * args.case_seconds or (rounds >= 3 and elapsed > args.case_seconds)):
      break
    for k in H.round_order(labels, rounds):
      reply, foreign_load = H.timed_block(workers[k], args.quiet_wait, n=sizes[k])
      if reply["loss"] != reply["loss"]:
        raise RuntimeError(f"{k}: non-finite loss during the benchmark")
      steps[k] += reply["times"]
      per_round[k].append(statistics.median(reply["times"]))
      foreign[k].append(foreign_load)
      rss[k] = reply["peak_rss_mb"]
    rounds += 1
  load.append(os.getloadavg()[0])
  quiet = H.quiet_rounds(foreign, rounds)
  out = {"rounds": rounds, "quiet_rounds": quiet, "loadavg_1min_start_end": load, "runners": {}}
  for k in labels:
    out["runners"][k] = {"steps_per_block": sizes[k], "step_seconds": steps[k],
                         "round_median_step_seconds": per_round[k], "foreign_load_cores": foreign[k],
                         "images_per_s": batch / statistics.median(steps[k]),
                         "best_images_per_s": batch / min(steps[k]), "peak_rss_mb": rss[k]}
  return out, per_round, steps, quiet


def ratio(per_round: dict, steps: dict, quiet: list, a: str, b: str) -> dict:
  """Speed of ``a`` relative to ``b`` (images/s of a / images/s of b) per round; ``median`` over the
  quiet rounds when there are at least 3 (else over all rounds, ``from_quiet_rounds`` False); ``best``
  compares the fastest steps."""
  return H.speed_ratio(per_round[a], per_round[b], quiet, min_quiet=3, a_best=steps[a], b_best=steps[b])


# ----------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------


def format_table(rows: list[dict], with_torch: bool) -> str:
  head = ["case", "B", "params", "jdiff img/s", "compile s", "XLA peak MB", "RSS MB"]
  if with_torch:
    head += ["diffusers img/s", "RSS MB", "ratio", "best", "quiet", "target", "met"]
  lines = []
  for r in rows:
    j, t = r["jdiff"], r["timing"]["runners"]
    line = [r["case"], str(r["batch"]), f"{j['num_params'] / 1e6:.2f}M", f"{t['jdiff']['images_per_s']:.1f}",
            f"{j['lower_s'] + j['compile_s']:.1f}", f"{j['memory'].get('peak_mb', float('nan')):.0f}",
            f"{j['peak_rss_mb']:.0f}"]
    if with_torch:
      q = r["ratio_jdiff_vs_diffusers"]
      line += [f"{t['diffusers']['images_per_s']:.1f}", f"{r['diffusers']['peak_rss_mb']:.0f}",
               f"{q['median']:.2f}x", f"{q['best']:.2f}x",
               f"{sum(r['timing']['quiet_rounds'])}/{r['timing']['rounds']}", f"{r['target']:.1f}x",
               ("yes" if q["median"] >= r["target"] else "NO") if q["from_quiet_rounds"] else "busy"]
    lines.append(line)
  return H.format_table(head, lines)


def format_sweep(rows: list[dict]) -> str:
  out = ["", "Sweep: speed of each variant relative to its baseline (jdiff default or diffusers default),",
         "measured interleaved with it (median over rounds; best = fastest steps; compile s):"]
  for r in rows:
    for label, res in r.get("sweep", {}).items():
      (base, q), = [(k[len("ratio_vs_"):], v) for k, v in res.items() if k.startswith("ratio_vs_")]
      comp = res["setup"].get("compile_s")
      out.append(f"  {r['case']:8s} B={r['batch']:<3d} {label:26s} {q['median']:.2f}x {base:9s} best "
                 f"{q['best']:.2f}x" + (f"  compile {comp + res['setup']['lower_s']:.0f} s" if comp else ""))
  return "\n".join(out)


def check_dit_counts(name: str, jdiff_info: dict, torch_info: dict) -> None:
  """diffusers' DiT = jdiff's DiT + (depth - 1) more copies of the timestep + label embedder, exactly."""
  j, t = jdiff_info["num_params"], torch_info["num_params"]
  extra = (jdiff_info["depth"] - 1) * jdiff_info["embedder_params"]
  print(f"[{name}] parameters: jdiff {j:,}, diffusers {t:,} = jdiff + {jdiff_info['depth'] - 1} x "
        f"{jdiff_info['embedder_params']:,} (diffusers keeps a timestep + label embedder in every block)",
        flush=True)
  if t != j + extra:
    raise RuntimeError(f"{name}: diffusers has {t:,} parameters, expected jdiff's {j:,} + {extra:,}: the "
                       f"two configurations differ")


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.worker:
    return worker_main(json.loads(args.worker))

  with_torch = H.use_torch(args.no_torch)
  main_variant = Variant("jdiff", xla_flags=args.xla_flags, attention_impl=args.attention_impl,
                         matmul_precision=args.matmul_precision)
  variants = [main_variant]
  if with_torch:
    variants.append(Variant("diffusers", kind="diffusers", torch_channels_last=args.torch_channels_last))
  sweep = []
  if args.sweep:
    sweep = [dataclasses.replace(v, xla_flags=" ".join(f for f in (args.xla_flags, v.xla_flags) if f))
             for v in SWEEP if with_torch or v.kind == "jdiff"]
  info = {**H.machine_info(), "xla_flags_env": os.environ.get("XLA_FLAGS", ""), "quick": args.quick,
          "variants": [dataclasses.asdict(v) for v in variants + sweep],
          "memory": "XLA peak MB: memory_analysis of the compiled step, arguments + outputs - aliased "
                    "(donated) + temporaries. RSS MB: peak resident set of the worker process (includes "
                    "the runtime, and for jdiff the XLA compiler's own peak), cumulative over batches"}
  print(f"python {info['python']}, {info['cpu_count']} CPUs; runners: "
        f"{', '.join(v.label for v in variants + sweep)}", flush=True)

  rows = []
  t_all = time.perf_counter()
  for name in args.cases:
    case = CASES[name]
    with H.Workers() as workers:
      for v in variants:
        workers[v.label] = start_worker(v, case)
        info.setdefault("versions", {}).setdefault(v.kind, workers[v.label].hello)
      for batch in args.batches:
        print(f"[{name} B={batch}] compiling / warming up ...", flush=True)
        setup = {k: w.ask(cmd="setup", batch=batch) for k, w in workers.items()}
        if with_torch and is_dit(case):
          check_dit_counts(name, setup["jdiff"], setup["diffusers"])
        timing, per_round, steps, quiet = measure(workers, batch, args)
        for k in workers:
          setup[k]["peak_rss_mb"] = timing["runners"][k]["peak_rss_mb"]
        row = {"case": name, "batch": batch, "target": case.target,
               "image_shape": [case.image_size, case.image_size, case.channels],
               "model": {k: list(v) if isinstance(v, tuple) else v for k, v in case.model.items()},
               "jdiff": setup["jdiff"], "timing": timing}
        t = timing["runners"]
        msg = f"[{name} B={batch}] jdiff {t['jdiff']['images_per_s']:.1f} img/s"
        if with_torch:
          row["diffusers"] = setup["diffusers"]
          q = row["ratio_jdiff_vs_diffusers"] = ratio(per_round, steps, quiet, "jdiff", "diffusers")
          msg += (f", diffusers {t['diffusers']['images_per_s']:.1f} img/s, ratio {q['median']:.2f}x, "
                  f"best {q['best']:.2f}x (rounds: "
                  f"{', '.join(f'{x:.2f}' + ('' if c else '*') for x, c in zip(q['per_round'], quiet))}"
                  f"; * = busy round, {sum(quiet)}/{len(quiet)} quiet)")
        print(msg, flush=True)
        # Sweep: each variant alone against its baseline (still compiled), one extra process at a time.
        for v in sweep:
          if is_dit(case) and (v.attention_impl != "einsum" or v.torch_channels_last):
            continue  # UNet-only options
          base = "jdiff" if v.kind == "jdiff" else "diffusers"
          with start_worker(v, case) as w:
            s_info = w.ask(cmd="setup", batch=batch)
            s_timing, s_per_round, s_steps, s_quiet = measure({base: workers[base], v.label: w}, batch, args)
          q = ratio(s_per_round, s_steps, s_quiet, v.label, base)
          s_info["peak_rss_mb"] = s_timing["runners"][v.label]["peak_rss_mb"]
          row.setdefault("sweep", {})[v.label] = {"setup": s_info, "timing": s_timing,
                                                  "ratio_vs_" + base: q}
          print(f"[{name} B={batch}] {v.label}: {q['median']:.2f}x {base} (best {q['best']:.2f}x, "
                f"{sum(s_quiet)}/{len(s_quiet)} quiet rounds)", flush=True)
        for w in workers.values():
          w.ask(cmd="drop")
        rows.append(row)
        # after every case, so an interrupted run keeps its results
        H.write_json(args.out, {"info": info, "results": rows})
  info["total_seconds"] = time.perf_counter() - t_all

  print()
  print(format_table(rows, with_torch))
  if args.sweep:
    print(format_sweep(rows))
  if with_torch:
    print("ratio: median over quiet rounds of jdiff/diffusers images/s (over all rounds when fewer than 3 "
          "were quiet: then 'met' says 'busy', as torch's OpenMP threads slow down many times over when "
          "another process takes a core, so such ratios flatter jdiff); best: ratio of the fastest steps; "
          f"quiet: rounds in which other processes used < {H.QUIET_CORES} cores")
  print(f"memory: {info['memory']}\ntotal {info['total_seconds']:.0f} s")
  H.write_json(args.out, {"info": info, "results": rows})
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
