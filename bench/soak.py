"""Soak test: does a long training run, and a long sampling run, hold its memory, files and threads flat?

Runs the real command-line programs as child processes, exactly as a user runs them, and polls each
child every ``--interval`` seconds (default 2) for its resident memory (RSS), its open file descriptors
(``/proc/<pid>/fd``) and its thread count (psutil when installed, else ``/proc/<pid>/status``):

1. **Training**: ``python train.py --config=CONFIG --workdir=W`` with ``training.num_steps`` set out of
   reach and a checkpoint save and a sample grid every ``--cycle-every`` steps (default 50), so that the
   soak holds many save/grid cycles; after ``--train-minutes`` (default 20, counted from the start of the
   process) the child gets SIGTERM, saves a last checkpoint and exits (the loop's graceful stop).
2. **Sampling**: ``python sample.py --workdir=W --num=N --sampler=ddim --steps=10`` from that workdir
   (default N = 10,000 in one process, 64 per batch).

**Warm-up** is excluded from the steady state: for training, the later of the first ``--warmup-frac``
(default 10%) of the run and the end of the first checkpoint + sample-grid cycle (the first grid's PNG
appears: both programs compiled, orbax's machinery started); for sampling, the later of the first 10% and
the first finished batch (compiled). The training steady state ends when SIGTERM is sent, the sampling
one when the last batch is reported (sample.py then concatenates and writes its outputs; the peak of
that phase is reported apart).

Per phase: RSS at the start of the steady state, its min, max and end; its **swing** = (max - min) / min
over every poll, and the least-squares slope of RSS over time (MiB/hour); fd and thread counts
(min/max). RSS is not a flat line even without a leak: each training cycle allocates and frees (the
checkpoint's host copy, the grid's sampling buffers) and the allocator hands memory back to the OS
now and then, a sawtooth of ~15% of RSS within each cycle. **Drift** therefore compares like with like: the
steady state is cut into windows (training: whole cycles, from one sample grid to the next; sampling:
10 equal slices), and drift = (max - min) / min of the windows' **peak** RSS (troughs and means are in
the JSON too). **Pass** when the drift is <= ``--threshold`` (default 5%) and neither the fd nor the
thread count accumulates (accumulating: both the minimum and the maximum over the last third of the
steady state are higher than over its first third; the thread names at the minimum and the maximum are
in the JSON). sample.py keeps every finished batch until it writes its files
(N x 28 x 28 x 4 bytes = 31 MB for N = 10,000 Fashion-MNIST images): the report also gives the drift of
RSS minus those held samples ("net"), the memory that is not the program's output. For training, RSS
after each sample grid (one value per cycle) is in the JSON, and the report gives the change of the
cycles' peak per cycle, to tell a growth per save/grid cycle from one per step.

Children run under ``nice`` (niceness ``--nice``, default 10, or the soak's own if higher) so that other
work on a shared machine is not starved; memory does not depend on the load, only the durations do.

  python bench/soak.py                  # 20 min training + 10,000 samples (~30-40 min on 2 loaded cores)
  python bench/soak.py --quick          # 3 min training + 500 samples, to validate (~5 min)
  python bench/soak.py --train-minutes 60 --num-samples 50000 --workdir /tmp/soak --keep-workdir
  python bench/soak.py --env MALLOC_MMAP_THRESHOLD_=1048576 --num-samples 2000 \
      --out bench/out/soak_mmap_threshold.json      # children under another glibc malloc setting
  python bench/soak.py --analyze bench/out/soak.json   # recompute the statistics of a finished run

Writes ``bench/out/soak.json`` (``--quick``: ``bench/out/soak_quick.json``; ``--out`` to change), with the
whole time series; the children's output goes to ``W/soak_train.log`` and ``W/soak_sample.log``.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional

import _harness as H

HERE, REPO = H.HERE, H.REPO
MIB = 1024.0 * 1024.0

try:
  import psutil
except ImportError:  # pragma: no cover - /proc fallback
  psutil = None
_GONE = (OSError, ValueError, KeyError) + ((psutil.Error,) if psutil is not None else ())


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="3 min training, 500 samples, a cycle every 10 steps")
  p.add_argument("--train-minutes", type=float, default=None, help="training wall time (default 20, quick 3)")
  p.add_argument("--num-samples", type=int, default=None, help="images sampled (default 10000, quick 500)")
  p.add_argument("--config", default=os.path.join("configs", "fashion_mnist.py"),
                 help="train.py --config (default configs/fashion_mnist.py, the default model)")
  p.add_argument("--cycle-every", type=int, default=None,
                 help="training.ckpt_every and training.sample_every, in steps (default 50, quick 10)")
  p.add_argument("--train-flag", action="append", default=[],
                 help="an extra train.py flag, e.g. --train-flag=--config.data.batch_size=64 (repeatable)")
  p.add_argument("--sampler", default="ddim", help="sample.py --sampler (default ddim)")
  p.add_argument("--sample-steps", type=int, default=10, help="sample.py --steps (default 10)")
  p.add_argument("--sample-batch", type=int, default=64, help="sample.py --batch_size (default 64)")
  p.add_argument("--interval", type=float, default=2.0, help="seconds between polls (default 2)")
  p.add_argument("--warmup-frac", type=float, default=0.1,
                 help="the least part of each phase counted as warm-up (default 0.1)")
  p.add_argument("--threshold", type=float, default=0.05, help="max RSS drift in the steady state (0.05)")
  p.add_argument("--nice", type=int, default=10, help="niceness of the children (default 10)")
  p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                 help="an environment variable for the children, e.g. --env=MALLOC_ARENA_MAX=2 (repeatable)")
  p.add_argument("--workdir", default=None, help="train/sample workdir (default: a temporary directory, "
                 "removed at the end unless --keep-workdir); must not hold a checkpoint")
  p.add_argument("--keep-workdir", action="store_true", help="keep the temporary workdir")
  p.add_argument("--out", default=None,
                 help="JSON output (default bench/out/soak.json, quick soak_quick.json)")
  p.add_argument("--analyze", default=None, metavar="JSON",
                 help="recompute the statistics of an earlier run's JSON (in place; with --warmup-frac, "
                      "--threshold) and print its report; runs nothing")
  args = p.parse_args(argv)
  args.train_minutes = args.train_minutes if args.train_minutes is not None else (3.0 if args.quick else 20.0)
  args.num_samples = args.num_samples or (500 if args.quick else 10000)
  args.cycle_every = args.cycle_every or (10 if args.quick else 50)
  args.out = args.out or os.path.join(HERE, "out", "soak_quick.json" if args.quick else "soak.json")
  if args.train_minutes <= 0 or args.num_samples < 1 or args.cycle_every < 1 or args.interval <= 0:
    p.error("--train-minutes, --num-samples, --cycle-every and --interval must be positive")
  if not 0 <= args.warmup_frac < 1:
    p.error("--warmup-frac must be in [0, 1)")
  if any("=" not in e or not e.partition("=")[0] for e in args.env):
    p.error("--env takes NAME=VALUE")
  return args


# ----------------------------------------------------------------------------------------------------
# Polling a child
# ----------------------------------------------------------------------------------------------------


def _proc_status(pid: int) -> dict:
  out = {}
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      k, _, v = line.partition(":")
      out[k] = v.strip()
  return out


def _kib(st: dict, key: str) -> Optional[int]:
  return int(st[key].split()[0]) * 1024 if key in st else None


def thread_names(pid: int) -> dict:
  """name -> count over the threads of ``pid`` (``/proc/<pid>/task/*/comm``; Python's own threads all
  read "python")."""
  names = {}
  for tid in os.listdir(f"/proc/{pid}/task"):
    try:
      with open(f"/proc/{pid}/task/{tid}/comm") as f:
        n = f.read().strip()
    except OSError:  # the thread ended meanwhile
      continue
    names[n] = names.get(n, 0) + 1
  return dict(sorted(names.items()))


def probe(pid: int) -> Optional[dict]:
  """RSS (bytes; the process and any children of it), its anonymous and file-backed parts (``RssAnon``,
  ``RssFile``: heap vs. mapped files such as the shared libraries' pages, of the process alone), open fds
  and threads of ``pid``; None once it is gone."""
  try:
    st = _proc_status(pid)
    if "VmRSS" not in st:  # a zombie
      return None
    parts = {"rss_anon": _kib(st, "RssAnon"), "rss_file": _kib(st, "RssFile"),
             "thread_names": thread_names(pid)}
    if psutil is not None:
      proc = psutil.Process(pid)
      with proc.oneshot():
        rss, threads, fds = proc.memory_info().rss, proc.num_threads(), proc.num_fds()
        cpu = sum(proc.cpu_times()[:2])
      kids = proc.children(recursive=True)
      for k in kids:
        try:
          rss += k.memory_info().rss
        except psutil.Error:
          pass
      return {"rss": rss, **parts, "fds": fds, "threads": threads, "children": len(kids), "cpu_s": cpu}
    return {"rss": _kib(st, "VmRSS"), **parts, "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(st["Threads"]), "children": None,
            "cpu_s": H._proc_jiffies(pid) / os.sysconf("SC_CLK_TCK")}
  except _GONE:
    return None


class LogTail:
  """New lines of a child's log file since the last read (partial last line kept for the next)."""

  def __init__(self, path: str):
    self.path, self.pos, self.rest = path, 0, ""

  def lines(self) -> list[str]:
    try:
      with open(self.path, errors="replace") as f:
        f.seek(self.pos)
        text = f.read()
        self.pos = f.tell()
    except OSError:
      return []
    text = self.rest + text
    parts = re.split(r"[\r\n]", text)
    self.rest = parts.pop()
    return [l for l in parts if l.strip()]


class Watch:
  """Runs one child, polls it, and records the time series plus events (log lines, workdir files)."""

  def __init__(self, name: str, cmd: list[str], log_path: str, interval: float, env: dict):
    self.name, self.cmd, self.log_path, self.interval, self.env = name, cmd, log_path, interval, env
    self.samples: list[dict] = []  # t, rss, fds, threads, progress
    self.events: list[dict] = []
    self.progress: Optional[int] = None  # last training step / finished sample count seen
    self.batches: Optional[tuple[int, int]] = None
    self.first_batch_t = self.last_batch_t = None
    self.cpu_last = 0.0

  def start(self) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
    self.log = open(self.log_path, "w")
    self.tail = LogTail(self.log_path)
    self.t0 = time.time()
    self.busy0 = H._busy_jiffies()
    self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                 stdin=subprocess.DEVNULL)

  def now(self) -> float:
    return time.time() - self.t0

  def read_log(self, t: float) -> None:
    for line in self.tail.lines():
      m = re.search(r"step (\d+)/\d+ \| loss", line)
      if m:
        self.progress = int(m.group(1))
      m = re.search(r"batch (\d+)/(\d+) \| (\d+)/\d+ samples", line)
      if m:
        b, nb, done = int(m.group(1)), int(m.group(2)), int(m.group(3))
        self.progress, self.batches = done, (b, nb)
        if self.first_batch_t is None:
          self.first_batch_t = t
        if b == nb:
          self.last_batch_t = t

  def poll(self, extra=None) -> bool:
    """One poll; False once the child has exited."""
    t = self.now()
    self.read_log(t)
    if extra is not None:
      extra(t)
    if self.proc.poll() is not None:
      return False
    s = probe(self.proc.pid)
    if s is None:
      return self.proc.poll() is None
    self.cpu_last = s.pop("cpu_s")
    self.samples.append(dict(s, t=round(t, 2), progress=self.progress))
    return True

  def finish(self) -> int:
    rc = self.proc.wait()
    self.read_log(self.now())
    self.duration = self.now()
    busy1 = H._busy_jiffies()
    hz = os.sysconf("SC_CLK_TCK")
    self.child_cores = self.cpu_last / max(self.duration, 1e-9)
    self.foreign_cores = (None if self.busy0 is None else
                          max(0.0, (busy1 - self.busy0) / hz / self.duration - self.child_cores))
    self.log.close()
    return rc

  def kill(self) -> None:
    if getattr(self, "proc", None) is not None and self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()


# ----------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------


def slope(xs, ys) -> float:
  """Least-squares slope of ys over xs (nan with fewer than 2 distinct xs)."""
  n = len(xs)
  if n < 2:
    return float("nan")
  mx, my = sum(xs) / n, sum(ys) / n
  sxx = sum((x - mx) ** 2 for x in xs)
  return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else float("nan")


def accumulates(values: list[int]) -> bool:
  """Whether a count accumulates: its whole band moves up, i.e. both its minimum and its maximum over the
  last third of the steady state exceed those over the first third. (Pools that start and reap threads
  move one of the two, e.g. tensorstore's workers, which linger after a checkpoint save and are reaped
  when idle, so the minimum depends on how the saves are spaced; a leak moves both.)"""
  k = len(values) // 3
  if k < 1:
    return False
  first, last = values[:k], values[-k:]
  return min(last) > min(first) and max(last) > max(first)


def drift(v: list[float]) -> float:
  return (max(v) - min(v)) / min(v)


def steady_stats(series: list[dict], t_start: float, t_end: float, windows: list[tuple[float, float]],
                 threshold: float, held_bytes_per_unit: float = 0.0) -> dict:
  """The steady state ``[t_start, t_end]`` of one phase. ``windows``: its cycles (training: grid to grid;
  sampling: equal slices), over which the RSS envelope (each window's peak and trough) is taken."""
  w = [s for s in series if t_start <= s["t"] <= t_end]
  if len(w) < 6:
    raise RuntimeError(f"only {len(w)} polls in the steady state [{t_start:.0f}, {t_end:.0f}] s; run longer")
  mib = lambda s: (s["rss"] - (s["progress"] or 0) * held_bytes_per_unit) / MIB
  rss = [s["rss"] / MIB for s in w]
  ts = [s["t"] for s in w]
  fds, threads = [s["fds"] for s in w], [s["threads"] for s in w]
  out = {
      "window_s": [round(t_start, 1), round(t_end, 1)], "polls": len(w),
      "rss_start_mib": rss[0], "rss_min_mib": min(rss), "rss_max_mib": max(rss), "rss_end_mib": rss[-1],
      "rss_swing": drift(rss),  # (max - min) / min over every poll, the within-cycle sawtooth included
      "rss_slope_mib_per_h": slope(ts, rss) * 3600.0,
      "fds_min": min(fds), "fds_max": max(fds), "threads_min": min(threads), "threads_max": max(threads),
      "fds_accumulate": accumulates(fds), "threads_accumulate": accumulates(threads),
  }
  if "thread_names" in w[0]:
    out["thread_names_at_min"] = w[threads.index(min(threads))]["thread_names"]
    out["thread_names_at_max"] = w[threads.index(max(threads))]["thread_names"]
  for part in ("rss_anon", "rss_file"):  # heap vs. mapped files, first and last poll
    if w[0].get(part) is not None and w[-1].get(part) is not None:
      out[part + "_start_end_mib"] = [w[0][part] / MIB, w[-1][part] / MIB]
  env = []
  for a, b in windows:
    v = [s for s in w if a <= s["t"] < b]
    if v:
      r = [s["rss"] / MIB for s in v]
      env.append({"t0": a, "t1": b, "peak_mib": max(r), "trough_mib": min(r), "mean_mib": sum(r) / len(r),
                  "peak_net_mib": max(mib(s) for s in v), "polls": len(v)})
  out["windows"] = env
  if len(env) >= 2:
    peaks = [e["peak_mib"] for e in env]
    mids = [(e["t0"] + e["t1"]) / 2 for e in env]
    out.update(peak_drift=drift(peaks), trough_drift=drift([e["trough_mib"] for e in env]),
               mean_drift=drift([e["mean_mib"] for e in env]),
               peak_growth=(peaks[-1] - peaks[0]) / peaks[0],
               peak_slope_mib_per_h=slope(mids, peaks) * 3600.0,
               peak_slope_mib_per_window=slope(list(range(len(peaks))), peaks))
  else:  # too short to compare windows: no verdict on RSS
    out.update(peak_drift=float("nan"), trough_drift=float("nan"), mean_drift=float("nan"),
               peak_growth=float("nan"), peak_slope_mib_per_h=float("nan"),
               peak_slope_mib_per_window=float("nan"))
  if held_bytes_per_unit:
    net = [mib(s) for s in w]
    held = ((w[-1]["progress"] or 0) - (w[0]["progress"] or 0)) * held_bytes_per_unit / MIB
    out.update(held_samples_mib=held,
               net_swing=drift(net), net_slope_mib_per_h=slope(ts, net) * 3600.0,
               net_peak_drift=drift([e["peak_net_mib"] for e in env]) if len(env) >= 2 else float("nan"))
  out["too_short"] = len(env) < 2
  out["rss_flat"] = bool(out["peak_drift"] <= threshold)  # False when nan (too short)
  out["passed"] = bool(out["rss_flat"] and not out["fds_accumulate"] and not out["threads_accumulate"])
  return out


def rss_at(series: list[dict], t: float) -> Optional[float]:
  """RSS (MiB) at the first poll at or after ``t``."""
  for s in series:
    if s["t"] >= t:
      return s["rss"] / MIB
  return None


def analyze_train(r: dict, warmup_frac: float, threshold: float) -> None:
  """Adds the steady-state statistics to a training phase's record ``r`` (in place)."""
  stop = r["stopped_at_s"]
  grids = [e["t"] for e in r["events"] if e["kind"] == "sample_grid" and e["t"] <= stop]
  if not grids:
    raise RuntimeError("no sample grid was written before the stop: --cycle-every is too large for "
                       "--train-minutes")
  warm = max(warmup_frac * stop, grids[0])
  cuts = [t for t in grids if t >= warm]  # whole cycles: from one grid's end to the next's
  windows = list(zip(cuts[:-1], cuts[1:]))
  r["warmup_end_s"] = warm
  r["steady"] = s = steady_stats(r["series"], warm, stop, windows, threshold)
  s["cycles_in_steady_state"] = len(windows)
  r["cycles"] = [{"step": e["step"], "t": e["t"], "rss_after_grid_mib": rss_at(r["series"], e["t"])}
                 for e in r["events"] if e["kind"] == "sample_grid"]


def analyze_sample(r: dict, warmup_frac: float, threshold: float) -> None:
  end = r["last_batch_s"]
  warm = max(warmup_frac * end, r["first_batch_s"])
  polls = len([s for s in r["series"] if warm <= s["t"] <= end])
  num_windows = max(2, min(10, polls // 10))  # 10 windows of >= 10 polls (short runs: fewer)
  step = (end - warm) / num_windows
  windows = [(warm + i * step, warm + (i + 1) * step + (1e-6 if i == num_windows - 1 else 0.0))
             for i in range(num_windows)]
  r["warmup_end_s"] = warm
  r["steady"] = steady_stats(r["series"], warm, end, windows, threshold,
                             held_bytes_per_unit=r["bytes_per_sample"])


# ----------------------------------------------------------------------------------------------------
# The phases
# ----------------------------------------------------------------------------------------------------


def child_env(args) -> dict:
  return dict(e.split("=", 1) for e in args.env)


def nice_prefix(target: int) -> list[str]:
  k = target - os.nice(0)
  return ["nice", "-n", str(k)] if k > 0 and shutil.which("nice") else []


def run_train(args, workdir: str) -> dict:
  cmd = nice_prefix(args.nice) + [
      sys.executable, os.path.join(REPO, "train.py"), f"--config={args.config}", f"--workdir={workdir}",
      "--config.training.num_steps=100000000", f"--config.training.ckpt_every={args.cycle_every}",
      f"--config.training.sample_every={args.cycle_every}"] + list(args.train_flag)
  w = Watch("train", cmd, os.path.join(workdir, "soak_train.log"), args.interval, child_env(args))
  seen_ckpt, seen_png = set(), set()

  def scan(t):
    for d in glob.glob(os.path.join(workdir, "checkpoints", "*")):
      b = os.path.basename(d)
      if b.isdigit() and b not in seen_ckpt:
        seen_ckpt.add(b)
        w.events.append({"t": round(t, 2), "kind": "checkpoint", "step": int(b)})
    for f in glob.glob(os.path.join(workdir, "samples", "step_*.png")):
      if f not in seen_png:
        seen_png.add(f)
        w.events.append({"t": round(t, 2), "kind": "sample_grid",
                         "step": int(re.search(r"step_(\d+)", f).group(1))})

  limit = args.train_minutes * 60.0
  print(f"[train] {' '.join(args.env + cmd)}\n        for {args.train_minutes:g} min; log {w.log_path}",
        flush=True)
  w.start()
  stop_t, last_report = None, 0.0
  try:
    while w.poll(scan):
      t = w.now()
      if stop_t is None and t >= limit:
        stop_t = t
        w.proc.send_signal(signal.SIGTERM)
        print(f"[train] {t:.0f} s: SIGTERM (the loop saves a checkpoint and exits)", flush=True)
      if stop_t is not None and t - stop_t > 600:
        raise RuntimeError("train.py did not exit within 10 min of SIGTERM")
      if t - last_report >= 60 and w.samples:
        last_report = t
        s = w.samples[-1]
        print(f"[train] {t:5.0f} s  step {s['progress']}  RSS {s['rss'] / MIB:7.1f} MiB  fds {s['fds']}  "
              f"threads {s['threads']}  grids {len(seen_png)}", flush=True)
      time.sleep(args.interval)
    rc = w.finish()
  except BaseException:
    w.kill()
    raise
  if rc != 0:
    raise RuntimeError(f"train.py exited with status {rc}; see {w.log_path}")
  if stop_t is None:
    raise RuntimeError(f"train.py ended before the soak stopped it; see {w.log_path}")
  r = {"command": cmd, "duration_s": w.duration, "stopped_at_s": stop_t,
       "steps": max([s["progress"] or 0 for s in w.samples] + [0]), "cycle_every": args.cycle_every,
       "grids": len([e for e in w.events if e["kind"] == "sample_grid"]),
       "checkpoints": len([e for e in w.events if e["kind"] == "checkpoint"]),
       "peak_rss_mib": max(s["rss"] for s in w.samples) / MIB, "child_cores": w.child_cores,
       "foreign_cores": w.foreign_cores, "events": w.events, "series": w.samples, "log": w.log_path}
  for line in open(w.log_path, errors="replace"):  # the last step, from the stop message
    m = re.search(r"saved checkpoint at step (\d+)", line)
    if m:
      r["steps"] = int(m.group(1))
  return r


def run_sample(args, workdir: str) -> dict:
  base = os.path.join(workdir, "soak_samples", f"{args.sampler}_{args.sample_steps}")
  cmd = nice_prefix(args.nice) + [
      sys.executable, os.path.join(REPO, "sample.py"), f"--workdir={workdir}", f"--num={args.num_samples}",
      f"--sampler={args.sampler}", f"--steps={args.sample_steps}", f"--batch_size={args.sample_batch}",
      f"--out={base}.png"]
  w = Watch("sample", cmd, os.path.join(workdir, "soak_sample.log"), args.interval, child_env(args))
  print(f"[sample] {' '.join(args.env + cmd)}\n         log {w.log_path}", flush=True)
  w.start()
  last_report = 0.0
  try:
    while w.poll():
      t = w.now()
      if t - last_report >= 60 and w.samples:
        last_report = t
        s = w.samples[-1]
        print(f"[sample] {t:5.0f} s  {s['progress']} samples  RSS {s['rss'] / MIB:7.1f} MiB  fds {s['fds']}  "
              f"threads {s['threads']}", flush=True)
      time.sleep(args.interval)
    rc = w.finish()
  except BaseException:
    w.kill()
    raise
  if rc != 0:
    raise RuntimeError(f"sample.py exited with status {rc}; see {w.log_path}")
  if w.first_batch_t is None or w.last_batch_t is None:
    raise RuntimeError(f"no batch progress lines in {w.log_path}")
  import numpy as np
  with np.load(base + ".npz") as z:
    x = z["samples"]
    n, per_sample = x.shape[0], x[0].nbytes
  if n != args.num_samples:
    raise RuntimeError(f"sample.py wrote {n} samples, not {args.num_samples}")
  m = None
  for line in open(w.log_path, errors="replace"):
    m = re.search(r"sampled \d+ in ([\d.]+) s: ([\d.]+) samples/s", line) or m
  after = [s["rss"] / MIB for s in w.samples if s["t"] > w.last_batch_t]
  return {"command": cmd, "duration_s": w.duration, "first_batch_s": w.first_batch_t,
          "last_batch_s": w.last_batch_t, "num_samples": n, "batches": w.batches[1] if w.batches else None,
          "bytes_per_sample": per_sample, "images_per_s": float(m.group(2)) if m else None,
          "peak_rss_mib": max(s["rss"] for s in w.samples) / MIB,
          "output_phase_peak_rss_mib": max(after) if after else None,
          "child_cores": w.child_cores, "foreign_cores": w.foreign_cores, "series": w.samples,
          "log": w.log_path}


# ----------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------


HEAD = ["phase", "length", "steady state", "RSS start", "min", "max", "end", "swing (all polls)",
        "drift (window peaks)", "slope MiB/h", "fds", "threads", "result"]


def row(name: str, r: dict, length: str, threshold: float) -> list[str]:
  s = r["steady"]
  a, b = s["window_s"]
  why = []
  if s.get("too_short"):
    why.append("too short: < 2 whole windows")
  elif not s["rss_flat"]:
    why.append(f"drift > {threshold:.0%}")
  if s["fds_accumulate"]:
    why.append("fds grow")
  if s["threads_accumulate"]:
    why.append("threads grow")
  verdict = ("pass" if s["passed"] else "FAIL") + (f" ({', '.join(why)})" if why else "")
  return [name, length, f"{a / 60:.1f}-{b / 60:.1f} min", f"{s['rss_start_mib']:.0f}",
          f"{s['rss_min_mib']:.0f}", f"{s['rss_max_mib']:.0f}", f"{s['rss_end_mib']:.0f}",
          f"{s['rss_swing']:.1%}",
          f"{s['peak_drift']:.1%} ({len(s['windows'])})", f"{s['rss_slope_mib_per_h']:+.1f}",
          f"{s['fds_min']}-{s['fds_max']}", f"{s['threads_min']}-{s['threads_max']}", verdict]


def fmt(v, spec: str) -> str:
  return "n/a" if v is None else format(v, spec)


def report(result: dict, threshold: float) -> bool:
  tr, sa = result.get("train"), result.get("sample")
  rows = []
  if tr and "steady" in tr:
    rows.append(row("train", tr, f"{tr['duration_s'] / 60:.1f} min, {tr['steps']} steps, {tr['grids']} "
                    f"ckpt+grid cycles", threshold))
  if sa and "steady" in sa:
    rows.append(row("sample", sa, f"{sa['duration_s'] / 60:.1f} min, {sa['num_samples']} images", threshold))
  print()
  print(H.format_table(HEAD, rows))
  if tr and "steady" in tr:
    s = tr["steady"]
    print(f"\ntrain: {s['cycles_in_steady_state']} whole checkpoint+grid cycles in the steady state; their "
          f"peak RSS changed {s['peak_slope_mib_per_window']:+.2f} MiB per cycle ({s['peak_growth']:+.2%} "
          f"first to last), troughs drift {s['trough_drift']:.1%}, means {s['mean_drift']:.1%}; peak RSS of "
          f"the whole run {tr['peak_rss_mib']:.0f} MiB; other processes used {tr['foreign_cores'] or 0:.2f} "
          f"cores on average")
  if sa and "steady" in sa:
    s = sa["steady"]
    print(f"sample: {len(s['windows'])} equal windows; their peak RSS changed {s['peak_growth']:+.2%} first "
          f"to last; net of the {s['held_samples_mib']:.1f} MiB of finished samples held: window-peak drift "
          f"{s['net_peak_drift']:.1%}, slope {s['net_slope_mib_per_h']:+.1f} MiB/h; writing the outputs "
          f"peaked at {fmt(sa['output_phase_peak_rss_mib'], '.0f')} MiB; {fmt(sa['images_per_s'], '.1f')} "
          f"images/s; other processes used {sa['foreign_cores'] or 0:.2f} cores on average")
  print(f"\n{H.markdown_table(HEAD, rows)}")
  ok = bool(rows) and all(r and r.get("steady", {}).get("passed") for r in (tr, sa))
  print(f"\n{'PASS' if ok else 'FAIL'}: RSS drift (over the peaks of the steady state's windows) <= "
        f"{threshold:.0%}, no fd/thread accumulation")
  return ok


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.analyze:
    import json
    with open(args.analyze) as f:
      result = json.load(f)
    if "train" in result:
      analyze_train(result["train"], args.warmup_frac, args.threshold)
    if "sample" in result:
      analyze_sample(result["sample"], args.warmup_frac, args.threshold)
    H.write_json(args.analyze, result)
    return 0 if report(result, args.threshold) else 1
  temp = args.workdir is None
  workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="jdiff_soak_"))
  os.makedirs(workdir, exist_ok=True)
  if glob.glob(os.path.join(workdir, "checkpoints", "[0-9]*")):
    sys.exit(f"error: {workdir} already holds checkpoints; the soak needs a fresh --workdir")
  print(f"soak: workdir {workdir}, psutil {'yes' if psutil else 'no (/proc)'}, children at nice "
        f"{max(args.nice, os.nice(0))}", flush=True)
  t0 = time.time()
  result = {"bench": "soak", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": H.machine_info(),
            "loadavg_start": list(os.getloadavg()), "args": vars(args), "workdir": workdir}
  try:
    result["train"] = run_train(args, workdir)
    H.write_json(args.out, result)
    analyze_train(result["train"], args.warmup_frac, args.threshold)
    result["sample"] = run_sample(args, workdir)
    analyze_sample(result["sample"], args.warmup_frac, args.threshold)
  finally:
    result["loadavg_end"] = list(os.getloadavg())
    result["wall_s"] = time.time() - t0
    H.write_json(args.out, result)
    if temp and not args.keep_workdir:
      shutil.rmtree(workdir, ignore_errors=True)
  ok = report(result, args.threshold)
  print(f"wrote {args.out} in {result['wall_s'] / 60:.1f} min")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
