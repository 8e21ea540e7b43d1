"""Caption accuracy of text-to-image samples: does each image show what its caption asks for, where it
asks for it?

Compositional text-to-image benchmarks check every object a prompt names, and its position, with an
object detector (VISOR, Gokhale et al. 2022, arXiv:2212.10015; GenEval, Ghosh et al. 2023,
arXiv:2310.11513). On the canvases of :mod:`jdiff.data.captions` the places are fixed (place ``k`` is
columns ``[28 k, 28 (k + 1))``), so the project's Fashion-MNIST classifier
(:func:`jdiff.eval.features.get_feature_net`) applied to each place plays the detector:

- :func:`caption_accuracy`: the fraction of samples whose *every* place is classified as the class its
  caption asks for there (``items``, from :func:`jdiff.data.captions.caption_items`), and the accuracy
  of each place alone. A canvas with its two items swapped shows the right classes in the wrong places
  and scores 0, so the metric separates "draws the named items" from "puts them where asked"; with the
  classifier's ~91% accuracy per item, real test canvases score about 0.83 (both places right).
- :func:`fd_per_place`: the Fréchet distance (:func:`jdiff.eval.metrics.frechet_distance_from_features`)
  between the classifier features of the samples' and real canvases' items, place by place: the
  quality of what is drawn at each place, whatever its class.

Inputs are canvases ``[N, 28, 28 * places, 1]``, ``uint8`` (as stored) or float in [-1, 1] (model
units, as samplers return them); a single item is a canvas of one place.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from jdiff.eval import features as features_lib
from jdiff.eval import metrics

PLACE_WIDTH = 28  # columns per place: the classifier's input width


def _canvases(images, name: str) -> np.ndarray:
  a = np.asarray(images)
  if a.ndim != 4:
    raise ValueError(f"{name} must be canvases [N, 28, 28 * places, C], got shape {a.shape}")
  if a.shape[0] < 1:
    raise ValueError(f"{name} holds no images; pass at least one canvas")
  if a.shape[2] == 0 or a.shape[2] % PLACE_WIDTH:
    raise ValueError(f"{name} have width {a.shape[2]}, not a multiple of {PLACE_WIDTH}: canvases hold "
                     f"one {PLACE_WIDTH}-column item per place, side by side ([N, 28, 28 * places, C])")
  return a


def _num_places(num_places, a: np.ndarray, name: str) -> int:
  if num_places is None:
    return a.shape[2] // PLACE_WIDTH
  if isinstance(num_places, bool) or not isinstance(num_places, (int, np.integer)) or num_places < 1:
    raise ValueError(f"num_places must be an integer >= 1, got {num_places!r}")
  if a.shape[2] != PLACE_WIDTH * num_places:
    raise ValueError(f"{name} have width {a.shape[2]} but {num_places} place(s) need width "
                     f"{PLACE_WIDTH * num_places} ({PLACE_WIDTH} columns each); pass "
                     f"num_places={a.shape[2] // PLACE_WIDTH} or canvases of that width")
  return int(num_places)


def split_places(images, num_places: Optional[int] = None) -> list:
  """The ``k = num_places`` places of canvases ``[N, H, 28 k, C]``, left to right: ``k`` crops
  ``[N, H, 28, C]`` (views, same dtype). ``num_places`` defaults to ``width // 28``."""
  a = _canvases(images, "images")
  k = _num_places(num_places, a, "images")
  return [a[:, :, PLACE_WIDTH * j:PLACE_WIDTH * (j + 1)] for j in range(k)]


def _model_units(x: np.ndarray) -> np.ndarray:
  """``uint8`` as stored -> [-1, 1]; floats as given (the net checks they lie in [-1, 1])."""
  return features_lib.to_model_units(x) if x.dtype == np.uint8 else np.asarray(x, np.float32)


def _net(net):
  return features_lib.get_feature_net("fashion_mnist") if net is None else net


def _stacked(a: np.ndarray, k: int) -> np.ndarray:
  """All ``k`` places of canvases ``a`` as one batch ``[k N, 28, 28, C]`` (place-major), model units."""
  return _model_units(np.concatenate([a[:, :, PLACE_WIDTH * j:PLACE_WIDTH * (j + 1)]
                                      for j in range(k)]))


def predict_places(images, num_places: Optional[int] = None, net=None) -> np.ndarray:
  """``int32 [N, places]``: the class ``net`` (default: the project's Fashion-MNIST classifier; any
  object with ``predict(float32 [n, 28, 28, C] in [-1, 1]) -> int [n]``) sees at each place."""
  a = _canvases(images, "images")
  k = _num_places(num_places, a, "images")
  pred = np.asarray(_net(net).predict(_stacked(a, k))).astype(np.int32)
  return pred.reshape(k, a.shape[0]).T.copy()


def caption_accuracy(images, items, net=None) -> dict:
  """How often samples show the classes their captions ask for, at the places asked.

  Args:
    images: canvases ``[N, 28, 28 * places, C]``, ``uint8`` or float in [-1, 1].
    items: ``int [N, places]``, the class asked for at each place, left to right (``int [N]`` for
      single items); :func:`jdiff.data.captions.caption_items` parses them from the prompts.
    net: the classifier (default :func:`jdiff.eval.features.get_feature_net` ``("fashion_mnist")``;
      trained and cached on first use).

  Returns:
    ``{"accuracy": fraction of samples with every place right, "per_place": [accuracy of place k],
    "n": N, "num_places": places}``.
  """
  a = _canvases(images, "images")
  n, width = a.shape[0], a.shape[2]
  items = np.asarray(items)
  if items.ndim == 1:
    items = items[:, None]
  if items.ndim != 2 or items.shape[0] != n or not np.issubdtype(items.dtype, np.integer):
    raise ValueError(f"items must be integers [{n}, places] (the class asked for at each place of "
                     f"each of the {n} canvases), got {items.dtype} of shape {items.shape}")
  k = items.shape[1]
  if width != PLACE_WIDTH * k:
    raise ValueError(f"items name {k} place(s) per sample but the canvases of width {width} hold "
                     f"{width // PLACE_WIDTH}; pass one class per {PLACE_WIDTH}-column place")
  classes = features_lib.NUM_CLASSES
  if items.min() < 0 or items.max() >= classes:
    raise ValueError(f"items must be classes in [0, {classes}), got values in [{items.min()}, "
                     f"{items.max()}]")
  right = predict_places(a, k, net) == items
  return {"accuracy": float(np.mean(np.all(right, axis=1))),
          "per_place": [float(m) for m in np.mean(right, axis=0)], "n": int(n), "num_places": int(k)}


def fd_per_place(images, real_images, net=None) -> dict:
  """Fréchet distance, place by place, between the classifier features of ``images`` and of
  ``real_images`` (canvases of the same width; ``uint8`` or float in [-1, 1]; a few hundred or more
  of each for a full-rank covariance of the 128-D features).

  Returns:
    ``{"fd": mean over places, "per_place": [FD of place k], "n": N, "n_real": M}``.
  """
  a = _canvases(images, "images")
  b = _canvases(real_images, "real_images")
  if a.shape[1:] != b.shape[1:]:
    raise ValueError(f"images {a.shape[1:]} and real_images {b.shape[1:]} must be canvases of the same "
                     f"shape [28, 28 * places, C]; compare samples with real canvases of their layout")
  net = _net(net)
  k = a.shape[2] // PLACE_WIDTH
  fa = np.asarray(net.features(_stacked(a, k))).reshape(k, a.shape[0], -1)
  fb = np.asarray(net.features(_stacked(b, k))).reshape(k, b.shape[0], -1)
  per_place = [metrics.frechet_distance_from_features(fa[j], fb[j]) for j in range(k)]
  return {"fd": float(np.mean(per_place)), "per_place": per_place, "n": int(a.shape[0]),
          "n_real": int(b.shape[0])}


__all__ = ["PLACE_WIDTH", "caption_accuracy", "fd_per_place", "predict_places", "split_places"]
