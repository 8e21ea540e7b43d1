"""Sample-quality evaluation during training (``config.eval``; ``train.py`` calls it every K steps).

Every ``config.eval.every`` steps (and at the last step) the EMA parameters sample
``config.eval.num_samples`` images with the configured sampler, and :func:`jdiff.eval.report` scores
them in the Fashion-MNIST feature space: FD, KID (± std over subsets), precision, recall and, for
class-conditional models, the classifier accuracy of the requested labels, next to their floor (the
same metrics for real test images at the same N). The numbers go to ``metrics.jsonl`` and TensorBoard as
``eval/*``. Sample ``i`` uses the noise ``fold_in(PRNGKey(eval.seed), i)`` and label ``i % num_classes``
at every evaluation (and in ``eval.py`` / ``sample.py`` with the same seed), so successive evaluations
differ only through the parameters. As there, ``x0_hat`` is clipped to [-1, 1] at every step when
``config.sampling.clip_x0`` (the default for images), and samples are clipped before scoring.
"""
from __future__ import annotations

import time
import warnings
from typing import Callable, Optional

import jax
import numpy as np

from jdiff import _checks
from jdiff import grids
from jdiff import sampling

MIN_SAMPLES = 4  # jdiff.eval.report: precision/recall with k = 3 needs N > 3 (FD and KID need 2)
IMAGE_SHAPE = (28, 28, 1)


def _int(v, name: str, lo: int) -> int:
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
    raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
  return int(v)


class PeriodicEval:
  """Built from an ``Experiment`` before training starts (so a bad ``config.eval`` fails early)."""

  def __init__(self, exp, log: Callable[[str], None] = print):
    c = exp.config
    e = c.eval
    self.every = _int(e.get("every", 0), "config.eval.every", 0)
    self.num = _int(e.get("num_samples", 1000), "config.eval.num_samples", 1)
    if self.num < MIN_SAMPLES:
      raise ValueError(f"config.eval.num_samples={self.num} is too few: precision/recall (k=3) need at "
                       f"least {MIN_SAMPLES} samples, FD and KID at least 2; use 1000 or more for "
                       f"stable numbers")
    self.batch = min(_int(e.get("batch_size", 250), "config.eval.batch_size", 1), self.num)
    self.seed = _int(e.get("seed", 0), "config.eval.seed", 0)
    self.sampler = e.get("sampler", "") or c.sampling.sampler
    _checks.choice("sampler", self.sampler, sampling.SAMPLER_NAMES)
    self.steps = _int(e.get("steps", 0), "config.eval.steps", 0) or c.sampling.steps
    if c.data.name != "fashion_mnist" or tuple(exp.data_shape) != IMAGE_SHAPE:
      raise ValueError(f"config.eval.every > 0 scores samples with the Fashion-MNIST feature net "
                       f"against Fashion-MNIST images (28x28x1), but this run trains on "
                       f"{c.data.name!r} with data of shape {tuple(exp.data_shape)}; set "
                       f"--config.eval.every=0")
    self.log = log
    self.data_shape = tuple(exp.data_shape)
    self.num_classes = exp.num_classes
    fn, param = exp.model_fn()
    self.clip_x0 = bool(c.sampling.get("clip_x0", True)) and len(self.data_shape) == 3
    if self.clip_x0:  # as sample.py / eval.py (jdiff.training.generate) and the sample grids do
      from jdiff.training.loop import clip_model_x0  # pylint: disable=g-import-not-at-top
      fn, param = clip_model_x0(fn, exp.schedule, param), "x0"
    opts = {}
    if self.sampler == "ddpm":
      opts["variance"] = "learned" if exp.learned_variance else "small"
    self.sample_fn = sampling.make_sample_fn(fn, exp.schedule, param, self.sampler, self.steps,
                                             learned_variance=exp.learned_variance, **opts)
    shape, schedule = (self.batch,) + self.data_shape, exp.schedule
    # The prior draw, jitted (eagerly it would dispatch and compile op by op): noise of sample i from
    # fold_in(PRNGKey(seed), i), exactly as sampling.make_sample_fn / generate draw it.
    self._noise = jax.jit(lambda key, idx: sampling.initial_noise(key, idx, shape[1:], schedule))
    self.ts = np.asarray(grids.get_grid(c.sampling.get("grid", "uniform_logsnr"), exp.schedule,
                                        self.steps), np.float32)
    self.net = None

  @classmethod
  def from_experiment(cls, exp, log: Callable[[str], None] = print) -> Optional["PeriodicEval"]:
    """``None`` when the config has no ``eval`` section or ``eval.every == 0``."""
    e = exp.config.get("eval", None)
    if e is None or not e.get("every", 0):
      if e is not None:
        _int(e.get("every", 0), "config.eval.every", 0)
      return None
    return cls(exp, log)

  def due(self, step: int, total: int) -> bool:
    return step % self.every == 0 or step == total

  def samples(self, params) -> tuple[np.ndarray, Optional[np.ndarray], int]:
    """``(samples [N, 28, 28, 1], labels or None, NFE per sample)``, in batches of global indices."""
    key = jax.random.PRNGKey(self.seed)
    xs, nfe = [], 0
    for start in range(0, self.num, self.batch):
      idx = np.arange(start, start + self.batch, dtype=np.int32)  # the last batch runs past N
      cond = (idx % self.num_classes).astype(np.int32) if self.num_classes else None
      out = self.sample_fn(params, self._noise(key, idx), self.ts, key, cond, indices=idx)
      xs.append(np.asarray(out.x))
      nfe = int(out.nfe)
    labels = (np.arange(self.num) % self.num_classes).astype(np.int32) if self.num_classes else None
    return np.concatenate(xs)[:self.num], labels, nfe

  def __call__(self, params, step: int) -> dict:
    """Sample, score and return the scalars to log (``eval/...``)."""
    from jdiff import eval as jeval  # pylint: disable=g-import-not-at-top
    t0 = time.perf_counter()
    x, labels, nfe = self.samples(params)
    seconds = time.perf_counter() - t0
    out = {"eval/num_samples": self.num, "eval/nfe": nfe, "eval/sample_seconds": seconds}
    finite = np.all(np.isfinite(x.reshape(x.shape[0], -1)), axis=1)
    if not np.all(finite):
      self.log(f"step {step}: eval skipped: {int(np.sum(~finite))} of {self.num} samples are not "
               f"finite")
      return {**out, "eval/nonfinite_samples": int(np.sum(~finite))}
    if self.net is None:
      self.net = jeval.get_feature_net()
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # N <= 128: FD is biased (the floor at the same N says how much)
      r = jeval.report(np.clip(x, -1.0, 1.0), labels, net=self.net, seed=self.seed)
    for k in ("fd", "kid", "kid_std", "precision", "recall", "accuracy"):
      if r.get(k) is not None:
        out[f"eval/{k}"] = r[k]
        out[f"eval/{k}_floor"] = r["floor"][k]
    out["eval/seconds"] = time.perf_counter() - t0
    self.log(f"step {step}: eval ({self.sampler}, {self.steps} steps, NFE {nfe}, EMA): "
             f"{jeval.format_report(r)}")
    return out


__all__ = ["MIN_SAMPLES", "PeriodicEval"]
