"""A cascade (Ho et al. 2022, "Cascaded diffusion models"; Saharia et al. 2022, Imagen): a base model's
samples refined by a super-resolution model (``config.super_res.factor`` > 0, ``jdiff.conditions.LowRes``)
that reads them as its low-resolution condition, noised to a chosen augmentation level.

Sample ``i`` of the super-resolution stage refines base sample ``i`` with the same seed (its own noise
is ``fold_in(PRNGKey(seed), i)`` as always) and, when it reads captions, the same prompt; so a cascade's
sample ``i`` is as reproducible as a single model's.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from jdiff.generation import generate as generate_lib
from jdiff.generation.restore import Restored
from jdiff.generation.settings import Settings


def check_stage(sr: Restored, base: Restored, level: Optional[float] = None) -> float:
  """``sr`` is a super-resolution model of ``base``'s samples; returns the augmentation level
  (``level``, default the super-resolution config's ``super_res.level``)."""
  if "low_res" not in sr.conditions:
    raise ValueError(f"{sr.workdir} is not a super-resolution model (train one with super_res.factor "
                     f"> 0, e.g. configs/fashion_mnist_sr.py)")
  want = sr.conditions["low_res"].shape
  if tuple(base.data_shape) != want:
    raise ValueError(f"the super-resolution model refines images of shape {want} but the base model "
                     f"makes {tuple(base.data_shape)}; pair models of matching sizes")
  kind = sr.conditions["low_res_t"]
  return kind.level if level is None else kind.check_level(level)


def sr_settings(sr: Restored, base_settings: Settings) -> Settings:
  """The super-resolution stage's settings for a base run: its own config's sampler and steps, the
  base run's seed, indices and batch size, and its prompts and guidance when it reads captions."""
  s = base_settings
  prompts = s.prompts if "caption" in sr.conditions else None
  return Settings(num=s.num, seed=s.seed, start_index=s.start_index, batch_size=s.batch_size,
                  prompts=prompts, guidance=s.guidance if prompts is not None else None,
                  threshold=s.threshold)


def refine(sr: Restored, base_result: generate_lib.Result, level: float, *, devices=None,
           progress: bool = True) -> generate_lib.Result:
  """The super-resolution stage on ``base_result``'s samples (checked with ``check_stage``): its result,
  carrying the base run's captions and labels."""
  s = base_result.settings
  n = base_result.samples.shape[0]
  rows = np.roll(base_result.samples, s.start_index % n, axis=0)  # row i % n is sample i's base
  plan = generate_lib.plan(sr, sr_settings(sr, s), cond={"low_res": rows, "low_res_t": level},
                           devices=devices)
  out = generate_lib.run(plan, progress=progress)
  return dataclasses.replace(out, captions=base_result.captions, labels=base_result.labels)
