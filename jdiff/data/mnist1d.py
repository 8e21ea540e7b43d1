"""MNIST-1D (Greydanus 2020, "Scaling down deep learning", arXiv:2011.14439): 1-D signals of 40 samples.

Ten 1-D digit templates of 12 points are padded, scaled, sheared, translated, given correlated and i.i.d.
noise and resampled to length 40 (``mnist1d.data.make_dataset``); the whole set is then standardised to
mean 0 and standard deviation 1. With the standard arguments (``get_dataset_args()``: seed 42, 5,000
examples, split 0.8) there are 4,000 train and 1,000 test examples, 10 balanced classes.

The set is built offline by the ``mnist1d`` package (``pip install mnist1d``); ``get_dataset``, which
downloads a pickle, is never called. ``make_dataset`` re-seeds the global ``random`` and ``numpy.random``
generators; :func:`load_mnist1d` restores both afterwards. Values are in model units already (mean 0,
std 1 over train and test together; range about [-5.5, 4.6]), channels-last ``[n, 40, 1]``.
"""
from __future__ import annotations

import functools
import random

import numpy as np

SPLITS = ("train", "test")
LENGTH = 40
NUM_CLASSES = 10


def _import_mnist1d():
  try:
    import mnist1d.data  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("MNIST-1D needs the mnist1d package (Greydanus 2020): pip install mnist1d") from e
  return mnist1d.data


@functools.lru_cache(maxsize=1)
def _make() -> dict:
  """The standard dataset (``get_dataset_args()``), built once; global RNG states restored."""
  m = _import_mnist1d()
  np_state, py_state = np.random.get_state(), random.getstate()
  try:
    d = m.make_dataset(m.get_dataset_args())
  finally:
    np.random.set_state(np_state)
    random.setstate(py_state)
  out = {"train": (d["x"], d["y"]), "test": (d["x_test"], d["y_test"])}
  return {k: (np.asarray(x, np.float32)[:, :, None], np.asarray(y, np.int32)) for k, (x, y) in out.items()}


def load_mnist1d(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
  """The MNIST-1D ``split`` (``"train"``: 4,000 examples, ``"test"``: 1,000) as ``(x, labels)``.

  ``x`` is ``float32 [n, 40, 1]`` (channels-last 1-D signals standardised over the whole set; train:
  min -5.48, max 4.53, mean -0.0003, std 0.998; test: min -4.20, max 4.41, std 1.009), ``labels`` is
  ``int32 [n]`` in [0, 10). Built on the first call (about a second) and cached in-process; the arrays
  are read-only views of that cache (copy them to modify).

  Raises:
    ValueError: ``split`` is not ``"train"`` or ``"test"``.
    ImportError: the ``mnist1d`` package is not installed.
  """
  if split not in SPLITS:
    raise ValueError(f"MNIST-1D has splits {SPLITS}, got split={split!r}; pass split='train' or 'test'")
  x, y = _make()[split]
  x, y = x.view(), y.view()
  x.flags.writeable = False
  y.flags.writeable = False
  return x, y


__all__ = ["LENGTH", "NUM_CLASSES", "SPLITS", "load_mnist1d"]
