"""Every metric for one checkpoint and one sampler (``eval.py``).

Samples come from :func:`jdiff.generation.generate` (the ``sample.py`` path: pmapped over the
local devices, sample ``i`` from ``fold_in(PRNGKey(seed), i)``), are clipped to [-1, 1] and scored by
:func:`jdiff.eval.report` (FD, KID ± std, precision, recall, classifier accuracy of the requested labels
for conditional models, each with its floor: real test images at the same N). Optionally,
:func:`jdiff.eval.bpd.bits_per_dim_report` gives ODE and VLB bits/dim on the first N test images of the
model's dataset.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Optional

import numpy as np

from jdiff import generation
from jdiff.eval import bpd as bpd_lib
from jdiff.eval import evaluate
from jdiff.eval import features as features_lib
from jdiff.eval.evaluate import MIN_SAMPLES


class NonFiniteSamples(ValueError):
  """Some samples hold NaN or Inf, so no metric can be computed."""

  def __init__(self, count: int, num: int):
    super().__init__(f"{count} of {num} samples are NaN or Inf; the model or sampler diverged (try "
                     f"more --steps or another --sampler)")
    self.count = count


def check_sample_metrics(restored, num: int, *, what: str = "--num",
                         fix: str = "pass --num=0 --bpd for bits/dim only") -> None:
  """The sample metrics need a Fashion-MNIST model and at least ``MIN_SAMPLES`` samples (``what``
  names the setting and ``fix`` the way out in the errors)."""
  name = restored.config.data.name
  if name != "fashion_mnist" or tuple(restored.data_shape) != features_lib.IMAGE_SHAPE:
    raise ValueError(f"the sample metrics (FD, KID, precision, recall) score samples with the "
                     f"Fashion-MNIST feature net against Fashion-MNIST images (28x28x1), but this model "
                     f"makes {name!r} data of shape {tuple(restored.data_shape)}; {fix}")
  evaluate.check_num_samples(num, what)


def heldout_data(config, num: int) -> tuple[np.ndarray, np.ndarray, bool]:
  """The first ``num`` test examples of the model's dataset in its data space, their labels, and
  whether they are 8-bit images."""
  from jdiff.data import get_dataset  # pylint: disable=g-import-not-at-top
  c = config.data
  kwargs = {"image_size": c.image_size} if c.get("image_size", 0) else {}
  try:
    src = get_dataset(c.name, split="test", data_dir=c.get("data_dir", "") or None, **kwargs)
  except (ValueError, FileNotFoundError) as e:
    raise ValueError(f"bits/dim needs the test split of {c.name!r}: "
                     f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
  if num > src.num_examples:
    raise ValueError(f"--bpd_num={num} exceeds the {src.num_examples} test examples of {c.name!r}")
  x, y = src.read(np.arange(num))
  x = x.astype(np.float32)
  if src.is_image:
    x = x / np.float32(127.5) - np.float32(1.0)
  return x, np.asarray(y, np.int32), bool(src.is_image)


def evaluate_checkpoint(restored, settings, *, bpd_num: int = 0, bpd_options: Optional[dict] = None,
                        net: Optional[features_lib.FeatureNet] = None, devices=None,
                        progress: bool = True, log=print) -> dict:
  """Sample ``settings.num`` images (``0``: none) and score them; with ``bpd_num > 0`` also the bits/dim
  of that many test images. Returns the JSON-ready report."""
  out = {"checkpoint": restored.checkpoint_dir, "workdir": restored.workdir, "step": restored.step,
         "params": restored.which, "metrics": None, "bpd": None}
  if settings.num:
    check_sample_metrics(restored, settings.num)
  if bpd_num and bpd_num < 2:
    raise ValueError(f"--bpd_num={bpd_num} is too few: the standard error needs at least 2 images")
  if settings.num:
    result = generation.generate(restored, settings, devices=devices, progress=progress)
    s = result.settings
    out["settings"] = s.to_json()
    out["nfe"] = result.nfe_per_batch
    out["timing"] = result.throughput()
    x = result.samples
    bad = generation.nonfinite_rows(x)
    if bad.any():
      raise NonFiniteSamples(int(bad.sum()), x.shape[0])
    net = features_lib.get_feature_net() if net is None else net
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # small N: FD is biased; the floor at the same N says how much
      out["metrics"] = evaluate.report(np.clip(x, -1.0, 1.0), result.labels, net=net, seed=s.seed)
    log(evaluate.format_report(out["metrics"]))
  else:
    out["settings"] = dataclasses.asdict(settings)
  if bpd_num:
    x, y, discrete = heldout_data(restored.config, bpd_num)
    opts = dict(bpd_options or {})
    cond = y if restored.num_classes else None
    out["bpd"] = bpd_lib.bits_per_dim_report(
        restored.model_fn, restored.params, restored.schedule, restored.parametrization, x, cond=cond,
        learned_variance=restored.learned_variance, discrete=discrete, **opts)
    out["bpd"]["conditional_on_labels"] = cond is not None
    log(f"bits/dim on {bpd_num} {restored.config.data.name} test images: "
        f"{bpd_lib.format_bpd(out['bpd'])}")
  return out


__all__ = ["MIN_SAMPLES", "NonFiniteSamples", "check_sample_metrics", "evaluate_checkpoint",
           "heldout_data"]
