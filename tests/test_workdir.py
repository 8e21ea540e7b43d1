"""What a training workdir holds stays consistent across failures and restarts: config.json is replaced
atomically; on resume, metrics.jsonl drops the lines past the restored step and TensorBoard is told to
hide its events past it; one train.py writes to a workdir at a time (a second is refused, the lock of a
killed one is taken over)."""
import builtins
import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import pytest

from jdiff.training import loop
from jdiff.utils import files
from test_reliability import (FLAGS, REPO, TrainProcess, _config, check_checkpoints, compile_cache_env,
                              metric_lines, wait_for_step)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir trained for 2 steps (checkpoint 2); tests work on copies (``_copy``)."""
  wd = str(tmp_path_factory.mktemp("trained") / "w")
  loop.train(_config(2, ckpt_every=2), wd, log=lambda *a: None)
  return wd


def _copy(trained, tmp_path):
  wd = str(tmp_path / "w")
  shutil.copytree(trained, wd)
  return wd


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
  return compile_cache_env(tmp_path_factory)


def _fail_half_way(f):
  """A file object whose first write writes half the data, then fails as on a full disk."""
  real_write = f.write

  def write(data):
    real_write(data[:len(data) // 2])
    f.flush()
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  f.write = write
  return f


@pytest.mark.parametrize("where", ["write", "rename"])
def test_config_json_survives_a_failing_rewrite(trained, tmp_path, monkeypatch, where):
  """A resume rewrites config.json; a failure in the middle (disk full while writing, or at the rename)
  leaves the previous config.json whole, and no temporary file behind."""
  wd = _copy(trained, tmp_path)
  path = os.path.join(wd, "config.json")
  before = open(path).read()
  assert json.loads(before)["training"]["num_steps"] == 2

  if where == "write":  # whichever way it is opened for writing: in place, or a temporary file
    real_open, real_fdopen = builtins.open, os.fdopen

    def open_(file, mode="r", *a, **k):
      f = real_open(file, mode, *a, **k)
      hit = isinstance(file, (str, os.PathLike)) and os.fspath(file).endswith("config.json")
      return _fail_half_way(f) if hit and ("w" in mode or "a" in mode) else f

    def fdopen(fd, *a, **k):
      f = real_fdopen(fd, *a, **k)
      return _fail_half_way(f) if os.readlink(f"/proc/self/fd/{fd}").endswith("config.json") else f

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(os, "fdopen", fdopen)
  else:
    real_replace = os.replace

    def replace(src, dst, *a, **k):
      if os.fspath(dst).endswith("config.json"):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
      return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
  with pytest.raises(OSError):  # resuming with another num_steps rewrites config.json
    loop.train(_config(4, ckpt_every=2), wd, log=lambda *a: None)
  monkeypatch.undo()
  assert open(path).read() == before
  assert not [n for n in os.listdir(wd) if n.startswith(".tmp-")], os.listdir(wd)
  assert open(os.path.join(wd, loop.LOCK_FILE)).read() == ""  # the lock was released


def _events(path):
  """The events of a TensorBoard event file (TFRecord framing; CRCs not checked)."""
  from tensorboardX.proto import event_pb2
  data = open(path, "rb").read()
  i = 0
  while i + 12 <= len(data):
    (n,) = struct.unpack("<Q", data[i:i + 8])
    event = event_pb2.Event()
    event.ParseFromString(data[i + 12:i + 12 + n])
    yield event
    i += 12 + n + 4


def _tensorboard_scalars(tb_dir, tag):
  """The (step, value) points TensorBoard shows for ``tag``: event files in name order, and on a
  ``SessionLog.START`` event at step S the points seen so far at steps >= S are dropped (TensorBoard's
  EventAccumulator with its default --purge_orphaned_data)."""
  from tensorboardX.proto import event_pb2
  points = []
  for name in sorted(os.listdir(tb_dir)):
    for e in _events(os.path.join(tb_dir, name)):
      if e.HasField("session_log") and e.session_log.status == event_pb2.SessionLog.START:
        points = [(s, v) for s, v in points if s < e.step]
      for v in e.summary.value:
        if v.tag == tag:
          points.append((e.step, v.simple_value))
  return points


def test_resume_drops_metrics_past_the_checkpoint(trained, tmp_path):
  """A run that logged steps 3 and 4 (and half a line) past its last checkpoint (2), and died: the
  resumed run logs each step once, in metrics.jsonl and as TensorBoard shows it."""
  from tensorboardX import SummaryWriter
  wd = _copy(trained, tmp_path)
  with open(os.path.join(wd, "metrics.jsonl"), "a") as f:
    f.write('{"step": 3, "loss": 7.0}\n{"step": 4, "loss": 7.0}\n{"step": 5, "loss": 7.')
  tb = SummaryWriter(os.path.join(wd, "tb"), filename_suffix=f".{time.time_ns()}")  # as train.py names them
  for step in (3, 4):
    tb.add_scalar("loss", 7.0, step)
  tb.close()
  before = open(os.path.join(wd, "metrics.jsonl")).read().splitlines()
  msgs = []
  loop.train(_config(4, ckpt_every=2), wd, log=msgs.append)
  assert any("resumed from checkpoint step 2" in m for m in msgs), msgs
  after = open(os.path.join(wd, "metrics.jsonl")).read().splitlines()
  assert [json.loads(l)["step"] for l in after] == [1, 2, 3, 4]
  assert after[:2] == before[:2]  # the lines up to the checkpoint are kept as they were
  assert 7.0 not in [json.loads(l)["loss"] for l in after]
  loss = _tensorboard_scalars(os.path.join(wd, "tb"), "loss")
  assert [s for s, _ in loss] == [1, 2, 3, 4], loss
  assert [v for _, v in loss] == pytest.approx([json.loads(l)["loss"] for l in after])


def test_stale_lock_is_taken_over_and_a_held_one_refused(trained, tmp_path):
  wd = _copy(trained, tmp_path)
  lock = os.path.join(wd, loop.LOCK_FILE)
  # Left by a process that died holding it: a record, but no flock.
  with open(lock, "w") as f:
    json.dump({"pid": 999999999, "host": "elsewhere", "started": "2026-01-01 00:00:00"}, f)
  msgs = []
  loop.train(_config(2, ckpt_every=2), wd, log=msgs.append)  # resumes at its end: nothing to train
  assert any(m.startswith("warning: took over the stale lock of pid 999999999 on host elsewhere")
             for m in msgs), msgs
  assert open(lock).read() == ""  # released at the end

  other = tmp_path / "other"
  other.mkdir()
  held = files.FileLock(str(other / loop.LOCK_FILE))
  held.acquire({"pid": 4242, "host": "h", "started": "now"})
  try:
    with pytest.raises(ValueError, match=r"in use by another training process \(pid 4242 on host h"):
      loop.train(_config(2, ckpt_every=2), str(other), log=lambda *a: None)
    assert sorted(os.listdir(other)) == [loop.LOCK_FILE]  # nothing written
  finally:
    held.release()


@pytest.mark.slow  # ~10 s; default run: test_stale_lock_is_taken_over_and_a_held_one_refused
def test_second_train_py_on_a_workdir_is_refused(tmp_path, jax_cache):
  """Two real train.py processes on one workdir: the second exits with status 2 and one line naming
  the first (its pid), writing nothing; the first trains on and ends normally."""
  wd = str(tmp_path / "w")
  args = [*FLAGS, "--config.training.num_steps=100000", "--config.training.ckpt_every=100000"]
  with TrainProcess(wd, args, jax_cache) as first:
    wait_for_step(first, wd, 1)
    second = subprocess.run(
        ["timeout", "-k", "5", "120", sys.executable, "train.py", f"--workdir={wd}", *FLAGS,
         "--config.training.num_steps=3", "--config.training.ckpt_every=1"],
        capture_output=True, text=True, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu", **jax_cache))
    assert second.returncode == 2, (second.returncode, second.stderr[-3000:])
    owner = json.load(open(os.path.join(wd, loop.LOCK_FILE)))
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: workdir {wd} is in use by another training process (pid "
                           f"{owner['pid']} on host {owner['host']}"), last
    assert "Traceback" not in second.stderr
    assert first.alive()
    assert not os.listdir(os.path.join(wd, "checkpoints"))  # the second wrote no checkpoint
    first.send(signal.SIGTERM)
    rc, out = first.finish()
  assert rc == 0, out[-3000:]
  steps = check_checkpoints(wd)
  assert len(steps) == 1
  assert [m["step"] for m in metric_lines(wd)] == list(range(1, steps[0] + 1))
  assert open(os.path.join(wd, loop.LOCK_FILE)).read() == ""
