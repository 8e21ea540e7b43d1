"""Shared CLI plumbing for train.py / sample.py: user errors exit with status 2 and one line, no
traceback (``--debug`` shows it); multi-host initialisation."""
from __future__ import annotations

import os
import sys
import traceback

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)


def run_main(main, argv, debug: bool) -> int:
  try:
    main(argv)
    return 0
  except USER_ERRORS as e:
    if debug:
      traceback.print_exc()
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    print(f"error: {msg}", file=sys.stderr)
    return 2


def set_cpu_devices(n) -> None:
  """``jax_num_cpu_devices = n`` (n >= 1) before JAX starts its backends; 0 leaves JAX's default.

  Data-parallel shards on one CPU keep more cores busy than one program whose small kernels XLA runs
  on fewer threads (bench/README.md). Per-example noise and t depend on the global example index,
  not on the device, so results match the 1-device run up to float32 reduction order."""
  if isinstance(n, bool) or not isinstance(n, int) or n < 0:
    raise ValueError(f"--cpu_devices must be an integer >= 0 (0: one CPU device), got {n!r}")
  if n == 0:
    return
  import jax
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError as e:  # JAX already started its backends in this process
    raise ValueError(f"--cpu_devices={n} must be set before JAX runs anything ({e})") from None


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
