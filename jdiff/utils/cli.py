"""Shared CLI plumbing for train.py / sample.py: user errors exit with status 2 and one line, no
traceback (``--debug`` shows it); multi-host initialisation."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import traceback
from typing import Optional

from absl import logging as absl_logging

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)


def run_main(main, argv, debug: bool) -> int:
  """Run a CLI's ``main``: a user error prints one ``error: ...`` line (no traceback unless ``debug``)
  and returns exit status 2."""
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every checkpoint read and write at INFO
  try:
    main(argv)
    return 0
  except USER_ERRORS as e:
    if debug:
      traceback.print_exc()
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    print(f"error: {msg}", file=sys.stderr)
    return 2


DEVICES_FILE = "devices.json"  # in a workdir: the device layout its checkpoints were trained on
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "libtpu",
                        "jax_plugins.xla_cuda12", "jax_plugins.xla_cuda13", "jax_plugins.xla_rocm60")


def cpu_only() -> bool:
  """Whether JAX will run on the CPU alone, decided without starting its backends: ``JAX_PLATFORMS``
  names only ``cpu``, or no GPU/TPU plugin is installed."""
  platforms = os.environ.get("JAX_PLATFORMS", "") or os.environ.get("JAX_PLATFORM_NAME", "")
  if platforms:
    return set(p.strip() for p in platforms.lower().split(",") if p.strip()) <= {"cpu"}
  for name in _ACCELERATOR_PLUGINS:
    try:
      if importlib.util.find_spec(name) is not None:
        return False
    except (ImportError, ValueError):
      continue
  return True


def auto_cpu_devices(batch_size: Optional[int] = None, cap: int = 8) -> int:
  """The CPU device count chosen on a CPU-only host: the largest ``n <= min(cores, cap)`` that divides
  ``batch_size``. XLA's CPU kernels leave cores idle at small sizes, and data-parallel shards keep them
  busy (on 2 cores, 1.5x faster training and sampling of the default model: bench/README.md)."""
  cores = max(1, min(os.cpu_count() or 1, cap))
  for n in range(cores, 0, -1):
    if batch_size is None or batch_size % n == 0:
      return n
  return 1


def recorded_devices(workdir: Optional[str]) -> Optional[int]:
  """The device count recorded in ``workdir`` by an earlier training run (``None``: none recorded)."""
  path = os.path.join(workdir, DEVICES_FILE) if workdir else None
  if not path or not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      return int(json.load(f)["num_devices"])
  except (OSError, ValueError, KeyError, TypeError):
    raise ValueError(f"{path} is unreadable; it should be the JSON written by train.py (delete it to "
                     f"choose the device count afresh)") from None


# glibc mallopt parameters (malloc.h); the values are C ints (2^31 - 1 at most).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX, M_ARENA_MAX = -1, -2, -4, -8
_MALLOPT = ((M_TRIM_THRESHOLD, 2 ** 31 - 1), (M_TOP_PAD, 1 << 28), (M_MMAP_MAX, 0), (M_ARENA_MAX, 1))


def tune_malloc() -> bool:
  """Keep freed memory in the process instead of returning it to the kernel after every step (glibc
  only; returns whether it was done). XLA:CPU allocates and frees each step's buffers, among them one
  temporary buffer per device and step of the whole program (126 MiB for the default model): glibc
  serves a block that large by ``mmap`` and returns it by ``munmap`` (also above its 32 MiB maximum mmap
  threshold, and always from a thread's own arena), so every step faults its pages in again, zero-filled.
  Sets the trim threshold to 2 GiB, a 256 MiB top pad, no mmap-ed blocks, and one arena (the main heap,
  which can hold any block): the buffers are then reused. Measured on the 2-core CI machine with the
  default model (bench/README.md, *Default recipe*): page faults 20-38x fewer and system time 3-5x
  lower over 300 steps, identical losses. Not done when the user set ``MALLOC_*`` variables or
  ``GLIBC_TUNABLES`` (theirs win), nor off glibc."""
  if any(k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in os.environ):
    return False
  import ctypes
  import platform
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return False
  return all(libc.mallopt(param, value) == 1 for param, value in _MALLOPT)


def set_cpu_devices(n: Optional[int], *, batch_size: Optional[int] = None,
                    workdir: Optional[str] = None, needed: Optional[int] = None) -> Optional[int]:
  """Split a CPU-only host into ``n`` JAX devices (``jax_num_cpu_devices``) before JAX starts its
  backends; returns the count set, or ``None`` when JAX's default was kept.

  ``n=None`` (the default of ``--cpu_devices``) chooses automatically on a CPU-only host: the count
  recorded in ``workdir`` by the run being resumed, else ``needed`` (the device count a config asks
  for, e.g. an explicit FSDP mesh), else ``auto_cpu_devices(batch_size)``; it does
  nothing on a host with an accelerator, or when JAX has already started (a library caller). ``n >= 1``
  forces that count (0 is 1). Per-example noise and t depend on the global example index, not on the device,
  so results match the 1-device run up to float32 reduction order. On a CPU-only host it also keeps
  freed memory in the process (``tune_malloc``)."""
  if cpu_only():
    tune_malloc()
  explicit = n is not None
  if explicit and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
    raise ValueError(f"--cpu_devices must be an integer >= 0 (0 or 1: one device; omit it to choose "
                     f"automatically), got {n!r}")
  if explicit and n == 0:
    n = 1
  if not explicit:
    if not cpu_only():
      return None
    n = recorded_devices(workdir) or needed or auto_cpu_devices(batch_size)
  import jax
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError as e:  # JAX already started its backends in this process
    if explicit:
      raise ValueError(f"--cpu_devices={n} must be set before JAX runs anything ({e})") from None
    return None
  return n


def maybe_initialize_distributed(multihost: bool, coordinator_address: str, num_processes: int,
                                 process_id: int) -> None:
  """``jax.distributed.initialize`` when asked by flag, by explicit coordinator flags, or by the usual
  environment (``JAX_COORDINATOR_ADDRESS``; cluster auto-detection of SLURM/TPU with ``--multihost``)."""
  import jax
  if coordinator_address:
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id must be in [0, --num_processes) with --num_processes >= 1, got "
                       f"{process_id} and {num_processes}")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif multihost or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize()


def _type_hint(text: str) -> str:
  """``"; --NAME takes an int"`` for absl's "flag --NAME=VALUE: <why>" messages about a bad value."""
  import re
  from absl import flags
  m = re.match(r"flag --([\w.]+)=", text)
  if not m or m.group(1) not in flags.FLAGS:
    return ""
  try:
    kind = flags.FLAGS[m.group(1)].flag_type()
  except Exception:  # pylint: disable=broad-except
    return ""
  kind = {"bool": "true or false"}.get(kind, kind)
  return f"; --{m.group(1)} takes {'an' if kind[:1] in 'aeiou' else 'a'} {kind} value" if kind else ""


def flags_parser(argv):
  """absl ``flags_parser`` for ``app.run``: a bad flag (unknown or misspelled config key, wrong type)
  ends with one line and exit status 2 instead of a traceback."""
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    # OSError: ml_collections' --config=FILE that does not exist or cannot be read
    text = " ".join(str(e).replace("\\n", " ").replace("\\'", "'").replace("'", "").split())
    print(f"error: bad command-line flag: {text}{_type_hint(text)}", file=sys.stderr)
    if "--debug" in argv:
      traceback.print_exc()
    sys.exit(2)
