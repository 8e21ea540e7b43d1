"""Sampling settings and their one resolution against a model.

Every sample a user or a training run draws (``sample.py``, ``eval.py``, the training loop's sample grids
and periodic evaluations) goes through ``resolve``: the config's ``sampling`` section fills what the
``Settings`` leave open (sampler, steps, grid, clipping of ``x0_hat``), the DDPM variance follows the
model (learned if it has one), and ``check_for_model`` refuses what the model cannot do, each with one
clear ``ValueError`` before anything is compiled.
"""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from typing import Optional

import numpy as np

from jdiff import _checks
from jdiff import categorical_sampling
from jdiff import conditions as conditions_lib
from jdiff import editing
from jdiff import grid_fit
from jdiff import grids
from jdiff import sampling
from jdiff.generation.restore import Restored

MODES = ("sample", "sdedit", "inpaint")
DEFAULT_BATCH = 64
SDEDIT_STRENGTH = 0.5  # default strength without a mask; with a mask (inpainting) the default is 1
DDPM_VARIANCES = ("small", "large", "learned")


@dataclasses.dataclass
class Settings:
  """Everything that defines a sampling run besides the model and the editing inputs."""
  num: int = 64
  seed: int = 0
  sampler: Optional[str] = None  # None: the config's sampling.sampler
  steps: Optional[int] = None  # None: the config's sampling.steps
  grid: Optional[str] = None  # a grid name or a grid FILE (tools/fit_grid.py); None: the config's
  start_index: int = 0
  batch_size: Optional[int] = None  # global batch per call (all devices); default min(num, 64)
  guidance: Optional[float] = None  # classifier-free guidance scale w (None: no guidance)
  classifier_scale: Optional[float] = None  # classifier guidance scale s (with a classifier; None: 1)
  labels: Optional[tuple] = None  # class labels, sample i gets labels[i % len(labels)]
  hparams: dict = dataclasses.field(default_factory=dict)  # traced sampler hyperparameters (eta, ...)
  ddpm_variance: Optional[str] = None  # ddpm's variance option (default: learned if the model has one)
  strength: Optional[float] = None  # editing: the time the input is noised to
  resample: int = 1  # RePaint resampling count (1 = plain replacement)
  jump_length: int = 1  # RePaint jump length
  save_noise: bool = False  # also return the starting point x at ts[0] of every sample
  clip_x0: Optional[bool] = None  # clip x0_hat to [-1, 1] at every step (None: config's sampling.clip_x0
  #                                 for image data)
  prompts: Optional[tuple] = None  # text-to-image: sample i gets prompts[i % len] (None: the config's)
  threshold: Optional[float] = None  # Imagen's dynamic thresholding at this percentile (replaces clip_x0)

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["labels"] = list(self.labels) if self.labels is not None else None
    d["prompts"] = list(self.prompts) if self.prompts is not None else None
    return d


def check_settings(s: Settings) -> None:
  """Checks that need no model (so they fail before a checkpoint is read); ``sampler``, ``steps`` and
  ``grid`` may still be ``None`` here (then ``resolve`` takes them from the model's config)."""
  _checks.int_at_least(s.num, "num", 1)
  if s.steps is not None:
    _checks.int_at_least(s.steps, "steps", 1)
  _checks.int_at_least(s.start_index, "start_index", 0)
  if not 0 <= int(s.seed) < 2 ** 31:
    raise ValueError(f"seed must be in [0, 2^31), got {s.seed!r}")
  if s.start_index + s.num > 2 ** 31 - 1:
    raise ValueError("start_index + num must stay below 2^31 (sample indices are int32)")
  if s.sampler is not None and s.sampler not in categorical_sampling.SAMPLERS + sampling.SAMPLER_NAMES:
    raise ValueError(f"unknown sampler {s.sampler!r}; valid samplers are: "
                     f"{', '.join(sorted(sampling.SAMPLER_NAMES))} (token models: "
                     f"{', '.join(categorical_sampling.SAMPLERS)})")
  if s.grid is not None:
    g = grid_file(s.grid)
    if g is not None:
      if s.steps is not None and s.steps != g.steps:
        raise ValueError(f"grid file {g.path} has {g.steps} steps but steps={s.steps} was asked; drop "
                         f"--steps or pass --steps={g.steps}")
      if s.strength is not None:
        raise ValueError(f"grid file {g.path} fixes every time of the grid from t=1; editing (--input, "
                         f"--strength) needs a named grid (uniform_t, uniform_logsnr, karras)")
  if s.batch_size is not None:
    _checks.int_at_least(s.batch_size, "batch_size", 1)
  if s.guidance is not None and not math.isfinite(float(s.guidance)):
    raise ValueError(f"guidance must be a finite number, got {s.guidance!r}")
  if s.classifier_scale is not None and not math.isfinite(float(s.classifier_scale)):
    raise ValueError(f"classifier_scale must be a finite number, got {s.classifier_scale!r}")
  if s.labels is not None and len(s.labels) == 0:
    raise ValueError("labels is empty; pass comma-separated class labels such as 0,1,2")
  if s.prompts is not None:
    if isinstance(s.prompts, str) or len(s.prompts) == 0:
      raise ValueError("prompts must be a non-empty list of texts, e.g. ('a bag', 'a sneaker')")
    blank = [p for p in s.prompts if not isinstance(p, str) or not p.strip()]
    if blank:
      raise ValueError(f"every prompt must be a non-empty text, got {blank[0]!r}")
  if s.threshold is not None:
    t = s.threshold
    if not isinstance(t, (int, float, np.floating)) or not math.isfinite(float(t)) or not 0 < t <= 1:
      raise ValueError(f"threshold is the percentile of dynamic thresholding, a fraction in (0, 1] such as "
                       f"0.995 (not 99.5), got {t!r}")
  if s.ddpm_variance is not None:
    if s.sampler != "ddpm":
      raise ValueError(f"ddpm_variance only applies to --sampler=ddpm, not {s.sampler!r}")
    _checks.choice("ddpm variance", s.ddpm_variance, DDPM_VARIANCES)
  if s.strength is not None:
    editing.check_strength(s.strength)
  _checks.int_at_least(s.resample, "resample", 1)
  _checks.int_at_least(s.jump_length, "jump_length", 1)
  if s.resample > 1 and s.steps is not None and s.jump_length > s.steps:
    raise ValueError(f"jump_length={s.jump_length} is longer than the grid (steps={s.steps}); use "
                     f"jump_length <= steps")
  if s.sampler == "ode" and s.hparams:
    raise ValueError(f"sampler 'ode' has no hyperparameters, got {sorted(s.hparams)}")
  for k, v in s.hparams.items():
    if not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(float(v)):
      raise ValueError(f"hyperparameter {k} must be a finite number, got {v!r}")


def config_hparams(config, sampler: str) -> dict:
  """The hyperparameters the config records for ``sampler`` (``sampling.hparams.<sampler>``), as floats."""
  by_sampler = config.get("sampling", {}).get("hparams", {}) or {}
  return {k: float(v) for k, v in (by_sampler.get(sampler, None) or {}).items()}


def resolve(s: Settings, restored: Restored, *, classifier: Optional[Restored] = None,
            mode: str = "sample") -> Settings:
  """``s`` with every open choice made for this model: ``sampler``, ``steps`` and ``grid`` from the
  config's ``sampling`` section (with a grid file: its steps and sampler, a warning if another sampler
  is asked for); the hyperparameters the config records for the sampler (``sampling.hparams``) under
  those of ``s``; ``clip_x0`` from ``sampling.clip_x0`` for image data (off otherwise);
  ``ddpm_variance`` learned if the model learned one (else small); ``classifier_scale`` 1 with a
  classifier; the SDEdit strength. Checked before and after (``check_settings``)."""
  check_settings(s)
  _checks.choice("mode", mode, MODES)
  c = restored.config.get("sampling", {})
  if restored.process is not None:  # a categorical (token) model: its samplers on a uniform t grid
    if s.grid is not None and s.grid != "uniform_t":
      raise ValueError(f"a token model samples on the uniform t grid; drop --grid={s.grid}")
    s = dataclasses.replace(s, sampler=s.sampler or c.get("sampler", "ancestral"),
                            steps=s.steps or c.get("steps", 128), grid="uniform_t", clip_x0=False)
    check_settings(s)
    return s
  clip = s.clip_x0
  if clip is None:
    clip = bool(c.get("clip_x0", True)) and restored.data_kind == "image"
  sampler = s.sampler or c.get("sampler", "dpmpp_2m")
  steps, grid = s.steps, s.grid or c.get("grid", "uniform_logsnr")
  g = grid_file(grid)
  if g is not None:  # a grid file: its steps and sampler unless given
    grid, steps = os.path.abspath(grid), steps or g.steps
    if s.sampler is None:
      sampler = g.sampler
    elif s.sampler != g.sampler:
      warnings.warn(f"grid file {g.path} was fit for the sampler {g.sampler!r}, sampling with "
                    f"{s.sampler!r}: the grid is valid but not optimized for it", stacklevel=2)
  variance = s.ddpm_variance
  if sampler == "ddpm" and variance is None:
    variance = "learned" if restored.learned_variance else "small"
  scale = s.classifier_scale
  if classifier is not None and scale is None:
    scale = 1.0
  strength = s.strength
  if mode == "sdedit" and strength is None:
    strength = SDEDIT_STRENGTH
  hparams = {**config_hparams(restored.config, sampler), **s.hparams}
  s = dataclasses.replace(s, sampler=sampler, steps=steps or c.get("steps", 20), grid=grid,
                          clip_x0=clip, ddpm_variance=variance, classifier_scale=scale, strength=strength,
                          hparams=hparams)
  check_settings(s)
  return s


def resolve_sampler(s: Settings, restored: Restored):
  """The ``Sampler`` of resolved settings ``s``, checked against the model (for a token model: the
  name of its categorical sampler, ``jdiff.categorical_sampling.SAMPLERS``)."""
  token_sampler = s.sampler in categorical_sampling.SAMPLERS
  if restored.process is not None:
    if not token_sampler:
      raise ValueError(f"sampler {s.sampler!r} integrates Gaussian diffusion; this model is a "
                       f"{restored.process.kind} categorical process over tokens: use one of "
                       f"{', '.join(categorical_sampling.SAMPLERS)}")
    if s.sampler == "unmask" and restored.process.kind != "absorbing":
      raise ValueError(f"sampler 'unmask' reveals masked tokens: it needs the absorbing process, but "
                       f"this model's is {restored.process.kind!r}; use --sampler=ancestral")
    return s.sampler
  if token_sampler:
    raise ValueError(f"sampler {s.sampler!r} is for categorical (token) models; this model is Gaussian: "
                     f"use one of {', '.join(sampling.SAMPLER_NAMES)}")
  opts = {}
  if s.sampler == "ddpm":
    opts["variance"] = s.ddpm_variance or "small"
    if opts["variance"] == "learned" and not restored.learned_variance:
      raise ValueError("ddpm_variance='learned' needs a model trained with a learned variance "
                       "(model.learned_variance=True); use small or large")
  sampler = sampling.get_sampler(s.sampler, **opts)
  trained_as = restored.config.get("diffusion", {}).get("parametrization")
  if s.sampler == "consistency" and trained_as != "consistency":
    raise ValueError(f"sampler 'consistency' needs a consistency model (diffusion.parametrization="
                     f"'consistency'), but this model is a {trained_as!r} diffusion model; use another "
                     f"sampler (e.g. unipc)")
  sampling.check_sampler_schedule(sampler, restored.schedule)
  return sampler


def check_classifier(s: Settings, restored: Restored, classifier: Optional[Restored]) -> None:
  """Checks of classifier guidance: ``classifier`` must be a noise-conditional classifier (restored
  with ``task="classifier"``) of the diffusion model's data shape (and classes, if the model is
  conditional too)."""
  if classifier is None:
    if s.classifier_scale is not None:
      raise ValueError("classifier_scale needs a classifier (--classifier=WORKDIR of a classifier "
                       "trained with task 'classifier'); drop --classifier_scale")
    return
  if getattr(classifier.model, "task", "diffusion") != "classifier":
    raise ValueError(f"{classifier.checkpoint_dir} is not a classifier; pass the workdir of one trained "
                     f"with task 'classifier' (e.g. configs/fashion_mnist_classifier.py)")
  if tuple(classifier.data_shape) != tuple(restored.data_shape):
    raise ValueError(f"the classifier {classifier.checkpoint_dir} was trained on data of shape "
                     f"{tuple(classifier.data_shape)} but the diffusion model makes data of shape "
                     f"{tuple(restored.data_shape)}; use a classifier trained on the same data")
  if restored.num_classes and restored.num_classes != classifier.num_classes:
    raise ValueError(f"the classifier has {classifier.num_classes} classes but the conditional model "
                     f"has {restored.num_classes}; use a classifier of the same labels")


def label_kind(restored: Restored, classifier: Optional[Restored] = None):
  """The ``Label`` kind that ``--labels`` address: the model's, else the guiding classifier's."""
  if "label" in restored.conditions:
    return restored.conditions["label"]
  if classifier is not None:
    return conditions_lib.Label(classifier.num_classes)
  return None


def check_for_model(s: Settings, restored: Restored, x_known=None, mask=None,
                    classifier: Optional[Restored] = None) -> dict:
  """Checks of resolved settings against the model (and the classifier of classifier guidance);
  returns the resolved sampler hyperparameters (numpy scalars)."""
  if restored.process is not None and classifier is not None:
    raise ValueError("classifier guidance needs a Gaussian model (a gradient of log p(y | x_t)); this "
                     "is a token model: drop --classifier")
  check_classifier(s, restored, classifier)
  kind = label_kind(restored, classifier)
  if s.labels is not None:
    if kind is None:
      raise ValueError("labels were given but the model is unconditional (trained with "
                       "training.conditional=False) and there is no classifier to guide it; drop "
                       "--labels or pass --classifier")
    bad = [l for l in s.labels if not 0 <= int(l) < kind.num_classes]
    if bad:
      what = "model" if "label" in restored.conditions else "classifier"
      raise ValueError(f"label {bad[0]} is out of range: the {what} has {kind.num_classes} classes, "
                       f"labels must be in [0, {kind.num_classes - 1}]")
  if s.prompts is not None:
    if "caption" not in restored.conditions:
      raise ValueError("prompts were given but the model is not conditioned on captions (train it with "
                       "training.text_conditional=True on a captioned dataset); drop --prompt")
    restored.conditions["caption"].tokens(s.prompts)  # an unknown word or too long a prompt: one error
  if s.guidance is not None:
    if not restored.conditions.droppable:
      raise ValueError("guidance needs a conditional model (labels or captions) but this one has no "
                       "condition to drop; drop --guidance (an unconditional model takes classifier "
                       "guidance: --classifier)")
    if restored.cond_drop_prob <= 0:
      raise ValueError("guidance needs a model trained with condition dropout (training.cond_drop_prob > "
                       "0) so that it knows the unconditional (null-condition) case; drop --guidance")
  if s.threshold is not None and restored.process is not None:
    raise ValueError("dynamic thresholding (threshold) clips predicted images; this is a token model: "
                     "drop --threshold")
  sampler = resolve_sampler(s, restored)
  if restored.process is not None:
    return _check_tokens(s, restored, x_known, mask)
  g = grid_file(s.grid)
  if g is not None:
    grid_fit.check_grid_file(g, schedule=restored.schedule, model_hash=model_hash(restored),
                             steps=s.steps)
  if mask is not None and x_known is None:
    raise ValueError("a mask needs an input (--input) to inpaint")
  if s.strength is not None and x_known is None:
    raise ValueError("strength applies to editing an input; pass --input (and --mask to inpaint)")
  if s.resample > 1 and mask is None:
    raise ValueError("RePaint resampling (resample > 1) needs --mask (the known region)")
  if x_known is not None:
    shape = restored.data_shape
    xs = tuple(np.shape(x_known))
    if xs[1:] != shape:
      raise ValueError(f"input has shape {xs[1:]} per example but the model makes data of shape {shape}; "
                       f"give an input of that shape")
    _checks.check_finite(x_known, "input")
    if mask is not None:
      ms = tuple(np.shape(mask))
      if len(ms) != len(xs):
        raise ValueError(f"mask shape {ms} does not match the input of shape {xs}; give it the same "
                         f"axes, a leading one for the examples (size-1 axes broadcast)")
      if ms[0] not in (1, xs[0]):
        raise ValueError(f"mask holds {ms[0]} masks for {xs[0]} inputs; give one mask or one per input")
      editing.check_mask(np.asarray(mask)[:1], np.asarray(x_known)[:1])
  hp = sampling.resolve_hparams(sampler, s.hparams)
  return {k: np.asarray(v) for k, v in hp.items()}


def _check_tokens(s: Settings, restored: Restored, x_known, mask) -> dict:
  """The settings of a token model: known tokens (a prefix or any infilling pattern: ``x_known``
  ``[M, L]`` token ids, ``mask`` ``[1 or M, L]``, 1 = known) and the one hyperparameter,
  ``temperature`` of the clean-token distribution (default 1)."""
  if s.strength is not None or s.resample > 1:
    raise ValueError("strength and RePaint resampling edit Gaussian models; token models fill known "
                     "tokens (--prefix): drop --strength / --resample")
  if (x_known is None) != (mask is None):
    raise ValueError("known tokens need both the tokens and their mask (1 = known)")
  if x_known is not None:
    length, vocab = restored.data_shape[0], len(restored.vocab)
    xs, ms = np.shape(x_known), np.shape(mask)
    if len(xs) != 2 or xs[1] != length:
      raise ValueError(f"known tokens must have shape [M, {length}] (the model's sequence length), got "
                       f"{xs}")
    if len(ms) != 2 or ms[1] != length or ms[0] not in (1, xs[0]):
      raise ValueError(f"the mask of known tokens must have shape [1 or {xs[0]}, {length}], got {ms}")
    known = np.asarray(x_known)[np.broadcast_to(np.asarray(mask) > 0.5, xs)]
    if known.size and (known.min() < 0 or known.max() >= vocab):
      raise ValueError(f"known token ids must lie in [0, {vocab}) (the model's vocabulary)")
  unknown = sorted(set(s.hparams) - {"temperature"})
  if unknown:
    raise ValueError(f"token samplers take the hyperparameter temperature only, got {unknown}")
  temperature = float(s.hparams.get("temperature", 1.0))
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  return {"temperature": np.asarray(temperature, np.float32)}


def batch_layout(num: int, batch_size: Optional[int], num_devices: int) -> tuple[int, int]:
  """``(global batch, number of batches)``; the global batch is a multiple of ``num_devices``."""
  if batch_size is None:
    batch_size = min(num, DEFAULT_BATCH)
    batch_size = -(-batch_size // num_devices) * num_devices
  if batch_size % num_devices:
    raise ValueError(f"batch_size {batch_size} is not divisible by the {num_devices} local devices; use "
                     f"a multiple of {num_devices}")
  return batch_size, -(-num // batch_size)


def grid_file(grid: Optional[str]) -> Optional[grid_fit.GridFile]:
  """``None`` for a grid name (or ``None``); otherwise the grid file ``grid``, read and validated
  (``jdiff.grid_fit.read_grid_file``: one ``ValueError`` for a missing, malformed or unknown one)."""
  if grid is None or grid in grids.GRIDS:
    return None
  if not os.path.isfile(grid):
    raise ValueError(f"unknown grid {grid!r}; valid grids are: {', '.join(sorted(grids.GRIDS))}, or a "
                     f"grid file (JSON written by tools/fit_grid.py), but there is no such file")
  return grid_fit.read_grid_file(grid)


def model_hash(restored: Restored) -> str:
  """What a grid file must name to be used with this model: ``params_hash`` of its parameters."""
  if restored.params is None:
    raise ValueError("a grid file needs a model with parameters to check it was fit for them")
  return grid_fit.params_hash(restored.params)


def grid_times(s: Settings, restored: Restored) -> np.ndarray:
  """The time grid of resolved settings ``s`` (ending at the SDEdit strength when editing): a named
  grid, or the times of a grid file (checked against the model by ``check_for_model``)."""
  if restored.process is not None:
    return np.asarray(categorical_sampling.time_grid(s.steps), np.float32)
  g = grid_file(s.grid)
  if g is not None:
    if s.strength is not None or g.steps != s.steps:
      raise ValueError(f"grid file {g.path} has {g.steps} steps from t=1; settings ask for "
                       f"{s.steps} steps" + ("" if s.strength is None else f" from t={s.strength}"))
    return np.asarray(g.ts, np.float32)
  kwargs = {"t_max": float(s.strength)} if s.strength is not None else {}
  return np.asarray(grids.get_grid(s.grid, restored.schedule, s.steps, **kwargs), np.float32)
