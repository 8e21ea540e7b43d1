"""Load a trained model for sampling: the config a workdir was trained with, the network it describes
(built without touching the dataset) and the EMA (default) or raw parameters of one checkpoint.

A workdir written by ``train.py`` holds ``config.json`` and ``checkpoints/<step>/`` (orbax items
``state``, ``data`` and ``meta``; see ``jdiff.experiment.checkpoint``). The checkpoint's ``meta`` gives
the data shape and the number of classes, so nothing here reads the training data. Every problem is one
``ValueError`` naming what is wrong and how to fix it; nothing is created or written.
``Restored.from_params`` wraps parameters that are still in training (the training loop's sample grids
and evaluations) the same way.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from jdiff import _checks
from jdiff.experiment import checkpoint as ckpt_lib
from jdiff.experiment import config as config_check
from jdiff.experiment.builder import Model, build_model
from jdiff.experiment.state import make_optimizer


@dataclasses.dataclass
class Restored:
  """A model ready to sample: ``model_fn(params, x, t, cond)`` read with ``parametrization``."""
  config: ml_collections.ConfigDict
  workdir: Optional[str]
  checkpoint_dir: Optional[str]  # <workdir>/checkpoints/<step>; None for parameters still in training
  step: int
  which: str  # "ema" or "raw"
  params: Any
  meta: dict
  model: Model
  model_fn: Any
  parametrization: str  # the core parametrization ("x0" for EDM-preconditioned models)
  programs: dict = dataclasses.field(default_factory=dict, repr=False)  # compiled sampling programs

  @classmethod
  def from_params(cls, model: Model, params, step: int = 0, *, workdir: Optional[str] = None,
                  which: str = "ema") -> "Restored":
    """Parameters that have no checkpoint (yet): e.g. the EMA parameters during training. Reuse one
    object with ``dataclasses.replace(r, params=..., step=...)``: the replacement shares the compiled
    programs."""
    model_fn, param = model.model_fn()
    return cls(config=model.config, workdir=workdir, checkpoint_dir=None, step=int(step), which=which,
               params=params, meta={}, model=model, model_fn=model_fn, parametrization=param)

  @property
  def conditions(self):
    return self.model.conditions

  @property
  def schedule(self):
    return self.model.schedule

  @property
  def process(self):
    """The categorical process of a token model (``jdiff.categorical.Process``), else ``None``."""
    return self.model.process

  @property
  def vocab(self) -> Optional[str]:
    """A token model's vocabulary (token ``k`` is the character ``vocab[k]``), else ``None``."""
    return self.model.vocab

  @property
  def data_shape(self) -> tuple:
    return self.model.data_shape

  @property
  def data_kind(self) -> str:
    """``image``, ``vector``, ``points``, ``signal`` (``jdiff.data.kind_of``) or ``tokens``."""
    return self.model.data_kind

  @property
  def num_classes(self) -> int:
    return self.model.num_classes

  @property
  def learned_variance(self) -> bool:
    return self.model.learned_variance

  @property
  def cond_drop_prob(self) -> float:
    return float(self.config.training.get("cond_drop_prob", 0.0))


def _steps_in(directory: str) -> list[int]:
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def locate(workdir: Optional[str] = None, checkpoint: Optional[str] = None,
           step: Optional[int] = None) -> tuple[str, str, int]:
  """``(workdir, checkpoints_dir, step)`` for ``--workdir`` (its newest checkpoint, or ``step``) or
  ``--checkpoint=<workdir>/checkpoints/<step>``."""
  if bool(workdir) == bool(checkpoint):
    raise ValueError("pass exactly one of --workdir (newest checkpoint of a train.py run) or "
                     "--checkpoint=<workdir>/checkpoints/<step>")
  if checkpoint:
    path = os.path.abspath(checkpoint.rstrip("/"))
    if not os.path.isdir(path):
      raise ValueError(f"checkpoint {path} does not exist; pass a <workdir>/checkpoints/<step> "
                       f"directory written by train.py")
    name, parent = os.path.basename(path), os.path.dirname(path)
    if not re.fullmatch(r"\d+", name) or os.path.basename(parent) != "checkpoints":
      raise ValueError(f"checkpoint {path} is not a <workdir>/checkpoints/<step> directory; pass one "
                       f"of those (or --workdir for the newest)")
    if step is not None and int(step) != int(name):
      raise ValueError(f"--step={step} contradicts --checkpoint {path}; pass only one of them")
    return os.path.dirname(parent), parent, int(name)
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir):
    raise ValueError(f"workdir {workdir} does not exist; pass the --workdir that train.py wrote")
  directory = os.path.join(workdir, "checkpoints")
  steps = _steps_in(directory)
  if not steps:
    raise ValueError(f"no checkpoint in {directory}; train first (python train.py --workdir={workdir})")
  if step is None:
    return workdir, directory, steps[-1]
  if int(step) not in steps:
    raise ValueError(f"no checkpoint for step {step} in {directory}; available steps: "
                     f"{', '.join(map(str, steps))}")
  return workdir, directory, int(step)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The training config saved by ``train.py`` as ``<workdir>/config.json``."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise ValueError(f"{workdir} has no config.json, so it is not a train.py workdir; pass the workdir "
                     f"(or a checkpoint inside it) that train.py wrote")
  try:
    with open(path) as f:
      config = ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise ValueError(f"cannot read {path} ({type(e).__name__}); it should be the JSON config written "
                     f"by train.py") from None
  config_check.validate(config)
  return config


def _read_meta(ckpt: ckpt_lib.Checkpointer, step: int, step_dir: str) -> dict:
  import orbax.checkpoint as ocp
  try:
    meta = ckpt.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  except Exception as e:  # orbax raises many types for a missing or unreadable item
    raise ValueError(f"checkpoint {step_dir} has no readable metadata ({type(e).__name__}); it is not a "
                     f"complete jdiff checkpoint") from None
  needed = ("params", "data_shape", "num_classes")
  if not isinstance(meta, dict) or any(k not in meta for k in needed):
    raise ValueError(f"checkpoint {step_dir} metadata lacks {', '.join(needed)}; it was not written by "
                     f"jdiff's train.py")
  return meta


def _check_meta_matches(config, meta: dict, step_dir: str) -> None:
  pairs = (("model", config.model.name), ("parametrization", config.diffusion.parametrization),
           ("schedule", config.diffusion.schedule))
  for key, want in pairs:
    if key in meta and meta[key] != want:
      raise ValueError(f"checkpoint {step_dir} is incompatible with its workdir's config.json: it was "
                       f"trained with {key} {meta[key]!r} but config.json says {want!r}; use the "
                       f"config.json written with this checkpoint")


def _check_task(config, meta: dict, step_dir: str, task: str) -> None:
  got = meta.get("task", "diffusion")  # diffusion checkpoints carry no "task"
  if got != config_check.task_of(config):
    raise ValueError(f"checkpoint {step_dir} is incompatible with its workdir's config.json: it is a "
                     f"{got} checkpoint but config.json describes a {config_check.task_of(config)}")
  if got == task:
    return
  if task == "diffusion":
    raise ValueError(f"checkpoint {step_dir} is a noise-conditional classifier, not a diffusion model; "
                     f"sample from a diffusion model's workdir and pass this one as --classifier")
  raise ValueError(f"checkpoint {step_dir} is a {got} model, not a classifier; pass the workdir of a "
                   f"classifier trained with task 'classifier' (e.g. configs/fashion_mnist_classifier.py)")


def restore(workdir: Optional[str] = None, checkpoint: Optional[str] = None, *,
            step: Optional[int] = None, use_ema: bool = True, task: str = "diffusion") -> Restored:
  """Load the model of ``workdir`` (newest checkpoint, or ``step``) or of ``checkpoint``.

  ``use_ema``: the exponential moving average of the parameters (what ``train.py`` samples from and
  what diffusion models are evaluated with, Ho et al. 2020, App. B); ``False``: the raw parameters.
  ``task``: what the checkpoint must hold: ``"diffusion"`` (a denoiser) or ``"classifier"`` (a
  noise-conditional classifier; then ``model_fn(params, x, t)`` gives logits); anything else is refused.
  """
  _checks.choice("task", task, config_check.TASKS)
  workdir, directory, step = locate(workdir, checkpoint, step)
  config = load_config(workdir)
  step_dir = os.path.join(directory, str(step))
  ckpt = ckpt_lib.Checkpointer(workdir, max_to_keep=None)  # the checkpoints directory exists
  try:
    meta = _read_meta(ckpt, step, step_dir)
    _check_task(config, meta, step_dir, task)
    _check_meta_matches(config, meta, step_dir)
    try:
      model = build_model(config, tuple(meta["data_shape"]), int(meta["num_classes"]),
                          meta.get("vocab"), meta.get("text"))
    except (TypeError, ValueError) as e:
      raise ValueError(f"checkpoint {step_dir} and its config.json do not describe a buildable model "
                       f"({str(e).splitlines()[0]})") from None
    optimizer = make_optimizer(config.optim, config.training.num_steps)
    abstract = jax.eval_shape(lambda: model.init_state(optimizer))
    want = model.meta(abstract)
    if want["params"] != meta["params"]:
      missing = sorted(set(want["params"]) ^ set(meta["params"]))
      shape = sorted(k for k in set(want["params"]) & set(meta["params"])
                     if want["params"][k] != meta["params"][k])
      detail = (f"{len(missing)} parameter names differ, e.g. {missing[0]}" if missing else
                f"{len(shape)} parameter shapes differ, e.g. {shape[0]}: {meta['params'][shape[0]]} in "
                f"the checkpoint vs {want['params'][shape[0]]}")
      raise ValueError(f"checkpoint {step_dir} is incompatible with its workdir's config.json "
                       f"({detail}); use the config.json written with this checkpoint")
    try:
      ckpt.verify(step)
      state, _, _ = ckpt.restore(step, abstract, meta)
    except ckpt_lib.DamagedCheckpointError as e:
      others = [s for s in _steps_in(directory) if s != step]
      hint = (f"sample from another step with --checkpoint={os.path.join(directory, str(others[-1]))}"
              if others else "it cannot be used; train again")
      raise ckpt_lib.DamagedCheckpointError(f"{e}; {hint}") from None
  finally:
    ckpt.close()
  params = state.ema_params if use_ema else state.params
  params = jax.tree_util.tree_map(np.asarray, params)
  restored = Restored.from_params(model, params, step, workdir=workdir,
                                  which="ema" if use_ema else "raw")
  return dataclasses.replace(restored, checkpoint_dir=step_dir, meta=meta)


def restore_path(path: str, *, use_ema: bool = True, task: str = "diffusion") -> Restored:
  """``restore`` of a path that is either a workdir (its newest checkpoint) or one of its
  ``checkpoints/<step>`` directories."""
  path = os.path.abspath(path.rstrip("/"))
  is_step = os.path.basename(path).isdigit() and os.path.basename(os.path.dirname(path)) == "checkpoints"
  return restore(None if is_step else path, path if is_step else None, use_ema=use_ema, task=task)
