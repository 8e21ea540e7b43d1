"""Input validation used at jdiff's public boundaries.

Checks run on concrete (non-traced) values only, so that they raise a clear one-line ``ValueError``
before tracing and cost nothing inside ``jit``.
"""
from __future__ import annotations

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
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
    raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
  return int(v)
