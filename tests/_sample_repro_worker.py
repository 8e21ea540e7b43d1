"""Subprocess worker for tests/test_sample_repro.py, run with
XLA_FLAGS=--xla_force_host_platform_device_count=2: samples from a workdir on both (forced) host
devices with the given layouts and saves them as .npz.

  python tests/_sample_repro_worker.py REPO WORKDIR OUT.npz JSON_SETTINGS_LIST
"""
import json
import sys

import jax
import numpy as np

sys.path.insert(0, sys.argv[1])
from jdiff import generation  # noqa: E402
from jdiff.generation import restore  # noqa: E402


def main():
  workdir, out, runs = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
  assert jax.local_device_count() == 2, jax.devices()
  restored = restore.restore(workdir)
  arrays = {}
  for k, kwargs in enumerate(runs):
    # generate() blocks on every batch's result before the next is dispatched.
    res = generation.generate(restored, generation.Settings(**kwargs), progress=False)
    assert res.num_devices == 2
    arrays[f"x_{k}"], arrays[f"init_{k}"] = res.samples, res.x_init
  np.savez(out, **arrays)
  print(json.dumps({"devices": jax.local_device_count(), "runs": len(runs)}))


if __name__ == "__main__":
  main()
