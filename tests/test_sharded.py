"""Sharded (FSDP) training: the jit step over a (data, fsdp) mesh equals the pmapped step, holds about
1/N of the state per device, checkpoints restore onto other meshes, bad meshes and batches fail with
one line, and train.py trains with ``--config.training.parallelism=fsdp``.

Multi-device cases run in subprocesses with 4 forced host devices (tests/_sharded_worker.py, train.py),
each under `timeout`; every step is blocked on (CPU collectives can deadlock when dispatched
asynchronously on few cores).
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jdiff.generation import restore as restore_lib
from jdiff.training import sharded

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "_sharded_worker.py")


def _env(devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _worker(mode, *args, timeout=300):
  out = subprocess.run(["timeout", "-k", "5", str(timeout), sys.executable, WORKER, REPO, mode, *args],
                       env=_env(4), capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  # The explicit gather/reduce-scatter (sharded.gather_params) leaves XLA no layout to give up on.
  assert "Involuntary full rematerialization" not in out.stderr, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_leaf_spec_shards_largest_divisible_axis_and_replicates_the_rest():
  assert sharded.leaf_spec((64, 256), 4) == P(None, "fsdp")
  assert sharded.leaf_spec((256, 64), 4) == P("fsdp")
  assert sharded.leaf_spec((64, 64), 4) == P(None, "fsdp")  # a tie: the last axis (output features)
  assert sharded.leaf_spec((3, 3, 32, 64), 4) == P(None, None, None, "fsdp")  # a conv kernel
  assert sharded.leaf_spec((1000, 6), 4) == P("fsdp")  # the one divisible axis
  assert sharded.leaf_spec((1000, 8), 4) == P("fsdp")  # the larger of two divisible axes
  assert sharded.leaf_spec((3, 1001), 4) == P()  # no axis divisible: replicated, never an error
  assert sharded.leaf_spec((3, 1001), 3) == P("fsdp")
  assert sharded.leaf_spec((64,), 4) == P()  # small (a bias): replicated
  assert sharded.leaf_spec((), 4) == P()  # scalars (step, counts)
  assert sharded.leaf_spec((64, 256), 1) == P()  # no fsdp axis: replicated
  assert sharded.leaf_spec((64,), 4, min_size=1) == P("fsdp")


def test_mesh_shape_resolves_zeros_and_refuses_what_does_not_fit():
  assert sharded.mesh_shape((0, 0), 8) == (1, 8)
  assert sharded.mesh_shape((0, 0), 8, process_count=2) == (2, 4)
  assert sharded.mesh_shape((2, 0), 8) == (2, 4)
  assert sharded.mesh_shape((0, 2), 8) == (4, 2)
  assert sharded.mesh_shape((4, 2), 8) == (4, 2)
  for bad in [(3, 0), (0, 3), (2, 2), (16, 1)]:
    with pytest.raises(ValueError, match=r"does not fit the 8 device\(s\).*use one of \(1, 8\), "
                                         r"\(2, 4\), \(4, 2\), \(8, 1\)") as e:
      sharded.mesh_shape(bad, 8)
    assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="must be two integers >= 0"):
    sharded.mesh_shape((2, -1), 8)


def test_sharded_step_equals_pmap_and_holds_a_quarter_of_the_state():
  r = _worker("equal")
  assert r["devices"] == 4
  for mesh in ("2x2", "1x4", "4x1"):
    m = r[mesh]
    assert m["step"] == 3
    # Same global batches, same per-example noise: only float32 reduction order differs.
    assert m["loss_diff"] < 1e-6 * max(1.0, max(abs(l) for l in r["ref_losses"])), (mesh, m)
    assert m["param_diff"] < 1e-6 and m["ema_diff"] < 1e-6 and m["opt_diff"] < 1e-6, (mesh, m)
  # Params, EMA and the Adam moments are sharded alike along fsdp; small leaves are replicated.
  for mesh in ("2x2", "1x4"):
    assert r[mesh]["kernel_spec"] == r[mesh]["mu_spec"] == "P(None, 'fsdp')", r[mesh]
    assert r[mesh]["bias_spec"] == "P()"
  assert r["4x1"]["kernel_spec"] == "P()"  # fsdp = 1: plain data parallelism under jit
  total, params = r["state_bytes"], r["param_bytes"]
  # The arrays themselves: every device holds the same share, about 1/fsdp of the whole (the
  # replicated biases, norms and scalars add a little).
  for mesh, fsdp in (("1x4", 4), ("2x2", 2), ("4x1", 1)):
    m = r[mesh]
    assert len(set(m["param_bytes_per_device"])) == 1 and len(set(m["state_bytes_per_device"])) == 1
    assert params / fsdp <= m["param_bytes_per_device"][0] < 1.15 * params / fsdp, (mesh, m, params)
    assert total / fsdp <= m["state_bytes_per_device"][0] < 1.15 * total / fsdp, (mesh, m, total)
  # The compiled step's memory analysis (per device): its arguments (state shards + batch slice).
  assert r["1x4"]["arg_bytes"] < 0.3 * r["4x1"]["arg_bytes"], r
  assert r["2x2"]["arg_bytes"] < 0.55 * r["4x1"]["arg_bytes"], r


@pytest.mark.slow  # ~12 s; the end-to-end FSDP test (slow) restores on another mesh too
def test_checkpoint_saved_on_2x2_restores_on_4x1_and_1x1_and_training_continues(tmp_path):
  r = _worker("ckpt", str(tmp_path))
  assert "_sharding" in r["files"]  # saved as sharded arrays, each process writing its shards
  for mesh, devices, spec in (("4x1", 4, "P()"), ("1x1", 1, "P()"), ("2x2", 4, "P(None, 'fsdp')")):
    m = r[mesh]
    assert (m["step"], m["data_state"]) == (2, {"step": 2}), m
    assert m["restore_diff"] == 0.0, m  # exactly the saved values
    assert m["same_shardings"] and m["devices"] == devices and m["spec"] == spec, m
    assert m["continued_step"] == 4
    # Two more steps on the new mesh: as on the saving mesh, up to float32 reduction order.
    assert m["continued_diff"] < 1e-6, (mesh, m)
  assert r["2x2"]["continued_diff"] == 0.0  # same mesh: bit-exact
  assert r["unsharded_restore_diff"] == 0.0  # a target without shardings (as sample.py restores)


def test_bad_meshes_and_batches_fail_with_one_line():
  r = _worker("errors", timeout=120)
  expect = {
      "mesh_not_dividing": "config.training.mesh=(3, 0) does not fit the 4 device(s): data * fsdp must "
                           "equal the device count; use one of (1, 4), (2, 2), (4, 1)",
      "mesh_wrong_product": "config.training.mesh=(2, 1) does not fit the 4 device(s)",
      "batch_not_divisible": "config.data.batch_size=30 must be divisible by data * fsdp = 4 (the mesh "
                             "(2, 2) of config.training.mesh); use a multiple of 4 such as 28 or 32",
      "mesh_bad_value": "config.training.mesh must be two integers >= 0",
      "parallelism_unknown": "unknown parallelism 'zero3'; valid parallelisms are: fsdp, pmap",
  }
  for k, fragment in expect.items():
    assert r[k] is not None and fragment in r[k] and "\n" not in r[k], (k, r[k])
  assert r["default_mesh"] == [1, 4]  # (0, 0): data = processes, fsdp = local devices
  assert r["inferred_mesh"] == [2, 2]


FLAGS = ["--config=configs/toy2d.py", "--config.training.ckpt_every=2",
         "--config.training.sample_every=0", "--config.data.batch_size=32",
         "--config.model.features=64", "--config.model.num_blocks=1", "--config.optim.warmup_steps=0"]


def _train(devices, *args, timeout=300):
  """train.py on ``devices`` CPU devices (``None``: no device flags, train.py chooses)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu") if devices is None else _env(devices)
  flag = [] if devices is None else [f"--cpu_devices={devices}"]
  return subprocess.run(["timeout", "-k", "5", str(timeout), sys.executable, "train.py", *FLAGS, *flag,
                         *args], env=env, capture_output=True, text=True, cwd=REPO)


def _params(workdir, step):
  """The raw parameters of checkpoint ``step``, read in this 1-device process as sample.py reads them
  (a checkpoint saved sharded over 4 devices included)."""
  return restore_lib.restore(workdir, step=step, use_ema=False).params


def _one_error_line(r):
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
  return lines[0]


@pytest.mark.slow  # ~30 s; default run: the sharded-step equality and bad-mesh tests
def test_train_py_fsdp_end_to_end_equals_pmap_and_resumes_on_another_mesh(tmp_path):
  fsdp, ref = str(tmp_path / "fsdp"), str(tmp_path / "pmap")
  # No --cpu_devices: on a CPU-only host train.py splits the CPU into the devices the mesh asks for.
  r = _train(None, f"--workdir={fsdp}", "--config.training.num_steps=4",
             "--config.training.parallelism=fsdp", "--config.training.mesh=(2,2)")
  assert r.returncode == 0, r.stderr[-3000:]
  assert ("training on 4 cpu device(s) in 1 process(es), 8 examples per device, fsdp mesh "
          "(data=2, fsdp=2)") in r.stdout, r.stdout[-3000:]
  r = _train(4, f"--workdir={ref}", "--config.training.num_steps=4")
  assert r.returncode == 0, r.stderr[-3000:]
  a, b = _params(fsdp, 4), _params(ref, 4)
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
  assert diff < 1e-6, diff
  la = [json.loads(l)["loss"] for l in open(os.path.join(fsdp, "metrics.jsonl"))]
  lb = [json.loads(l)["loss"] for l in open(os.path.join(ref, "metrics.jsonl"))]
  assert np.allclose(la, lb, rtol=1e-5), (la, lb)
  # Resume on one device, mesh (1, 1): refused unless the layout change is allowed (not bit-exact).
  more = [f"--workdir={fsdp}", "--config.training.num_steps=6", "--config.training.parallelism=fsdp",
          "--config.training.mesh=(1,1)"]
  line = _one_error_line(_train(1, *more))
  assert ("checkpoint step 4 was trained with fsdp mesh (2, 2) but this run uses fsdp mesh (1, 1); "
          "resume with the same") in line, line
  assert sorted(os.listdir(os.path.join(fsdp, "checkpoints"))) == ["2", "4"]
  r = _train(1, *more, "--allow_device_change")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed from checkpoint step 4" in r.stdout and "fsdp mesh (data=1, fsdp=1)" in r.stdout
  assert "6" in os.listdir(os.path.join(fsdp, "checkpoints"))
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(_params(fsdp, 6)))


def test_train_py_bad_mesh_exits_2_with_one_line_and_writes_nothing(tmp_path):
  wd = str(tmp_path / "w")
  line = _one_error_line(_train(4, f"--workdir={wd}", "--config.training.parallelism=fsdp",
                                "--config.training.mesh=(3,0)", timeout=120))
  assert "config.training.mesh=(3, 0) does not fit the 4 device(s)" in line, line
  line = _one_error_line(_train(4, f"--workdir={wd}", "--config.training.parallelism=fsdp",
                                "--config.data.batch_size=30", timeout=120))
  assert "config.data.batch_size=30 must be divisible by data * fsdp = 4" in line, line
  assert not os.path.exists(wd)
