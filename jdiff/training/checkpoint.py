"""Checkpoints with orbax-checkpoint's ``CheckpointManager`` under ``<workdir>/checkpoints``.

Each step directory holds the ``TrainState`` (params, EMA params, optimizer state, step, RNG, skipped
count) and, as JSON, the data-stream position and a description of the model (parameter shapes) used to
refuse a checkpoint of another model with a clear message. Orbax writes into a temporary directory and
renames it when complete, so a save interrupted by a crash is never listed (``all_steps`` ignores
``*.orbax-checkpoint-tmp``) and never restored. Restores always go against an abstract target, so optax
states come back with their own types. Nothing here uses pickle.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp


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

  def restore(self, step: int, abstract_state, expected_meta: Optional[dict] = None):
    """Restore ``(state, data_state, meta)`` at ``step``; refuses a checkpoint of another model."""
    meta = self.manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
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
    out = self.manager.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    return out["state"], out["data"], meta

  def close(self) -> None:
    self.manager.close()
