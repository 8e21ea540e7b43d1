"""The compiled sampling program: the whole loop (noise, every step of the grid, guidance, editing) in one
``lax.scan`` inside one ``pmap`` over the local devices.

It is compiled ahead of time (``lower().compile()``, timed on its own) once per model, sampler, step
count, batch shape and structure (guided or not, editing mode, RePaint schedule, ``save_noise``,
clipping, classifier). Parameters, seed, guidance scales (classifier-free ``w``, classifier ``s``),
sampler hyperparameters (``eta``, churn, ...), time-grid values, conditions and editing inputs are
arguments: changing them never recompiles.

* **Guidance.** Classifier-free (Ho & Salimans 2022) contrasts the conditions with their nulls
  (``jdiff.conditions``); classifier guidance (Dhariwal & Nichol 2021, Alg. 2) adds ``s grad log p(y |
  x_t)`` of a noise-conditional classifier to the score of any model of the same data shape.
* **Batch independence.** Noise comes from the global sample indices (``jdiff.keys``). A sampler whose
  steps depend on the whole batch (``Sampler.adaptive``: the adaptive ODE solver's error norm) is run one
  example at a time (``vmap``), so its steps do not depend on the batch either.
"""
from __future__ import annotations

import functools
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import _checks
from jdiff import categorical_sampling
from jdiff import editing
from jdiff import guidance as guidance_lib
from jdiff import sampling
from jdiff.generation.restore import Restored
from jdiff.generation.settings import MODES
from jdiff.parametrization import make_denoiser


def replicate(tree, devices):
  """One copy of ``tree`` on each of ``devices`` (a leading device axis, as pmap takes it), once per
  ``generate`` call rather than once per batch."""
  if tree is None:
    return None
  stacked = jax.tree_util.tree_map(lambda a: np.stack([np.asarray(a)] * len(devices)), tree)
  return _identity_on(tuple(devices))(stacked)


def _token_program(r: Restored, sampler: str, mode: str, guided: bool, save_noise: bool, devices):
  """The pmapped program of a categorical (token) model (``jdiff.categorical_sampling``), with the
  arguments of the Gaussian one: ``x_known``/``mask`` are the known tokens and where they are
  (``mode='inpaint'``: a prefix or any infilling pattern, clamped at every step); ``hp`` holds the
  temperature. Classifier-free guidance combines log-probabilities, ``(1 + w) log p(x0 | x_t, c) - w log
  p(x0 | x_t)``."""
  process, length = r.process, r.data_shape[0]
  log_probs = lambda p, x, t, c: jax.nn.log_softmax(r.model_fn(p, x, t, c), axis=-1)
  cfg = guidance_lib.classifier_free(log_probs, r.conditions.null()) if guided else None

  def per_device(params, clf_params, indices, seed, ts, cond, y, w, scale, hp, x_known, mask):
    del clf_params, y, scale  # no classifier guidance for tokens
    key = jax.random.PRNGKey(seed)
    if guided:
      denoise = lambda x, t: cfg(params, x, t, cond, w)
    else:
      denoise = lambda x, t: r.model_fn(params, x, t, cond)
    known = known_mask = None
    if mode == "inpaint":
      known, known_mask = jnp.round(x_known).astype(jnp.int32), mask > 0.5
    x_init = categorical_sampling.initial_tokens(process, key, indices, length)
    out = categorical_sampling.sample(process, denoise, x_init, ts, key, indices, sampler=sampler,
                                      known=known, known_mask=known_mask,
                                      temperature=hp["temperature"])
    return (out.x, out.nfe, x_init) if save_noise else (out.x, out.nfe)

  return jax.pmap(per_device, axis_name="data", devices=devices,
                  in_axes=(0, 0, 0, None, None, 0, 0, None, None, None, 0, 0))


@functools.lru_cache(maxsize=8)
def _identity_on(devices):
  """A pmapped identity per device set, built once (so repeated transfers compile nothing)."""
  return jax.pmap(lambda p: p, devices=list(devices))


class Program:
  """The pmapped sampling program of one model and one structural configuration."""

  def __init__(self, restored: Restored, sampler, steps: int, *, mode: str = "sample",
               guided: bool = False, resample: int = 1, jump_length: int = 1, save_noise: bool = False,
               clip_x0: bool = False, threshold: Optional[float] = None, devices=None,
               classifier: Optional[Restored] = None):
    _checks.choice("mode", mode, MODES)
    self.save_noise = save_noise
    self.devices = list(devices or jax.local_devices())
    self.num_devices = len(self.devices)
    self.compile_seconds = 0.0
    self._compiled = {}
    r = restored
    if r.process is not None:
      self._pmapped = _token_program(r, sampler, mode, guided, save_noise, self.devices)
      return
    schedule, lv, shape = r.schedule, r.learned_variance, r.data_shape
    if guided:
      cfg = guidance_lib.classifier_free(r.model_fn, r.conditions.null_like, learned_variance=lv)

    def per_device(params, clf_params, indices, seed, ts, cond, y, w, scale, hp, x_known, mask):
      key = jax.random.PRNGKey(seed)
      fn = (lambda p, x, t, c: cfg(p, x, t, c, w)) if guided else r.model_fn

      def run(indices, cond, y, x_known, mask):
        # a super-resolution model's low-resolution input is noised to its level (LowRes.noise)
        cond = r.conditions.noised(cond, jax.random.split(key)[1], indices, train=False)
        d = make_denoiser(fn, params, schedule, r.parametrization, cond, lv)
        if classifier is not None:
          log_prob = guidance_lib.classifier_log_prob(classifier.model_fn, clf_params, schedule,
                                                      classifier.schedule)
          d = guidance_lib.classifier_guidance(d, schedule, log_prob, y, scale)
        if threshold is not None:  # Imagen's dynamic thresholding (Saharia et al. 2022), after guidance
          d = guidance_lib.dynamic_threshold(d, schedule, threshold)
        elif clip_x0:  # static thresholding of x0_hat to the data range (Ho et al. 2020), after guidance
          d = guidance_lib.clip_x0(d, schedule)
        if mode == "sample":
          x_init = sampling.initial_noise(key, indices, shape, schedule)
          out = sampling.sample(sampler, d, schedule, x_init, ts, key, indices=indices, **hp)
        else:
          x_init = editing.noised_input(key, indices, x_known, schedule, ts[0])
          out = editing.edit(sampler, d, schedule, x_known, ts, key,
                             mask=mask if mode == "inpaint" else None, indices=indices,
                             resample=resample, jump_length=jump_length, **hp)
        return out.x, out.nfe, x_init

      args = (indices, cond, y, x_known, mask)
      if sampler.adaptive:  # one example at a time: its adaptive steps do not depend on the batch
        def one(*a):
          x, nfe, x_init = run(*jax.tree_util.tree_map(lambda v: v[None], a))
          return x[0], nfe, x_init[0]

        x, nfe, x_init = jax.vmap(one)(*args)
        nfe = jnp.max(nfe)
      else:
        x, nfe, x_init = run(*args)
      return (x, nfe, x_init) if save_noise else (x, nfe)

    self._pmapped = jax.pmap(per_device, axis_name="data", devices=self.devices,
                             in_axes=(0, 0, 0, None, None, 0, 0, None, None, None, 0, 0))

  def args(self, params, clf_params, indices, seed, ts, cond=None, y=None, guidance=None,
           classifier_scale=None, hparams=None, x_known=None, mask=None):
    """The program's arguments for one global batch (``params``/``clf_params`` from ``replicate``)."""
    d = self.num_devices
    b = indices.shape[0] // d
    split = lambda tree: jax.tree_util.tree_map(
        lambda a: np.asarray(a).reshape((d, b) + np.shape(a)[1:]), tree)
    return (params, clf_params, split(np.asarray(indices, np.int32)), np.uint32(seed),
            np.asarray(ts, np.float32), split(cond), split(y), np.float32(guidance or 0.0),
            np.float32(1.0 if classifier_scale is None else classifier_scale),
            {k: np.asarray(v) for k, v in (hparams or {}).items()}, split(x_known), split(mask))

  def compile(self, args):
    """The program compiled ahead of time for the shapes of ``args`` (cached; the seconds spent
    compiling add up in ``compile_seconds``)."""
    sig = str(jax.tree_util.tree_map(lambda a: (np.shape(a), np.asarray(a).dtype.str), args[2:]))
    if sig not in self._compiled:
      t0 = time.perf_counter()
      self._compiled[sig] = self._pmapped.lower(*args).compile()
      self.compile_seconds += time.perf_counter() - t0
    return self._compiled[sig]

  def __call__(self, args):
    """Run one global batch; returns host arrays ``(x [B, ...], nfe, x_init [B, ...] or None)``,
    blocking until the batch is done."""
    out = jax.block_until_ready(self.compile(args)(*args))
    flat = lambda a: np.asarray(a).reshape((-1,) + np.shape(a)[2:])
    x_init = flat(out[2]) if self.save_noise else None
    return flat(out[0]), int(np.max(np.asarray(out[1]))), x_init
