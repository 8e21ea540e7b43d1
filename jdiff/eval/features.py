"""A small Fashion-MNIST classifier whose penultimate layer is the feature space for jdiff's metrics.

FID's Inception network (Heusel et al. 2017) was trained on ImageNet photos and sees a 28x28 grayscale
garment only after a 10x upsampling; a classifier trained on the data itself gives a feature space
that is cheap and meaningful for Fashion-MNIST, and its predictions score class-conditional samples
(the "classifier accuracy" of conditional generators). It sees clean images only: it is a
noise-level-free evaluation classifier, not a guidance classifier.

The network (``FashionCNN``, version 1): three 3x3 stride-2 convolutions with 32, 64 and 128 channels
and ReLU (28 -> 14 -> 7 -> 4), a 128-unit ReLU layer (the features), and a 10-way linear layer. jdiff
trains it on the 60,000 training images with a fixed seed (4 epochs, batch 128, Adam with a cosine
learning-rate decay from 2e-3; Kingma & Ba 2015), about a minute on two CPU cores, to ~91% test
accuracy, and caches the parameters in ``$JDIFF_CACHE/fmnist_classifier_v1.npz`` (default cache
``~/.cache/jdiff``). The cache holds a version and an architecture string; a file written for another
version or architecture is retrained (or refused with ``train_if_missing=False``).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdiff import _checks
from jdiff.utils import files

VERSION = 1
ARCHITECTURE = "conv3x3s2(32)-conv3x3s2(64)-conv3x3s2(128)-dense(128)-dense(10), relu"
FEATURE_DIM = 128
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)
TRAIN_CONFIG = {"seed": 0, "epochs": 4, "batch_size": 128, "learning_rate": 2e-3}
CACHE_ENV = "JDIFF_CACHE"
_META = "__meta__/"


def cache_dir(path: Optional[str] = None) -> str:
  """The cache directory: ``path`` if given, else ``$JDIFF_CACHE``, else ``~/.cache/jdiff``."""
  if path is not None:
    return os.fspath(path)
  env = os.environ.get(CACHE_ENV)
  return env if env else os.path.join(os.path.expanduser("~"), ".cache", "jdiff")


def cache_path(cache_dir_: Optional[str] = None) -> str:
  return os.path.join(cache_dir(cache_dir_), f"fmnist_classifier_v{VERSION}.npz")


class FashionCNN(nn.Module):
  """``__call__(x) -> (logits [N, 10], features [N, 128])`` for ``x`` ``[N, 28, 28, 1]`` in [-1, 1]."""
  feature_dim: int = FEATURE_DIM
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x):
    for ch in (32, 64, 128):
      x = nn.relu(nn.Conv(ch, (3, 3), strides=(2, 2), padding="SAME")(x))
    x = x.reshape(x.shape[0], -1)
    feats = nn.relu(nn.Dense(self.feature_dim)(x))
    return nn.Dense(self.num_classes)(feats), feats


def check_fmnist_images(images, name: str = "images") -> None:
  """Inputs of the Fashion-MNIST net: floats ``[N, 28, 28, 1]`` in [-1, 1], ``N >= 1``."""
  shape = np.shape(images)
  if len(shape) != 4 or tuple(shape[1:]) != IMAGE_SHAPE or shape[0] < 1:
    raise ValueError(f"{name} must have shape [N, 28, 28, 1] (Fashion-MNIST, channels last, N >= 1) "
                     f"for the Fashion-MNIST feature net, got shape {tuple(shape)}")
  _checks.check_unit_images(images, name, " for the Fashion-MNIST feature net")


def check_labels(labels, n: int, name: str = "labels") -> np.ndarray:
  a = np.asarray(labels)
  if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
    raise ValueError(f"{name} must be integers of shape [{n}] (one class per image), got "
                     f"{a.dtype} {a.shape}")
  if n and (a.min() < 0 or a.max() >= NUM_CLASSES):
    raise ValueError(f"{name} must lie in [0, {NUM_CLASSES}), got values in [{a.min()}, {a.max()}]")
  return a.astype(np.int32)


def _to_float(images_uint8: np.ndarray) -> np.ndarray:
  return images_uint8.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


class FeatureNet:
  """A trained :class:`FashionCNN`: features, logits, predictions and accuracy on image batches.

  Attributes:
    params: the Flax variables ``{"params": ...}``.
    test_accuracy: accuracy on the 10,000 test images, measured when it was trained.
    path: the cache file it was loaded from or saved to (``None`` if not cached).
    train_seconds: training wall time (from the cache when loaded).
  """

  def __init__(self, params, *, test_accuracy: float = float("nan"), path: Optional[str] = None,
               train_seconds: float = float("nan"), batch_size: int = 500):
    self.params = params
    self.test_accuracy = float(test_accuracy)
    self.path = path
    self.train_seconds = float(train_seconds)
    self.batch_size = _checks.positive_int(batch_size, "batch_size")
    module = FashionCNN()
    self._apply = jax.jit(module.apply)

  def _run(self, images, name: str) -> tuple[np.ndarray, np.ndarray]:
    check_fmnist_images(images, name)
    images = np.asarray(images, np.float32)
    n, b = images.shape[0], self.batch_size
    logits, feats = [], []
    for i in range(0, n, b):
      chunk = images[i:i + b]
      m = chunk.shape[0]
      if m < b:  # pad: one compiled program for every batch
        chunk = np.concatenate([chunk, np.zeros((b - m,) + IMAGE_SHAPE, np.float32)])
      lg, ft = self._apply(self.params, chunk)
      logits.append(np.asarray(lg)[:m])
      feats.append(np.asarray(ft)[:m])
    return np.concatenate(logits), np.concatenate(feats)

  def features(self, images) -> np.ndarray:
    """Penultimate-layer features ``float32 [N, 128]`` of images ``[N, 28, 28, 1]`` in [-1, 1]."""
    return self._run(images, "images")[1]

  def logits(self, images) -> np.ndarray:
    """Class logits ``float32 [N, 10]``."""
    return self._run(images, "images")[0]

  def features_and_logits(self, images) -> tuple[np.ndarray, np.ndarray]:
    logits, feats = self._run(images, "images")
    return feats, logits

  def predict(self, images) -> np.ndarray:
    return np.argmax(self.logits(images), axis=-1).astype(np.int32)

  def accuracy(self, images, labels) -> float:
    """Fraction of images classified as ``labels`` (e.g. the classes a conditional sampler was asked
    for)."""
    n = np.shape(images)[0] if len(np.shape(images)) else 0
    labels = check_labels(labels, n)
    return float(np.mean(self.predict(images) == labels))


def _flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    key = f"{prefix}/{k}" if prefix else k
    out.update(_flatten(v, key) if isinstance(v, Mapping) else {key: v})
  return out


def _unflatten(flat):
  tree: dict = {}
  for key, v in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = jnp.asarray(v)
  return tree


def _param_shapes() -> dict:
  shapes = jax.eval_shape(FashionCNN().init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1,) + IMAGE_SHAPE, jnp.float32))
  return {k: tuple(v.shape) for k, v in _flatten(shapes).items()}


def train_feature_net(*, seed: int = TRAIN_CONFIG["seed"], epochs: int = TRAIN_CONFIG["epochs"],
                      batch_size: int = TRAIN_CONFIG["batch_size"],
                      learning_rate: float = TRAIN_CONFIG["learning_rate"],
                      verbose: bool = True) -> FeatureNet:
  """Train :class:`FashionCNN` on the Fashion-MNIST training split (deterministic for a seed: the
  batch order is :class:`jdiff.data.Pipeline`'s, the initialisation ``PRNGKey(seed)``) and measure
  its accuracy on the test split. Not cached: see :func:`load_feature_net`."""
  from jdiff.data import Pipeline, get_dataset  # pylint: disable=g-import-not-at-top
  seed = int(seed)
  epochs = _checks.positive_int(epochs, "epochs")
  train = get_dataset("fashion_mnist", split="train")
  test = get_dataset("fashion_mnist", split="test")
  pipe = Pipeline(train, batch_size, seed, num_local_devices=1, process_index=0, process_count=1)
  steps = epochs * pipe.steps_per_epoch
  module = FashionCNN()
  params = module.init(jax.random.PRNGKey(seed), jnp.zeros((1,) + IMAGE_SHAPE, jnp.float32))
  opt = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      logits, _ = module.apply(p, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  if verbose:
    print(f"jdiff.eval: training the Fashion-MNIST feature classifier ({steps} steps, once; cached "
          f"afterwards)", file=sys.stderr, flush=True)
  t0 = time.time()
  loss = None
  for _ in range(steps):
    batch = next(pipe)
    params, opt_state, loss = step(params, opt_state, batch["image"][0], batch["label"][0])
  jax.block_until_ready(loss)
  seconds = time.time() - t0
  net = FeatureNet(params, train_seconds=seconds)
  x, y = test.read(np.arange(test.num_examples))
  net.test_accuracy = net.accuracy(_to_float(x), y)
  if verbose:
    print(f"jdiff.eval: feature classifier test accuracy {net.test_accuracy:.4f} after "
          f"{seconds:.0f} s", file=sys.stderr, flush=True)
  return net


def save_feature_net(net: FeatureNet, path: str) -> str:
  arrays = {k: np.asarray(v, np.float32) for k, v in _flatten(net.params).items()}  # "params/..."
  arrays[_META + "version"] = np.asarray(VERSION, np.int64)
  arrays[_META + "architecture"] = np.asarray(ARCHITECTURE)
  arrays[_META + "test_accuracy"] = np.asarray(net.test_accuracy, np.float64)
  arrays[_META + "train_seconds"] = np.asarray(net.train_seconds, np.float64)
  net.path = files.write_npz(path, arrays)
  return net.path


def _read_cache(path: str) -> tuple[Optional[FeatureNet], str]:
  """``(net, "")`` for a valid cache file, else ``(None, why)``."""
  try:
    data = _checks.load_arrays(path, "feature-net cache")  # never unpickles (object arrays refused)
    files = set(data)
    if _META + "version" not in files or _META + "architecture" not in files:
      return None, "it has no version/architecture record"
    version = int(data[_META + "version"])
    arch = str(data[_META + "architecture"])
    if version != VERSION or arch != ARCHITECTURE:
      return None, f"it holds version {version} ({arch}), this jdiff uses version {VERSION}"
    flat = {k: np.asarray(data[k], np.float32) for k in files if not k.startswith(_META)}
    acc = float(data[_META + "test_accuracy"])
    secs = float(data[_META + "train_seconds"]) if _META + "train_seconds" in files else np.nan
  except (OSError, ValueError, KeyError) as e:
    return None, f"it cannot be read: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
  expected = _param_shapes()
  if {k: tuple(v.shape) for k, v in flat.items()} != expected:
    return None, "its parameter names or shapes do not match the architecture"
  params = _unflatten(flat)
  return FeatureNet(params, test_accuracy=acc, path=path, train_seconds=secs), ""


def load_feature_net(cache_dir: Optional[str] = None, train_if_missing: bool = True,
                     verbose: bool = True) -> FeatureNet:
  """The Fashion-MNIST feature net, from the cache or trained (then cached) on first use.

  Args:
    cache_dir: directory of ``fmnist_classifier_v1.npz`` (default ``$JDIFF_CACHE`` or
      ``~/.cache/jdiff``).
    train_if_missing: train (about a minute on two CPU cores) when the file is missing or was
      written for another version/architecture; if ``False``, raise instead.
    verbose: print one line when training starts and ends (stderr).

  Raises:
    FileNotFoundError: no usable cache file and ``train_if_missing=False``.
  """
  path = cache_path(cache_dir)
  why = "it does not exist"
  if os.path.exists(path):
    net, why = _read_cache(path)
    if net is not None:
      return net
  if not train_if_missing:
    raise FileNotFoundError(f"no usable Fashion-MNIST feature net at {path} ({why}); call "
                            f"load_feature_net(train_if_missing=True) to train and cache it")
  net = train_feature_net(verbose=verbose)
  save_feature_net(net, path)
  return net


# Shared across calls in one process: the cache file is read (or the net trained) once.
_LOADED: dict = {}


def get_feature_net(cache_dir: Optional[str] = None) -> FeatureNet:
  """:func:`load_feature_net` memoised per cache path (one instance per process)."""
  path = cache_path(cache_dir)
  if path not in _LOADED:
    _LOADED[path] = load_feature_net(cache_dir)
  return _LOADED[path]


__all__ = ["ARCHITECTURE", "CACHE_ENV", "FEATURE_DIM", "FashionCNN", "FeatureNet", "IMAGE_SHAPE",
           "NUM_CLASSES", "TRAIN_CONFIG", "VERSION", "cache_dir", "cache_path",
           "check_fmnist_images", "check_labels", "get_feature_net", "load_feature_net",
           "save_feature_net", "train_feature_net"]
