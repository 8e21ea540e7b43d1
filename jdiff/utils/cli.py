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


def flags_parser(argv):
  """absl ``flags_parser`` for ``app.run``: a bad flag (unknown or misspelled config key, wrong type)
  ends with one line and exit status 2 instead of a traceback."""
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    text = " ".join(str(e).replace("\\n", " ").replace("\\'", "'").replace("'", "").split())
    print(f"error: bad command-line flag: {text}", file=sys.stderr)
    if "--debug" in argv:
      traceback.print_exc()
    sys.exit(2)
