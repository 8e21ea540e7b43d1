"""Multi-device and multi-process training agree with the single-device computation.

Each case runs in subprocesses with forced host devices (XLA_FLAGS must be set before jax is imported),
under `timeout`, because multi-device collectives on a 2-core CPU can deadlock if dispatched
asynchronously (the training loop blocks on every step's metrics, which avoids it).
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def test_pmap_two_devices_equals_one_device():
  out = subprocess.run(["timeout", "-k", "5", "240", sys.executable,
                        os.path.join(REPO, "tests", "_pmap_worker.py"), REPO],
                       env=_env(2), capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out.stdout.strip().splitlines()[-1])
  assert r["devices"] == 2
  assert r["replica_diff"] == 0.0
  # Same global batch, same per-example noise: only the reduction order of the mean differs.
  assert r["max_param_diff"] < 1e-5, r
  # shard_map runs the same per-device program with the same collectives as pmap.
  assert r["shard_map_vs_pmap"] < 1e-6, r
  assert abs(r["loss1"] - r["loss2"]) < 1e-5 * max(1.0, abs(r["loss1"]))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _read_params(workdir):
  import orbax.checkpoint as ocp
  mgr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  step = mgr.latest_step()
  restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  mgr.close()
  return step, restored["state"]["params"]


TRAIN_FLAGS = ["--config=configs/toy2d.py", "--config.training.num_steps=4",
               "--config.training.ckpt_every=4", "--config.training.sample_every=0",
               "--config.data.batch_size=32", "--config.model.features=32",
               "--config.model.num_blocks=1"]
WORKER = os.path.join(REPO, "tests", "_distributed_train_worker.py")


def _train(record, *flags):
  """train.py in the recording worker (tests/_distributed_train_worker.py), under `timeout`."""
  return ["timeout", "-k", "5", "300", sys.executable, WORKER, str(record), *flags, *TRAIN_FLAGS]


@pytest.mark.slow  # ~20 s; default run: test_pmap_two_devices_equals_one_device
def test_two_processes_match_single_process_two_devices(tmp_path):
  """Two processes on 127.0.0.1 with jax.distributed (1 CPU device each, gloo collectives) train the
  same steps as one process with 2 devices. Each process must really be one of 2 (its own
  jax.process_count() and process_index(), and train.py's log line), and the two must read disjoint
  halves of every global batch whose union, in process order, is what the single process read: the
  dataset indices are recorded where the real pipeline passes them to Source.read."""
  single = str(tmp_path / "single")
  r = subprocess.run(_train(tmp_path / "single.json", f"--workdir={single}", "--cpu_devices=2"),
                     env=_env(2), capture_output=True, text=True, cwd=REPO)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "training on 2 cpu device(s) in 1 process(es)" in r.stdout, r.stdout[-3000:]
  multi = str(tmp_path / "multi")
  port = _free_port()
  procs = [subprocess.Popen(_train(tmp_path / f"multi{i}.json", f"--workdir={multi}",
                                   f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                   f"--process_id={i}", "--cpu_devices=1"),
                            env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO) for i in range(2)]
  outs = [p.communicate() for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  # Process 0 logs the layout (train.py's "training on N cpu device(s) in P process(es)").
  assert "training on 2 cpu device(s) in 2 process(es)" in outs[0][0], outs[0][0][-3000:]
  one = json.load(open(tmp_path / "single.json"))
  assert (one["process_count"], one["device_count"], one["local_device_count"]) == (1, 2, 2)
  recs = [json.load(open(tmp_path / f"multi{i}.json")) for i in range(2)]
  for i, rec in enumerate(recs):  # what each process itself saw
    assert rec["exit"] == 0
    assert (rec["process_index"], rec["process_count"]) == (i, 2), rec
    assert (rec["device_count"], rec["local_device_count"]) == (2, 1), rec
    assert [b["step"] for b in rec["reads"]] == [0, 1, 2, 3], rec["reads"]
    for b in rec["reads"]:
      assert (b["process_index"], b["process_count"]) == (i, 2)
      assert b["positions"] == list(range(16 * i, 16 * (i + 1)))  # its half of the global batch
  assert [b["step"] for b in one["reads"]] == [0, 1, 2, 3]
  for step in range(4):
    whole = one["reads"][step]["read"]
    assert len(whole) == 1 and len(whole[0]) == 32 and len(set(whole[0])) == 32
    halves = [rec["reads"][step]["read"] for rec in recs]
    assert all(len(h) == 1 and len(h[0]) == 16 for h in halves), halves
    assert not set(halves[0][0]) & set(halves[1][0])  # disjoint
    assert halves[0][0] + halves[1][0] == whole[0]  # the union, in order, is the global batch
  assert one["reads"][0]["read"] != one["reads"][1]["read"]
  s1, a = _read_params(single)
  s2, b = _read_params(multi)
  assert s1 == s2 == 4
  import jax
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)  # before zipping leaves
  diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
  assert diff < 1e-5, diff
