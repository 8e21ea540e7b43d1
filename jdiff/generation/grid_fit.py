"""Fit a time grid for a trained model (``jdiff.grid_fit`` on a restored workdir) and write it as a grid
file that ``sample.py --grid=FILE``, ``eval.py --grid=FILE`` and ``Settings(grid=FILE)`` accept.

The denoiser is the one ``generate`` samples with: the model's parametrization and, for image data,
``x0_hat`` clipped to [-1, 1] when the config's ``sampling.clip_x0`` says so (``settings.resolve``). The
starting noises are drawn as ``sample.py`` draws them (``fold_in(PRNGKey(seed), i)``), with the training
noises at indices ``0 .. num_train - 1`` and the held-out ones after them; the default seed (1) is not
``sample.py``'s default (0), so a grid is not fit on the noises an evaluation at seed 0 starts from.
The file names the SHA-256 of the parameters it was fit for (``jdiff.grid_fit.params_hash`` of the EMA
or raw parameters used), and sampling refuses it for any other parameters.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import numpy as np

from jdiff import grid_fit
from jdiff import guidance as guidance_lib
from jdiff import sampling
from jdiff.generation import settings as settings_lib
from jdiff.generation.restore import Restored
from jdiff.parametrization import make_denoiser
from jdiff.utils import files

DEFAULT_SEED = 1


def model_hash(restored: Restored) -> str:
  """The hash a grid file names for this model: ``params_hash`` of the parameters sampled from."""
  return settings_lib.model_hash(restored)


def make_denoise_fn(restored: Restored, clip_x0: bool) -> Callable:
  """``make_denoise(params) -> denoise(x, t)``, as the sampling program builds it (no guidance)."""
  r = restored

  def make_denoise(params):
    d = make_denoiser(r.model_fn, params, r.schedule, r.parametrization, None, r.learned_variance)
    return guidance_lib.clip_x0(d, r.schedule) if clip_x0 else d

  return make_denoise


def fit_model(restored: Restored, *, steps, sampler: str = grid_fit.DEFAULT_SAMPLER,
              init: str = "best", num_train: int = 64, num_heldout: int = 32, batch_size: int = 16,
              iters: int = 40, lr: float = 0.1, seed: int = DEFAULT_SEED, rtol: float = 1e-4,
              atol: float = 1e-4, clip_x0: Optional[bool] = None,
              log: Optional[Callable[[str], None]] = None) -> dict:
  """Fit a ``steps``-step grid for ``restored`` (``jdiff.grid_fit.fit_grid``); returns the grid file's
  JSON object (``write``). ``steps`` may be a list: one grid per step count, from the same noises and
  ODE solutions (solved once), returned as a list of records. ``clip_x0``: default as ``generate``
  resolves it for this model."""
  many = isinstance(steps, (list, tuple))
  step_list = list(steps) if many else [steps]
  if not step_list:
    raise ValueError("steps is empty; pass a step count such as 5")
  if restored.conditions:
    raise ValueError("grid fitting takes unconditional models only (this one is class-conditional); "
                     "fit on the unconditional model or sample with a built-in grid")
  if restored.params is None:
    raise ValueError("the model has no parameters to fit a grid for")
  for v, name in ((num_train, "num_train"), (batch_size, "batch_size")):
    if not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
  if not isinstance(num_heldout, (int, np.integer)) or num_heldout < 0:
    raise ValueError(f"num_heldout must be an integer >= 0, got {num_heldout!r}")
  s = settings_lib.resolve(settings_lib.Settings(num=1, sampler=sampler, steps=step_list[0],
                                                 grid="uniform_t", clip_x0=clip_x0), restored)
  grid_fit.check_fit_sampler(s.sampler)
  key = jax.random.PRNGKey(seed)
  shape = restored.data_shape
  x_train = sampling.initial_noise(key, np.arange(num_train), shape, restored.schedule)
  x_held = (sampling.initial_noise(key, np.arange(num_train, num_train + num_heldout), shape,
                                   restored.schedule) if num_heldout else None)
  params = jax.tree_util.tree_map(jax.numpy.asarray, restored.params)
  model = {"workdir": restored.workdir, "checkpoint": restored.checkpoint_dir, "step": restored.step,
           "params": restored.which, "clip_x0": bool(s.clip_x0), "noise_seed": seed,
           "noise_indices": {"train": [0, num_train], "heldout": [num_train, num_train + num_heldout]}}
  make_denoise = make_denoise_fn(restored, bool(s.clip_x0))
  digest = model_hash(restored)
  records, refs = [], None
  for k in step_list:
    if log and many:
      log(f"--- {k} steps")
    g = grid_fit.fit_grid(make_denoise, params, restored.schedule, x_train, x_held, steps=k,
                          sampler=s.sampler, init=init, iters=iters, lr=lr, batch_size=batch_size,
                          seed=seed, rtol=rtol, atol=atol, references=refs, log=log)
    refs = g.references
    records.append(grid_fit.make_record(g, restored.schedule, digest, model))
  return records if many else records[0]


def write(path: str, record: dict) -> str:
  """Write a grid file atomically (after validating it as a reader would)."""
  grid_fit.parse_grid_record(record, path)
  return files.write_json(path, record)


def settings_for(path: str, **kwargs) -> settings_lib.Settings:
  """``Settings`` that sample with the grid file ``path`` (its steps and sampler), plus ``kwargs``."""
  g = grid_fit.read_grid_file(path)
  return dataclasses.replace(settings_lib.Settings(grid=path, steps=g.steps, sampler=g.sampler),
                             **kwargs)
