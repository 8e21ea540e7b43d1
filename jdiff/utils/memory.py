"""Returning freed heap memory to the operating system.

glibc's malloc keeps memory freed by large temporary buffers (a checkpoint save's serialization, a sample
grid's compile) in its heap and raises its mmap threshold as it sees them, so a long training run's
resident size creeps up by ~1 MiB per checkpoint save although nothing stays allocated (measured in
``bench/soak.py``: 8.9% over a 20-minute soak, with malloc's in-use bytes flat and ``malloc_trim`` giving
back ~560 MiB). The growth follows glibc's dynamic mmap threshold: each freed large mmapped block (a
checkpoint's host arrays) raises the threshold to its size, and later blocks of that size then come from
the heap, which fragments and keeps them. ``fix_mmap_threshold`` pins the threshold (``mallopt``; with
``MALLOC_MMAP_THRESHOLD_=1048576`` the same soak drifted 1.6%), and ``release_free_memory`` calls
``malloc_trim(0)``. Both are no-ops where libc has neither.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


@functools.lru_cache(maxsize=None)
def _libc_function(name: str):
  lib = ctypes.util.find_library("c")
  try:
    return getattr(ctypes.CDLL(lib), name) if lib else None
  except (OSError, AttributeError):  # not glibc (macOS, musl)
    return None


def fix_mmap_threshold(nbytes: int = 1 << 20) -> bool:
  """Serve allocations of ``nbytes`` or more by mmap (returned to the OS on free) unless a free heap chunk
  already fits them, and stop glibc from raising that threshold; True if it was set. Process-wide: the training loop sets it once."""
  mallopt = _libc_function("mallopt")
  return bool(mallopt is not None and mallopt(M_MMAP_THRESHOLD, int(nbytes)) == 1)


def release_free_memory() -> bool:
  """Give the heap's free memory back to the OS (glibc ``malloc_trim(0)``); True if it ran."""
  trim = _libc_function("malloc_trim")
  if trim is None:
    return False
  trim(0)
  return True
