"""Per-example randomness: the noise of example ``i`` depends only on a key and ``i``, its *global* index.

Every random draw of jdiff (training noise and times, the prior draw and per-step noise of sampling,
editing noise) goes through ``fold_in(key, i)``, so an example's randomness is the same whatever the
batch size, the device count or the process count.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import _checks


def per_example_keys(key, indices):
  """``fold_in(key, i)`` for every global example index ``i`` (one key per example)."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(indices, jnp.int32))


def example_normal(key, indices, shape, dtype=jnp.float32):
  """Standard normal noise ``[batch, *shape]``; row ``b`` depends only on ``key`` and ``indices[b]``."""
  return jax.vmap(lambda k: jax.random.normal(k, shape, dtype))(per_example_keys(key, indices))


def normal_like(keys, x, salt):
  """Standard normal noise shaped like ``x``, row ``b`` drawn from ``fold_in(keys[b], salt)``."""
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, salt), x.shape[1:], x.dtype))(keys)


def check_indices(indices, batch: Optional[int] = None, name: str = "indices"):
  """``indices`` as int32: a 1-D array of non-negative integers, ``batch`` of them when given."""
  if np.ndim(indices) != 1:
    raise ValueError(f"{name} must be a 1-D array of global sample indices, got shape "
                     f"{np.shape(indices)}")
  dt = indices.dtype if hasattr(indices, "dtype") else np.asarray(indices).dtype
  if not np.issubdtype(np.dtype(dt), np.integer):
    raise ValueError(f"{name} must be integers (global sample indices), got dtype {dt}")
  if batch is not None and np.shape(indices)[0] != batch:
    raise ValueError(f"{name} has {np.shape(indices)[0]} entries but x has batch size {batch}; "
                     "pass one global index per example")
  if _checks.is_concrete(indices) and np.size(indices) and np.min(np.asarray(indices)) < 0:
    raise ValueError(f"{name} must be >= 0, got min {np.min(np.asarray(indices))}")
  return jnp.asarray(indices, jnp.int32)


def resolve_indices(batch: int, indices, global_batch_size: Optional[int], need_global: bool):
  """Default ``indices = arange(batch)`` and ``global_batch_size = batch``, validated."""
  if indices is None:
    indices = jnp.arange(batch, dtype=jnp.int32)
  else:
    if np.shape(indices) != (batch,):
      raise ValueError(f"indices must have shape [batch]=({batch},) (the global index of each "
                       f"example), got shape {np.shape(indices)}")
    dtype = indices.dtype if hasattr(indices, "dtype") else np.asarray(indices).dtype
    if not np.issubdtype(np.dtype(dtype), np.integer):
      raise ValueError(f"indices must be integers, got dtype {dtype}")
    if global_batch_size is None and need_global:
      raise ValueError("time_sampling='low_discrepancy' with explicit indices needs global_batch_size "
                       "(the number of examples over all devices) to stratify the global batch")
  if global_batch_size is None:
    global_batch_size = batch
  global_batch_size = _checks.positive_int(global_batch_size, "global_batch_size")
  return jnp.asarray(indices), global_batch_size
