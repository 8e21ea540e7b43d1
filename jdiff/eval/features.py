"""Small classifiers whose penultimate layer is the feature space for jdiff's metrics: one for
Fashion-MNIST images, one for MNIST-1D signals.

FID's Inception network (Heusel et al. 2017) was trained on ImageNet photos and sees a 28x28 grayscale
garment only after a 10x upsampling (and cannot see a 1-D signal at all); a classifier trained on the
data itself gives a feature space that is cheap and meaningful for the dataset, and its predictions
score class-conditional samples (the "classifier accuracy" of conditional generators). It sees clean
data only: it is a noise-level-free evaluation classifier, not a guidance classifier.

Both nets are :class:`SmallCNN`: three stride-2 convolutions with 3 taps per spatial axis, 32, 64 and
128 channels and ReLU, a 128-unit ReLU layer (the features), and a 10-way linear layer. What differs
per dataset is a :class:`NetSpec` (the module, input shape, version, architecture string, training
settings, cache file name); the training loop, the cache and :class:`FeatureNet` are shared.

- ``"fashion_mnist"`` (``FashionCNN``, version 1): 3x3 convolutions on ``[N, 28, 28, 1]`` images in
  [-1, 1] (28 -> 14 -> 7 -> 4), trained on the 60,000 training images (4 epochs, batch 128, Adam with a
  cosine learning-rate decay from 2e-3; Kingma & Ba 2015), about a minute on two CPU cores, to ~91%
  test accuracy; cached as ``fmnist_classifier_v1.npz``.
- ``"mnist1d"`` (``MNIST1DCNN``, version 1): 3-tap 1-D convolutions on ``[N, 40, 1]`` MNIST-1D signals
  (Greydanus 2020; standardised, see :mod:`jdiff.data.mnist1d`; 40 -> 20 -> 10 -> 5), trained on the
  4,000 training signals (20 epochs, batch 100, Adam with a cosine decay from 1e-2), in ~4 s on two
  CPU cores, to 94.6% test accuracy on the 1,000 test signals (Greydanus reports ~94% for a CNN);
  cached as ``mnist1d_classifier_v1.npz``.

Training is deterministic for a seed (the batch order is :class:`jdiff.data.Pipeline`'s, the
initialisation ``PRNGKey(seed)``). The cache lives in ``$JDIFF_CACHE`` (default ``~/.cache/jdiff``)
and each file holds a version and an architecture string; a file written for another version or
architecture is retrained (or refused with ``train_if_missing=False``).
"""
from __future__ import annotations

import dataclasses
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

# The Fashion-MNIST net (the default everywhere; these names predate the MNIST-1D net).
VERSION = 1
ARCHITECTURE = "conv3x3s2(32)-conv3x3s2(64)-conv3x3s2(128)-dense(128)-dense(10), relu"
FEATURE_DIM = 128
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)
TRAIN_CONFIG = {"seed": 0, "epochs": 4, "batch_size": 128, "learning_rate": 2e-3}
CACHE_ENV = "JDIFF_CACHE"
DEFAULT_DATASET = "fashion_mnist"
_META = "__meta__/"


class SmallCNN(nn.Module):
  """``__call__(x) -> (logits [N, num_classes], features [N, feature_dim])`` for channels-last ``x``
  with ``ndim`` spatial axes: three stride-2 convolutions (3 taps per axis, 32/64/128 channels, ReLU),
  then ``Dense(feature_dim)`` + ReLU (the features) and ``Dense(num_classes)``."""
  ndim: int = 2
  feature_dim: int = FEATURE_DIM
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x):
    for ch in (32, 64, 128):
      x = nn.relu(nn.Conv(ch, (3,) * self.ndim, strides=(2,) * self.ndim, padding="SAME")(x))
    x = x.reshape(x.shape[0], -1)
    feats = nn.relu(nn.Dense(self.feature_dim)(x))
    return nn.Dense(self.num_classes)(feats), feats


class FashionCNN(SmallCNN):
  """``__call__(x) -> (logits [N, 10], features [N, 128])`` for ``x`` ``[N, 28, 28, 1]`` in [-1, 1]."""
  ndim: int = 2


class MNIST1DCNN(SmallCNN):
  """``__call__(x) -> (logits [N, 10], features [N, 128])`` for MNIST-1D signals ``x`` ``[N, 40, 1]``."""
  ndim: int = 1


@dataclasses.dataclass(frozen=True)
class NetSpec:
  """Everything that differs between the feature nets of two datasets.

  Attributes:
    dataset: the :func:`jdiff.data.get_dataset` name the net is trained and scored on.
    title: the dataset's name in messages.
    module: the Flax module class (``module()`` builds it; ``-> (logits, features)``).
    input_shape: one example's shape (channels-last).
    images: inputs are images in [-1, 1] (else finite float signals, unscaled).
    version: bumped whenever training or architecture changes (old cache files are then retrained).
    architecture: a description stored in the cache file and compared on load.
    train_config: ``seed``, ``epochs``, ``batch_size``, ``learning_rate`` of :func:`train_feature_net`.
    file_stem: the cache file is ``{file_stem}_v{version}.npz``.
  """
  dataset: str
  title: str
  module: type
  input_shape: tuple
  images: bool
  version: int
  architecture: str
  train_config: Mapping
  file_stem: str
  feature_dim: int = FEATURE_DIM
  num_classes: int = NUM_CLASSES

  @property
  def layout(self) -> str:
    return "[N, " + ", ".join(map(str, self.input_shape)) + "]"


SPECS = {
    "fashion_mnist": NetSpec("fashion_mnist", "Fashion-MNIST", FashionCNN, IMAGE_SHAPE, True, VERSION,
                             ARCHITECTURE, TRAIN_CONFIG, "fmnist_classifier"),
    "mnist1d": NetSpec("mnist1d", "MNIST-1D", MNIST1DCNN, (40, 1), False, 1,
                       "conv3s2(32)-conv3s2(64)-conv3s2(128)-dense(128)-dense(10), relu, 1-D",
                       {"seed": 0, "epochs": 20, "batch_size": 100, "learning_rate": 1e-2},
                       "mnist1d_classifier"),
}


def get_spec(dataset: str = DEFAULT_DATASET) -> NetSpec:
  """The :class:`NetSpec` of ``dataset`` (``"fashion_mnist"`` or ``"mnist1d"``)."""
  if dataset not in SPECS:
    raise ValueError(f"no feature net for dataset {dataset!r}; jdiff has one for "
                     f"{', '.join(sorted(SPECS))}: pass dataset= one of those")
  return SPECS[dataset]


def cache_dir(path: Optional[str] = None) -> str:
  """The cache directory: ``path`` if given, else ``$JDIFF_CACHE``, else ``~/.cache/jdiff``."""
  if path is not None:
    return os.fspath(path)
  env = os.environ.get(CACHE_ENV)
  return env if env else os.path.join(os.path.expanduser("~"), ".cache", "jdiff")


def cache_path(cache_dir_: Optional[str] = None, dataset: str = DEFAULT_DATASET) -> str:
  spec = get_spec(dataset)
  return os.path.join(cache_dir(cache_dir_), f"{spec.file_stem}_v{spec.version}.npz")


def check_inputs(x, dataset: str = DEFAULT_DATASET, name: str = "images") -> None:
  """Inputs of ``dataset``'s net: floats of shape ``[N, *input_shape]``, ``N >= 1``; images in
  [-1, 1], signals finite."""
  spec = get_spec(dataset)
  shape = np.shape(x)
  if len(shape) != 1 + len(spec.input_shape) or tuple(shape[1:]) != spec.input_shape or shape[0] < 1:
    raise ValueError(f"{name} must have shape {spec.layout} ({spec.title}, channels last, N >= 1) "
                     f"for the {spec.title} feature net, got shape {tuple(shape)}")
  if spec.images:
    _checks.check_unit_images(x, name, f" for the {spec.title} feature net")
  else:
    _checks.check_float(x, name)
    _checks.check_finite(x, name)


def check_fmnist_images(images, name: str = "images") -> None:
  """Inputs of the Fashion-MNIST net: floats ``[N, 28, 28, 1]`` in [-1, 1], ``N >= 1``."""
  check_inputs(images, "fashion_mnist", name)


def check_labels(labels, n: int, name: str = "labels") -> np.ndarray:
  a = np.asarray(labels)
  if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
    raise ValueError(f"{name} must be integers of shape [{n}] (one class per image), got "
                     f"{a.dtype} {a.shape}")
  if n and (a.min() < 0 or a.max() >= NUM_CLASSES):
    raise ValueError(f"{name} must lie in [0, {NUM_CLASSES}), got values in [{a.min()}, {a.max()}]")
  return a.astype(np.int32)


def to_model_units(x) -> np.ndarray:
  """A dataset's stored examples as the nets' float32 inputs: ``uint8`` images -> ``x / 127.5 - 1``;
  float data (MNIST-1D signals, float images) as they are."""
  x = np.asarray(x)
  if x.dtype == np.uint8:
    return x.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
  return x.astype(np.float32)


class FeatureNet:
  """A trained feature net (:class:`FashionCNN` by default): features, logits, predictions and
  accuracy on batches of its dataset's examples.

  Attributes:
    params: the Flax variables ``{"params": ...}``.
    spec: the dataset's :class:`NetSpec` (``dataset=`` at construction).
    test_accuracy: accuracy on the dataset's test split, measured when it was trained.
    path: the cache file it was loaded from or saved to (``None`` if not cached).
    train_seconds: training wall time (from the cache when loaded).
  """

  def __init__(self, params, *, test_accuracy: float = float("nan"), path: Optional[str] = None,
               train_seconds: float = float("nan"), batch_size: int = 500,
               dataset: str = DEFAULT_DATASET):
    self.params = params
    self.spec = get_spec(dataset)
    self.test_accuracy = float(test_accuracy)
    self.path = path
    self.train_seconds = float(train_seconds)
    self.batch_size = _checks.positive_int(batch_size, "batch_size")
    module = self.spec.module()
    self._apply = jax.jit(module.apply)

  @property
  def dataset(self) -> str:
    return self.spec.dataset

  def _run(self, x, name: str) -> tuple[np.ndarray, np.ndarray]:
    check_inputs(x, self.spec.dataset, name)
    x = np.asarray(x, np.float32)
    n, b = x.shape[0], self.batch_size
    logits, feats = [], []
    for i in range(0, n, b):
      chunk = x[i:i + b]
      m = chunk.shape[0]
      if m < b:  # pad: one compiled program for every batch
        chunk = np.concatenate([chunk, np.zeros((b - m,) + self.spec.input_shape, np.float32)])
      lg, ft = self._apply(self.params, chunk)
      logits.append(np.asarray(lg)[:m])
      feats.append(np.asarray(ft)[:m])
    return np.concatenate(logits), np.concatenate(feats)

  def features(self, images) -> np.ndarray:
    """Penultimate-layer features ``float32 [N, 128]`` of images ``[N, 28, 28, 1]`` in [-1, 1] (or
    of signals ``[N, 40, 1]`` for the MNIST-1D net)."""
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
    """Fraction of examples classified as ``labels`` (e.g. the classes a conditional sampler was asked
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


def _param_shapes(spec: NetSpec) -> dict:
  shapes = jax.eval_shape(spec.module().init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1,) + spec.input_shape, jnp.float32))
  return {k: tuple(v.shape) for k, v in _flatten(shapes).items()}


def train_feature_net(*, dataset: str = DEFAULT_DATASET, seed: Optional[int] = None,
                      epochs: Optional[int] = None, batch_size: Optional[int] = None,
                      learning_rate: Optional[float] = None, verbose: bool = True) -> FeatureNet:
  """Train ``dataset``'s net on its training split (deterministic for a seed: the batch order is
  :class:`jdiff.data.Pipeline`'s, the initialisation ``PRNGKey(seed)``; Adam with a cosine decay of
  the learning rate) and measure its accuracy on the test split. Settings left ``None`` come from the
  spec's ``train_config``. Not cached: see :func:`load_feature_net`."""
  from jdiff.data import Pipeline, get_dataset  # pylint: disable=g-import-not-at-top
  spec = get_spec(dataset)
  cfg = spec.train_config
  seed = int(cfg["seed"] if seed is None else seed)
  epochs = _checks.positive_int(cfg["epochs"] if epochs is None else epochs, "epochs")
  batch_size = cfg["batch_size"] if batch_size is None else batch_size
  learning_rate = cfg["learning_rate"] if learning_rate is None else learning_rate
  train = get_dataset(spec.dataset, split="train")
  test = get_dataset(spec.dataset, split="test")
  pipe = Pipeline(train, batch_size, seed, num_local_devices=1, process_index=0, process_count=1)
  steps = epochs * pipe.steps_per_epoch
  module = spec.module()
  params = module.init(jax.random.PRNGKey(seed), jnp.zeros((1,) + spec.input_shape, jnp.float32))
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
    print(f"jdiff.eval: training the {spec.title} feature classifier ({steps} steps, once; cached "
          f"afterwards)", file=sys.stderr, flush=True)
  t0 = time.time()
  loss = None
  for _ in range(steps):
    batch = next(pipe)
    params, opt_state, loss = step(params, opt_state, batch["image"][0], batch["label"][0])
  jax.block_until_ready(loss)
  seconds = time.time() - t0
  net = FeatureNet(params, train_seconds=seconds, dataset=spec.dataset)
  x, y = test.read(np.arange(test.num_examples))
  net.test_accuracy = net.accuracy(to_model_units(x), y)
  if verbose:
    print(f"jdiff.eval: feature classifier test accuracy {net.test_accuracy:.4f} after "
          f"{seconds:.0f} s", file=sys.stderr, flush=True)
  return net


def save_feature_net(net: FeatureNet, path: str) -> str:
  arrays = {k: np.asarray(v, np.float32) for k, v in _flatten(net.params).items()}  # "params/..."
  arrays[_META + "version"] = np.asarray(net.spec.version, np.int64)
  arrays[_META + "architecture"] = np.asarray(net.spec.architecture)
  arrays[_META + "test_accuracy"] = np.asarray(net.test_accuracy, np.float64)
  arrays[_META + "train_seconds"] = np.asarray(net.train_seconds, np.float64)
  net.path = files.write_npz(path, arrays)
  return net.path


def _read_cache(path: str, spec: NetSpec) -> tuple[Optional[FeatureNet], str]:
  """``(net, "")`` for a valid cache file, else ``(None, why)``."""
  try:
    data = _checks.load_arrays(path, "feature-net cache")  # never unpickles (object arrays refused)
    names = set(data)
    if _META + "version" not in names or _META + "architecture" not in names:
      return None, "it has no version/architecture record"
    version = int(data[_META + "version"])
    arch = str(data[_META + "architecture"])
    if version != spec.version or arch != spec.architecture:
      return None, f"it holds version {version} ({arch}), this jdiff uses version {spec.version}"
    flat = {k: np.asarray(data[k], np.float32) for k in names if not k.startswith(_META)}
    acc = float(data[_META + "test_accuracy"])
    secs = float(data[_META + "train_seconds"]) if _META + "train_seconds" in names else np.nan
  except (OSError, ValueError, KeyError) as e:
    return None, f"it cannot be read: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
  if {k: tuple(v.shape) for k, v in flat.items()} != _param_shapes(spec):
    return None, "its parameter names or shapes do not match the architecture"
  return FeatureNet(_unflatten(flat), test_accuracy=acc, path=path, train_seconds=secs,
                    dataset=spec.dataset), ""


def load_feature_net(cache_dir: Optional[str] = None, train_if_missing: bool = True,
                     verbose: bool = True, dataset: str = DEFAULT_DATASET) -> FeatureNet:
  """``dataset``'s feature net, from the cache or trained (then cached) on first use.

  Args:
    cache_dir: directory of the cache file (``fmnist_classifier_v1.npz``, ``mnist1d_classifier_v1.npz``;
      default ``$JDIFF_CACHE`` or ``~/.cache/jdiff``).
    train_if_missing: train (Fashion-MNIST: about a minute on two CPU cores; MNIST-1D: seconds) when
      the file is missing or was written for another version/architecture; if ``False``, raise instead.
    verbose: print one line when training starts and ends (stderr).
    dataset: ``"fashion_mnist"`` (default) or ``"mnist1d"``.

  Raises:
    FileNotFoundError: no usable cache file and ``train_if_missing=False``.
  """
  spec = get_spec(dataset)
  path = cache_path(cache_dir, spec.dataset)
  why = "it does not exist"
  if os.path.exists(path):
    net, why = _read_cache(path, spec)
    if net is not None:
      return net
  if not train_if_missing:
    args = "train_if_missing=True" + ("" if spec.dataset == DEFAULT_DATASET else f", dataset={dataset!r}")
    raise FileNotFoundError(f"no usable {spec.title} feature net at {path} ({why}); call "
                            f"load_feature_net({args}) to train and cache it")
  net = train_feature_net(dataset=spec.dataset, verbose=verbose)
  save_feature_net(net, path)
  return net


# Shared across calls in one process: the cache file is read (or the net trained) once.
_LOADED: dict = {}


def get_feature_net(dataset: str = DEFAULT_DATASET, cache_dir: Optional[str] = None) -> FeatureNet:
  """:func:`load_feature_net` of ``dataset`` (``"fashion_mnist"`` or ``"mnist1d"``), memoised per
  cache path (one instance per process and dataset)."""
  path = cache_path(cache_dir, dataset)
  if path not in _LOADED:
    _LOADED[path] = load_feature_net(cache_dir, dataset=dataset)
  return _LOADED[path]


__all__ = ["ARCHITECTURE", "CACHE_ENV", "DEFAULT_DATASET", "FEATURE_DIM", "FashionCNN", "FeatureNet",
           "IMAGE_SHAPE", "MNIST1DCNN", "NUM_CLASSES", "NetSpec", "SPECS", "SmallCNN", "TRAIN_CONFIG",
           "VERSION", "cache_dir", "cache_path", "check_fmnist_images", "check_inputs", "check_labels",
           "get_feature_net", "get_spec", "load_feature_net", "save_feature_net", "to_model_units",
           "train_feature_net"]
