"""Checks of a training config's values, with one clear message each (types and unknown keys are checked
by ml_collections when the config is parsed from the command line)."""
from __future__ import annotations

import ml_collections

from jdiff import _checks

_REQUIRED = {"data": ("name", "batch_size"), "model": ("name",), "diffusion": ("schedule",
             "parametrization"), "optim": ("lr",), "training": ("num_steps",), "sampling": ("sampler",)}
_POSITIVE_INT = [("data", "batch_size"), ("training", "num_steps"), ("training", "log_every"),
                 ("training", "ckpt_every"), ("training", "keep_checkpoints"), ("sampling", "steps"),
                 ("sampling", "num")]
PARAMETRIZATIONS = ("eps", "x0", "v", "score", "edm")
WEIGHTINGS = ("simple", "snr", "min_snr", "edm")
TIME_SAMPLINGS = ("uniform", "low_discrepancy", "lognormal")


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
  _checks.choice("parametrization", c.diffusion.parametrization, PARAMETRIZATIONS)
  _checks.choice("weighting", c.diffusion.get("weighting", "simple"), WEIGHTINGS)
  _checks.choice("time sampling", c.diffusion.get("time_sampling", "uniform"), TIME_SAMPLINGS)
  if c.diffusion.parametrization == "edm" and c.diffusion.get("sigma_data", 0.5) <= 0:
    raise ValueError("config.diffusion.sigma_data must be > 0 for EDM preconditioning")
