"""train.py end to end in a subprocess: trains a tiny config, writes logs, samples and checkpoints, then
resumes when run again; user errors exit with status 2 and a one-line message."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import _gaussian

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One level: the train step compiles in about half the time of two (5.6 s against 10.3 s).
TINY_UNET = ["--config.model.ch=8", "--config.model.ch_mult=(1,)", "--config.model.attn_resolutions=()",
             "--config.data.batch_size=8", "--config.sampling.num=4", "--config.sampling.steps=3",
             "--config.training.log_every=1"]


def _run(args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(["timeout", "-k", "5", str(timeout), sys.executable, "train.py", *args],
                        capture_output=True, text=True, cwd=REPO, env=env)


def test_train_py_end_to_end_and_resume(tmp_path):
  pytest.importorskip("jdiff.data")
  from jdiff import data
  try:
    data.get_dataset("fashion_mnist")
  except ValueError:
    pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
  wd = str(tmp_path / "run")
  r = _run([f"--workdir={wd}", "--config.training.num_steps=2", "--config.training.ckpt_every=2",
            "--config.training.sample_every=2", *TINY_UNET])
  assert r.returncode == 0, r.stderr[-3000:]
  assert os.path.exists(os.path.join(wd, "samples", "step_0000002.png"))
  assert os.path.isdir(os.path.join(wd, "checkpoints", "2"))
  lines = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert [l["step"] for l in lines] == [1, 2] and all("loss" in l for l in lines)
  cfg = json.load(open(os.path.join(wd, "config.json")))
  assert cfg["training"]["num_steps"] == 2
  # With no --config it is the default config's process and sampler (the grid below used them).
  sys.path.insert(0, REPO)
  from configs import fashion_mnist
  default = fashion_mnist.get_config()
  assert cfg["diffusion"] == json.loads(default.diffusion.to_json())
  assert cfg["sampling"]["sampler"] == default.sampling.sampler
  assert cfg["sampling"]["hparams"] == json.loads(default.sampling.hparams.to_json())
  assert cfg["training"]["conditional"] is True and cfg["training"]["cond_drop_prob"] == 0.1
  # The run ends by saying where its results are and how to sample from it.
  tail = r.stdout.strip().splitlines()[-4:]
  assert tail[0] == f"done: 2 steps; checkpoint {os.path.join(wd, 'checkpoints', '2')}", tail
  assert tail[1].startswith(f"sample grids: {os.path.join(wd, 'samples')} (last: step_0000002.png)")
  assert tail[2].startswith(f"draw samples: python sample.py --workdir={wd} --num=64") and "s per image" in tail[2]
  assert "labels i % 10, or --labels=..., and --guidance=W" in tail[2], tail[2]
  assert "(the config's heun S_churn=10 sampler, " in tail[2], tail[2]
  assert tail[3] == f"score them:   python eval.py --workdir={wd} --num=1000"
  # One front door: sample.py draws exactly the training loop's sample grid (same settings, program).
  out = tmp_path / "grid"
  s = _gaussian.sample_in_process([f"--workdir={wd}", "--num=4", f"--seed={cfg['seed']}",
                                   f"--out={out}.png"])
  assert s.returncode == 0, s.stderr[-3000:]
  with open(os.path.join(wd, "samples", "step_0000002.png"), "rb") as f:
    assert f.read() == (tmp_path / "grid.png").read_bytes()
  assert os.listdir(os.path.join(wd, "tb"))
  r = _run([f"--workdir={wd}", "--config.training.num_steps=3", "--config.training.ckpt_every=2",
            "--config.training.sample_every=0", *TINY_UNET])
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed from checkpoint step 2" in r.stdout + r.stderr
  assert os.path.isdir(os.path.join(wd, "checkpoints", "3"))
  lines = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert [l["step"] for l in lines] == [1, 2, 3]


# The config errors (unknown dataset, batch size 0, unknown schedule, a misspelled or mistyped
# --config.* key) are tests/test_bad_input.py's train.py cases; these are the device-count flags.
@pytest.mark.parametrize("args,message", [
    (["--cpu_devices=-1"], "--cpu_devices must be an integer >= 0"),
    (["--cpu_devices=2", "--config.data.batch_size=3"], "num_local_devices = 1 * 2 = 2"),
])
def test_train_py_user_errors_exit_2(tmp_path, args, message):
  r = _run([f"--workdir={tmp_path / 'w'}", "--config=configs/toy2d.py", *args], timeout=120)
  assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
  assert message in r.stderr
  assert "Traceback" not in r.stderr
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ")
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


@pytest.mark.slow  # ~20 s; default run: test_distributed's one-vs-two-device equality
def test_train_py_cpu_devices_splits_the_batch_over_host_devices(tmp_path):
  """--cpu_devices=2 makes two CPU devices, pmap shards each batch over them, and the losses equal the
  one-device run's (the same examples, noise and t; float32 reduction order apart)."""
  losses = {}
  for n in (1, 2):
    wd = str(tmp_path / f"run{n}")
    r = _run([f"--cpu_devices={n}", "--config=configs/toy2d.py", f"--workdir={wd}",
              "--config.training.num_steps=3", "--config.training.log_every=1",
              "--config.training.sample_every=0", "--config.data.batch_size=32"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"training on {n} cpu device(s)" in r.stdout + r.stderr
    losses[n] = [json.loads(l)["loss"] for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert len(losses[1]) == 3
  np.testing.assert_allclose(losses[2], losses[1], rtol=1e-5)


@pytest.mark.slow  # ~35 s; default run: test_automatic_cpu_device_count and the end-to-end test
def test_train_py_chooses_the_cpu_device_count_and_resumes_with_it(tmp_path):
  """Without --cpu_devices a CPU-only host is split into the automatic device count (both cores of
  the 2-core development machine), recorded in the workdir; a resume takes the recorded count again,
  a forced other count is refused with one line (nothing written), and --allow_device_change
  continues anyway."""
  from jdiff.utils import cli
  want = cli.auto_cpu_devices(32)
  other = 1 if want > 1 else 2
  wd = tmp_path / "auto"
  common = ["--config=configs/toy2d.py", f"--workdir={wd}", "--config.training.log_every=1",
            "--config.training.sample_every=0", "--config.data.batch_size=32"]
  r = _run(common + ["--config.training.num_steps=2"])
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"training on {want} cpu device(s)" in r.stdout + r.stderr
  assert json.load(open(wd / "devices.json"))["num_devices"] == want
  metrics = (wd / "metrics.jsonl").read_text()

  r = _run(common + ["--config.training.num_steps=3", f"--cpu_devices={other}"])
  assert r.returncode == 2, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "Traceback" not in r.stderr
  assert f"checkpoint step 2 was trained on {want} device(s) but this run has {other}" in last
  assert f"--cpu_devices={want}" in last
  assert sorted(os.listdir(wd / "checkpoints")) == ["2"] and (wd / "metrics.jsonl").read_text() == metrics
  assert json.load(open(wd / "devices.json"))["num_devices"] == want

  r = _run(common + ["--config.training.num_steps=3"])
  assert r.returncode == 0, r.stderr[-3000:]
  out = r.stdout + r.stderr
  assert "resumed from checkpoint step 2" in out and f"training on {want} cpu device(s)" in out

  r = _run(common + ["--config.training.num_steps=4", f"--cpu_devices={other}", "--allow_device_change"])
  assert r.returncode == 0, r.stderr[-3000:]
  assert "not bit-exact" in r.stdout + r.stderr
  assert json.load(open(wd / "devices.json"))["num_devices"] == other


def test_automatic_cpu_device_count(monkeypatch):
  from jdiff.utils import cli
  monkeypatch.setattr(os, "cpu_count", lambda: 6)
  assert cli.auto_cpu_devices(None) == 6
  assert cli.auto_cpu_devices(128) == 4  # the largest count <= 6 that divides the batch
  assert cli.auto_cpu_devices(7) == 1
  monkeypatch.setattr(os, "cpu_count", lambda: 64)
  assert cli.auto_cpu_devices(512) == 8  # capped
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert cli.cpu_only()
  monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
  assert not cli.cpu_only()


def test_malloc_keeps_freed_memory_unless_the_user_tuned_it(monkeypatch):
  """``cli.tune_malloc`` (called by the CLIs on CPU-only hosts) sets glibc's thresholds, and leaves a
  user's own ``MALLOC_*`` / ``GLIBC_TUNABLES`` settings alone."""
  import platform
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    pytest.skip("glibc only")
  from jdiff.utils import cli
  for k in [k for k in os.environ if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"]:
    monkeypatch.delenv(k)
  assert cli.tune_malloc() is True   # what the CLIs do at start
  import ctypes
  libc = ctypes.CDLL("libc.so.6")    # give this (long) test process back glibc's mmap and arenas
  assert libc.mallopt(cli.M_MMAP_MAX, 65536) == 1 and libc.mallopt(cli.M_ARENA_MAX, 0) == 1
  for name, value in [("MALLOC_ARENA_MAX", "4"), ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")]:
    monkeypatch.setenv(name, value)
    assert cli.tune_malloc() is False, name
    monkeypatch.delenv(name)


_LARGE_BLOCK = r"""
import ctypes, sys, threading
from jdiff.utils import cli
class Info(ctypes.Structure):  # glibc's struct mallinfo2: ten size_t counters, hblks the 4th
  _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks fsmblks "
                                             "uordblks fordblks keepcost").split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "tuned":
  assert cli.tune_malloc()
def step_buffer():  # on another thread, as XLA's device threads allocate (glibc: a thread arena)
  before = libc.mallinfo2().hblks
  p = libc.malloc(126 << 20)  # the default model's per-step temporary buffer, one device
  print(libc.mallinfo2().hblks - before)
  libc.free(p)
thread = threading.Thread(target=step_buffer)
thread.start()
thread.join()
"""


def test_malloc_serves_a_step_sized_block_from_the_heap_not_mmap():
  """The reason for ``tune_malloc``: glibc ``mmap``s a 126 MiB block (and unmaps it on free, so XLA's
  per-step temporary buffer is faulted in again every step) unless tuned; tuned, it comes from the
  main heap and is reused, also when a thread other than the main one asks (one arena). ``hblks``
  (mallinfo2) counts the mmap-ed blocks; the block adds one, or none."""
  import platform
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    pytest.skip("glibc only")
  env = {k: v for k, v in os.environ.items() if not (k.startswith("MALLOC_") or k == "GLIBC_TUNABLES")}
  def mmapped(mode):
    out = subprocess.run([sys.executable, "-c", _LARGE_BLOCK, mode], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])
  assert mmapped("default") == 1
  assert mmapped("tuned") == 0
