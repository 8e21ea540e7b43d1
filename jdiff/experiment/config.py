"""Checks of a training config's values, with one clear message each (types and unknown keys are checked
by ml_collections when the config is parsed from the command line)."""
from __future__ import annotations

import math
from typing import Optional

import ml_collections

from jdiff import _checks
from jdiff import categorical, categorical_sampling
from jdiff import consistency, distillation, grids, losses, parametrization, sampling, schedules

_REQUIRED = {"data": ("name", "batch_size"), "model": ("name",), "diffusion": ("schedule",
             "parametrization"), "optim": ("lr",), "training": ("num_steps",), "sampling": ("sampler",)}
_POSITIVE_INT = [("data", "batch_size"), ("training", "num_steps"), ("training", "log_every"),
                 ("training", "ckpt_every"), ("training", "keep_checkpoints"), ("sampling", "steps"),
                 ("sampling", "num")]
PARAMETRIZATIONS = parametrization.PARAMETRIZATIONS + ("edm", "consistency")
OBJECTIVES = ("denoising", "consistency_training", "consistency_distillation",
              "progressive_distillation", "reflow", "reflow_distill")
CONSISTENCY_OBJECTIVES = ("consistency_training", "consistency_distillation")
DISTILLATION_OBJECTIVES = ("consistency_distillation", "progressive_distillation")
# Trained on (noise, sample) pairs drawn from a teacher before the first step (jdiff.training.reflow).
REFLOW_OBJECTIVES = ("reflow", "reflow_distill")
TEACHER_OBJECTIVES = DISTILLATION_OBJECTIVES + REFLOW_OBJECTIVES


def check_objective(objective: str, parametrization_name: str, learned_variance: bool) -> None:
  """The training objective, and the parametrization and variance it needs: one error each."""
  if objective not in OBJECTIVES:
    raise ValueError(f"unknown training.objective {objective!r}; valid objectives are: "
                     f"{', '.join(OBJECTIVES)}")
  if (objective in CONSISTENCY_OBJECTIVES) != (parametrization_name == "consistency"):
    raise ValueError("consistency training/distillation and the consistency parametrization go "
                     "together: set training.objective='consistency_training' (or "
                     "'consistency_distillation') and diffusion.parametrization='consistency' "
                     "(configs/fashion_mnist_ict.py, configs/fashion_mnist_cd.py), or neither")
  if objective != "denoising" and learned_variance:
    raise ValueError(f"training.objective={objective!r} has no learned variance: set "
                     f"model.learned_variance=False")


WEIGHTINGS = losses.WEIGHTINGS
TIME_SAMPLINGS = losses.TIME_SAMPLINGS
TASKS = ("diffusion", "classifier")
# The forward process: Gaussian noise on continuous data, or a categorical process on tokens.
PROCESSES = ("gaussian",) + categorical.KINDS
PARALLELISMS = ("pmap", "fsdp")


def task_of(c) -> str:
  """``config.task``: ``diffusion`` (a denoiser; the default, also for configs written before the field
  existed) or ``classifier`` (a noise-conditional classifier for classifier guidance)."""
  return c.get("task", "diffusion")


def process_of(c) -> str:
  """``config.diffusion.process``: ``gaussian`` (continuous data; the default, also for configs written
  before the field existed), or a categorical process on tokens, ``absorbing`` or ``uniform``
  (``jdiff.categorical``)."""
  return c.diffusion.get("process", "gaussian")


def is_categorical(c) -> bool:
  return process_of(c) != "gaussian"


def parallelism_of(c) -> str:
  """``config.training.parallelism``: ``pmap`` (replicated state, the default, also for configs written
  before the field existed) or ``fsdp`` (sharded state, ``jdiff.training.sharded``)."""
  return c.training.get("parallelism", "pmap")


def explicit_mesh_devices(c) -> Optional[int]:
  """``data * fsdp`` when the config asks for FSDP on an explicit mesh (no 0 to infer), else ``None``:
  the device count a CPU-only host is split into for it."""
  mesh = tuple(c.training.get("mesh", (0, 0)) or (0, 0))
  if parallelism_of(c) != "fsdp" or len(mesh) != 2 or not all(
      isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in mesh):
    return None
  return mesh[0] * mesh[1]


def validate(c: ml_collections.ConfigDict) -> None:
  for section, keys in _REQUIRED.items():
    if section not in c:
      raise ValueError(f"config has no section {section!r}; start from configs/base.py")
    for k in keys:
      if k not in c[section]:
        raise ValueError(f"config.{section} has no key {k!r}; start from configs/base.py")
  for section, key in _POSITIVE_INT:
    if key in c[section]:
      _checks.positive_int(c[section][key], f"config.{section}.{key}")
  if c.training.get("sample_every", 0) < 0:
    raise ValueError("config.training.sample_every must be >= 0 (0 = never)")
  if c.data.get("kind", ""):
    _checks.choice("data kind", c.data.kind, ("image", "vector", "points", "signal", "tokens"))
  if c.data.get("seq_length", 0):
    _checks.positive_int(c.data.seq_length, "config.data.seq_length")
  _checks.choice("task", task_of(c), TASKS)
  if task_of(c) == "classifier":
    if c.model.name != "classifier":
      raise ValueError(f"task 'classifier' trains model 'classifier', not {c.model.name!r}; start from "
                       f"configs/fashion_mnist_classifier.py")
    if c.training.get("conditional", False):
      raise ValueError("training.conditional applies to diffusion models; a classifier always reads the "
                       "labels: set --config.training.conditional=False")
    if c.get("eval", {}).get("every", 0):
      raise ValueError("eval.every evaluates samples of a diffusion model; a classifier has none: set "
                       "--config.eval.every=0")
  elif c.model.name == "classifier":
    raise ValueError("model 'classifier' is a noise-conditional classifier, not a denoiser: set "
                     "config.task='classifier' (see configs/fashion_mnist_classifier.py)")
  _checks.choice("process", process_of(c), PROCESSES)
  if is_categorical(c):
    _validate_categorical(c)
  else:
    _checks.choice("parametrization", c.diffusion.parametrization, PARAMETRIZATIONS)
    _checks.choice("weighting", c.diffusion.get("weighting", "simple"), WEIGHTINGS)
    _checks.choice("time sampling", c.diffusion.get("time_sampling", "uniform"), TIME_SAMPLINGS)
    if c.diffusion.parametrization in ("edm", "consistency") and c.diffusion.get("sigma_data", 0.5) <= 0:
      raise ValueError("config.diffusion.sigma_data must be > 0 for EDM / consistency preconditioning")
    if task_of(c) == "diffusion":
      check_objective(c.training.get("objective", "denoising"), c.diffusion.parametrization,
                      bool(c.model.get("learned_variance", False)))
    # Names and ranges that are otherwise only read after training has started (the first sample grid)
    # or after the workdir is set up: fail before anything is written.
    schedule = schedules.get_schedule(c.diffusion.schedule,
                                      **dict(c.diffusion.get("schedule_kwargs", None) or {}))
    if c.diffusion.parametrization == "consistency":
      consistency.check_schedule(schedule)
    cc = c.get("consistency", None)
    if cc is not None and cc.get("base_schedule", ""):
      if c.diffusion.parametrization != "consistency":
        raise ValueError("consistency.base_schedule describes the network of a consistency model: set "
                         "diffusion.parametrization='consistency' or leave it empty")
      schedules.get_schedule(cc.base_schedule, **dict(cc.get("base_schedule_kwargs", None) or {}))
      if cc.get("base_parametrization", "") == "consistency":
        raise ValueError("consistency.base_parametrization must be a denoiser's (eps, x0, v, score, flow "
                         "or edm), got 'consistency'")
      if cc.get("base_parametrization", "") != "edm":
        parametrization.check_parametrization(cc.get("base_parametrization", "") or "eps")
    sampling.check_sampler_schedule(sampling.get_sampler(c.sampling.sampler), schedule)
    _check_sampler_hparams(c.sampling.get("hparams", None) or {})
    grid = _checks.choice("grid", c.sampling.get("grid", "uniform_logsnr"), grids.GRIDS)
    try:  # the sampling grid itself: a schedule/grid/steps combination float32 cannot resolve fails now
      grids.get_grid(grid, schedule, c.sampling.steps)
    except ValueError as e:
      raise ValueError(f"config.sampling: the {grid!r} grid of {c.sampling.steps} steps on the "
                       f"{c.diffusion.schedule!r} schedule: {e}") from None
  _in_range(c.optim.lr, "config.optim.lr", 0.0, math.inf, "> 0", lo_open=True)
  if "ema_decay" in c.training:
    _in_range(c.training.ema_decay, "config.training.ema_decay", 0.0, 1.0, "in [0, 1)",
              hi_open=True)
  if c.training.get("ema_power", 0.0):
    _in_range(c.training.ema_power, "config.training.ema_power", 0.0, math.inf, ">= 0 (0: off)",
              hi_open=True)
  if "cond_drop_prob" in c.training:
    _in_range(c.training.cond_drop_prob, "config.training.cond_drop_prob", 0.0, 1.0, "in [0, 1]")
  _checks.choice("parallelism", parallelism_of(c), PARALLELISMS)
  objective = c.training.get("objective", "denoising")
  if objective in TEACHER_OBJECTIVES:
    d = c.get("distill", {})
    if not d.get("teacher_workdir", ""):
      raise ValueError(f"training.objective={objective!r} learns from a trained model: pass "
                       f"--config.distill.teacher_workdir=<the teacher's train.py workdir>")
    if parallelism_of(c) != "pmap":
      raise ValueError(f"training.objective={objective!r} runs with training.parallelism='pmap' only")
    if objective == "progressive_distillation":
      distillation.check_student_steps(d.get("teacher_steps", 0), d.get("student_steps", 0) or max(
          d.get("teacher_steps", 0) // 2, 1))
    if objective == "consistency_distillation":
      _checks.int_at_least(d.get("num_levels", 18), "config.distill.num_levels", 2)
      _in_range(d.get("target_ema", 0.95), "config.distill.target_ema", 0.0, 1.0, "in [0, 1)",
                hi_open=True)
    if objective in REFLOW_OBJECTIVES:
      r = c.get("reflow", {})
      num = _checks.int_at_least(r.get("num_pairs", 0), "config.reflow.num_pairs", 1)
      if num < c.data.batch_size:
        raise ValueError(f"config.reflow.num_pairs={num} is fewer than one batch "
                         f"(data.batch_size={c.data.batch_size}); draw at least that many pairs")
      _checks.int_at_least(r.get("steps", 0), "config.reflow.steps", 0)
      _checks.int_at_least(r.get("batch_size", 250), "config.reflow.batch_size", 1)
      if not 0 <= r.get("seed", 0) < 2 ** 31:
        raise ValueError(f"config.reflow.seed must be in [0, 2^31), got {r.get('seed')!r}")
      if r.get("sampler", ""):
        _checks.choice("config.reflow.sampler", r.sampler, sampling.SAMPLER_NAMES)
      if r.get("grid", ""):
        _checks.choice("config.reflow.grid", r.grid, grids.GRIDS)
      if c.data.get("random_flip", False):
        raise ValueError("reflow trains on (noise, sample) pairs, which a flip would uncouple: set "
                         "--config.data.random_flip=False")
  mesh = c.training.get("mesh", (0, 0))
  if (not isinstance(mesh, (tuple, list)) or len(mesh) != 2 or
      not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in mesh)):
    raise ValueError(f"config.training.mesh must be two integers >= 0 (data, fsdp; 0 = inferred), got "
                     f"{mesh!r}; e.g. --config.training.mesh='(1, 4)'")


def _validate_categorical(c: ml_collections.ConfigDict) -> None:
  """The diffusion and sampling sections of a categorical (token) model, one error each."""
  kind = process_of(c)
  if task_of(c) != "diffusion":
    raise ValueError(f"diffusion.process={kind!r} trains a denoiser of tokens; a classifier of tokens "
                     f"is not supported: set config.task='diffusion'")
  objective = c.training.get("objective", "denoising")
  if objective != "denoising":
    raise ValueError(f"training.objective={objective!r} is for Gaussian diffusion; a categorical "
                     f"process trains with its own loss (diffusion.loss = elbo or vlb): set "
                     f"--config.training.objective=denoising")
  if c.diffusion.parametrization != "x0":
    raise ValueError(f"a categorical process is trained to predict the clean tokens' distribution: set "
                     f"--config.diffusion.parametrization=x0 (got {c.diffusion.parametrization!r})")
  if c.model.name != "token_transformer":
    raise ValueError(f"diffusion.process={kind!r} needs a model over tokens: set "
                     f"--config.model.name=token_transformer (got {c.model.name!r})")
  _checks.choice("categorical schedule", c.diffusion.schedule, categorical.SCHEDULES)
  loss = _checks.choice("categorical loss", c.diffusion.get("loss", "elbo"), categorical.LOSSES)
  if loss == "elbo" and kind != "absorbing":
    raise ValueError(f"diffusion.loss='elbo' (continuous time) is for the absorbing process; for "
                     f"{kind!r} use --config.diffusion.loss=vlb (D3PM's bound in discrete time)")
  if loss == "vlb":
    _checks.int_at_least(c.diffusion.get("num_steps", 1000), "config.diffusion.num_steps", 1)
    _in_range(c.diffusion.get("aux_weight", 0.0), "config.diffusion.aux_weight", 0.0, math.inf, ">= 0")
  if c.diffusion.get("time_sampling", "uniform") not in ("uniform", "low_discrepancy"):
    raise ValueError(f"a categorical process draws times uniform or low_discrepancy, got "
                     f"diffusion.time_sampling={c.diffusion.time_sampling!r}")
  sampler = _checks.choice("categorical sampler", c.sampling.sampler, categorical_sampling.SAMPLERS)
  if sampler == "unmask" and kind != "absorbing":
    raise ValueError(f"sampler 'unmask' reveals masked tokens: it needs the absorbing process; use "
                     f"--config.sampling.sampler=ancestral for {kind!r}")
  if c.data.get("random_flip", False):
    raise ValueError("random_flip flips images; tokens cannot be flipped: set "
                     "--config.data.random_flip=False")


def _check_sampler_hparams(by_sampler) -> None:
  """``sampling.hparams.<sampler>.<name>``: known samplers, their hyperparameters, finite numbers."""
  for name, hp in by_sampler.items():
    if name not in sampling.SAMPLERS or not hasattr(hp, "items"):
      raise ValueError(f"config.sampling.hparams.{name}: hyperparameters are grouped by sampler name "
                       f"(e.g. sampling.hparams.heun.S_churn); valid samplers are: "
                       f"{', '.join(sampling.SAMPLER_NAMES)}")
    for k, v in hp.items():
      if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"config.sampling.hparams.{name}.{k} must be a finite number, got {v!r}")
    try:
      sampling.resolve_hparams(sampling.get_sampler(name), dict(hp.items()))
    except ValueError as e:
      raise ValueError(f"config.sampling.hparams.{name}: {e}") from None


def _in_range(v, name: str, lo: float, hi: float, text: str, lo_open: bool = False,
              hi_open: bool = False) -> None:
  ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
  if not (ok and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)):
    raise ValueError(f"{name} must be a number {text}, got {v!r}")
