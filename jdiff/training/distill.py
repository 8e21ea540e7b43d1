"""Distillation runs of ``train.py``: the teacher of ``training.objective`` ``progressive_distillation`` or
``consistency_distillation`` (a trained workdir, restored through ``jdiff.generation``), and the chain of
progressive-distillation rounds.

Progressive distillation (Salimans & Ho 2022) halves the teacher's DDIM step count per round: with
``distill.teacher_steps = T`` and ``distill.student_steps = S`` (``T / S`` a power of two) one command runs
``log2(T / S)`` rounds of ``training.num_steps`` steps each, round ``k`` in ``<workdir>/round_k`` (one
round: in ``<workdir>``), its teacher the previous round's workdir (round 1: ``distill.teacher_workdir``). Each round's student starts
from its teacher's EMA weights, with the teacher's model and diffusion settings (read from its
``config.json``), and samples with ``ddim`` on the ``uniform_t`` grid of its own step count, so
``sample.py --workdir=<workdir>/round_k`` draws with ``T / 2^k`` steps. A rerun resumes the unfinished
round (finished rounds are complete checkpoints and are left as they are).
"""
from __future__ import annotations

import copy
import math
import os
from typing import Callable

import ml_collections

from jdiff import distillation, generation
from jdiff.generation import restore as restore_lib
from jdiff.training.step import Teacher


def load_teacher(config: ml_collections.ConfigDict, data_shape, num_classes: int) -> generation.Restored:
  """The teacher's EMA parameters and model, checked against the student's data (one clear error for a
  missing or damaged teacher workdir, or one of another data shape or label set)."""
  d = config.distill
  return _load_run(d.teacher_workdir, int(d.teacher_step) or None, data_shape, num_classes,
                   "distill.teacher_workdir", "the teacher")


def _load_run(workdir: str, step, data_shape, num_classes: int, flag: str,
              who: str) -> generation.Restored:
  """A run's EMA model, checked against this run's data; errors name ``flag`` and ``who``."""
  try:
    run = restore_lib.restore(workdir=workdir, step=step)
  except ValueError as e:
    raise ValueError(f"{flag}: {e}") from None
  if tuple(run.data_shape) != tuple(data_shape):
    raise ValueError(f"{who} {run.checkpoint_dir} makes data of shape "
                     f"{tuple(run.data_shape)} but this run's data has shape {tuple(data_shape)}; "
                     f"use a run trained on the same data")
  if run.num_classes != num_classes:
    raise ValueError(f"{who} has {run.num_classes} classes (0: unconditional) but this run "
                     f"has {num_classes}; set training.conditional as it was trained")
  return run


def teacher_of(restored: generation.Restored) -> Teacher:
  return Teacher(restored.model_fn, restored.schedule, restored.parametrization)


def rounds(config: ml_collections.ConfigDict) -> list[tuple[int, int]]:
  """``(teacher_steps, student_steps)`` of each progressive-distillation round."""
  d = config.distill
  t = int(d.teacher_steps)
  s = int(d.student_steps) or max(t // 2, 1)
  n = int(round(math.log2(distillation.check_student_steps(t, s))))
  return [(t >> k, t >> (k + 1)) for k in range(n)]


def _follow_labels(c: ml_collections.ConfigDict, source: ml_collections.ConfigDict) -> None:
  """The student reads class labels exactly when the run it starts from did (its network has that run's
  label embedding, and a conditional teacher is queried with the student's labels)."""
  c.training.conditional = bool(source.training.get("conditional", False))


def with_teacher_model(config: ml_collections.ConfigDict,
                       teacher_workdir: str) -> ml_collections.ConfigDict:
  """``config`` with the teacher's model and diffusion sections and its ``training.conditional`` (a
  student that starts from its weights: progressive distillation, reflow) and the teacher workdir as an
  absolute path. A missing teacher config is left for ``load_teacher`` to report."""
  teacher_config = restore_lib.load_config(os.path.abspath(teacher_workdir)) if os.path.isdir(
      teacher_workdir) else None
  c = copy.deepcopy(config)
  with c.unlocked():
    if teacher_config is not None:
      c.model = copy.deepcopy(teacher_config.model)
      c.diffusion = copy.deepcopy(teacher_config.diffusion)
      _follow_labels(c, teacher_config)
    c.distill.teacher_workdir = os.path.abspath(teacher_workdir)
  return c


def with_init_model(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` for a run that starts from ``training.init_from``'s weights: that run's model section
  and ``training.conditional``; its diffusion section too, except for a consistency model, whose
  network is then read as that run's denoiser (``consistency.base_schedule`` /
  ``base_parametrization``; ``jdiff.consistency.precondition_over``). A missing config is left for
  ``load_init`` to report."""
  src = config.training.init_from
  init_config = restore_lib.load_config(os.path.abspath(src)) if os.path.isdir(src) else None
  c = copy.deepcopy(config)
  with c.unlocked():
    c.training.init_from = os.path.abspath(src)
    if init_config is None:
      return c
    c.model = copy.deepcopy(init_config.model)
    _follow_labels(c, init_config)
    if c.diffusion.parametrization == "consistency":
      if init_config.diffusion.parametrization == "consistency":
        raise ValueError(f"training.init_from: {src} is a consistency model; a consistency model "
                         f"starts from a denoiser (eps / x0 / v / flow / edm parametrization)")
      c.consistency.base_schedule = init_config.diffusion.schedule
      c.consistency.base_parametrization = init_config.diffusion.parametrization
      c.consistency.base_schedule_kwargs = copy.deepcopy(
          init_config.diffusion.get("schedule_kwargs", ml_collections.ConfigDict()))
    else:
      c.diffusion = copy.deepcopy(init_config.diffusion)
  return c


def load_init(config: ml_collections.ConfigDict, data_shape, num_classes: int) -> generation.Restored:
  """The EMA weights of ``training.init_from`` (checked as a teacher is)."""
  return _load_run(config.training.init_from, None, data_shape, num_classes, "training.init_from",
                   "the run to start from")


def round_config(config: ml_collections.ConfigDict, teacher_workdir: str, teacher_steps: int,
                 student_steps: int) -> ml_collections.ConfigDict:
  """One round's config: the teacher's model and diffusion sections (the student starts from its
  weights), this round's teacher and step counts, and DDIM sampling with ``student_steps`` steps."""
  c = with_teacher_model(config, teacher_workdir)
  with c.unlocked():
    c.distill.teacher_steps = teacher_steps
    c.distill.student_steps = student_steps
    c.sampling.sampler = "ddim"
    c.sampling.grid = "uniform_t"
    c.sampling.steps = student_steps
  return c


def train_rounds(config: ml_collections.ConfigDict, workdir: str, train_one: Callable, log=print):
  """Run every round (``train_one(round_config, round_workdir)``); returns the last round's result."""
  result, teacher = None, config.distill.teacher_workdir
  plan = rounds(config)
  for k, (t_steps, s_steps) in enumerate(plan, start=1):
    round_dir = os.path.join(workdir, f"round_{k}") if len(plan) > 1 else workdir
    if len(plan) > 1:
      log(f"progressive distillation round {k}/{len(plan)}: {t_steps} -> {s_steps} steps in {round_dir}")
    result = train_one(round_config(config, teacher, t_steps, s_steps), round_dir)
    teacher = round_dir
  return result
