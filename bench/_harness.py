"""What the throughput benches share: worker processes, interleaved timing on a shared machine, output.

``train_throughput.py``, ``sample_throughput.py``, ``accel_throughput.py`` and ``conv_kernels.py`` import
this module (``bench/`` is on ``sys.path`` when a bench runs as ``python bench/NAME.py``); each bench
keeps only what it measures (its cases, its runners, its rows and its command line).

* **Worker protocol.** Every runner lives in its own process (so each can have its own ``XLA_FLAGS``, and
  XLA's and torch's thread pools never share a process). A bench starts its own script again with
  ``--worker SPEC`` (``Worker``, ``Workers``); the worker calls ``serve``, which speaks JSON lines:
  commands on stdin, one reply per command on the process's original stdout (anything else printed goes
  to stderr). Commands: ``setup`` (build a runner; reply: its ``info`` and the peak RSS), ``run`` (``n``
  timed calls; reply: the last call's result, ``times`` and the peak RSS), ``drop`` (forget the runner)
  and ``quit`` (reply: the peak RSS).
* **Quiet-machine detection.** ``wait_for_quiet`` waits briefly for a moment in which other processes
  leave the CPU alone; ``CpuMeter`` records how many cores other processes used while a block ran
  ("foreign load"). A round is quiet when every block in it ran with a foreign load below
  ``QUIET_CORES``: torch's OpenMP threads slow down by an order of magnitude when another process takes
  a core, XLA's much less, so ratios from busy rounds are not comparable.
* **Interleaved rounds.** ``round_order`` (the runners' order, reversed every other round),
  ``timed_block`` (wait, then one metered ``run``), ``quiet_rounds``, ``median_over_quiet`` and
  ``speed_ratio`` (per-round ratios, their median over the quiet rounds, and the ratio of the fastest).
* **Output.** ``machine_info``, ``format_table`` (aligned text), ``markdown_table`` and ``write_json``
  (atomic, creating ``bench/out/``).
* **Setup.** ``Case`` (a model and image shape), ``use_torch`` (whether the diffusers side can run) and
  the ``name_list`` / ``int_list`` parsers of comma-separated flags.
* **Training for a wall-clock budget** (``process_comparison.py``, ``default_recipe.py``):
  ``train_for`` runs ``train.py`` until SIGTERM and notes when each checkpoint appeared.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterable, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
QUIET_CORES = 0.3  # a timed block is "quiet" when other processes used fewer cores than this


@dataclasses.dataclass(frozen=True)
class Case:
  """One model and image shape to measure."""
  name: str
  image_size: int
  channels: int
  model: dict  # jdiff UNet fields (also mapped onto diffusers UNet2DModel)
  target: float  # the images/s ratio jdiff/diffusers to reach


# ----------------------------------------------------------------------------------------------------
# The machine and the environment
# ----------------------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def release_free_memory() -> None:
  """Hands freed heap (e.g. the XLA compiler's) back to the OS, so idle workers hold little memory."""
  try:
    import ctypes
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


def torch_available(modules: Sequence[str] = ("torch", "diffusers")) -> tuple[bool, str]:
  missing = [m for m in modules if importlib.util.find_spec(m) is None]
  return (not missing), (f"{' and '.join(missing)} not importable" if missing else "")


def use_torch(no_torch: bool) -> bool:
  """Whether to run the diffusers side: not with ``--no-torch``, nor (with a note) without torch."""
  if no_torch:
    return False
  ok, why = torch_available()
  if not ok:
    print(f"note: {why}; measuring jdiff only. To compare, install a CPU build of torch first "
          f"(`pip install torch`, from the CPU wheel index) and then `pip install diffusers`.")
  return ok


def machine_info() -> dict:
  return {"platform": platform.platform(), "python": platform.python_version(),
          "cpu_count": os.cpu_count()}


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


def name_list(p: argparse.ArgumentParser, text: str, what: str, valid: Iterable[str]) -> list[str]:
  """Comma-separated names out of ``valid`` (``p.error`` otherwise)."""
  valid = list(valid)
  names = [s.strip() for s in text.split(",") if s.strip()]
  unknown = [s for s in names if s not in valid]
  if unknown or not names:
    p.error(f"unknown {what}(s) {unknown}; valid {what}s are: {', '.join(valid)}")
  return names


def int_list(p: argparse.ArgumentParser, text: str, flag: str) -> list[int]:
  """Comma-separated positive integers (``p.error`` otherwise)."""
  try:
    v = [int(b) for b in text.split(",") if b.strip()]
  except ValueError:
    p.error(f"--{flag} must be comma-separated integers, got {text!r}")
  if not v or min(v) < 1:
    p.error(f"--{flag} must be positive integers, got {text!r}")
  return v


# ----------------------------------------------------------------------------------------------------
# Worker side of the protocol
# ----------------------------------------------------------------------------------------------------


def jax_hello(matmul_precision: Optional[str] = None) -> dict:
  """Imports jax in a jdiff worker (``XLA_FLAGS`` came with the environment) and says which."""
  import jax
  if matmul_precision:
    jax.config.update("jax_default_matmul_precision", matmul_precision)
  return {"jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", "")}


def torch_hello() -> dict:
  """Imports torch and diffusers in a diffusers worker and gives torch every core."""
  import diffusers
  import torch

  import torch_reference
  return {"torch": torch.__version__, "diffusers": diffusers.__version__,
          "torch_threads": torch_reference.set_threads()}


def serve(hello: Callable[[], dict], make: Callable[[dict], Any],
          run: Callable[[Any, dict], dict]) -> int:
  """Serves the coordinator's commands until ``quit`` or the end of stdin.

  ``hello()`` runs first, after stdout is taken for the protocol (import the framework there);
  ``make(cmd)`` builds a runner for a ``setup`` command (its ``info`` dict is the reply);
  ``run(runner, cmd)`` is one timed call for a ``run`` command (returns a dict, the last one is replied).
  """
  channel = os.fdopen(os.dup(1), "w", buffering=1)
  os.dup2(2, 1)  # anything else printed goes to stderr, never into the protocol
  send = lambda reply: channel.write(json.dumps(reply) + "\n")
  send({"pid": os.getpid(), **hello()})
  runner = None
  for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["cmd"] == "setup":
      runner = None
      runner = make(cmd)
      reply = dict(runner.info, peak_rss_mb=peak_rss_mb())
      release_free_memory()
    elif cmd["cmd"] == "run":
      times, last = [], {}
      for _ in range(cmd["n"]):
        t0 = time.perf_counter()
        last = run(runner, cmd)
        times.append(time.perf_counter() - t0)
      reply = dict(last, times=times, peak_rss_mb=peak_rss_mb())
    elif cmd["cmd"] == "drop":
      runner = None
      reply = {}
    else:
      send({"peak_rss_mb": peak_rss_mb()})
      return 0
    send(reply)
  return 0


# ----------------------------------------------------------------------------------------------------
# Coordinator side
# ----------------------------------------------------------------------------------------------------


class Worker:
  """Coordinator-side handle of one worker process: ``script --worker SPEC``, run from the repository
  root, with ``xla_flags`` appended to the environment's ``XLA_FLAGS``."""

  def __init__(self, script: str, label: str, spec: dict, xla_flags: str = ""):
    self.label = label
    env = dict(os.environ)
    if xla_flags:
      env["XLA_FLAGS"] = " ".join(f for f in (env.get("XLA_FLAGS", ""), xla_flags) if f)
    self.proc = subprocess.Popen([sys.executable, os.path.abspath(script), "--worker", json.dumps(spec)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                 cwd=REPO)
    self.hello = self._read()

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      code = self.proc.wait()
      raise RuntimeError(f"worker {self.label!r} exited with code {code} (see its stderr above)")
    return json.loads(line)

  def ask(self, **cmd) -> dict:
    self.proc.stdin.write(json.dumps(cmd) + "\n")
    self.proc.stdin.flush()
    return self._read()

  def __enter__(self) -> "Worker":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> Optional[dict]:
    """Stops the worker; returns its last reply (the peak RSS), or None when it had died already (and
    said why on stderr)."""
    try:
      return self.ask(cmd="quit")
    except Exception:
      self.proc.kill()
      return None
    finally:
      try:
        self.proc.stdin.close()
      except OSError:
        pass
      self.proc.wait(timeout=60)


class Workers(dict):
  """label -> ``Worker``; a ``with`` block closes every one of them when it ends."""

  def __enter__(self) -> "Workers":
    return self

  def __exit__(self, *exc) -> None:
    for w in self.values():
      w.close()


# ----------------------------------------------------------------------------------------------------
# Quiet-machine detection
# ----------------------------------------------------------------------------------------------------


def _busy_jiffies() -> Optional[int]:
  """Busy CPU time of the whole machine so far, in clock ticks (``/proc/stat``); None off Linux."""
  try:
    with open("/proc/stat") as f:
      v = [int(x) for x in f.readline().split()[1:]]
  except OSError:
    return None
  return sum(v) - v[3] - v[4]  # minus idle and iowait


def _proc_jiffies(pid: int) -> int:
  with open(f"/proc/{pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return int(fields[11]) + int(fields[12])  # utime + stime


def wait_for_quiet(max_seconds: float, threshold: float = QUIET_CORES,
                   window: float = 0.2) -> Optional[float]:
  """Waits (at most ``max_seconds``) for a ``window`` in which other processes use less than
  ``threshold`` cores (the workers are idle meanwhile); returns the last window's load in cores."""
  hz = os.sysconf("SC_CLK_TCK")
  deadline = time.perf_counter() + max_seconds
  while True:
    b0, t0 = _busy_jiffies(), time.perf_counter()
    if b0 is None:
      return None
    time.sleep(window)
    load = (_busy_jiffies() - b0) / hz / (time.perf_counter() - t0)
    if load < threshold or time.perf_counter() > deadline:
      return load


class CpuMeter:
  """Cores used by processes other than ``pid`` (and this one) while a block runs (``foreign``; None
  off Linux)."""

  def __init__(self, pid: int):
    self.pid, self.hz = pid, os.sysconf("SC_CLK_TCK")

  def __enter__(self):
    self.b0, self.p0, self.t0 = _busy_jiffies(), _proc_jiffies(self.pid), time.perf_counter()
    return self

  def __exit__(self, *exc):
    if self.b0 is None:
      self.foreign = None
      return
    wall = time.perf_counter() - self.t0
    other = (_busy_jiffies() - self.b0) - (_proc_jiffies(self.pid) - self.p0)
    self.foreign = max(0.0, other / self.hz / wall)


# ----------------------------------------------------------------------------------------------------
# Interleaved rounds
# ----------------------------------------------------------------------------------------------------


def round_order(labels: Sequence[str], r: int) -> Sequence[str]:
  """The runners in round ``r``: in order, reversed every other round (all see the same load)."""
  return labels if r % 2 == 0 else labels[::-1]


def timed_block(worker: Worker, quiet_wait: float, **cmd) -> tuple[dict, Optional[float]]:
  """One ``run`` command after waiting (at most ``quiet_wait`` s) for a quiet CPU: (reply, foreign
  load in cores during it)."""
  wait_for_quiet(quiet_wait)
  with CpuMeter(worker.proc.pid) as meter:
    reply = worker.ask(cmd="run", **cmd)
  return reply, meter.foreign


def quiet_rounds(foreign: dict, rounds: int) -> list[bool]:
  """Per round: every runner's block ran while other processes used fewer than ``QUIET_CORES`` cores
  (``foreign``: label -> the foreign load per round)."""
  return [all(f[r] is not None and f[r] < QUIET_CORES for f in foreign.values()) for r in range(rounds)]


def median_over_quiet(values: Sequence[float], quiet: Sequence[bool],
                      min_quiet: int) -> tuple[float, bool]:
  """The median over the quiet rounds when there are at least ``min_quiet`` of them, else over all
  rounds; and whether it came from the quiet rounds."""
  calm = [v for v, q in zip(values, quiet) if q]
  use = calm if len(calm) >= min_quiet else list(values)
  return statistics.median(use), use is calm


def speed_ratio(a_seconds: Sequence[float], b_seconds: Sequence[float], quiet: Sequence[bool],
                min_quiet: int, a_best: Optional[Sequence[float]] = None,
                b_best: Optional[Sequence[float]] = None) -> dict:
  """Speed of ``a`` relative to ``b`` (b's time / a's time) per round, from each round's time of the
  same work; ``median`` over the quiet rounds (``median_over_quiet``); ``best`` compares the fastest
  times (of ``a_best`` / ``b_best`` when given, e.g. every step, else of the rounds)."""
  rounds = [tb / ta for ta, tb in zip(a_seconds, b_seconds)]
  med, from_quiet = median_over_quiet(rounds, quiet, min_quiet)
  best = min(b_seconds if b_best is None else b_best) / min(a_seconds if a_best is None else a_best)
  return {"per_round": rounds, "median": med, "from_quiet_rounds": from_quiet,
          "median_all_rounds": statistics.median(rounds), "best": best}


# ----------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------


def format_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """Right-aligned columns under ``head`` and a rule of dashes."""
  lines = [list(head)] + [list(r) for r in rows]
  widths = [max(len(l[i]) for l in lines) for i in range(len(head))]
  fmt = lambda l: "  ".join(s.rjust(w) for s, w in zip(l, widths))
  return "\n".join([fmt(lines[0]), fmt(["-" * w for w in widths])] + [fmt(l) for l in lines[1:]])


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = [head, ["---"] * len(head)] + list(rows)
  return "\n".join("| " + " | ".join(l) + " |" for l in lines)


def write_json(path: str, obj) -> None:
  """Writes ``obj`` to ``path`` (creating its folder) through a temporary file, so that a reader, or a
  run stopped mid-write, never sees half a file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------
# Training for a wall-clock budget
# ----------------------------------------------------------------------------------------------------


def _watch_checkpoints(directory: str, start: float, seen: dict, done: threading.Event) -> None:
  """Note the second (since ``start``) at which each finished checkpoint step directory appears (orbax
  writes into a temporary directory and renames it when the save is complete)."""
  while not done.is_set():
    if os.path.isdir(directory):
      for name in os.listdir(directory):
        if name.isdigit() and int(name) not in seen:
          seen[int(name)] = time.time() - start
    done.wait(0.5)


def train_for(args: Sequence[str], workdir: str, seconds: float, log_path: str) -> dict:
  """``train.py --workdir=WORKDIR ARGS`` (a fresh workdir) for ``seconds`` of wall-clock from the process
  start (compilation included, as a user waits for it), then SIGTERM, on which the loop saves a
  checkpoint at the end of the current step and exits. Returns ``{"steps": the last step,
  "checkpoints": {step: seconds when it appeared; the last one counts at the budget}, "seconds",
  "images_per_sec": the last logged rate}``."""
  cmd = [sys.executable, "train.py", f"--workdir={workdir}", *args]
  seen: dict = {}
  done = threading.Event()
  start = time.time()
  watcher = threading.Thread(target=_watch_checkpoints,
                             args=(os.path.join(workdir, "checkpoints"), start, seen, done), daemon=True)
  watcher.start()
  with open(log_path, "w") as log:
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
      proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
      proc.send_signal(signal.SIGTERM)
      proc.wait(timeout=600)
  elapsed = time.time() - start
  done.set()
  watcher.join()
  if proc.returncode != 0:
    raise RuntimeError(f"train.py failed (exit {proc.returncode}); see {log_path}")
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  seen[steps[-1]] = min(seen.get(steps[-1], elapsed), seconds)
  rates = []
  metrics = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(metrics):
    rows = [json.loads(line) for line in open(metrics) if line.strip()]
    rates = [r["images_per_sec"] for r in rows if "images_per_sec" in r]
  return {"steps": steps[-1], "checkpoints": {str(s): seen.get(s) for s in steps}, "seconds": elapsed,
          "images_per_sec": rates[-1] if rates else None}


def run_train(args: Sequence[str], workdir: str, log_path: str) -> float:
  """``train.py --workdir=WORKDIR ARGS`` to completion; returns its wall-clock seconds."""
  start = time.time()
  with open(log_path, "w") as log:
    proc = subprocess.run([sys.executable, "train.py", f"--workdir={workdir}", *args], cwd=REPO,
                          stdout=log, stderr=subprocess.STDOUT)
  if proc.returncode != 0:
    raise RuntimeError(f"train.py failed (exit {proc.returncode}); see {log_path}")
  return time.time() - start


def eval_fd(workdir: str, out: str, num: int, *, step: Optional[int] = None,
            sampler: Optional[str] = None, steps: Optional[int] = None, reuse: bool = False) -> dict:
  """``eval.py`` on ``workdir`` (its newest checkpoint, or ``step``) with the given sampler and step count
  (default: its config's), seed 0: FD, its real-data floor at the same N and their ratio, KID, the share
  of noise tiles, NFE per sample and the seconds the evaluation took. ``reuse``: read ``out`` if an
  earlier run of the bench wrote it (for the same workdir, sampler, steps and N) instead of sampling."""
  cmd = [sys.executable, "eval.py", f"--workdir={workdir}", f"--num={num}", "--seed=0", f"--out={out}",
         "--noprogress"]
  cmd += [f"--step={step}"] if step is not None else []
  cmd += [f"--sampler={sampler}"] if sampler else []
  cmd += [f"--steps={steps}"] if steps else []
  start = time.time()
  if not (reuse and os.path.exists(out) and _same_eval(out, num, sampler, steps)):
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
  r = json.load(open(out))
  m = r["metrics"]
  return {"nfe": r["nfe"], "fd": m["fd"], "fd_floor": m["floor"]["fd"],
          "fd_ratio": m["fd"] / m["floor"]["fd"], "kid": m["kid"], "noisy": m["noisy"],
          "eval_seconds": time.time() - start}


def _same_eval(path: str, num: int, sampler: Optional[str], steps: Optional[int]) -> bool:
  """Whether the ``eval.py`` report at ``path`` was made with ``num`` samples (and the sampler and step
  count asked for, when given)."""
  try:
    s = json.load(open(path))["settings"]
  except (OSError, ValueError, KeyError):
    return False
  return (s.get("num") == num and (sampler is None or s.get("sampler") == sampler)
          and (steps is None or s.get("steps") == steps))
