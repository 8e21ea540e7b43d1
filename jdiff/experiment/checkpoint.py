"""Checkpoints with orbax-checkpoint's ``CheckpointManager`` under ``<workdir>/checkpoints``.

Each step directory holds the ``TrainState`` (params, EMA params, optimizer state, step, RNG, skipped
count) and, as JSON, the data-stream position and a description of the model (parameter shapes) used to
refuse a checkpoint of another model with a clear message. Orbax writes into a temporary directory and
renames it when complete, so a save interrupted by a crash is never listed (``all_steps`` ignores
``*.orbax-checkpoint-tmp``) and never restored. Restores always go against an abstract target, so optax
states come back with their own types. Nothing here uses pickle.

Sharded states (``training.parallelism='fsdp'``) are saved as they are, each process writing its own
shards; a restore reads them onto the shardings the target carries (any mesh, e.g. a (2, 2) checkpoint
onto (4, 1) or (1, 1)), or onto this process's first device for a target without shardings.

Every step directory carries ``jdiff_checksums.json`` (size and SHA-256 of each file), written into
orbax's temporary directory *before* orbax renames it into place (``_ChecksummedRename``): no moment
exists where a committed step lacks its checksums. A step without them (deleted, or saved by an older
jdiff) is incomplete: ``verify`` refuses it like a damaged one.

Old steps beyond ``max_to_keep`` are first renamed (atomically) into ``checkpoints/.deleted`` and only
then removed, so a kill while deleting never leaves a half-deleted step that looks like a checkpoint.

Test hooks, inert unless set (tests/test_reliability.py kills train.py inside them):
``JDIFF_TEST_PAUSE_IN_SAVE=<seconds>`` sleeps inside every save, after the checksums are written and
before the step is committed; ``JDIFF_TEST_PAUSE_IN_RESTORE=<seconds>`` sleeps inside a restore, before
the checkpoint is read. Each prints ``jdiff-test: paused in save|restore of checkpoint step N`` to
stderr first.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import sys
import threading
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from jdiff.utils import files


CHECKSUMS = "jdiff_checksums.json"
_DELETED = ".deleted"  # in the checkpoints directory: steps being deleted (never listed as steps)
# Written or updated by orbax's commit itself, after the checksums (commit timestamp, success marker).
_COMMIT_FILES = ("_CHECKPOINT_METADATA", "commit_success.txt")


class DamagedCheckpointError(ValueError):
  """A complete-looking checkpoint whose files are truncated, corrupted or missing."""


class CheckpointSaveError(ValueError):
  """A save failed (disk full, failing write); the previous checkpoints are untouched."""


def _test_pause(where: str, step) -> None:
  """Test-only hook: sleep ``$JDIFF_TEST_PAUSE_IN_<WHERE>`` seconds (unset: nothing happens)."""
  seconds = os.environ.get(f"JDIFF_TEST_PAUSE_IN_{where.upper()}")
  if seconds:
    print(f"jdiff-test: paused in {where} of checkpoint step {step}", file=sys.stderr, flush=True)
    time.sleep(float(seconds))


def _file_digests(step_dir: str, skip_commit_files: bool = False) -> dict:
  out = {}
  for root, _, names in os.walk(step_dir):
    for name in names:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      if name.endswith(CHECKSUMS):  # the checksums themselves, or an atomic write's temporary file
        continue
      if skip_commit_files and rel in _COMMIT_FILES:
        continue
      out[rel] = [os.path.getsize(path), files.sha256(path)]
  return dict(sorted(out.items()))


def _checksummed_rename_class(directory: str):
  """Orbax's atomic-rename commit, with ``jdiff_checksums.json`` written into the temporary step
  directory just before it is renamed into place (orbax calls ``finalize`` on the primary process
  once every process has written its files). Item directories inside a step use the same class and
  are committed unchanged."""
  base = ocp.path.atomicity.AtomicRenameTemporaryPath

  class _ChecksummedRename(base):

    async def finalize(self, *args, **kwargs):
      tmp, final = os.fspath(self.get()), os.fspath(self.get_final())
      if os.path.dirname(os.path.abspath(final)) == directory:  # a step, not an item inside one
        # Orbax's commit then rewrites _CHECKPOINT_METADATA (its commit time) and adds
        # commit_success.txt: both are left out of the checksums.
        files.write_json(os.path.join(tmp, CHECKSUMS), _file_digests(tmp, skip_commit_files=True),
                         indent=None)
        _test_pause("save", os.path.basename(final))
      return await super().finalize(*args, **kwargs)

  return _ChecksummedRename


def _os_error(e: BaseException) -> Optional[OSError]:
  """The ``OSError`` that caused ``e`` (orbax re-raises errors of its writer threads wrapped)."""
  seen = set()
  while e is not None and id(e) not in seen:
    if isinstance(e, OSError):
      return e
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  return None


def param_signature(params) -> dict:
  """``{path: shape}`` of a parameter tree: enough to tell two models apart."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {jax.tree_util.keystr(p): list(np.shape(v)) for p, v in flat}


def _with_sharding(x) -> jax.ShapeDtypeStruct:
  """The restore target of one leaf: its shape, dtype and sharding (a leaf without one, e.g. from
  ``jax.eval_shape``, goes to this process's first device), so that a checkpoint saved sharded over
  another set of devices (fsdp training) is read onto this process's own."""
  s = ocp.utils.to_shape_dtype_struct(x)
  if getattr(s, "sharding", None) is None:
    s = jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=jax.sharding.SingleDeviceSharding(
        jax.local_devices()[0]))
  return s


class Checkpointer:
  """Thin wrapper over ``ocp.CheckpointManager`` for a ``TrainState`` plus JSON side data."""

  def __init__(self, workdir: str, max_to_keep: int = 3, cleanup_tmp: bool = False):
    """``cleanup_tmp``: delete the temporary directories of interrupted saves (only for the one
    writer of the workdir, train.py under its lock: a reader must not touch a save in progress)."""
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                        cleanup_tmp_directories=cleanup_tmp,
                                        todelete_subdir=_DELETED,
                                        temporary_path_class=_checksummed_rename_class(self.directory))
    self._options = opts
    self.manager = ocp.CheckpointManager(self.directory, options=opts)
    if cleanup_tmp:
      self._empty_trash()

  def _empty_trash(self) -> None:
    """Remove the steps orbax moved aside for deletion (the previous run may have died doing it)."""
    if jax.process_index() == 0:
      shutil.rmtree(os.path.join(self.directory, _DELETED), ignore_errors=True)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_state: dict, meta: dict, force: bool = True) -> None:
    """Save and wait until step ``step`` is committed, checksums included (``_ChecksummedRename``).

    A failing write (disk full, I/O error) raises ``CheckpointSaveError``: the step is not committed
    (its temporary directory is never listed) and the earlier checkpoints are left as they were."""
    # Arrays sharded over several devices (fsdp training) are saved as they are: each process writes
    # its own shards, and a restore against an abstract target with other shardings reads each new
    # device's slice (any mesh, or a single device). Everything else is saved from the host.
    sharded = lambda x: isinstance(x, jax.Array) and len(x.sharding.device_set) > 1
    state = jax.tree_util.tree_map(lambda x: x if sharded(x) else jax.device_get(x), state)
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(data_state),
                              meta=ocp.args.JsonSave(meta))
    threads = set(threading.enumerate())
    try:
      self.manager.save(int(step), args=args, force=force)
      self.manager.wait_until_finished()
      self._empty_trash()
    except Exception as e:  # pylint: disable=broad-except
      err = _os_error(e)
      if err is None:
        raise
      # Orbax reports the first failing write while the step's other writes may still be running in
      # its threads: wait for them, so that nothing writes into the directory once we return.
      deadline = time.time() + 60
      for t in set(threading.enumerate()) - threads:
        if t is not threading.current_thread():
          try:
            t.join(max(0.0, deadline - time.time()))
          except Exception:  # pylint: disable=broad-except  # orbax's threads re-raise their error
            pass
      quiet = not any(t.is_alive() for t in set(threading.enumerate()) - threads
                      if t is not threading.current_thread())
      self._reopen(cleanup=quiet)  # orbax's manager keeps re-raising a failed save: a fresh one
      done = [s for s in self.all_steps() if s != int(step)]
      after = (f"the previous checkpoint (step {max(done)}) is intact and running again resumes from "
               f"it" if done else "there is no earlier checkpoint")
      why = os.strerror(err.errno) if err.errno else (str(err) or type(err).__name__)
      hint = "; free some space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else ""
      raise CheckpointSaveError(
          f"could not save checkpoint step {step} in {self.directory} ({why}){hint}; {after}") from e

  def _reopen(self, cleanup: bool) -> None:
    try:
      self.manager.close()
    except Exception:  # pylint: disable=broad-except  # the failed save, reported by the caller
      pass
    # ``cleanup``: the failed save's temporary directory is removed (only once its writes are over).
    opts = dataclasses.replace(self._options,
                               cleanup_tmp_directories=cleanup and self._options.cleanup_tmp_directories)
    self.manager = ocp.CheckpointManager(self.directory, options=opts)

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(int(step)))

  def verify(self, step: int) -> None:
    """Raise ``DamagedCheckpointError`` if a file of checkpoint ``step`` is missing, truncated or
    altered since it was saved (checked against the checksums written at save time), or if the step
    has no checksums at all: every save writes them before the step is committed, so a step without
    them is incomplete (deleted by hand, or saved by an older jdiff) and is never restored as
    complete."""
    step_dir = self.step_dir(step)
    path = os.path.join(step_dir, CHECKSUMS)
    if not os.path.exists(path):
      raise DamagedCheckpointError(
          f"checkpoint step {step} in {self.directory} is incomplete or damaged: it has no {CHECKSUMS} "
          f"(every save writes it before committing the step), so its files cannot be checked")
    try:
      with open(path) as f:
        want = json.load(f)
      if not isinstance(want, dict) or not want:
        raise ValueError("no entries")
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
        _test_pause("restore", step)
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
    abstract = jax.tree_util.tree_map(_with_sharding, abstract_state)
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
