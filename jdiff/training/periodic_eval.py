"""Sample-quality evaluation during training (``config.eval``; ``train.py`` calls it every K steps).

Every ``config.eval.every`` steps (and at the last step) the EMA parameters are scored exactly as
``eval.py`` scores a checkpoint (``jdiff.eval.model_eval.evaluate_checkpoint``: samples from the one
front door ``jdiff.generation.generate``, then FD, KID ± std, precision, recall and, for conditional
models, the classifier accuracy of the requested labels, each next to its floor: the same metrics for
real test images at the same N). The numbers go to ``metrics.jsonl`` and TensorBoard as ``eval/*``.
Sample ``i`` uses the noise ``fold_in(PRNGKey(eval.seed), i)`` and label ``i % num_classes`` at every
evaluation (and in ``eval.py`` / ``sample.py`` with the same seed), so successive evaluations differ only
through the parameters.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional

import jax

from jdiff import _checks
from jdiff import generation
from jdiff.eval import model_eval


class PeriodicEval:
  """Built from an ``Experiment`` before training starts (so a bad ``config.eval`` fails early)."""

  def __init__(self, exp, log: Callable[[str], None] = print):
    c = exp.config
    e = c.eval
    self.every = _checks.int_at_least(e.get("every", 0), "config.eval.every", 0)
    num = _checks.int_at_least(e.get("num_samples", 1000), "config.eval.num_samples", 1)
    batch = min(_checks.int_at_least(e.get("batch_size", 250), "config.eval.batch_size", 1), num)
    batch = -(-batch // jax.local_device_count()) * jax.local_device_count()  # whole devices
    steps = _checks.int_at_least(e.get("steps", 0), "config.eval.steps", 0) or None
    self.settings = generation.Settings(
        num=num, seed=_checks.int_at_least(e.get("seed", 0), "config.eval.seed", 0),
        sampler=e.get("sampler", "") or None, steps=steps, batch_size=batch)
    self.restored = generation.Restored.from_params(exp.model, None)  # compiled programs are reused
    model_eval.check_sample_metrics(self.restored, num, what="config.eval.num_samples",
                                    fix="set --config.eval.every=0")
    self.settings = generation.resolve(self.settings, self.restored)
    self.log = log
    self.net = None

  @classmethod
  def from_experiment(cls, exp, log: Callable[[str], None] = print) -> Optional["PeriodicEval"]:
    """``None`` when the config has no ``eval`` section or ``eval.every == 0``."""
    e = exp.config.get("eval", None)
    if e is None or not e.get("every", 0):
      if e is not None:
        _checks.int_at_least(e.get("every", 0), "config.eval.every", 0)
      return None
    return cls(exp, log)

  def due(self, step: int, total: int) -> bool:
    return step % self.every == 0 or step == total

  def __call__(self, params, step: int) -> dict:
    """Sample, score and return the scalars to log (``eval/...``)."""
    t0 = time.perf_counter()
    if self.net is None:
      self.net = model_eval.feature_net(self.restored)
    restored = dataclasses.replace(self.restored, params=params, step=step)
    s = self.settings
    try:
      r = model_eval.evaluate_checkpoint(restored, s, net=self.net, progress=False, log=lambda _: None)
    except model_eval.NonFiniteSamples as e:
      self.log(f"step {step}: eval skipped: {e.count} of {s.num} samples are not finite")
      return {"eval/num_samples": s.num, "eval/nonfinite_samples": e.count}
    m = r["metrics"]
    out = {"eval/num_samples": s.num, "eval/nfe": r["nfe"],
           "eval/sample_seconds": r["timing"]["sample_seconds"]}
    out.update({f"eval/{k}": v for k, v in model_eval.scalars(m).items()})
    out["eval/seconds"] = time.perf_counter() - t0
    self.log(f"step {step}: eval ({s.sampler}, {s.steps} steps, NFE {r['nfe']}, EMA): "
             f"{model_eval.format_metrics(restored, m)}")
    return out


__all__ = ["PeriodicEval"]
