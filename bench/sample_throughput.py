"""Sampling throughput of sample.py's compiled program against PyTorch diffusers on the same CPU.

For each case (model x image shape) x batch size x sampler (DDIM 50 steps, DPM-Solver++(2M) 20 steps):

* jdiff: ``jdiff.generation.program.Program``, the program ``sample.py`` runs (prior noise, the whole grid
  in one ``lax.scan``, ``pmap`` over one device), compiled ahead of time (compile time reported apart),
  with random weights, an eps-prediction model on DDPM's linear schedule; and one jitted call of the
  same denoiser network alone at the same batch size. Reported: images/s, seconds per NFE and the
  ratio (time per NFE in the sampler) / (time of one denoiser call), target <= 1.05 (the sampler adds
  nothing but a few elementwise ops per step).
* diffusers: ``UNet2DModel`` configured like the jdiff UNet (``bench/torch_reference.py``) with
  ``DDIMScheduler`` (eta 0) / ``DPMSolverMultistepScheduler`` (``dpmsolver++``, order 2) over the same
  number of steps, in ``torch.inference_mode()``. Target: jdiff images/s >= 1.5x diffusers for the small
  UNet, >= 1.0x for the DDPM CIFAR-10 UNet.

DiT cases (``--cases dit_small28,dit_s4``; not in the default run): jdiff's ``DiT`` (Peebles & Xie 2023),
class-conditional, sampled with the NULL label (no guidance), next to diffusers' ``DiTTransformer2DModel``
of the same configuration (``train_throughput.dit_kwargs``) with the same schedulers and the NULL label;
same target, >= 1.2x diffusers. Both networks output eps on the same linear schedule, as for the UNet.

Timed runs cover the first steps of each grid only: ``--small-steps`` (default 10) for the small UNet
and ``--ddpm-steps`` (default 2) for the DDPM UNet (35.7M parameters, ~1-2 s per batch-32 call on 2
cores). Every step of these samplers costs exactly one network call plus a few elementwise ops, so
images/s of the full run is extrapolated as ``batch / (full steps x time per step)`` (the table's
"timed" column says how many steps were timed); this keeps the default run under ~10 minutes on 2
cores (diffusers is the slow side). ``--small-steps=50 --ddpm-steps=50`` times full runs.
``--quick``: 5 and 1 steps, 2 rounds.

Every runner lives in its own worker process (XLA's and torch's thread pools never share a process).
The coordinator interleaves them: each round runs one timed block per runner (order reversed every other
round), after waiting briefly for other processes to leave the CPU, and records the load other
processes put on the CPU during each block (the machinery is ``bench/_harness.py``'s, shared with the
train bench): a round is "quiet" when it stayed below 0.3 cores. Ratios are medians over the quiet
rounds when there are at least 2, else over all rounds ("quiet" column).

  python bench/sample_throughput.py            # default (< ~10 min on 2 cores)
  python bench/sample_throughput.py --quick    # a few minutes
  python bench/sample_throughput.py --no-torch --cases small28 --batches 8
  python bench/sample_throughput.py --cases dit_small28,dit_s4   # DiT vs. diffusers' DiTTransformer2DModel

Writes ``bench/out/sample_throughput.json`` (``--out`` to change).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import _harness as H
from _harness import Case

HERE, REPO = H.HERE, H.REPO

SMALL = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(14,), dropout=0.0)
DDPM = dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1)


# DiT cases (model["name"] == "dit"): configs/fashion_mnist_dit.py's network, and DiT-S/4 (Peebles & Xie
# 2023, Table 4) on 32x32x4 latents; as in train_throughput.py.
DIT_SMALL = dict(name="dit", hidden_size=192, depth=6, num_heads=3, patch_size=4, num_classes=10)
DIT_S4 = dict(name="dit", size="S", patch_size=4, num_classes=10)

CASES = {
    "small28": Case("small28", 28, 1, SMALL, 1.5),
    "ddpm32": Case("ddpm32", 32, 3, DDPM, 1.0),
    "dit_small28": Case("dit_small28", 28, 1, DIT_SMALL, 1.2),
    "dit_s4": Case("dit_s4", 32, 4, DIT_S4, 1.2),
}
DEFAULT_CASES = ("small28", "ddpm32")
SMALL_CASES = ("small28", "dit_small28")  # timed over --small-steps, the others over --ddpm-steps
SAMPLERS = {"ddim": 50, "dpmpp_2m": 20}  # sampler -> steps of the full run


def is_dit(case: Case) -> bool:
  return case.model.get("name") == "dit"


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="fewer steps timed and fewer rounds")
  p.add_argument("--no-torch", action="store_true", help="measure jdiff only")
  p.add_argument("--cases", default=",".join(DEFAULT_CASES),
                 help=f"comma-separated subset of {list(CASES)} (default: {','.join(DEFAULT_CASES)})")
  p.add_argument("--batches", default="8,32", help="comma-separated batch sizes")
  p.add_argument("--samplers", default=",".join(SAMPLERS), help=f"subset of {list(SAMPLERS)}")
  p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 2)")
  p.add_argument("--ddpm-steps", type=int, default=None,
                 help="steps timed per run for the DDPM UNet and DiT-S/4 (default 2, quick 1)")
  p.add_argument("--small-steps", type=int, default=None,
                 help="steps timed per run for the small UNet and small DiT (default 10, quick 5)")
  p.add_argument("--quiet-wait", type=float, default=None,
                 help="max seconds to wait for a quiet CPU before each block (default 3, quick 1)")
  p.add_argument("--xla-flags", default="",
                 help="extra XLA_FLAGS for the jdiff worker (appended to the environment's), e.g. "
                      "--xla_cpu_experimental_ynn_fusion_type= (YNNPACK fusion off)")
  p.add_argument("--cpu-devices", type=int, default=1,
                 help="split the CPU into N JAX devices for jdiff (sample.py --cpu_devices=N): its sampling "
                      "program shards each batch over them (the denoiser-call reference stays on one)")
  p.add_argument("--out", default=os.path.join(HERE, "out", "sample_throughput.json"))
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    return args
  args.cases = H.name_list(p, args.cases, "case", CASES)
  args.samplers = H.name_list(p, args.samplers, "sampler", SAMPLERS)
  args.batches = H.int_list(p, args.batches, "batches")
  args.rounds = args.rounds or (2 if args.quick else 3)
  args.ddpm_steps = args.ddpm_steps or (1 if args.quick else 2)
  args.small_steps = args.small_steps or (5 if args.quick else 10)
  if args.quiet_wait is None:
    args.quiet_wait = 1.0 if args.quick else 3.0
  for name in ("rounds", "ddpm_steps", "small_steps", "cpu_devices"):
    if getattr(args, name) < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1")
  return args


def timed_steps(case: Case, sampler: str, args) -> int:
  return min(SAMPLERS[sampler], args.small_steps if case.name in SMALL_CASES else args.ddpm_steps)


# ----------------------------------------------------------------------------------------------------
# Workers (one process per framework and case, serving bench/_harness.py's protocol)
# ----------------------------------------------------------------------------------------------------


class JdiffRunner:
  """sample.py's program (jdiff.generation.program.Program) and the bare denoiser call."""

  def __init__(self, case: Case, batch: int, plan: dict, seed: int = 0):
    import jax
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, REPO)
    from configs import base
    from jdiff import generation
    from jdiff.experiment import builder
    from jdiff.generation import program as program_lib
    from jdiff.generation import settings as settings_lib
    self._jax, self._np = jax, np
    c = base.get_base_config()
    num_classes = 0
    if is_dit(case):  # a DiT config replaces the UNet's model section (as configs/*_dit.py do)
      import ml_collections
      c.model = ml_collections.ConfigDict({k: v for k, v in case.model.items() if k != "num_classes"})
      num_classes = case.model["num_classes"]  # from the data, as in training; sampled with NULL labels
    else:
      for k, v in case.model.items():
        c.model[k] = v
    shape = (case.image_size, case.image_size, case.channels)
    model = builder.build_model(c, shape, num_classes)
    params = model.init_params()
    model_fn, _ = model.model_fn()
    restored = generation.Restored.from_params(model, params, which="random")
    from jdiff import models
    self.info = {"num_params": models.count_params(params), "compile_s": {}}
    if is_dit(case):  # what diffusers' DiT repeats in every block (train_throughput.check_dit_counts)
      self.info["embedder_params"] = models.count_params(params["params"]["noise_embed"])
      self.info["depth"] = model.module.dims[1]
    dev = jax.local_devices()  # one unless --cpu-devices split the CPU
    if batch % len(dev):
      raise ValueError(f"batch {batch} does not divide over {len(dev)} devices")
    self.batch = batch
    self.indices = np.arange(batch, dtype=np.int32)
    self.programs, self.calls = {}, {}
    replicated = program_lib.replicate(params, dev)
    for name, steps in plan.items():
      s = generation.Settings(num=batch, batch_size=batch, sampler=name, steps=steps, grid="uniform_t",
                              clip_x0=False)
      p = generation.plan(restored, s, devices=dev)
      prog = program_lib.Program(restored, settings_lib.resolve_sampler(p.settings, restored), steps,
                                 devices=dev)
      args = prog.args(replicated, None, self.indices, seed, settings_lib.grid_times(p.settings, restored),
                       hparams=p.hparams)
      t0 = time.perf_counter()
      prog.compile(args)
      self.info["compile_s"][name] = time.perf_counter() - t0
      self.programs[name] = (prog, args)
    x = jnp.asarray(np.random.default_rng(seed).standard_normal((batch,) + shape), jnp.float32)
    t = jnp.full((batch,), 0.5, jnp.float32)
    fn = jax.jit(lambda p, x, t: model_fn(p, x, t, None))
    t0 = time.perf_counter()
    self.denoiser = fn.lower(params, x, t).compile()
    self.info["compile_s"]["denoiser"] = time.perf_counter() - t0
    self.den_args = (jax.device_put(params), x, t)
    for name in self.programs:  # first executions (allocation, warm caches)
      self.run(name)
    self.run("denoiser")

  def run(self, what: str) -> dict:
    if what == "denoiser":
      out = self._jax.block_until_ready(self.denoiser(*self.den_args))
      return {"finite": bool(self._np.isfinite(self._np.asarray(out)).all())}
    prog, args = self.programs[what]
    x, nfe, _ = prog(args)  # blocks on the result
    return {"nfe": nfe, "finite": bool(self._np.isfinite(x).all())}


class TorchRunner:
  """diffusers UNet2DModel + scheduler, the same configuration and steps."""

  def __init__(self, case: Case, batch: int, plan: dict, seed: int = 0):
    import torch
    from diffusers import DDIMScheduler, DiTTransformer2DModel, DPMSolverMultistepScheduler, UNet2DModel

    import torch_reference as ref
    self._torch = torch
    torch.manual_seed(seed)
    kw = dict(case.model)
    self.extra = {}
    if is_dit(case):
      import train_throughput
      kw.pop("name")
      self.model = DiTTransformer2DModel(**train_throughput.dit_kwargs(
          image_size=case.image_size, channels=case.channels, **kw)).eval()
      self.extra = {"class_labels": torch.full((batch,), kw["num_classes"])}  # the NULL label
    else:
      self.model = UNet2DModel(**ref.unet2d_kwargs(image_size=case.image_size, channels=case.channels,
                                                   **kw)).eval()
    self.info = {"num_params": sum(p.numel() for p in self.model.parameters())}
    common = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    self.plan = {}
    for name, steps in plan.items():
      if name == "ddim":
        sch = DDIMScheduler(clip_sample=False, **common)
      else:
        sch = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, **common)
      sch.set_timesteps(SAMPLERS[name])
      self.plan[name] = (sch, steps)
    g = torch.Generator().manual_seed(seed)
    self.x = torch.randn(batch, case.channels, case.image_size, case.image_size, generator=g)
    self.t = torch.full((batch,), 500)
    for name in self.plan:
      self.run(name)
    self.run("denoiser")

  def run(self, what: str) -> dict:
    torch = self._torch
    with torch.inference_mode():
      if what == "denoiser":
        out = self.model(self.x, self.t, **self.extra).sample
        return {"finite": bool(torch.isfinite(out).all())}
      sch, steps = self.plan[what]
      sch.set_timesteps(SAMPLERS[what])  # resets the multistep history
      x = self.x.clone()
      for t in sch.timesteps[:steps]:
        eps = self.model(x, t.expand(x.shape[0]) if self.extra else t, **self.extra).sample
        x = sch.step(eps, t, x).prev_sample
      return {"nfe": steps, "finite": bool(torch.isfinite(x).all())}


def worker_main(spec: dict) -> int:
  """Serve the coordinator's commands (``_harness.serve``): one runner of ``spec``'s framework and case."""
  case = CASES[spec["case"]]
  hello, runner = (H.jax_hello, JdiffRunner) if spec["kind"] == "jdiff" else (H.torch_hello, TorchRunner)

  def make(cmd):
    t0 = time.perf_counter()
    r = runner(case, cmd["batch"], cmd["plan"])
    r.info["setup_s"] = time.perf_counter() - t0
    return r

  return H.serve(hello, make, lambda r, cmd: r.run(cmd["what"]))


def start_worker(kind: str, case: Case, xla_flags: str = "") -> H.Worker:
  return H.Worker(__file__, kind, {"kind": kind, "case": case.name}, xla_flags=xla_flags)


# ----------------------------------------------------------------------------------------------------
# Coordinator
# ----------------------------------------------------------------------------------------------------


def _block(worker: H.Worker, what: str, n: int, wait: float):
  reply, foreign = H.timed_block(worker, wait, what=what, n=n)
  if not reply["finite"]:
    raise RuntimeError(f"{worker.label} {what}: non-finite output")
  return statistics.median(reply["times"]), foreign


def measure(workers: dict, plan: dict, batch: int, args) -> dict:
  """Interleaved rounds; per round and runner: one sampling run per sampler and a block of denoiser
  calls (about as long as one run)."""
  labels = list(workers)
  den_n = {}
  for k in labels:  # about one second of denoiser calls per block, 1 to 20 calls
    one = workers[k].ask(cmd="run", what="denoiser", n=1)["times"][0]
    den_n[k] = max(1, min(20, round(1.0 / max(one, 1e-6))))
  rec = {k: {w: [] for w in list(plan) + ["denoiser"]} for k in labels}
  foreign = {k: [] for k in labels}
  for r in range(args.rounds):
    for k in H.round_order(labels, r):
      loads = []
      for what in plan:
        t, f = _block(workers[k], what, 1, args.quiet_wait)
        rec[k][what].append(t)
        loads.append(f)
      t, f = _block(workers[k], "denoiser", den_n[k], args.quiet_wait)
      rec[k]["denoiser"].append(t)
      loads.append(f)
      foreign[k].append(max((x for x in loads if x is not None), default=None))
  quiet = H.quiet_rounds(foreign, args.rounds)
  return {"rounds": args.rounds, "quiet_rounds": quiet, "foreign_load_cores": foreign,
          "seconds": rec, "denoiser_calls_per_block": den_n}


def _median_over(values, quiet):
  return H.median_over_quiet(values, quiet, min_quiet=2)


def summarize(case: Case, batch: int, plan: dict, timing: dict, with_torch: bool) -> list[dict]:
  rows = []
  quiet = timing["quiet_rounds"]
  sec = timing["seconds"]
  for name, steps in plan.items():
    full = SAMPLERS[name]
    row = {"case": case.name, "batch": batch, "sampler": name, "steps": full, "timed_steps": steps,
           "target": case.target}
    for k in sec:
      run, _ = _median_over(sec[k][name], quiet)
      den, _ = _median_over(sec[k]["denoiser"], quiet)
      per_nfe = run / steps
      # NFE/call from each round's back-to-back blocks (median), and from the fastest blocks ("best":
      # the least disturbed by other processes on a shared machine).
      paired = [r / steps / d for r, d in zip(sec[k][name], sec[k]["denoiser"])]
      row[k] = {"run_s": run, "seconds_per_nfe": per_nfe, "denoiser_call_s": den,
                "nfe_over_denoiser": _median_over(paired, quiet)[0],
                "nfe_over_denoiser_per_round": paired,
                "nfe_over_denoiser_best": min(sec[k][name]) / steps / min(sec[k]["denoiser"]),
                "images_per_s": batch / (per_nfe * full)}
    if with_torch:
      row["ratio_vs_diffusers"] = H.speed_ratio(sec["jdiff"][name], sec["diffusers"][name], quiet,
                                                min_quiet=2)
    rows.append(row)
  return rows


def format_table(rows: list[dict], with_torch: bool) -> str:
  head = ["case", "B", "sampler", "timed", "jdiff img/s", "s/NFE", "NFE/call", "best"]
  if with_torch:
    head += ["diffusers img/s", "ratio", "best", "quiet", "target", "met"]
  lines = []
  for r in rows:
    j = r["jdiff"]
    timed = f"{r['timed_steps']}/{r['steps']}"
    line = [r["case"], str(r["batch"]), r["sampler"], timed, f"{j['images_per_s']:.2f}",
            f"{j['seconds_per_nfe']:.4f}", f"{j['nfe_over_denoiser']:.3f}",
            f"{j['nfe_over_denoiser_best']:.3f}"]
    if with_torch:
      q = r["ratio_vs_diffusers"]
      line += [f"{r['diffusers']['images_per_s']:.2f}", f"{q['median']:.2f}x", f"{q['best']:.2f}x",
               f"{sum(r['quiet'])}/{len(r['quiet'])}", f"{r['target']:.1f}x",
               "yes" if q["median"] >= r["target"] else "NO"]
    lines.append(line)
  return H.format_table(head, lines)


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.worker:
    return worker_main(json.loads(args.worker))
  with_torch = H.use_torch(args.no_torch)
  info = {**H.machine_info(), "quick": args.quick, "rounds": args.rounds,
          "xla_flags_env": os.environ.get("XLA_FLAGS", ""), "xla_flags_jdiff": args.xla_flags,
          "cpu_devices": args.cpu_devices,
          "note": "images/s are for the full step count (50 DDIM / 20 DPM-Solver++ steps), from the time "
                  "per step of runs over the first `timed_steps` steps; NFE/call = (time per NFE in "
                  "the sampler) / (time of one jitted denoiser call), target <= 1.05: median over "
                  "rounds of back-to-back blocks, and 'best' from the fastest blocks"}
  print(f"python {info['python']}, {info['cpu_count']} CPUs", flush=True)
  rows, setups = [], []
  t_all = time.perf_counter()
  for name in args.cases:
    case = CASES[name]
    plan = {s: timed_steps(case, s, args) for s in args.samplers}
    with H.Workers() as workers:
      flags = args.xla_flags
      if args.cpu_devices > 1:
        flags = f"{flags} --xla_force_host_platform_device_count={args.cpu_devices}".strip()
      workers["jdiff"] = start_worker("jdiff", case, flags)
      if with_torch:
        workers["diffusers"] = start_worker("diffusers", case)
      for k, w in workers.items():
        info.setdefault("versions", {})[k] = w.hello
      for batch in args.batches:
        what = ", ".join(f"{s} {n} steps" for s, n in plan.items())
        print(f"[{name} B={batch}] compiling / warming up ({what}) ...", flush=True)
        setup = {k: w.ask(cmd="setup", batch=batch, plan=plan) for k, w in workers.items()}
        if with_torch and is_dit(case):
          import train_throughput
          train_throughput.check_dit_counts(name, setup["jdiff"], setup["diffusers"])
        timing = measure(workers, plan, batch, args)
        new = summarize(case, batch, plan, timing, with_torch)
        for r in new:
          r["quiet"] = timing["quiet_rounds"]
        rows += new
        setups.append({"case": name, "batch": batch, "setup": setup, "timing": timing})
        for r in new:
          j = r["jdiff"]
          msg = (f"[{name} B={batch} {r['sampler']}] jdiff {j['images_per_s']:.2f} img/s, "
                 f"{j['seconds_per_nfe'] * 1e3:.1f} ms/NFE, NFE/call {j['nfe_over_denoiser']:.3f}")
          if with_torch:
            msg += (f"; diffusers {r['diffusers']['images_per_s']:.2f} img/s; ratio "
                    f"{r['ratio_vs_diffusers']['median']:.2f}x")
          print(msg, flush=True)
  info["total_seconds"] = time.perf_counter() - t_all
  print()
  print(format_table(rows, with_torch))
  print(f"\ntimed = steps timed / steps of the full run; {info['note']}\ntotal {info['total_seconds']:.0f} s")
  H.write_json(args.out, {"info": info, "results": rows, "setup_and_timing": setups})
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
