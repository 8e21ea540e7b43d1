"""Crash safety: kill train.py anywhere and it resumes exactly; damaged checkpoints are refused (or
skipped on request); SIGTERM saves before exiting."""
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jdiff.experiment import checkpoint as ckpt_lib
from jdiff.training import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import toy2d  # noqa: E402

FLAGS = ["--config=configs/toy2d.py", "--config.training.ckpt_every=1", "--config.training.log_every=1",
         "--config.training.sample_every=0", "--config.data.batch_size=32",
         "--config.model.features=32", "--config.model.num_blocks=1",
         "--config.training.keep_checkpoints=2",
         "--cpu_devices=1"]  # compared with an in-process run on this process's one CPU device


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


def _leaves(state):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]


def _assert_same(a, b):
  for x, y in zip(_leaves(a), _leaves(b)):
    np.testing.assert_array_equal(x, y)


def _restore_params(workdir):
  exp = loop.Experiment(_config(1))
  ck = ckpt_lib.Checkpointer(workdir)
  step, state, _, _ = ck.restore_latest(exp.init_state(), exp.meta(exp.init_state()))
  ck.close()
  return step, state


def _kill_run(workdir, num_kills, num_steps, seed):
  rng = random.Random(seed)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  args = [sys.executable, "train.py", f"--workdir={workdir}", *FLAGS,
          f"--config.training.num_steps={num_steps}"]
  resumed_from, kills = [], 0
  for attempt in range(num_kills + 20):
    p = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    if kills < num_kills:
      # JAX import + compile take a few seconds; then each step writes a checkpoint, so a kill lands
      # before training, during steps or inside a save.
      try:
        p.wait(timeout=rng.uniform(2.0, 7.0))
      except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        kills += 1
    out, _ = p.communicate(timeout=300)
    for line in out.splitlines():
      if "resumed from checkpoint step" in line:
        resumed_from.append(int(line.split("step")[1].split()[0]))
    if p.returncode == 0:
      return kills, resumed_from
    assert p.returncode == -signal.SIGKILL, out[-3000:]
    # Every step orbax lists is complete and verifies (incomplete saves stay *.orbax-checkpoint-tmp).
    ck = ckpt_lib.Checkpointer(workdir)
    for s in ck.all_steps():
      ck.verify(s)
      assert os.path.exists(os.path.join(ck.step_dir(s), "commit_success.txt")) or os.path.exists(
          os.path.join(ck.step_dir(s), "_CHECKPOINT_METADATA"))
    ck.close()
  raise AssertionError("training did not finish")


def _kill_test(tmp_path, num_kills, num_steps, seed):
  straight = loop.train(_config(num_steps), str(tmp_path / "straight"), log=lambda *a: None)
  wd = str(tmp_path / "killed")
  kills, resumed = _kill_run(wd, num_kills, num_steps, seed)
  assert kills == num_kills
  step, state = _restore_params(wd)
  assert step == num_steps
  _assert_same(straight, state)
  return resumed


def test_kill_anywhere_resumes_exactly(tmp_path):
  resumed = _kill_test(tmp_path, num_kills=3, num_steps=100, seed=0)
  assert resumed == sorted(resumed)


@pytest.mark.slow
def test_kill_anywhere_resumes_exactly_many(tmp_path):
  _kill_test(tmp_path, num_kills=12, num_steps=60, seed=1)


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


@pytest.mark.parametrize("mode", ["truncate", "corrupt"])
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
  _assert_same(straight, resumed)


def test_sigterm_saves_a_checkpoint_before_exiting(tmp_path):
  wd = str(tmp_path / "w")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  p = subprocess.Popen([sys.executable, "train.py", f"--workdir={wd}", *FLAGS[:1], *FLAGS[2:],
                        "--config.training.num_steps=100000", "--config.training.ckpt_every=100000"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
  metrics = os.path.join(wd, "metrics.jsonl")
  deadline = time.time() + 120
  while time.time() < deadline and not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
    time.sleep(0.2)
  p.send_signal(signal.SIGTERM)
  out, _ = p.communicate(timeout=120)
  assert p.returncode == 0, out[-3000:]
  assert "received signal" in out
  ck = ckpt_lib.Checkpointer(wd)
  steps = ck.all_steps()
  ck.close()
  assert len(steps) == 1 and 0 < steps[0] < 100000
