"""One call that scores generated point clouds of the ``point_clouds`` dataset and states the floor.

Like :mod:`jdiff.eval.evaluate` for images, every number comes with what real data score at the same
size, because the Chamfer-based metrics of :mod:`jdiff.eval.point_metrics` are biased by the number of
shapes: :func:`report` compares the samples of each class with as many held-out shapes of that class
(the ``test`` split, a fixed random subset) and, as the **floor**, as many real ``train`` shapes with
the same held-out shapes. 1-NNA (Yang et al. 2019) is 50% for a perfect generator at any size; MMD-CD
and COV-CD have no ideal value except the floor's.
"""
from __future__ import annotations

import functools
from typing import Optional

import numpy as np

from jdiff.eval import point_metrics

DATASET = "point_clouds"


@functools.lru_cache(maxsize=2)
def _source(split: str):
  from jdiff.data import get_dataset  # pylint: disable=g-import-not-at-top
  return get_dataset(DATASET, split=split)


def _pick(split: str, want: np.ndarray, seed: int, what: str) -> np.ndarray:
  """For each entry of ``want`` (a class label, or -1 for any class), one shape of ``split`` of that
  class, distinct within a class, chosen by ``seed``: ``[len(want), P, 3]``."""
  src = _source(split)
  all_labels = src.labels
  out = np.empty((len(want),) + tuple(src.shape), np.float32)
  for c in np.unique(want):
    rows = np.flatnonzero(want == c)
    pool = np.arange(all_labels.size) if c < 0 else np.flatnonzero(all_labels == c)
    if rows.size > pool.size:
      name = "all classes" if c < 0 else f"class {int(c)}"
      raise ValueError(f"{rows.size} samples of {name} but the {what} has only {pool.size} "
                       f"{split} shapes of it; score at most {pool.size} per class (--num)")
    rng = np.random.default_rng([seed, int(c) + 1, 0 if split == "train" else 1])
    idx = np.sort(rng.choice(pool, rows.size, replace=False))
    out[rows] = src.read(idx)[0]
  return out


def report(samples, labels=None, *, seed: int = 0, class_names: Optional[tuple] = None) -> dict:
  """Score generated shapes ``[N, P, 3]`` against held-out ``point_clouds`` shapes.

  Args:
    samples: generated point sets ``float [N, P, 3]`` (``P`` need not match the dataset's 512).
    labels: the class each sample was generated for (``int [N]``), or ``None`` (unconditional: all
      classes pooled, against test shapes of any class).
    seed: picks the reference and floor subsets.
    class_names: the names of the labels (default the dataset's classes).

  Returns:
    ``{"num_samples", "per_class": {class: metrics}, "mean": {"mmd_cd", "cov_cd", "1nna_cd"},
    "reference", "floor": {the same keys for real train shapes}}``; unconditional samples are scored
    as one class named ``"all"``.
  """
  from jdiff.data import point_clouds  # pylint: disable=g-import-not-at-top
  x = np.asarray(samples, np.float32)
  if x.ndim != 3 or x.shape[-1] != 3:
    raise ValueError(f"point-cloud samples must have shape [N, P, 3], got {x.shape}")
  n = x.shape[0]
  names = tuple(class_names or point_clouds.CLASSES)
  if labels is None:
    want = np.full((n,), -1)
  else:
    want = np.asarray(labels)
    if want.shape != (n,) or not np.issubdtype(want.dtype, np.integer):
      raise ValueError(f"labels must be integer class labels of shape [{n}], got {want.dtype} "
                       f"{want.shape}")
    if n and (want.min() < 0 or want.max() >= len(names)):
      raise ValueError(f"labels must lie in [0, {len(names)}), got values in [{want.min()}, "
                       f"{want.max()}]")
  present = np.unique(want)
  used = ["all"] if labels is None else [names[c] for c in present]
  local = np.searchsorted(present, want)  # labels renumbered over the classes present
  ref = _pick("test", want, seed, "held-out reference")
  real = _pick("train", want, seed, "floor")
  out = {"num_samples": int(n), **point_metrics.per_class_metrics(x, local, ref, local, used)}
  out["reference"] = (f"{DATASET} test ({n} shapes, the samples' classes and counts, seed {seed})")
  out["floor"] = point_metrics.per_class_metrics(real, local, ref, local, used)
  return out


def format_report(r: dict) -> str:
  """A line of the class means with their floors, then one line per class."""
  m, f = r["mean"], r["floor"]["mean"]
  lines = [f"N={r['num_samples']}, mean over classes: 1-NNA {m['1nna_cd']:.3f} (floor "
           f"{f['1nna_cd']:.3f}; ideal 0.5), COV {m['cov_cd']:.3f} (floor {f['cov_cd']:.3f}), "
           f"MMD-CD {m['mmd_cd']:.4g} (floor {f['mmd_cd']:.4g})"]
  for name, c in r["per_class"].items():
    fc = r["floor"]["per_class"][name]
    lines.append(f"  {name:>9} (n={c['num_samples']}): 1-NNA {c['1nna_cd']:.3f} ({fc['1nna_cd']:.3f}), "
                 f"COV {c['cov_cd']:.3f} ({fc['cov_cd']:.3f}), MMD-CD {c['mmd_cd']:.4g} "
                 f"({fc['mmd_cd']:.4g})")
  return "\n".join(lines)


__all__ = ["format_report", "report"]
