"""Every metric for one checkpoint and one sampler (``eval.py``).

Samples come from :func:`jdiff.generation.generate` (the ``sample.py`` path: pmapped over the
local devices, sample ``i`` from ``fold_in(PRNGKey(seed), i)``) and are scored by the report of the
model's dataset (:data:`SCORED`), each number with its floor (real held-out data at the same N):

- ``fashion_mnist`` images, clipped to [-1, 1], and ``mnist1d`` signals: :func:`jdiff.eval.report` in
  the feature space of the dataset's classifier (FD, KID ± std, precision, recall, the classifier
  accuracy of the requested labels for conditional models);
- ``point_clouds``: :func:`jdiff.eval.point_report.report` (1-NNA, COV and MMD by Chamfer distance
  against held-out shapes, per class). Optionally,
:func:`jdiff.eval.bpd.bits_per_dim_report` gives ODE and VLB bits/dim on the first N test images of the
model's dataset.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Optional

import numpy as np

from jdiff import generation
from jdiff.data import text as text_data
from jdiff.eval import bpd as bpd_lib
from jdiff.eval import evaluate
from jdiff.eval import features as features_lib
from jdiff.eval import point_report
from jdiff.eval import text_report
from jdiff.eval.evaluate import MIN_SAMPLES

# The datasets whose samples have a report: name -> the data shape it scores.
SCORED = {"fashion_mnist": features_lib.IMAGE_SHAPE, "mnist1d": (40, 1), "point_clouds": None}


class NonFiniteSamples(ValueError):
  """Some samples hold NaN or Inf, so no metric can be computed."""

  def __init__(self, count: int, num: int):
    super().__init__(f"{count} of {num} samples are NaN or Inf; the model or sampler diverged (try "
                     f"more --steps or another --sampler)")
    self.count = count


def check_sample_metrics(restored, num: int, *, what: str = "--num",
                         fix: str = "pass --num=0 --bpd for bits/dim only") -> None:
  """The sample metrics need a model of a dataset in :data:`SCORED` and enough samples: at least
  ``MIN_SAMPLES``; for point clouds 2 per class (1-NNA) and at most the held-out shapes per class
  (``what`` names the setting and ``fix`` the way out in the errors)."""
  name = restored.config.data.name
  shape = tuple(restored.data_shape)
  if restored.data_kind == "tokens":  # any text dataset: scored against its own held-out split
    if num < 2:
      raise ValueError(f"{what}={num} is too few samples for the text report; use 2 or more (256 "
                       f"gives stable statistics)")
    return
  want = SCORED.get(name, ())
  if want == () or (want is not None and shape != want) or (want is None and
                                                              restored.data_kind != "points"):
    raise ValueError(f"the sample metrics score samples of fashion_mnist (28x28x1 images), mnist1d "
                     f"(40-sample signals) or point_clouds (point sets), but this model makes {name!r} "
                     f"data of shape {shape}; {fix}")
  if name != "point_clouds":
    evaluate.check_num_samples(num, what)
    return
  from jdiff.data import point_clouds  # pylint: disable=g-import-not-at-top
  classes = min(restored.num_classes, num) or 1
  per_class = -(-num // classes)
  if num // classes < 2:
    raise ValueError(f"{what}={num} is too few samples: 1-NNA needs at least 2 shapes per class, so "
                     f"at least {2 * classes} for {classes} class(es); use 100 or more per class")
  if per_class > point_clouds.DEFAULT_SIZES["test"] * (1 if restored.num_classes else
                                                       len(point_clouds.CLASSES)):
    raise ValueError(f"{what}={num} is too many: the point_clouds test split holds "
                     f"{point_clouds.DEFAULT_SIZES['test']} shapes per class to compare with; use at "
                     f"most {point_clouds.DEFAULT_SIZES['test'] * classes}")


def feature_net(restored, net=None):
  """The feature net that scores ``restored``'s samples (``net`` if given; ``None`` for point
  clouds, which are scored by Chamfer distances)."""
  name = restored.config.data.name
  if net is not None or name == "point_clouds" or restored.data_kind == "tokens":
    return net
  return features_lib.get_feature_net(name)


def score(restored, samples, labels, *, seed: int = 0, net=None) -> dict:
  """The report of ``restored``'s dataset for ``samples`` (checked by :func:`check_sample_metrics`)."""
  name = restored.config.data.name
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # small N: FD is biased; the floor at the same N says how much
    if name == "point_clouds":
      return point_report.report(samples, labels, seed=seed)
    if restored.data_kind == "tokens":
      texts = text_data.decode_rows(restored.vocab, samples)
      return text_report.sample_report(texts, samples, text_report.corpus(restored), seed=seed)
    if name == "fashion_mnist":
      samples = np.clip(samples, -1.0, 1.0)
    return evaluate.report(samples, labels, net=feature_net(restored, net), seed=seed, dataset=name)


def format_metrics(restored, metrics: dict) -> str:
  """The report as text (one line; for point clouds also one line per class)."""
  if restored.config.data.name == "point_clouds":
    return point_report.format_report(metrics)
  if restored.data_kind == "tokens":
    return text_report.format_report(metrics)
  return evaluate.format_report(metrics)


def scalars(metrics: dict) -> dict:
  """The headline numbers of a report and their floors, ``{name: value, name_floor: value}``: FD,
  KID, precision, recall, noisy, accuracy for feature reports; the class means of 1-NNA, COV and
  MMD-CD for point clouds."""
  if "per_class" in metrics:
    head, floor = metrics["mean"], metrics["floor"]["mean"]
  else:
    head, floor = metrics, metrics["floor"]
  out = {}
  for k in ("fd", "kid", "kid_std", "precision", "recall", "noisy", "accuracy", "1nna_cd", "cov_cd",
            "mmd_cd", "word_fraction", "lm_bits") + tuple(f"js_{k}gram" for k in text_report.NGRAM_ORDERS):
    if head.get(k) is not None:
      out[k] = head[k]
      out[f"{k}_floor"] = floor[k]
  return out


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
    out["metrics"] = score(restored, x, result.labels, seed=s.seed, net=net)
    log(format_metrics(restored, out["metrics"]))
  else:
    out["settings"] = dataclasses.asdict(settings)
  if bpd_num and restored.data_kind == "tokens":  # held-out bits per character from the model's bound
    test = text_report.text_split(restored.config, "test", restored.vocab)
    if bpd_num > test.num_examples:
      raise ValueError(f"--bpd_num={bpd_num} exceeds the {test.num_examples} held-out chunks of "
                       f"{restored.config.data.name!r}")
    opts = dict(bpd_options or {})
    out["bpd"] = text_report.heldout_bits(
        restored, test.read(np.arange(bpd_num))[0], batch_size=opts.get("batch_size", 64),
        repeats=opts.get("vlb_repeats", 4), seed=opts.get("seed", 0))
    log(f"held-out bits per character on {bpd_num} chunks of {restored.config.data.name} "
        f"({out['bpd']['bound']} bound, {out['bpd']['repeats']} draws each): "
        f"{out['bpd']['bits_per_token']:.4f} ± {out['bpd']['stderr']:.4f}")
  elif bpd_num:
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


__all__ = ["MIN_SAMPLES", "NonFiniteSamples", "SCORED", "check_sample_metrics", "evaluate_checkpoint",
           "feature_net", "format_metrics", "heldout_data", "scalars", "score"]
