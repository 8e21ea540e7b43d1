"""One call that scores Fashion-MNIST (or MNIST-1D) samples and states the floor of every number.

A metric computed from ``N`` samples is biased (FD most of all: it is far from 0 for two finite
samples of one distribution), so a score is only readable next to the same metric for real data.
:func:`report` therefore computes, in the dataset's feature space of :mod:`jdiff.eval.features`
(``dataset="fashion_mnist"``, the default, or ``"mnist1d"``):

- the samples against ``N`` real training examples (a fixed random subset; MNIST-1D has 4,000): FD,
  KID, precision, recall, the classifier accuracy of class-conditional samples against their requested
  labels, and for images (on pixels) ``noisy``, the share of samples rougher than every one of those
  images (noise tiles, :func:`jdiff.eval.metrics.noise_fraction`; ``None`` for signals);
- the **floor**: the same metrics for ``min(N, test split)`` real *test* examples (MNIST-1D: at most
  1,000) against the same training subset (test accuracy for the accuracy), i.e. what a perfect
  generator would score at this ``N``.
"""
from __future__ import annotations

import functools
import warnings
import weakref
from typing import Optional

import numpy as np

from jdiff import _checks
from jdiff.eval import features as features_lib
from jdiff.eval import metrics

MIN_SAMPLES = 4  # precision/recall with k = 3 need N > 3 (FD and KID need 2)


def check_num_samples(num: int, what: str = "num") -> None:
  """``report`` needs at least ``MIN_SAMPLES`` samples (``what`` names the setting in the error)."""
  if num < MIN_SAMPLES:
    raise ValueError(f"{what}={num} is too few samples: precision/recall (k=3) need at least "
                     f"{MIN_SAMPLES}, FD and KID at least 2; use 1000 or more for stable numbers "
                     f"(or --num=0 with --bpd to skip the sample metrics)")


@functools.lru_cache(maxsize=4)
def _source(dataset: str, split: str):
  from jdiff.data import get_dataset  # pylint: disable=g-import-not-at-top
  return get_dataset(dataset, split=split)  # read (and decompressed) once per process


def _real_examples(dataset: str, split: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  src = _source(dataset, split)
  rng = np.random.default_rng([seed, 0 if split == "train" else 1])
  idx = np.sort(rng.choice(src.num_examples, min(n, src.num_examples), replace=False))
  x, y = src.read(idx)
  return features_lib.to_model_units(x), y


def report(images, labels=None, *, dataset: str = features_lib.DEFAULT_DATASET,
           net: Optional[features_lib.FeatureNet] = None, seed: int = 0,
           kid_subset_size: int = 1000, kid_num_subsets: int = 100, k: int = 3) -> dict:
  """Score Fashion-MNIST (or MNIST-1D) samples and the floor for the same sample count.

  Args:
    images: samples ``float [N, 28, 28, 1]`` in [-1, 1] (Fashion-MNIST) or ``float [N, 40, 1]`` in the
      data's units (MNIST-1D), ``N > k`` (use ``N`` in the thousands: FD of 128-D features is heavily
      biased for ``N`` near 128).
    labels: the class each sample was generated for (``int [N]``), or ``None`` (unconditional).
    dataset: ``"fashion_mnist"`` (default) or ``"mnist1d"``: the feature net and the real data.
    net: the feature net (default :func:`jdiff.eval.get_feature_net` for ``dataset``, trained once
      and cached); it must be ``dataset``'s.
    seed: picks the real training/test subsets and the KID subsets.
    kid_subset_size: KID subset size, capped at ``N // 2`` so the subsets differ and ``kid_std``
      means something (the estimator is unbiased for any subset size).
    kid_num_subsets: number of KID subsets.
    k: neighbourhood size of precision/recall (Kynkäänniemi et al. 2019 use 3).

  Returns:
    ``{"num_samples", "fd", "kid", "kid_std", "kid_stderr", "precision", "recall", "noisy" (None for
    signals), "accuracy" (None without labels), "reference", "floor": {the same keys for real test
    examples; "accuracy" is the test accuracy}}``.
  """
  spec = features_lib.get_spec(dataset)
  k = _checks.positive_int(k, "k")
  shape = np.shape(images)
  n = int(shape[0]) if len(shape) else 0
  need = max(k + 1, 2)
  if n < need:
    raise ValueError(f"report needs at least {need} samples (precision/recall with k={k} needs N > "
                     f"k; FD and KID need N >= 2), got {n}; use thousands for stable numbers")
  features_lib.check_inputs(images, spec.dataset)
  if labels is not None:
    labels = features_lib.check_labels(labels, n)
  if net is not None and net.dataset != spec.dataset:
    raise ValueError(f"net is the {net.spec.title} feature net but dataset={dataset!r}; pass "
                     f"dataset={net.dataset!r} or that dataset's net")
  if n <= spec.feature_dim:
    warnings.warn(f"{n} samples for {spec.feature_dim}-D features: FD is heavily biased; "
                  f"compare it only with the floor", stacklevel=2)
  net = features_lib.get_feature_net(spec.dataset) if net is None else net
  m = min(_checks.positive_int(kid_subset_size, "kid_subset_size"), max(2, n // 2))
  kw = {"kid_subset_size": m, "kid_num_subsets": kid_num_subsets, "k": k, "seed": seed}

  ref_f, ref_rough, floor = _reference(net, n, kw)
  gen_f, gen_logits = net.features_and_logits(images)
  out = {"num_samples": n, **_pick(metrics.feature_metrics(ref_f, gen_f, **kw))}
  out["noisy"] = None if ref_rough is None else metrics.noise_fraction(metrics.roughness(images),
                                                                       ref_rough)
  out["accuracy"] = None if labels is None else metrics.accuracy(gen_logits, labels)
  what = "images" if spec.images else "signals"
  out["reference"] = f"{spec.dataset} train ({ref_f.shape[0]} {what}, seed {seed})"
  out["floor"] = dict(floor)
  return out


# Reference features and floors per feature net, keyed by (N, metric options): computed once per
# process (train.py's periodic evaluation and the quality-vs-NFE bench score many sample sets of one N).
_REFERENCE_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _reference(net: features_lib.FeatureNet, n: int, kw: dict) -> tuple[np.ndarray, Optional[np.ndarray],
                                                                        dict]:
  """Features and (images only, else ``None``) roughness of ``n`` real training examples, and the
  floor (``min(n, test split)`` real test examples against them)."""
  cache = _REFERENCE_CACHE.setdefault(net, {})
  key = (n, tuple(sorted(kw.items())))
  if key not in cache:
    seed, dataset = kw["seed"], net.dataset
    ref_x, _ = _real_examples(dataset, "train", n, seed)
    ref_f = net.features(ref_x)
    nf = min(n, _source(dataset, "test").num_examples, ref_f.shape[0])
    test_x, test_y = _real_examples(dataset, "test", nf, seed)
    test_f, test_logits = net.features_and_logits(test_x)
    floor_kw = {**kw, "kid_subset_size": min(kw["kid_subset_size"], max(2, nf // 2))}  # distinct subsets
    floor = {"num_samples": nf, **_pick(metrics.feature_metrics(ref_f[:nf], test_f, **floor_kw))}
    ref_rough = metrics.roughness(ref_x) if net.spec.images else None
    floor["noisy"] = (None if ref_rough is None else
                      metrics.noise_fraction(metrics.roughness(test_x), ref_rough))
    floor["accuracy"] = metrics.accuracy(test_logits, test_y)
    cache[key] = (ref_f, ref_rough, floor)
  return cache[key]


def _pick(d: dict) -> dict:
  return {key: d[key] for key in ("fd", "kid", "kid_std", "kid_stderr", "precision", "recall")}


def format_report(r: dict) -> str:
  """One line: each metric with its floor in parentheses."""
  f = r["floor"]
  parts = [f"N={r['num_samples']}", f"FD {r['fd']:.4g} (floor {f['fd']:.4g})",
           f"KID {r['kid']:.4g}±{r['kid_std']:.2g} (floor {f['kid']:.4g})",
           f"precision {r['precision']:.3f} (floor {f['precision']:.3f})",
           f"recall {r['recall']:.3f} (floor {f['recall']:.3f})"]
  if r.get("noisy") is not None:
    parts.append(f"noisy {r['noisy']:.3f} (floor {f['noisy']:.3f})")
  if r.get("accuracy") is not None:
    parts.append(f"accuracy {r['accuracy']:.3f} (floor {f['accuracy']:.3f})")
  return ", ".join(parts)


__all__ = ["format_report", "report"]
