"""Input validation used at jdiff's public boundaries.

Checks run on concrete (non-traced) values only, so that they raise a clear one-line ``ValueError``
before tracing and cost nothing inside ``jit``.
"""
from __future__ import annotations

import math
import os
from typing import Iterable

import jax
import numpy as np


def is_concrete(x) -> bool:
  """True when ``x`` holds values (not a tracer inside jit/vmap/grad)."""
  return not isinstance(x, jax.core.Tracer)


def choice(kind: str, name: str, valid: Iterable[str]) -> str:
  valid = sorted(valid)
  if name not in valid:
    raise ValueError(f"unknown {kind} {name!r}; valid {kind}s are: {', '.join(valid)}")
  return name


def check_t(t, name: str = "t") -> None:
  """Times must lie in [0, 1] (data at 0, prior at 1)."""
  if is_concrete(t):
    a = np.asarray(t)
    if a.size and (not np.all(np.isfinite(a)) or a.min() < 0.0 or a.max() > 1.0):
      raise ValueError(f"{name} must lie in [0, 1] (data at 0, prior at 1); got values in "
                       f"[{np.nanmin(a):.4g}, {np.nanmax(a):.4g}]")


def check_finite(x, name: str) -> None:
  if is_concrete(x):
    a = np.asarray(x)
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
      raise ValueError(f"{name} contains NaN or Inf; pass finite values")


def check_float(x, name: str) -> None:
  dt = getattr(x, "dtype", None)
  if dt is not None and not np.issubdtype(np.dtype(dt), np.floating):
    raise ValueError(f"{name} must be a floating-point array, got dtype {dt}; cast it with "
                     f".astype(jnp.float32)")


def check_batch_t(x, t, xname: str = "x", tname: str = "t") -> None:
  """``t`` is a scalar or one value per example (shape ``[batch]``)."""
  tshape = np.shape(t)
  xshape = np.shape(x)
  if len(tshape) > 1 or (len(tshape) == 1 and (len(xshape) == 0 or tshape[0] != xshape[0])):
    raise ValueError(f"{tname} must be a scalar or have shape [batch]={xshape[:1]}, got shape "
                     f"{tshape} for {xname} of shape {xshape}")


def positive_int(v, name: str) -> int:
  return int_at_least(v, name, 1)


def check_key(key, name: str = "key") -> None:
  """A PRNG key: a typed key (``jax.random.key``) or a raw ``uint32`` key (``jax.random.PRNGKey``)."""
  dt = getattr(key, "dtype", None)
  if dt is not None and jax.dtypes.issubdtype(dt, jax.dtypes.prng_key):
    return
  if dt is None or np.dtype(dt) != np.uint32 or np.ndim(key) < 1:
    got = f"dtype {dt} and shape {np.shape(key)}" if dt is not None else type(key).__name__
    raise TypeError(f"{name} must be a PRNG key such as jax.random.PRNGKey(0) or jax.random.key(0), "
                    f"got {got}")


PICKLE_REFUSED = ("jdiff never loads pickles (unpickling can run arbitrary code); save plain numeric "
                  "arrays with np.save or np.savez")


def load_arrays(path, what: str = "file") -> dict:
  """Every array of a ``.npz`` (or the one array of a ``.npy``, under the key ``""``), read eagerly with
  ``allow_pickle=False``. A file holding pickled objects (an object array, or a pickle that is not an
  array file at all) raises a ``ValueError`` naming the file, and nothing in it is unpickled."""
  path = os.fspath(path)
  try:
    data = np.load(path, allow_pickle=False)
    if isinstance(data, np.ndarray):
      return {"": data}
    with data:
      return {k: data[k] for k in data.files}
  except ValueError as e:
    if "Object arrays" in str(e):
      raise ValueError(f"{what} {path} holds an object array (pickled Python objects); "
                       f"{PICKLE_REFUSED}") from None
    if "pickle" in str(e):
      raise ValueError(f"{what} {path} is not a .npy/.npz array file (a pickle or another format); "
                       f"{PICKLE_REFUSED}") from None
    raise


def check_cond(cond, batch: int, name: str = "cond") -> None:
  """Every array leaf of ``cond`` with a leading axis must have ``batch`` rows (scalars are allowed)."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(cond):
    shape = np.shape(leaf)
    if len(shape) >= 1 and shape[0] != batch:
      raise ValueError(f"{name}{jax.tree_util.keystr(path)} has leading dimension {shape[0]} but the "
                       f"batch has {batch} examples; give every conditioning array a leading batch axis")


def check_data(x0, name: str = "x0") -> int:
  """``x0`` is a float array ``[batch, ...]``; returns the batch size."""
  check_float(x0, name)
  if np.ndim(x0) < 1 or np.shape(x0)[0] < 1:
    raise ValueError(f"{name} must have a leading batch axis, got shape {np.shape(x0)}")
  check_finite(x0, name)
  return int(np.shape(x0)[0])


def check_time_bound(t_eps, name: str) -> float:
  if not (isinstance(t_eps, (int, float)) and 0.0 <= t_eps < 1.0 and math.isfinite(t_eps)):
    raise ValueError(f"{name} must be a number in [0, 1) (times are clipped into [{name}, 1]), "
                     f"got {t_eps!r}")
  return float(t_eps)


def logsnr_is_finite(schedule, t: float) -> bool:
  """Whether ``schedule.logsnr(t)`` is finite, evaluated eagerly (also while tracing)."""
  with jax.ensure_compile_time_eval():
    return bool(np.isfinite(np.asarray(schedule.logsnr(np.float32(t)))))


def int_at_least(v, name: str, lo: int) -> int:
  """``v`` as an int, refused unless it is an integer (not a bool) ``>= lo``."""
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
    raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
  return int(v)


def check_unit_images(images, name: str = "images", purpose: str = "") -> None:
  """Images as floats in [-1, 1] (up to 1e-3 of rounding), finite; ``purpose`` (e.g. " for the
  Fashion-MNIST feature net") completes the range error."""
  dtype = np.dtype(getattr(images, "dtype", np.asarray(images).dtype))
  if not np.issubdtype(dtype, np.floating):
    raise ValueError(f"{name} must be floats in [-1, 1], got dtype {dtype}; scale uint8 images with "
                     f"x / 127.5 - 1")
  a = np.asarray(images)
  if not np.all(np.isfinite(a)):
    raise ValueError(f"{name} contains NaN or Inf; pass finite images in [-1, 1]")
  lo, hi = float(a.min()), float(a.max())
  if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
    raise ValueError(f"{name} must lie in [-1, 1]{purpose}, got values in [{lo:.4g}, {hi:.4g}]; scale "
                     f"uint8 images with x / 127.5 - 1 and clip samples with np.clip(x, -1, 1)")
