"""Checkpoints with orbax-checkpoint's ``CheckpointManager`` under ``<workdir>/checkpoints``.

Each step directory holds the ``TrainState`` (params, EMA params, optimizer state, step, RNG, skipped
count) and, as JSON, the data-stream position and a description of the model (parameter shapes) used to
refuse a checkpoint of another model with a clear message. Orbax writes into a temporary directory and
renames it when complete, so a save interrupted by a crash is never listed (``all_steps`` ignores
``*.orbax-checkpoint-tmp``) and never restored. Restores always go against an abstract target, so optax
states come back with their own types. Nothing here uses pickle.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from jdiff.utils import files


CHECKSUMS = "jdiff_checksums.json"


class DamagedCheckpointError(ValueError):
  """A complete-looking checkpoint whose files are truncated, corrupted or missing."""


def _file_digests(step_dir: str) -> dict:
  out = {}
  for root, _, names in os.walk(step_dir):
    for name in names:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      if name == CHECKSUMS or name.startswith(f".{CHECKSUMS}"):
        continue
      out[rel] = [os.path.getsize(path), files.sha256(path)]
  return dict(sorted(out.items()))


def param_signature(params) -> dict:
  """``{path: shape}`` of a parameter tree: enough to tell two models apart."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {jax.tree_util.keystr(p): list(np.shape(v)) for p, v in flat}


class Checkpointer:
  """Thin wrapper over ``ocp.CheckpointManager`` for a ``TrainState`` plus JSON side data."""

  def __init__(self, workdir: str, max_to_keep: int = 3):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=opts)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_state: dict, meta: dict, force: bool = True) -> None:
    state = jax.device_get(state)
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(data_state),
                              meta=ocp.args.JsonSave(meta))
    self.manager.save(int(step), args=args, force=force)
    self.manager.wait_until_finished()
    if jax.process_index() == 0:
      # Size and SHA-256 of every file, written atomically once orbax has committed the step: restore
      # verifies them, so a truncated or corrupted checkpoint is refused instead of loaded.
      step_dir = self.step_dir(step)
      digests = _file_digests(step_dir)
      files.write_json(os.path.join(step_dir, CHECKSUMS), digests, indent=None)

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(int(step)))

  def verify(self, step: int) -> None:
    """Raise ``DamagedCheckpointError`` if a file of checkpoint ``step`` is missing, truncated or
    altered since it was saved (checked against the checksums written at save time; a step saved by a
    process killed before it wrote them is checked only by orbax's reading)."""
    step_dir = self.step_dir(step)
    path = os.path.join(step_dir, CHECKSUMS)
    if not os.path.exists(path):
      # Orbax committed the step but the process died before the checksums were written: the
      # checkpoint is complete (orbax renames it into place only when done); restore checks it.
      return
    try:
      with open(path) as f:
        want = json.load(f)
    except (OSError, ValueError):
      raise DamagedCheckpointError(f"checkpoint step {step} in {self.directory} has an unreadable "
                                   f"{CHECKSUMS}; the checkpoint is damaged") from None
    got = _file_digests(step_dir)
    bad = sorted(k for k in want if got.get(k) != want[k])
    if bad:
      raise DamagedCheckpointError(
          f"checkpoint step {step} in {self.directory} is damaged ({len(bad)} file(s) missing, "
          f"truncated or changed, e.g. {bad[0]})")

  def restore_latest(self, abstract_state, expected_meta: Optional[dict] = None,
                     fallback: bool = False, warn: Callable[[str], Any] = print):
    """Restore the newest checkpoint, or return None when there is none.

    A damaged newest checkpoint is refused with a message naming its step; with ``fallback=True``
    it is skipped with a warning and the previous complete one is restored instead.
    """
    steps = sorted(self.all_steps(), reverse=True)
    for i, step in enumerate(steps):
      try:
        self.verify(step)
        return (step,) + tuple(self.restore(step, abstract_state, expected_meta))
      except DamagedCheckpointError as e:
        if not fallback:
          prev = f" (previous: step {steps[i + 1]})" if i + 1 < len(steps) else ""
          raise DamagedCheckpointError(
              f"{e}; to resume from the previous complete checkpoint{prev} pass "
              f"--config.training.fallback_to_previous_checkpoint=True") from None
        aside = os.path.join(os.path.dirname(self.directory), "damaged_checkpoints",
                             f"{step}-{int(time.time())}")
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        os.replace(self.step_dir(step), aside)  # keep it for inspection, out of orbax's way
        self.manager.reload()
        warn(f"warning: {e}; moved it to {aside} and fell back to an earlier checkpoint")
    if steps:
      raise DamagedCheckpointError(f"every checkpoint in {self.directory} is damaged (steps "
                                   f"{sorted(steps)}); use a new --workdir")
    return None

  def restore(self, step: int, abstract_state, expected_meta: Optional[dict] = None):
    """Restore ``(state, data_state, meta)`` at ``step``; refuses a checkpoint of another model."""
    try:
      meta = self.manager.restore(int(step),
                                  args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except (OSError, ValueError, KeyError, RuntimeError) as e:
      raise DamagedCheckpointError(f"checkpoint step {step} in {self.directory} has unreadable "
                                   f"metadata ({type(e).__name__})") from None
    if expected_meta is not None:
      want, got = expected_meta.get("params"), meta.get("params")
      if want is not None and got is not None and want != got:
        missing = sorted(set(want) ^ set(got))
        shape = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        detail = (f"{len(missing)} parameters differ in name" if missing else
                  f"{len(shape)} differ in shape, e.g. {shape[0]}: {got[shape[0]]} vs {want[shape[0]]}")
        raise ValueError(f"checkpoint step {step} in {self.directory} was written by a different model "
                         f"({detail}); use the config it was trained with or a new --workdir")
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
      out = self.manager.restore(int(step), args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
      first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
      raise DamagedCheckpointError(f"checkpoint step {step} in {self.directory} could not be read "
                                   f"({type(e).__name__}: {first})") from None
    return out["state"], out["data"], meta

  def close(self) -> None:
    self.manager.close()
