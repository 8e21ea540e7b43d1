"""``generate``: the one front door for sampling a model, for ``sample.py``, ``eval.py`` and the training
loop alike.

Settings are resolved against the model (``jdiff.generation.settings``), then fixed-shape global batches
of sample indices ``start_index, start_index + 1, ...`` run through one compiled program
(``jdiff.generation.program``), reused by later calls with the same structure.

**Reproducible.** Batches are ``[devices, per_device]`` blocks of consecutive global indices; the prior
noise of sample ``i`` is drawn from ``fold_in(PRNGKey(seed), i)`` and its per-step noise from
``fold_in(fold_in(key, i), step)`` (``jdiff.sampling``); its condition (``jdiff.conditions``) and editing
input are picked by ``i`` too. So sample ``i`` does not depend on the batch size, the device count or
how a run is split with ``start_index``: its noise is bit-identical, its value bit-identical for the same
per-device batch layout and otherwise equal up to float32 rounding (kernels may sum in another order at
another batch size). A last, partial batch is padded with the next indices (discarded).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Optional

import jax
import numpy as np

from jdiff.generation import settings as settings_lib
from jdiff.generation.program import Program, replicate
from jdiff.generation.restore import Restored
from jdiff.generation.settings import Settings
from jdiff.utils.progress import BatchProgress


def nonfinite_rows(x) -> np.ndarray:
  """``[N]`` bool: which rows of ``x`` (``[N, ...]``) hold a NaN or Inf."""
  x = np.asarray(x)
  return ~np.isfinite(x).all(axis=tuple(range(1, x.ndim)))


@dataclasses.dataclass
class Result:
  samples: np.ndarray  # [num, ...]
  indices: np.ndarray  # [num] global sample indices
  labels: Optional[np.ndarray]  # [num] class labels (conditional models, classifier guidance)
  captions: Optional[list]  # [num] the prompt of each sample (text-to-image models)
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
  settings: Settings  # resolved

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


def rows_for(a: Optional[np.ndarray], indices: np.ndarray) -> Optional[np.ndarray]:
  """Sample ``i`` edits input row ``i % len(a)`` (one input: every sample)."""
  if a is None:
    return None
  return np.asarray(a, np.float32)[indices % a.shape[0]]


@dataclasses.dataclass
class Plan:
  """A checked sampling run: resolved settings, the editing mode, the batch layout (``plan``)."""
  restored: Restored
  settings: Settings
  mode: str
  hparams: dict
  x_known: Optional[np.ndarray]
  mask: Optional[np.ndarray]
  classifier: Optional[Restored]
  devices: list
  batch_size: int
  num_batches: int
  given: Optional[dict] = None  # per condition kind, the values asked for (cycled over the samples)


def _given(restored: Restored, s: Settings, cond: Optional[dict]) -> Optional[dict]:
  """The condition values asked for, per kind: ``s.labels``, ``s.prompts`` and ``cond`` (arrays for
  other kinds, e.g. precomputed ``text_emb`` / ``text_mask`` rows), checked against the model."""
  given = dict(cond or {})
  unknown = sorted(set(given) - set(restored.conditions.kinds))
  if unknown:
    raise ValueError(f"condition {unknown[0]!r} was given but the model takes "
                     f"{sorted(restored.conditions.kinds) or 'no condition'}")
  if s.labels is not None:
    given["label"] = s.labels
  if s.prompts is not None:
    given["caption"] = s.prompts
  for name, value in given.items():  # every value checked once, before anything is compiled
    if name in restored.conditions:
      restored.conditions[name].for_indices(np.zeros((1,), np.int32), value)
  return given or None


def plan(restored: Restored, s: Settings, x_known=None, mask=None, *, devices=None,
         classifier: Optional[Restored] = None, cond: Optional[dict] = None) -> Plan:
  """Resolve ``s`` against the model and check everything (one ``ValueError`` each), compiling
  nothing; ``run`` samples it. ``generate`` is both. ``cond``: values of condition kinds that have no
  setting (e.g. ``{"text_emb": [n, L, D], "text_mask": [n, L]}``), sample ``i`` gets row ``i % n``."""
  if x_known is not None:
    x_known = np.asarray(x_known, np.float32)
  if mask is not None:
    mask = np.asarray(mask, np.float32)
  mode = "sample" if x_known is None else ("inpaint" if mask is not None else "sdedit")
  s = settings_lib.resolve(s, restored, classifier=classifier, mode=mode)
  hp = settings_lib.check_for_model(s, restored, x_known, mask, classifier)
  if mask is not None:  # one full-shape mask per input row (or one for all)
    mask = np.ascontiguousarray(np.broadcast_to(mask, mask.shape[:1] + x_known.shape[1:]))
  devices = list(devices or jax.local_devices())
  batch, num_batches = settings_lib.batch_layout(s.num, s.batch_size, len(devices))
  s = dataclasses.replace(s, batch_size=batch)
  given = _given(restored, s, cond)
  return Plan(restored, s, mode, hp, x_known, mask, classifier, devices, batch, num_batches, given)


def run(p: Plan, *, progress: bool = True) -> Result:
  """Sample a ``plan``: its compiled program (kept in ``restored.programs`` and reused by later runs
  with the same structure and batch shape) over its batches of global indices."""
  r, s, classifier, devices, batch = p.restored, p.settings, p.classifier, p.devices, p.batch_size
  ts = settings_lib.grid_times(s, r)
  structure = (s.sampler, s.ddpm_variance, s.steps, p.mode, s.guidance is not None, s.resample,
               s.jump_length, s.save_noise, bool(s.clip_x0), s.threshold, tuple(d.id for d in devices),
               None if classifier is None else (classifier.checkpoint_dir, id(classifier)))
  program = r.programs.get(structure)
  if program is None:
    program = Program(r, settings_lib.resolve_sampler(s, r), s.steps, mode=p.mode,
                      guided=s.guidance is not None, resample=s.resample, jump_length=s.jump_length,
                      save_noise=s.save_noise, clip_x0=bool(s.clip_x0), threshold=s.threshold,
                      devices=devices, classifier=classifier)
    r.programs[structure] = program
  params = replicate(r.params, devices)
  clf_params = replicate(classifier.params, devices) if classifier is not None else None
  labels = settings_lib.label_kind(r, classifier)
  given = p.given

  def batch_args(b):
    idx = np.arange(s.start_index + b * batch, s.start_index + (b + 1) * batch, dtype=np.int32)
    y = labels.for_indices(idx, s.labels) if classifier is not None else None
    return program.args(params, clf_params, idx, s.seed, ts, r.conditions.for_indices(idx, given), y,
                        s.guidance, s.classifier_scale, p.hparams, rows_for(p.x_known, idx),
                        rows_for(p.mask, idx))

  compile_before = program.compile_seconds
  program.compile(batch_args(0))  # ahead of time: not counted as sampling time
  outs, inits, nfe = [], [], 0
  bar = BatchProgress(p.num_batches, s.num, enabled=progress)
  sample_seconds = 0.0
  for b in range(p.num_batches):
    args = batch_args(b)
    t0 = time.perf_counter()
    x, nfe, x_init = program(args)
    sample_seconds += time.perf_counter() - t0
    outs.append(x)
    if x_init is not None:
      inits.append(x_init)
    bar.update(b + 1, min((b + 1) * batch, s.num))
  n = s.num
  indices = np.arange(s.start_index, s.start_index + n, dtype=np.int64)
  captions = None
  if "caption" in r.conditions:
    kind = r.conditions["caption"]
    captions = [kind.decode(row) for row in kind.for_indices(indices, (given or {}).get("caption"))]
  return Result(samples=np.concatenate(outs)[:n], indices=indices,
                labels=None if labels is None else labels.for_indices(indices, s.labels),
                captions=captions,
                x_init=np.concatenate(inits)[:n] if inits else None, ts=ts,
                hparams={k: v.item() for k, v in p.hparams.items()}, nfe_per_batch=nfe,
                num_batches=p.num_batches, batch_size=batch, num_devices=len(devices),
                compile_seconds=program.compile_seconds - compile_before,
                sample_seconds=sample_seconds, mode=p.mode, settings=s)


def generate(restored: Restored, s: Settings, x_known=None, mask=None, *, devices=None,
             progress: bool = True, classifier: Optional[Restored] = None,
             cond: Optional[dict] = None) -> Result:
  """Sample ``s.num`` examples with global indices ``s.start_index ...`` (``run(plan(...))``); see the
  module docstring.

  ``x_known``: ``[M, ...]`` inputs to edit (SDEdit; inpainting with ``mask`` ``[1 or M, ...]``, 1 =
  known). ``classifier``: a noise-conditional classifier (``restore.restore(..., task="classifier")``)
  for classifier guidance at scale ``s.classifier_scale`` (default 1) toward the labels (Dhariwal &
  Nichol 2021), for an unconditional or a conditional model. Raises ``ValueError`` for bad settings
  before anything is compiled.
  """
  return run(plan(restored, s, x_known, mask, devices=devices, classifier=classifier, cond=cond),
             progress=progress)
