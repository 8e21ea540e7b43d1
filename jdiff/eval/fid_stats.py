"""Standard FID (Heusel et al. 2017, Eq. 6) with the FID Inception-v3 port, and reference statistics.

The statistics of a set of images are the mean ``mu [2048]`` and covariance ``sigma [2048, 2048]`` of
its Inception pool features; a dataset's statistics are computed once and saved as ``.npz``
(``mu``, ``sigma``, ``num_samples``; loaded with ``allow_pickle=False``)::

  net = jdiff.eval.load_fid_inception()                   # weights from tools/convert_fid_inception.py
  ref = jdiff.eval.dataset_statistics("cifar10", "train", net, path="cifar10_train_stats.npz")
  score = jdiff.eval.fid(samples, "cifar10_train_stats.npz", net)   # samples: [N, H, W, C] in [-1, 1]

Statistics files written by pytorch-fid (``--save-stats``: ``mu``, ``sigma``) load as well.
"""
from __future__ import annotations

import os
from typing import Iterable, Mapping, Optional, Union

import numpy as np

from jdiff import _checks
from jdiff.eval import metrics
from jdiff.utils import files
from jdiff.eval.inception import FIDInception, load_fid_inception


class RunningStats:
  """Mean and unbiased covariance of features streamed in batches (float64 sums around a shift
  taken from the first batch, which keeps the one-pass formula well conditioned)."""

  def __init__(self):
    self.n = 0
    self._shift = self._s1 = self._s2 = None

  def update(self, features) -> "RunningStats":
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] == 0:
      raise ValueError(f"features must have shape [N, D] with N >= 1, got {f.shape}")
    if self._shift is None:
      self._shift = f.mean(axis=0)
      self._s1 = np.zeros(f.shape[1])
      self._s2 = np.zeros((f.shape[1], f.shape[1]))
    elif f.shape[1] != self._shift.shape[0]:
      raise ValueError(f"features have dimension {f.shape[1]}, earlier batches {self._shift.shape[0]}")
    c = f - self._shift
    self._s1 += c.sum(axis=0)
    self._s2 += c.T @ c
    self.n += f.shape[0]
    return self

  def result(self) -> dict:
    if self.n < 2:
      raise ValueError(f"statistics need at least 2 samples, got {self.n} (and more than the "
                       f"feature dimension for a full-rank covariance)")
    m = self._s1 / self.n
    sigma = (self._s2 - self.n * np.outer(m, m)) / (self.n - 1)
    return {"mu": self._shift + m, "sigma": 0.5 * (sigma + sigma.T), "num_samples": self.n}


def statistics_from_features(features) -> dict:
  """``{"mu", "sigma", "num_samples"}`` of features ``[N, D]``."""
  return RunningStats().update(features).result()


def compute_statistics(images: Union[np.ndarray, Iterable], net: Optional[FIDInception] = None,
                       ) -> dict:
  """Inception statistics of images ``[N, H, W, C]`` in [-1, 1], or of an iterable of such batches
  (streamed: features are never all held at once)."""
  net = load_fid_inception() if net is None else net
  stats = RunningStats()
  if isinstance(images, np.ndarray) or hasattr(images, "shape"):
    images = [images]
  for batch in images:
    stats.update(net.features(batch))
  return stats.result()


def save_statistics(path: str, stats: Mapping) -> str:
  """Write ``{"mu", "sigma"[, "num_samples"]}`` to ``path`` (``.npz``, atomically)."""
  mu, sigma = metrics._check_stats(stats["mu"], stats["sigma"], "stats")  # pylint: disable=protected-access
  arrays = {"mu": mu, "sigma": sigma}
  if "num_samples" in stats:
    arrays["num_samples"] = np.asarray(int(stats["num_samples"]), np.int64)
  return files.write_npz(path, arrays)


def load_statistics(path: str) -> dict:
  """Read statistics saved by :func:`save_statistics` (or pytorch-fid) with ``allow_pickle=False``."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no statistics file at {path}; compute it with "
                            f"jdiff.eval.dataset_statistics(name, split, net, path={path!r})")
  data = _checks.load_arrays(path, "statistics file")  # never unpickles (object arrays refused)
  if "mu" not in data or "sigma" not in data:
    raise ValueError(f"{path} must hold arrays 'mu' and 'sigma', it holds {sorted(data)}")
  out = {"mu": np.asarray(data["mu"], np.float64), "sigma": np.asarray(data["sigma"], np.float64)}
  if "num_samples" in data:
    out["num_samples"] = int(data["num_samples"])
  metrics._check_stats(out["mu"], out["sigma"], path)  # pylint: disable=protected-access
  return out


def dataset_statistics(name: str, split: str = "train", net: Optional[FIDInception] = None, *,
                       num_examples: Optional[int] = None, batch_size: int = 250,
                       path: Optional[str] = None, **dataset_kwargs) -> dict:
  """Inception statistics of (the first ``num_examples`` images of) a dataset split, read with
  :func:`jdiff.data.get_dataset` and scaled to [-1, 1]; saved to ``path`` when given."""
  from jdiff.data import get_dataset  # pylint: disable=g-import-not-at-top
  source = get_dataset(name, split, **dataset_kwargs)
  if not source.is_image:
    raise ValueError(f"dataset {name!r} holds vectors, not images: FID needs images")
  n = source.num_examples if num_examples is None else min(
      _checks.positive_int(num_examples, "num_examples"), source.num_examples)
  batch_size = _checks.positive_int(batch_size, "batch_size")

  def batches():
    for i in range(0, n, batch_size):
      data, _ = source.read(np.arange(i, min(i + batch_size, n)))
      yield data.astype(np.float32) / np.float32(127.5) - np.float32(1.0)

  stats = compute_statistics(batches(), net)
  if path is not None:
    save_statistics(path, stats)
  return stats


def fid(images, reference: Union[str, Mapping], net: Optional[FIDInception] = None) -> float:
  """FID of images ``[N, H, W, C]`` in [-1, 1] (or an iterable of batches) against reference
  statistics (a dict with ``mu``/``sigma`` or a ``.npz`` path)."""
  ref = load_statistics(reference) if isinstance(reference, (str, os.PathLike)) else reference
  stats = compute_statistics(images, net)
  return metrics.frechet_distance(stats["mu"], stats["sigma"], ref["mu"], ref["sigma"])


__all__ = ["RunningStats", "compute_statistics", "dataset_statistics", "fid", "load_statistics",
           "save_statistics", "statistics_from_features"]
