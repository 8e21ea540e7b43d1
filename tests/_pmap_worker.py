"""Subprocess worker (run with 2 forced host devices): the pmapped train step on 2 devices equals the
same step on 1 device holding the whole global batch, and the same per-device step function run by
``jax.shard_map`` on a 2-device mesh axis ``data`` equals the pmapped one."""
import json
import sys

import jax
import numpy as np

sys.path.insert(0, sys.argv[1])
from configs import toy2d  # noqa: E402
from jdiff.training import loop  # noqa: E402


def main():
  c = toy2d.get_config()
  c.data.batch_size = 64
  c.model.features = 32
  c.model.num_blocks = 1
  exp = loop.Experiment(c, num_local_devices=2)
  state = exp.init_state()
  p2 = jax.pmap(exp.train_step_fn("data"), axis_name="data", devices=jax.devices()[:2])
  p1 = jax.pmap(exp.train_step_fn("data"), axis_name="data", devices=jax.devices()[:1])
  s2 = loop.replicate(state, 2)
  s1 = loop.replicate(state, 1)
  for k in range(4):
    b2 = exp.pipeline.batch_at(k)
    b1 = jax.tree_util.tree_map(lambda x: x.reshape((1, -1) + x.shape[2:]), b2)
    s2, m2 = p2(s2, b2)
    s1, m1 = p1(s1, b1)
    jax.block_until_ready((m1, m2))
  # The same per-device function under shard_map: state replicated, batch split on the mesh axis.
  from jax.sharding import PartitionSpec as P
  mesh = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2])
  step = exp.train_step_fn("data")
  sm = jax.jit(jax.shard_map(lambda s, b: step(s, jax.tree_util.tree_map(lambda x: x[0], b)),
                             mesh=mesh, in_specs=(P(), P("data")), out_specs=(P(), P()),
                             check_vma=False))
  from jax.sharding import NamedSharding
  s3 = jax.device_put(state, NamedSharding(mesh, P()))
  for k in range(4):
    s3, m3 = sm(s3, jax.device_put(exp.pipeline.batch_at(k), NamedSharding(mesh, P("data"))))
    jax.block_until_ready(m3)
  a = loop.unreplicate(s2)
  b = loop.unreplicate(s1)
  diffs = [float(np.max(np.abs(x - y))) for x, y in zip(jax.tree_util.tree_leaves(a.params),
                                                        jax.tree_util.tree_leaves(b.params))]
  # The two devices of the 2-device run hold identical replicas.
  rep = [float(np.max(np.abs(np.asarray(x.addressable_data(0)) - np.asarray(x.addressable_data(1)))))
         for x in jax.tree_util.tree_leaves(s2.params)]
  sm_diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(s3.params)))
  print(json.dumps({"shard_map_vs_pmap": sm_diff, "max_param_diff": max(diffs), "replica_diff": max(rep),
                    "loss1": float(m1["loss"][0]), "loss2": float(m2["loss"][0]),
                    "devices": jax.local_device_count()}))


if __name__ == "__main__":
  main()
