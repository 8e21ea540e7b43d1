"""Subprocess worker for tests/test_sharded.py (run with 4 forced host devices; prints one JSON line).

  python tests/_sharded_worker.py REPO MODE [TMPDIR]

``equal``: the jit step over meshes (2, 2), (1, 4) and (4, 1) against the pmapped step on the same
global batches (losses and parameters after a few steps), the bytes each device holds and the compiled
step's memory analysis. ``ckpt``: a checkpoint saved on a (2, 2) mesh restored on (4, 1) and (1, 1)
(and without shardings, as sample.py restores), then training continued on each. ``errors``: the
one-line messages of bad meshes and batches.
"""
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, sys.argv[1])
from configs import toy2d  # noqa: E402
from jdiff.experiment import checkpoint as ckpt_lib  # noqa: E402
from jdiff.training import loop, sharded  # noqa: E402

STEPS = 3


def _config(**training):
  c = toy2d.get_config()
  c.data.batch_size = 32
  c.model.features = 64
  c.model.num_blocks = 1
  c.optim.warmup_steps = 0  # full learning rate from the first step: differences show at once
  for k, v in training.items():
    c.training[k] = v
  return c


def _max_diff(a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(la) == len(lb)
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(la, lb))


def _sharded_run(exp, mesh, state, batches, start=0):
  """``len(batches)`` sharded steps from host ``state`` on ``mesh``; returns (host state, losses,
  sharded state, compiled step)."""
  target = sharded.abstract_state(exp.init_state, mesh)
  step = sharded.make_step(exp.train_step_fn(None, target), target, mesh, donate=False)
  s = sharded.put(state, sharded.shardings_of(target))
  losses = []
  for b in batches:
    s, m = step(s, sharded.global_batch(b, mesh))
    losses.append(sharded.scalars(m)["loss"])  # blocks on each step (CPU collectives, see README)
  compiled = step.lower(s, sharded.global_batch(batches[0], mesh)).compile()
  return sharded.to_host(s), losses, s, compiled


def equal():
  exp = loop.Experiment(_config(parallelism="fsdp", mesh=(2, 2)))
  state = exp.init_state()
  batches = [exp.pipeline.batch_at(k) for k in range(STEPS)]
  # The reference: the pmapped step (one batch row per device) on the same global batches.
  p_step = jax.pmap(exp.train_step_fn("data"), axis_name="data")
  rs, ref_losses = loop.replicate(state, 4), []
  for b in batches:
    rs, m = p_step(rs, b)
    ref_losses.append(float(loop.unreplicate(m)["loss"]))
  ref = loop.unreplicate(rs)
  out = {"devices": jax.device_count(), "ref_losses": ref_losses}
  total = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(state))
  out["state_bytes"] = total
  out["param_bytes"] = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(state.params))
  for shape in [(2, 2), (1, 4), (4, 1)]:
    mesh = sharded.make_mesh(shape)
    host, losses, s, compiled = _sharded_run(exp, mesh, state, batches)
    name = f"{shape[0]}x{shape[1]}"
    per_dev = sharded.per_device_bytes(s)
    per_dev_params = sharded.per_device_bytes(s.params)
    mem = compiled.memory_analysis()
    out[name] = {
        "losses": losses, "loss_diff": max(abs(a - b) for a, b in zip(losses, ref_losses)),
        "param_diff": _max_diff(host.params, ref.params), "ema_diff": _max_diff(host.ema_params,
                                                                               ref.ema_params),
        "opt_diff": _max_diff(host.opt_state, ref.opt_state), "step": int(host.step),
        "state_bytes_per_device": sorted(per_dev.values()),
        "param_bytes_per_device": sorted(per_dev_params.values()),
        "arg_bytes": int(mem.argument_size_in_bytes), "out_bytes": int(mem.output_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "kernel_spec": str(s.params["params"]["block0_dense0"]["kernel"].sharding.spec),
        "mu_spec": str(s.opt_state[1][0].mu["params"]["block0_dense0"]["kernel"].sharding.spec),
        "bias_spec": str(s.params["params"]["block0_dense0"]["bias"].sharding.spec),
    }
  print(json.dumps(out))


def ckpt(tmp):
  exp = loop.Experiment(_config(parallelism="fsdp", mesh=(2, 2)))
  batches = [exp.pipeline.batch_at(k) for k in range(4)]
  mesh22 = sharded.make_mesh((2, 2))
  target22 = sharded.abstract_state(exp.init_state, mesh22)
  s = sharded.init_state(exp.init_state, target22)
  step22 = sharded.make_step(exp.train_step_fn(None, target22), target22, mesh22, donate=False)
  for b in batches[:2]:
    s, m = step22(s, sharded.global_batch(b, mesh22))
    jax.block_until_ready(m)
  saved = sharded.to_host(s)
  meta = exp.meta(target22)
  c = ckpt_lib.Checkpointer(tmp, 3)
  c.save(2, s, {"step": 2}, meta)
  c.close()
  files = sorted(os.listdir(os.path.join(tmp, "checkpoints", "2", "state")))
  # Continue on the saving mesh: the reference.
  ref = s
  for b in batches[2:]:
    ref, m = step22(ref, sharded.global_batch(b, mesh22))
    jax.block_until_ready(m)
  ref = sharded.to_host(ref)
  out = {"files": files}
  for shape, devices in [((4, 1), jax.devices()), ((1, 1), jax.devices()[:1]),
                         ((2, 2), jax.devices())]:
    mesh = sharded.make_mesh(shape, devices)
    target = sharded.abstract_state(exp.init_state, mesh)
    c = ckpt_lib.Checkpointer(tmp, 3)
    step, state, data_state, saved_meta = c.restore_latest(target, exp.meta(target))
    c.close()
    name = f"{shape[0]}x{shape[1]}"
    leaf = state.params["params"]["block0_dense0"]["kernel"]
    r = {"step": step, "data_state": data_state,
         "restore_diff": _max_diff(sharded.to_host(state), saved),
         "devices": len(leaf.sharding.device_set), "spec": str(leaf.sharding.spec),
         "same_shardings": jax.tree_util.tree_all(jax.tree_util.tree_map(
             lambda x, t: x.sharding == t.sharding, state, target))}
    fn = sharded.make_step(exp.train_step_fn(None, target), target, mesh, donate=False)
    for b in batches[2:]:
      state, m = fn(state, sharded.global_batch(b, mesh))
      jax.block_until_ready(m)
    host = sharded.to_host(state)
    r["continued_diff"] = _max_diff(host, ref)
    r["continued_step"] = int(host.step)
    out[name] = r
  # As sample.py restores: an abstract target without shardings (eval_shape), on the default device.
  c = ckpt_lib.Checkpointer(tmp, 3)
  state, _, _ = c.restore(2, jax.eval_shape(exp.init_state), meta)
  c.close()
  out["unsharded_restore_diff"] = _max_diff(jax.tree_util.tree_map(np.asarray, state), saved)
  print(json.dumps(out))


def errors():
  out = {}

  def catch(name, fn):
    try:
      fn()
      out[name] = None
    except ValueError as e:
      out[name] = str(e)

  catch("mesh_not_dividing", lambda: sharded.mesh_shape((3, 0), 4))
  catch("mesh_wrong_product", lambda: loop.Experiment(_config(parallelism="fsdp", mesh=(2, 1))))
  catch("batch_not_divisible", lambda: loop.Experiment(_batch30()))
  catch("mesh_bad_value", lambda: loop.Experiment(_config(parallelism="fsdp", mesh=(2, -2))))
  catch("parallelism_unknown", lambda: loop.Experiment(_config(parallelism="zero3")))
  out["default_mesh"] = list(sharded.mesh_from_config(_config(parallelism="fsdp")).devices.shape)
  out["inferred_mesh"] = list(sharded.mesh_from_config(
      _config(parallelism="fsdp", mesh=(2, 0))).devices.shape)
  print(json.dumps(out))


def _batch30():
  c = _config(parallelism="fsdp", mesh=(2, 2))
  c.data.batch_size = 30
  return c


if __name__ == "__main__":
  mode = sys.argv[2]
  if mode == "equal":
    equal()
  elif mode == "ckpt":
    ckpt(sys.argv[3])
  else:
    errors()
