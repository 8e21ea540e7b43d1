"""Sampling from a restored model (``sample.py``): one compiled program, ``pmap``-ped over the local
devices, run over fixed-shape batches of global sample indices.

* **One program.** The whole sampling loop (noise, every step of the grid, guidance, editing) is one
  ``lax.scan`` inside one ``pmap``; it is compiled once ahead of time (``lower().compile()``, timed on
  its own) for a given model, sampler, step count, batch shape and structure (guided or not, editing
  mode, RePaint schedule, ``save_noise``, classifier). Seed, guidance scales (classifier-free ``w``,
  classifier ``s``), sampler hyperparameters (``eta``, churn, ...), time-grid values (hence the grid name
  and the SDEdit strength), labels and inputs are arguments: changing them never recompiles.
* **Guidance.** Classifier-free (Ho & Salimans 2022) for class-conditional models trained with label
  dropout; classifier guidance (Dhariwal & Nichol 2021) with a noise-conditional classifier restored with
  ``restore.restore(..., task="classifier")``, for any model of the same data shape.
* **Reproducible.** Batches are ``[devices, per_device]`` blocks of consecutive global indices
  ``start_index, start_index + 1, ...``; the prior noise of sample ``i`` is drawn from
  ``fold_in(PRNGKey(seed), i)`` and its per-step noise from ``fold_in(fold_in(key, i), step)``
  (``jdiff.sampling``), and labels and editing inputs are picked by ``i`` too. So sample ``i`` does not
  depend on the batch size, the device count or how a run is split with ``start_index``: its noise is
  bit-identical, its value bit-identical for the same per-device batch layout and otherwise equal up to
  float32 rounding (kernels may sum in another order at another batch size). A last, partial batch is
  padded with the next indices (discarded), so it does not change the shapes.
* The ``ode`` sampler solves each example's probability-flow ODE on its own (``vmap`` over examples), so
  its adaptive steps, too, do not depend on the batch (``jdiff.ode`` treats a batch as one system).
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import _checks
from jdiff import editing
from jdiff import grids
from jdiff import guidance as guidance_lib
from jdiff import ode
from jdiff import samplers as samplers_lib
from jdiff import sampling
from jdiff.parametrization import make_denoiser
from jdiff.training.restore import Restored

SAMPLER_NAMES = sampling.SAMPLER_NAMES
MODES = ("sample", "sdedit", "inpaint")
DEFAULT_BATCH = 64
SDEDIT_STRENGTH = 0.5  # default strength without a mask; with a mask (inpainting) the default is 1


@dataclasses.dataclass
class Settings:
  """Everything that defines a sampling run besides the model and the editing inputs."""
  num: int = 64
  seed: int = 0
  sampler: Optional[str] = None  # None: the config's sampling.sampler
  steps: Optional[int] = None  # None: the config's sampling.steps
  grid: Optional[str] = None  # None: the config's sampling.grid
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
  #                                 for image data, as train.py's sample grids)

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["labels"] = list(self.labels) if self.labels is not None else None
    return d


def _int(v, name: str, lo: int) -> int:
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
    raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
  return int(v)


def check_settings(s: Settings) -> None:
  """Checks that need no model (so they fail before a checkpoint is read); ``sampler``, ``steps`` and
  ``grid`` may still be ``None`` here (then they come from the model's config, see ``with_defaults``)."""
  _int(s.num, "num", 1)
  if s.steps is not None:
    _int(s.steps, "steps", 1)
  _int(s.start_index, "start_index", 0)
  if not 0 <= int(s.seed) < 2 ** 31:
    raise ValueError(f"seed must be in [0, 2^31), got {s.seed!r}")
  if s.start_index + s.num > 2 ** 31 - 1:
    raise ValueError("start_index + num must stay below 2^31 (sample indices are int32)")
  if s.sampler is not None:
    _checks.choice("sampler", s.sampler, SAMPLER_NAMES)
  if s.grid is not None:
    _checks.choice("grid", s.grid, grids.GRIDS)
  if s.batch_size is not None:
    _int(s.batch_size, "batch_size", 1)
  if s.guidance is not None and not math.isfinite(float(s.guidance)):
    raise ValueError(f"guidance must be a finite number, got {s.guidance!r}")
  if s.classifier_scale is not None and not math.isfinite(float(s.classifier_scale)):
    raise ValueError(f"classifier_scale must be a finite number, got {s.classifier_scale!r}")
  if s.labels is not None:
    if len(s.labels) == 0:
      raise ValueError("labels is empty; pass comma-separated class labels such as 0,1,2")
  if s.ddpm_variance is not None:
    if s.sampler != "ddpm":
      raise ValueError(f"ddpm_variance only applies to --sampler=ddpm, not {s.sampler!r}")
    _checks.choice("ddpm variance", s.ddpm_variance, ("small", "large", "learned"))
  if s.strength is not None:
    editing.check_strength(s.strength)
  _int(s.resample, "resample", 1)
  _int(s.jump_length, "jump_length", 1)
  if s.resample > 1 and s.steps is not None and s.jump_length > s.steps:
    raise ValueError(f"jump_length={s.jump_length} is longer than the grid (steps={s.steps}); use "
                     f"jump_length <= steps")
  if s.sampler == "ode" and s.hparams:
    raise ValueError(f"sampler 'ode' has no hyperparameters, got {sorted(s.hparams)}")
  for k, v in s.hparams.items():
    if not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(float(v)):
      raise ValueError(f"hyperparameter {k} must be a finite number, got {v!r}")


def with_defaults(s: Settings, restored: Restored) -> Settings:
  """Fill ``sampler``, ``steps`` and ``grid`` left ``None`` from the config's ``sampling`` section."""
  c = restored.config.get("sampling", {})
  clip = s.clip_x0
  if clip is None:
    clip = bool(c.get("clip_x0", True)) and len(restored.data_shape) == 3
  return dataclasses.replace(s, sampler=s.sampler or c.get("sampler", "dpmpp_2m"),
                             steps=s.steps or c.get("steps", 20),
                             grid=s.grid or c.get("grid", "uniform_logsnr"), clip_x0=clip)


def get_sampler(s: Settings, restored: Restored):
  """The ``Sampler`` for ``s.sampler`` (``None`` for ``ode``), checked against the model."""
  if s.sampler == "ode":
    return None
  opts = {}
  if s.sampler == "ddpm":
    opts["variance"] = s.ddpm_variance or ("learned" if restored.learned_variance else "small")
    if opts["variance"] == "learned" and not restored.learned_variance:
      raise ValueError("ddpm_variance='learned' needs a model trained with a learned variance "
                       "(model.learned_variance=True); use small or large")
  sampler = samplers_lib.get_sampler(s.sampler, **opts)
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


def check_for_model(s: Settings, restored: Restored, x_known=None, mask=None,
                    classifier: Optional[Restored] = None) -> dict:
  """Checks against the model (and the classifier of classifier guidance); returns the resolved
  hyperparameters (numpy scalars)."""
  check_classifier(s, restored, classifier)
  k = restored.num_classes or (classifier.num_classes if classifier is not None else 0)
  if s.labels is not None:
    if not k:
      raise ValueError("labels were given but the model is unconditional (trained with "
                       "training.conditional=False) and there is no classifier to guide it; drop "
                       "--labels or pass --classifier")
    bad = [l for l in s.labels if not 0 <= int(l) < k]
    if bad:
      what = "model" if restored.num_classes else "classifier"
      raise ValueError(f"label {bad[0]} is out of range: the {what} has {k} classes, labels must be in "
                       f"[0, {k - 1}]")
  if s.guidance is not None:
    if not restored.num_classes:
      raise ValueError("guidance needs a class-conditional model but this one is unconditional; drop "
                       "--guidance (an unconditional model takes classifier guidance: --classifier)")
    if restored.cond_drop_prob <= 0:
      raise ValueError("guidance needs a model trained with label dropout (training.cond_drop_prob > 0) "
                       "so that it knows the unconditional (null-label) case; drop --guidance")
  sampler = get_sampler(s, restored)
  if mask is not None and x_known is None:
    raise ValueError("a mask needs an input (--input) to inpaint")
  if s.strength is not None and x_known is None:
    raise ValueError("strength applies to editing an input; pass --input (and --mask to inpaint)")
  if s.resample > 1 and mask is None:
    raise ValueError("RePaint resampling (resample > 1) needs --mask (the known region)")
  if x_known is not None:
    if sampler is None:
      raise ValueError("editing (--input) needs a stepping sampler; 'ode' is not one, use e.g. ddpm, "
                       "ddim or dpmpp_2m")
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
  if sampler is None:
    return {}
  hp = sampling.resolve_hparams(sampler, s.hparams)
  return {k: np.asarray(v) for k, v in hp.items()}


def batch_layout(num: int, batch_size: Optional[int], num_devices: int) -> tuple[int, int]:
  """``(global batch, number of batches)``; the global batch is a multiple of ``num_devices``."""
  if batch_size is None:
    batch_size = min(num, DEFAULT_BATCH)
    batch_size = -(-batch_size // num_devices) * num_devices
  if batch_size % num_devices:
    raise ValueError(f"batch_size {batch_size} is not divisible by the {num_devices} local devices; use "
                     f"a multiple of {num_devices}")
  return batch_size, -(-num // batch_size)


class Program:
  """The pmapped sampling program of one model and one structural configuration."""

  def __init__(self, restored: Restored, sampler, steps: int, *, mode: str = "sample",
               guided: bool = False, resample: int = 1, jump_length: int = 1, save_noise: bool = False,
               clip_x0: bool = False, devices=None, classifier: Optional[Restored] = None):
    _checks.choice("mode", mode, MODES)
    self.restored, self.sampler, self.steps, self.mode = restored, sampler, steps, mode
    self.guided, self.save_noise = guided, save_noise
    self.devices = list(devices or jax.local_devices())
    self.num_devices = len(self.devices)
    self.conditional = bool(restored.num_classes)
    self.compile_seconds = 0.0
    self._compiled = {}
    r = restored
    schedule, lv, shape = r.schedule, r.learned_variance, r.data_shape
    model_fn = r.model_fn
    if guided:
      cfg = guidance_lib.classifier_free(r.model_fn, r.num_classes, learned_variance=lv)
    self.classifier = classifier

    def per_device(params, indices, seed, ts, cond, w, hp, x_known, mask, clf_params, y, scale):
      key = jax.random.PRNGKey(seed)
      fn = (lambda p, x, t, c: cfg(p, x, t, c, w)) if guided else model_fn

      def denoiser(c, yy):
        d = make_denoiser(fn, params, schedule, r.parametrization, c, lv)
        if classifier is not None:  # Dhariwal & Nichol 2021, Alg. 2: the score gains s grad log p(y|x_t)
          log_prob = guidance_lib.classifier_log_prob(classifier.model_fn, clf_params, schedule,
                                                      classifier.schedule)
          d = guidance_lib.classifier_guidance(d, schedule, log_prob, yy, scale)
        # Static thresholding of x0_hat to the data range (Ho et al. 2020), after guidance.
        return guidance_lib.clip_x0(d, schedule) if clip_x0 else d

      if mode == "sample":
        x_init = sampling.initial_noise(key, indices, shape, schedule)
        if sampler is None:  # probability-flow ODE, one system per example
          def one(x1, c1, y1):
            c1 = None if c1 is None else c1[None]
            y1 = None if y1 is None else y1[None]
            out = ode.sample_ode(denoiser(c1, y1), schedule, x1[None], ts)
            return out.x[0], out.nfe
          x, nfe = jax.vmap(one)(x_init, cond, y)
          nfe = jnp.max(nfe)
        else:
          x, nfe = sampling.sample(sampler, denoiser(cond, y), schedule, x_init, ts, key,
                                   indices=indices, **hp)
      else:
        x_init = editing.noised_input(key, indices, x_known, schedule, ts[0])
        x, nfe = editing.edit(sampler, denoiser(cond, y), schedule, x_known, ts, key,
                              mask=mask if mode == "inpaint" else None, indices=indices,
                              resample=resample, jump_length=jump_length, **hp)
      return (x, nfe, x_init) if save_noise else (x, nfe)

    self._pmapped = jax.pmap(per_device, axis_name="data", devices=self.devices,
                             in_axes=(0, 0, None, None, 0, None, None, 0, 0, 0, 0, None))
    d = self.num_devices
    replicate = lambda tree: jax.pmap(lambda p: p, devices=self.devices)(
        jax.tree_util.tree_map(lambda a: np.stack([np.asarray(a)] * d), tree))
    self.params = replicate(r.params)  # one copy per device, once
    self.clf_params = replicate(classifier.params) if classifier is not None else None

  def _args(self, indices, seed, ts, labels=None, guidance=None, hparams=None, x_known=None,
            mask=None, classifier_scale=None):
    d = self.num_devices
    b = indices.shape[0] // d
    split = lambda a: None if a is None else np.asarray(a).reshape((d, b) + np.shape(a)[1:])
    cond = split(np.asarray(labels, np.int32)) if self.conditional else None
    y = split(np.asarray(labels, np.int32)) if self.classifier is not None else None
    scale = np.float32(1.0 if classifier_scale is None else classifier_scale)
    return (self.params, split(np.asarray(indices, np.int32)), np.uint32(seed),
            np.asarray(ts, np.float32), cond, np.float32(guidance or 0.0),
            {k: np.asarray(v) for k, v in (hparams or {}).items()}, split(x_known), split(mask),
            self.clf_params, y, scale)

  def compile(self, args):
    """The program compiled ahead of time for the shapes of ``args`` (cached; the seconds spent
    compiling add up in ``compile_seconds``)."""
    sig = str(jax.tree_util.tree_map(lambda a: (np.shape(a), np.asarray(a).dtype.str), args[1:]))
    if sig not in self._compiled:
      t0 = time.perf_counter()
      self._compiled[sig] = self._pmapped.lower(*args).compile()
      self.compile_seconds += time.perf_counter() - t0
    return self._compiled[sig]

  def __call__(self, indices, seed, ts, labels=None, guidance=None, hparams=None, x_known=None,
               mask=None, classifier_scale=None):
    """Run one global batch (``len(indices)`` a multiple of the device count); returns host arrays
    ``(x [B, ...], nfe, x_init [B, ...] or None)``, blocking until the batch is done."""
    args = self._args(indices, seed, ts, labels, guidance, hparams or {}, x_known, mask,
                      classifier_scale)
    out = jax.block_until_ready(self.compile(args)(*args))
    flat = lambda a: np.asarray(a).reshape((-1,) + np.shape(a)[2:])
    x_init = flat(out[2]) if self.save_noise else None
    return flat(out[0]), int(np.max(np.asarray(out[1]))), x_init


def nonfinite_rows(x) -> np.ndarray:
  """``[N]`` bool: which rows of ``x`` (``[N, ...]``) hold a NaN or Inf."""
  x = np.asarray(x)
  return ~np.isfinite(x).all(axis=tuple(range(1, x.ndim)))


@dataclasses.dataclass
class Result:
  samples: np.ndarray  # [num, ...]
  indices: np.ndarray  # [num] global sample indices
  labels: Optional[np.ndarray]  # [num] class labels (conditional models)
  x_init: Optional[np.ndarray]  # [num, ...] the starting points (with save_noise)
  ts: np.ndarray  # the time grid
  hparams: dict  # resolved sampler hyperparameters
  nfe_per_batch: int
  num_batches: int
  batch_size: int
  num_devices: int
  compile_seconds: float
  sample_seconds: float
  mode: str
  settings: Settings  # with the defaults filled in

  @property
  def nonfinite(self) -> np.ndarray:
    """Global indices of the samples that hold a NaN or Inf (a diverged model or sampler)."""
    return self.indices[nonfinite_rows(self.samples)]

  def throughput(self) -> dict:
    n = self.samples.shape[0]
    total_nfe = self.nfe_per_batch * self.num_batches
    return {"images_per_s": n / self.sample_seconds if self.sample_seconds else float("nan"),
            "seconds_per_nfe": self.sample_seconds / total_nfe if total_nfe else float("nan"),
            "sample_seconds": self.sample_seconds, "compile_seconds": self.compile_seconds}


class BatchProgress:
  """A one-line progress bar over batches on stderr (images/s and ETA exclude compilation)."""

  def __init__(self, total: int, num: int, enabled: bool = True, stream=None):
    self.total, self.num, self.enabled = total, num, enabled
    self.stream = stream or sys.stderr
    self.tty = getattr(self.stream, "isatty", lambda: False)()
    self.t0 = time.perf_counter()

  def update(self, done: int, samples_done: int) -> None:
    if not self.enabled:
      return
    dt = time.perf_counter() - self.t0
    rate = samples_done / dt if dt > 0 else 0.0
    eta = (self.num - samples_done) / rate if rate else float("nan")
    width = 24
    bar = "#" * int(width * done / self.total) + "-" * (width - int(width * done / self.total))
    eta_s = f"{int(eta) // 60:02d}:{int(eta) % 60:02d}" if eta == eta else "--:--"
    line = (f"[{bar}] batch {done}/{self.total} | {samples_done}/{self.num} samples | "
            f"{rate:7.1f} img/s | ETA {eta_s}")
    self.stream.write(("\r" + line) if self.tty else (line + "\n"))
    if self.tty and done == self.total:
      self.stream.write("\n")
    self.stream.flush()


def make_grid_times(s: Settings, restored: Restored, steps: Optional[int] = None) -> np.ndarray:
  """The time grid of ``s`` (from ``strength`` when editing)."""
  kwargs = {"t_max": float(s.strength)} if s.strength is not None else {}
  return np.asarray(grids.get_grid(s.grid, restored.schedule, steps or s.steps, **kwargs), np.float32)


def labels_for(s: Settings, restored: Restored, indices: np.ndarray,
               classifier: Optional[Restored] = None) -> Optional[np.ndarray]:
  """Sample ``i``'s label: ``labels[i % len(labels)]``, by default ``i % num_classes`` (of the model,
  or of the classifier that guides an unconditional model)."""
  k = restored.num_classes or (classifier.num_classes if classifier is not None else 0)
  if not k:
    return None
  if s.labels is None:
    return (indices % k).astype(np.int32)
  lab = np.asarray(s.labels, np.int32)
  return lab[indices % len(lab)]


def rows_for(a: Optional[np.ndarray], indices: np.ndarray) -> Optional[np.ndarray]:
  """Sample ``i`` edits input row ``i % len(a)`` (one input: every sample)."""
  if a is None:
    return None
  return np.asarray(a, np.float32)[indices % a.shape[0]]


def generate(restored: Restored, s: Settings, x_known=None, mask=None, *, devices=None,
             progress: bool = True, classifier: Optional[Restored] = None) -> Result:
  """Sample ``s.num`` examples with global indices ``s.start_index ...``; see the module docstring.

  ``x_known``: ``[M, ...]`` inputs to edit (SDEdit; inpainting with ``mask`` ``[1 or M, ...]``, 1 =
  known). ``classifier``: a noise-conditional classifier (``restore.restore(..., task="classifier")``)
  for classifier guidance at scale ``s.classifier_scale`` (default 1) toward the labels (Dhariwal &
  Nichol 2021), for an unconditional or a conditional model. Raises ``ValueError`` for bad settings
  before anything is compiled. Compiled programs are kept in ``restored.programs`` and reused by later
  calls with the same structure (sampler, steps, mode, guided or not, classifier, RePaint schedule,
  save_noise, devices) and batch shape.
  """
  check_settings(s)
  s = with_defaults(s, restored)
  if classifier is not None and s.classifier_scale is None:
    s = dataclasses.replace(s, classifier_scale=1.0)
  check_settings(s)
  if x_known is not None:
    x_known = np.asarray(x_known, np.float32)
  if mask is not None:
    mask = np.asarray(mask, np.float32)
  hp = check_for_model(s, restored, x_known, mask, classifier)
  if mask is not None:  # one full-shape mask per input row (or one for all)
    mask = np.ascontiguousarray(np.broadcast_to(mask, mask.shape[:1] + x_known.shape[1:]))
  mode = "sample" if x_known is None else ("inpaint" if mask is not None else "sdedit")
  if mode == "sdedit" and s.strength is None:
    s = dataclasses.replace(s, strength=SDEDIT_STRENGTH)
  sampler = get_sampler(s, restored)
  devices = list(devices or jax.local_devices())
  batch, num_batches = batch_layout(s.num, s.batch_size, len(devices))
  ts = make_grid_times(s, restored)
  structure = (s.sampler, s.ddpm_variance, s.steps, mode, s.guidance is not None, s.resample,
               s.jump_length, s.save_noise, bool(s.clip_x0), tuple(d.id for d in devices),
               None if classifier is None else (classifier.checkpoint_dir, id(classifier)))
  program = restored.programs.get(structure)
  if program is None:
    program = Program(restored, sampler, s.steps, mode=mode, guided=s.guidance is not None,
                      resample=s.resample, jump_length=s.jump_length, save_noise=s.save_noise,
                      clip_x0=bool(s.clip_x0), devices=devices, classifier=classifier)
    restored.programs[structure] = program  # reused by later calls with the same structure
  def batch_args(b):
    idx = np.arange(s.start_index + b * batch, s.start_index + (b + 1) * batch, dtype=np.int32)
    return (idx, s.seed, ts, labels_for(s, restored, idx, classifier), s.guidance, hp,
            rows_for(x_known, idx), rows_for(mask, idx), s.classifier_scale)

  compile_before = program.compile_seconds
  program.compile(program._args(*batch_args(0)))  # ahead of time: not counted as sampling time
  outs, inits, nfe = [], [], 0
  bar = BatchProgress(num_batches, s.num, enabled=progress)
  sample_seconds = 0.0
  for b in range(num_batches):
    args = batch_args(b)
    t0 = time.perf_counter()
    x, nfe, x_init = program(*args)
    sample_seconds += time.perf_counter() - t0
    outs.append(x)
    if x_init is not None:
      inits.append(x_init)
    bar.update(b + 1, min((b + 1) * batch, s.num))
  n = s.num
  indices = np.arange(s.start_index, s.start_index + n, dtype=np.int64)
  return Result(samples=np.concatenate(outs)[:n], indices=indices,
                labels=labels_for(s, restored, indices, classifier),
                x_init=np.concatenate(inits)[:n] if inits else None, ts=ts,
                hparams={k: v.item() for k, v in hp.items()}, nfe_per_batch=nfe,
                num_batches=num_batches, batch_size=batch, num_devices=len(devices),
                compile_seconds=program.compile_seconds - compile_before,
                sample_seconds=sample_seconds, mode=mode, settings=s)


# ----------------------------------------------------------------------------------------------------
# Files: editing inputs in, samples out
# ----------------------------------------------------------------------------------------------------


def _read_array(path: str, what: str) -> np.ndarray:
  if not os.path.isfile(path):
    raise ValueError(f"{what} file {path} does not exist")
  ext = os.path.splitext(path)[1].lower()
  try:
    if ext in (".npy", ".npz"):
      arrays = _checks.load_arrays(path, what)  # never unpickles: object arrays are refused
    else:
      from PIL import Image
      with Image.open(path) as img:
        return np.asarray(img)
  except ValueError as e:
    if _checks.PICKLE_REFUSED in str(e):
      raise
    raise ValueError(f"cannot read {what} {path} ({str(e).splitlines()[0][:100]}); give a PNG image or "
                     f"a .npy/.npz array") from None
  except Exception as e:  # PIL / numpy raise many types for unreadable files
    raise ValueError(f"cannot read {what} {path} ({type(e).__name__}); give a PNG image or a .npy/.npz "
                     f"array") from None
  if len(arrays) == 1:
    return next(iter(arrays.values()))
  if "samples" in arrays:
    return arrays["samples"]
  raise ValueError(f"{what} {path} holds arrays {sorted(arrays)}; expected one array or 'samples'")


def load_input(path: str, data_shape) -> np.ndarray:
  """Editing input as ``[M, *data_shape]`` float32 in the model's data space.

  A PNG (or other image file) is one image with values mapped from [0, 255] to [-1, 1] (grayscale or RGB
  to match the model's channels); a ``.npy``/``.npz`` array (e.g. the ``samples`` of an earlier
  ``sample.py`` run) is taken as is, one example of ``data_shape`` or ``[M, *data_shape]``.
  """
  shape = tuple(data_shape)
  ext = os.path.splitext(path)[1].lower()
  if ext in (".npy", ".npz"):
    a = _read_array(path, "input")
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer) and not np.issubdtype(a.dtype,
                                                                                      np.floating):
      raise ValueError(f"input {path} holds {a.dtype} values; give real numbers (float32 in the model's "
                       f"data range, e.g. [-1, 1] for images)")
    a = a.astype(np.float32)
  else:
    if len(shape) != 3 or shape[-1] not in (1, 3):
      raise ValueError(f"the model makes data of shape {shape}, not images; give the input as a .npy "
                       f"array of that shape")
    from PIL import Image
    _read_array(path, "input")  # existence and readability, one clear error
    with Image.open(path) as img:
      img = img.convert("L" if shape[-1] == 1 else "RGB")
      a = np.asarray(img, np.float32)
    if a.ndim == 2:
      a = a[..., None]
    a = a / 127.5 - 1.0
    if a.shape != shape:
      raise ValueError(f"input image {path} is {a.shape[1]}x{a.shape[0]} but the model makes "
                       f"{shape[1]}x{shape[0]} images; resize it to {shape[1]}x{shape[0]}")
  if a.shape == shape:
    a = a[None]
  if a.shape[1:] != shape:
    raise ValueError(f"input {path} has shape {a.shape} but the model makes data of shape {shape}; give "
                     f"one example of that shape or [N, *{shape}]")
  if not np.all(np.isfinite(a)):
    raise ValueError(f"input {path} contains NaN or Inf")
  return a


def load_mask(path: str, input_shape) -> np.ndarray:
  """Inpainting mask (1 = known: keep the input; 0 = generate) as ``[1 or M, ...]`` matching the input
  ``[M, *data_shape]`` (size-1 axes broadcast). A PNG is white = keep, black = generate (gray blends);
  an array holds values in [0, 1] and may leave out the channel axis of images."""
  xs = tuple(input_shape)
  shape = xs[1:]
  ext = os.path.splitext(path)[1].lower()
  m = _read_array(path, "mask")
  if ext not in (".npy", ".npz"):
    from PIL import Image
    with Image.open(path) as img:
      m = np.asarray(img.convert("L"), np.float32) / 255.0
  m = np.asarray(m, np.float32)
  image_like = len(shape) == 3
  if image_like and m.shape in (shape[:2], (xs[0],) + shape[:2], (1,) + shape[:2]):
    m = m[..., None]  # no channel axis: the same mask for every channel
  if m.ndim == len(shape):
    m = m[None]
  try:
    ok = m.ndim == len(xs) and np.broadcast_shapes(m.shape[1:], shape) == shape and \
        m.shape[0] in (1, xs[0])
  except ValueError:
    ok = False
  if not ok:
    what = "image" if image_like else "input"
    want = f"{shape[:2]} or {shape}" if image_like else f"{shape}"
    raise ValueError(f"mask {path} has shape {_squeeze_shape(m.shape)} but the {what} has shape "
                     f"{shape}; give a mask of shape {want}")
  if not np.all(np.isfinite(m)) or m.min() < 0 or m.max() > 1:
    raise ValueError(f"mask {path} values must lie in [0, 1] (1 = keep the input, 0 = generate)")
  return m


def _squeeze_shape(shape):
  shape = tuple(shape)
  return shape[1:] if len(shape) > 1 and shape[0] == 1 else shape


def write_outputs(base: str, result: Result, info: dict, save_png: bool = True) -> dict:
  """Write ``base.png`` (a grid, for images), ``base.npz`` (samples, indices, labels, x_init with
  save_noise; loadable with ``allow_pickle=False``) and ``base.json`` (``info``). All three go to
  temporary files in the target directory first and are renamed into place only when all are
  complete, so an error never leaves a half-written output. Returns the paths written."""
  import io
  import json
  import tempfile

  from jdiff.utils import images as image_utils
  directory = os.path.dirname(os.path.abspath(base)) or "."
  os.makedirs(directory, exist_ok=True)
  paths = {"npz": base + ".npz", "json": base + ".json"}
  arrays = {"samples": result.samples.astype(np.float32), "indices": result.indices.astype(np.int64),
            "ts": result.ts.astype(np.float32)}
  if result.labels is not None:
    arrays["labels"] = result.labels.astype(np.int32)
  if result.x_init is not None:
    arrays["x_init"] = result.x_init.astype(np.float32)
  blobs = {}
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  blobs["npz"] = buf.getvalue()
  if save_png:
    paths["png"] = base + ".png"
    grid = image_utils.make_grid(result.samples, int(math.ceil(math.sqrt(result.samples.shape[0]))))
    from PIL import Image
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if max(result.samples.shape[1:3]) < 64:
      img = img.resize((img.width * 2, img.height * 2), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    blobs["png"] = buf.getvalue()
  info = dict(info, outputs={k: os.path.abspath(v) for k, v in paths.items()})
  blobs["json"] = (json.dumps(info, indent=1, sort_keys=False) + "\n").encode()
  temps = {}
  umask = os.umask(0)
  os.umask(umask)
  try:
    for k, data in blobs.items():
      fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(paths[k]))
      temps[k] = tmp
      with os.fdopen(fd, "wb") as f:
        f.write(data)
      os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
    for k, tmp in temps.items():
      os.replace(tmp, paths[k])
  finally:
    for tmp in temps.values():
      if os.path.exists(tmp):
        os.remove(tmp)
  return paths
