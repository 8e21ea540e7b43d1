"""Crash safety: kill train.py anywhere (while training, inside a checkpoint save, inside a restore) and
it resumes exactly; damaged or incomplete checkpoints are refused (or skipped on request); SIGTERM and
SIGINT save a checkpoint before exiting.

Kills land relative to observed progress, never at fixed delays: after a step appears in
metrics.jsonl, or at the marker line printed by the checkpoint code's test-only pause hooks
(``JDIFF_TEST_PAUSE_IN_SAVE`` / ``JDIFF_TEST_PAUSE_IN_RESTORE``, jdiff/experiment/checkpoint.py), and
each kill is checked to have landed where intended. The subprocesses share a JAX compilation cache in
the test's temporary directory, so a restart costs imports, not compilation.
"""
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import chex
import jax
import numpy as np
import pytest

from jdiff.experiment import checkpoint as ckpt_lib
from jdiff.training import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import toy2d  # noqa: E402

FLAGS = ["--config=configs/toy2d.py", "--config.training.log_every=1",
         "--config.training.sample_every=0", "--config.data.batch_size=32",
         "--config.model.features=32", "--config.model.num_blocks=1",
         "--config.training.keep_checkpoints=2",
         "--cpu_devices=1"]  # compared with an in-process run on this process's one CPU device
MARKER = re.compile(r"jdiff-test: paused in (save|restore) of checkpoint step (\d+)")
WAIT = 180  # seconds: the most any one wait for progress may take on a loaded 2-core machine


def _config(num_steps, ckpt_every=1, **over):
  c = toy2d.get_config()
  c.training.num_steps = num_steps
  c.training.ckpt_every = ckpt_every
  c.training.log_every = 1
  c.training.sample_every = 0
  c.training.keep_checkpoints = 2
  c.data.batch_size = 32
  c.model.features = 32
  c.model.num_blocks = 1
  for k, v in over.items():
    a, b = k.split(".")
    c[a][b] = v
  return c


def assert_same(a, b):
  """Same tree structure (containers, keys, optax state types), then bit-identical leaves."""
  ta, tb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
  assert ta == tb, f"tree structures differ:\n{ta}\n{tb}"
  a, b = jax.tree_util.tree_map(np.asarray, (a, b))
  chex.assert_trees_all_equal(a, b, strict=True)


def compile_cache_env(tmp_path_factory):
  """Environment for train.py subprocesses sharing one persistent JAX compilation cache in this test
  session's temporary directory (a restart then costs imports, not compilation)."""
  directory = tmp_path_factory.getbasetemp() / "jax_compilation_cache"
  directory.mkdir(exist_ok=True)
  return {"JAX_COMPILATION_CACHE_DIR": str(directory),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
  return compile_cache_env(tmp_path_factory)


class TrainProcess:
  """``timeout -k 5 T python train.py ...`` in its own process group; a thread collects its output
  (stdout and stderr) line by line and notes the first pause-hook marker."""

  def __init__(self, workdir, args, env=None, timeout=300):
    full_env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **(env or {}))
    self.p = subprocess.Popen(
        ["timeout", "-k", "5", str(timeout), sys.executable, "train.py", f"--workdir={workdir}",
         *args], cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    self.lines, self.marker = [], None
    self._event = threading.Event()
    self._thread = threading.Thread(target=self._read, daemon=True)
    self._thread.start()

  def _read(self):
    for line in self.p.stdout:
      self.lines.append(line.rstrip("\n"))
      m = MARKER.search(line)
      if m and self.marker is None:
        self.marker = (m.group(1), int(m.group(2)))
        self._event.set()
    self._event.set()  # end of output

  @property
  def output(self):
    return "\n".join(self.lines)

  def wait_marker(self, timeout=WAIT):
    self._event.wait(timeout)
    assert self.marker is not None, f"no pause marker (exit {self.p.poll()}):\n{self.output[-3000:]}"
    return self.marker

  def alive(self):
    return self.p.poll() is None

  def kill(self):
    os.killpg(self.p.pid, signal.SIGKILL)  # train.py and `timeout` (its own group: new session)

  def send(self, sig):
    """``sig`` to train.py itself (through `timeout`, a forwarded signal would also start its
    5 s countdown to SIGKILL)."""
    with open(f"/proc/{self.p.pid}/task/{self.p.pid}/children") as f:
      (child,) = [int(c) for c in f.read().split()]
    os.kill(child, sig)

  def finish(self, timeout=WAIT):
    try:
      rc = self.p.wait(timeout)
    except subprocess.TimeoutExpired:
      self.kill()
      raise
    self._thread.join(10)
    return rc, self.output

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if self.alive():
      self.kill()
      self.p.wait(30)


def metric_lines(workdir):
  """The parsed lines of ``<workdir>/metrics.jsonl`` (a partial last line is skipped)."""
  path = os.path.join(workdir, "metrics.jsonl")
  out = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          out.append(json.loads(line))
        except ValueError:
          pass
  return out


def wait_for_step(proc, workdir, step, timeout=WAIT):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if any(m.get("step") == step for m in metric_lines(workdir)):
      return
    assert proc.alive(), f"train.py exited before step {step}:\n{proc.output[-3000:]}"
    time.sleep(0.02)
  raise AssertionError(f"step {step} did not appear in {timeout} s:\n{proc.output[-3000:]}")


def check_checkpoints(workdir):
  """Every step orbax lists is complete: it has its checksums and they verify."""
  ck = ckpt_lib.Checkpointer(workdir, max_to_keep=None)
  try:
    steps = sorted(ck.all_steps())
    for s in steps:
      assert os.path.exists(os.path.join(ck.step_dir(s), ckpt_lib.CHECKSUMS)), (
          f"checkpoint step {s} is listed (committed) without {ckpt_lib.CHECKSUMS}")
      ck.verify(s)
    return steps
  finally:
    ck.close()


def _lock_owner(workdir, wait=5.0):
  """The pid recorded in the workdir's lock. The owner writes its record right after taking the lock
  (truncate, then write), so a read can fall between the two: poll briefly for a record."""
  deadline = time.monotonic() + wait
  while True:
    try:
      with open(os.path.join(workdir, loop.LOCK_FILE)) as f:
        return json.load(f).get("pid")
    except (OSError, ValueError, AttributeError):
      if time.monotonic() > deadline:
        return None
      time.sleep(0.05)


def _kill_run(tmp_path, cache, plan, num_steps, ckpt_every, seed):
  """Run train.py in ``<tmp_path>/killed`` and kill it once per entry of ``plan``:

  * ``"train"``: once a step past everything logged so far appears in metrics.jsonl (the run is
    training), plus a random 0-0.3 s (anywhere in the step loop, a save included);
  * ``"save"``: paused inside the first save of the run (``JDIFF_TEST_PAUSE_IN_SAVE``), after the
    checksums are written and before the step is committed;
  * ``"restore"``: paused inside the restore (``JDIFF_TEST_PAUSE_IN_RESTORE``).

  then let it finish. Returns ``[(kind, step)]`` of the kills, each checked to have landed there.
  """
  rng = random.Random(seed)
  wd = str(tmp_path / "killed")
  ck_dir = os.path.join(wd, "checkpoints")
  args = [*FLAGS, f"--config.training.num_steps={num_steps}",
          f"--config.training.ckpt_every={ckpt_every}"]
  landed, stale_pid = [], None
  for kind in [*plan, "finish"]:
    steps = check_checkpoints(wd) if os.path.isdir(ck_dir) else []
    resume = steps[-1] if steps else 0
    if kind == "restore" and not steps:
      kind = "train"  # nothing to restore yet
    logged = max([m["step"] for m in metric_lines(wd)] + [0])
    metrics_before = open(os.path.join(wd, "metrics.jsonl")).read() if logged else None
    env = dict(cache)
    if kind in ("save", "restore"):
      env[f"JDIFF_TEST_PAUSE_IN_{kind.upper()}"] = "120"
    with TrainProcess(wd, args, env) as proc:
      if kind == "finish":
        rc, out = proc.finish()
        assert rc == 0, out[-3000:]
      else:
        if kind == "train":
          target = logged + rng.randint(1, ckpt_every)
          assert target < num_steps, "plan too long for num_steps"
          wait_for_step(proc, wd, target)
          owner = _lock_owner(wd)  # now, while it trains (a run near its end releases the lock)
          time.sleep(rng.uniform(0.0, 0.3))
          where = target
        elif kind == "save":
          where = (resume // ckpt_every + 1) * ckpt_every
          assert proc.wait_marker() == ("save", where), proc.output[-3000:]
        else:
          where = resume
          assert proc.wait_marker() == ("restore", where), proc.output[-3000:]
        if kind != "train":
          owner = _lock_owner(wd)
        assert proc.alive(), f"train.py ended before the {kind} kill:\n{proc.output[-3000:]}"
        proc.kill()
        rc, out = proc.finish()
        assert rc == -signal.SIGKILL, (rc, out[-3000:])
        landed.append((kind, where))
    # Where the kill landed, and what the next run must find.
    if stale_pid is not None:  # the killed run's lock was left behind, detected and taken over
      assert f"stale lock of pid {stale_pid}" in out, out[-3000:]
    if kind != "restore":  # (a restore kill: the marker named the step being restored)
      if resume:
        assert f"resumed from checkpoint step {resume}" in out, out[-3000:]
      else:
        assert "resumed from" not in out, out[-3000:]
    if kind == "finish":
      break
    stale_pid = owner
    assert owner is not None, f"no lock owner recorded in {wd}/{loop.LOCK_FILE}"
    after = check_checkpoints(wd)
    if kind == "save":  # killed between writing and committing: the step is not there
      assert where not in after, f"step {where} committed although killed inside its save"
      assert os.path.isdir(os.path.join(ck_dir, f"{where}.orbax-checkpoint-tmp")), os.listdir(ck_dir)
      assert after == steps, (after, steps)
    elif kind == "restore":  # a restore writes nothing
      assert after == steps and (metrics_before is None or metrics_before == open(
          os.path.join(wd, "metrics.jsonl")).read())
    else:
      assert (after[-1] if after else 0) >= resume
  return landed


def _kill_test(tmp_path, cache, plan, num_steps, ckpt_every, seed):
  straight_wd = str(tmp_path / "straight")
  straight = loop.train(_config(num_steps, ckpt_every), straight_wd, log=lambda *a: None)
  landed = _kill_run(tmp_path, cache, plan, num_steps, ckpt_every, seed)
  wd = str(tmp_path / "killed")
  exp = loop.Experiment(_config(num_steps, ckpt_every))
  ck = ckpt_lib.Checkpointer(wd)
  step, state, _, _ = ck.restore_latest(exp.init_state(), exp.meta(exp.init_state()))
  ck.close()
  assert step == num_steps
  assert_same(straight, state)
  # Every step logged exactly once, with the uninterrupted run's losses.
  got, want = metric_lines(wd), metric_lines(straight_wd)
  assert [m["step"] for m in got] == list(range(1, num_steps + 1))
  assert [m["loss"] for m in got] == [m["loss"] for m in want]
  return landed


@pytest.mark.slow  # ~35 s; default run: test_training's bit-exact resume and the SIGTERM save below
def test_kill_anywhere_resumes_exactly(tmp_path, jax_cache):
  # The first save kill makes step 3 appear in metrics.jsonl, so the next train kill comes after
  # checkpoint 3 and the restore kill has a checkpoint to restore.
  # num_steps leaves ~50 steps after the last kill: a kill meant for training must not find the run
  # finished (a toy step takes milliseconds on a quiet machine).
  landed = _kill_test(tmp_path, jax_cache, ["train", "save", "train", "restore", "save"], num_steps=60,
                      ckpt_every=3, seed=0)
  kinds = [k for k, _ in landed]
  assert len(kinds) >= 5 and kinds.count("save") >= 2 and "restore" in kinds, landed


@pytest.mark.slow
def test_kill_anywhere_resumes_exactly_many(tmp_path, jax_cache):
  rng = random.Random(2)  # 16 kills: 7 in training, 5 in a save, 4 in a restore (none before a checkpoint)
  plan = [rng.choice(["train", "train", "save", "save", "restore"]) for _ in range(16)]
  # Steps to spare after the last planned kill: with the compilation cache a resumed toy run trains
  # thousands of images per second, and a kill meant for training must not find it finished.
  landed = _kill_test(tmp_path, jax_cache, plan, num_steps=300, ckpt_every=3, seed=1)
  kinds = [k for k, _ in landed]
  assert len(kinds) == 16 and kinds.count("save") == 5 and kinds.count("restore") >= 2, landed


def _damage(path, mode):
  if mode == "truncate":
    with open(path, "r+b") as f:
      f.truncate(max(os.path.getsize(path) // 2, 1))
  else:
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _largest_file(d):
  files = [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs
           if f != ckpt_lib.CHECKSUMS]
  return max(files, key=os.path.getsize)


@pytest.mark.parametrize("mode", [pytest.param("truncate", marks=pytest.mark.slow), "corrupt"])
def test_damaged_latest_checkpoint_is_refused_or_skipped(tmp_path, mode):
  wd = str(tmp_path / "w")
  loop.train(_config(4, ckpt_every=2), wd, log=lambda *a: None)
  _damage(_largest_file(os.path.join(wd, "checkpoints", "4")), mode)
  with pytest.raises(ValueError, match=r"checkpoint step 4 .* damaged.*previous: step 2"):
    loop.train(_config(6, ckpt_every=2), wd, log=lambda *a: None)
  msgs = []
  resumed = loop.train(_config(6, ckpt_every=2, **{"training.fallback_to_previous_checkpoint": True}),
                       wd, log=msgs.append)
  assert any("step 4" in m and "damaged" in m and m.startswith("warning") for m in msgs)
  assert any("resumed from checkpoint step 2" in m for m in msgs)
  straight = loop.train(_config(6, ckpt_every=2), str(tmp_path / "s"), log=lambda *a: None)
  assert_same(straight, resumed)


def test_checkpoint_without_checksums_is_incomplete(tmp_path):
  """A step lacking jdiff_checksums.json (deleted; or, before the fix, a kill between orbax's commit
  and the checksum write) is never restored as complete: refused with its step named, by training and
  by sampling, or skipped with --config.training.fallback_to_previous_checkpoint."""
  from jdiff.generation import restore as generation_restore
  wd = str(tmp_path / "w")
  loop.train(_config(4, ckpt_every=2), wd, log=lambda *a: None)
  os.remove(os.path.join(wd, "checkpoints", "4", ckpt_lib.CHECKSUMS))
  with pytest.raises(ValueError, match=r"checkpoint step 4 .*incomplete.*jdiff_checksums.json.*"
                                       r"previous: step 2"):
    loop.train(_config(6, ckpt_every=2), wd, log=lambda *a: None)
  with pytest.raises(ckpt_lib.DamagedCheckpointError, match=r"step 4 .*incomplete"):
    generation_restore.restore(wd)  # what sample.py and eval.py call
  exp = loop.Experiment(_config(6, ckpt_every=2))
  ck = ckpt_lib.Checkpointer(wd)
  msgs = []
  step, state, _, _ = ck.restore_latest(exp.init_state(), exp.meta(exp.init_state()), fallback=True,
                                        warn=msgs.append)
  ck.close()
  assert step == 2 and int(state.step) == 2
  assert len(msgs) == 1 and "step 4" in msgs[0] and "incomplete" in msgs[0], msgs
  assert check_checkpoints(wd) == [2]  # step 4 was moved aside (to damaged_checkpoints/)


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_checkpoint_before_exiting(tmp_path, jax_cache, sig):
  """SIGTERM and SIGINT (Ctrl-C) alike: while training, one checkpoint at the end of the current step
  and exit status 0; while restoring (before the first step), exit 0 at once with nothing written."""
  wd = str(tmp_path / "w")
  args = [*FLAGS, "--config.training.num_steps=100000", "--config.training.ckpt_every=100000"]
  with TrainProcess(wd, args, jax_cache) as proc:
    wait_for_step(proc, wd, 1)
    proc.send(sig)
    rc, out = proc.finish()
  assert rc == 0, out[-3000:]
  assert f"received signal {int(sig)}: saved checkpoint at step" in out, out[-3000:]
  assert "Traceback" not in out, out[-3000:]
  steps = check_checkpoints(wd)
  assert len(steps) == 1 and 0 < steps[0] < 100000
  assert [m["step"] for m in metric_lines(wd)] == list(range(1, steps[0] + 1))

  metrics = open(os.path.join(wd, "metrics.jsonl")).read()
  # (the pause sleeps on after the signal: PEP 475 resumes an interrupted sleep)
  with TrainProcess(wd, args, dict(jax_cache, JDIFF_TEST_PAUSE_IN_RESTORE="5")) as proc:
    assert proc.wait_marker() == ("restore", steps[0])
    proc.send(sig)
    rc, out = proc.finish()
  assert rc == 0, out[-3000:]
  assert f"received signal {int(sig)} before the first step: nothing new to save" in out, out[-3000:]
  assert "Traceback" not in out, out[-3000:]
  assert check_checkpoints(wd) == steps
  assert open(os.path.join(wd, "metrics.jsonl")).read() == metrics
