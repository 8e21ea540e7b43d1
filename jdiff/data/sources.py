"""Random-access data sources: offline arrays (Fashion-MNIST IDX files, scikit-learn digits, a 2-D
Gaussian mixture, text corpora) and TensorFlow Datasets (TFDS) read through ``array_record`` data
sources.

Every source answers ``read(indices) -> (data, labels)`` for an integer index array: images come back
as ``uint8 [n, H, W, C]`` (channels-last; grayscale gets ``C = 1``), vectors as ``float32 [n, D]``,
point sets as ``float32 [n, P, 3]``, 1-D signals as ``float32 [n, L, C]``, text as ``int32 [n, L]``
character token ids (``source.vocab[k]`` is the character of token ``k``), labels as ``int32 [n]``.
A source's ``kind`` (``image``, ``vector``, ``points``, ``signal``, ``tokens``) says which. Offline
sources hold numpy arrays in memory (one fancy-indexing read per batch); TFDS sources read records by
index from ``tfds.data_source`` (no TensorFlow needed to read).

Names (see :func:`get_dataset`):

- ``fashion_mnist``: the Debian package ``dataset-fashion-mnist`` (IDX files under
  ``/usr/share/datasets/fashion-mnist``) when present, else TFDS ``fashion_mnist``
  (Xiao et al. 2017, arXiv:1708.07747). 60,000 train / 10,000 test images, 28x28x1, 10 classes.
- ``digits``: scikit-learn's 1,797 8x8 handwritten digits (UCI optdigits), 0..16 scaled to 0..255;
  a fixed permutation gives 1,500 train / 297 test images.
- ``mixture2d``: 100,000 train / 10,000 test points from :func:`jdiff.toy.default_mixture` (a fixed
  seed per split), labels = mixture components. Values are not rescaled.
- ``point_clouds``: procedural 3-D shapes (sphere, torus, cube, ...) as 512-point sets with class
  labels (:mod:`jdiff.data.point_clouds`).
- ``mnist1d``: MNIST-1D (Greydanus 2020), 40-sample 1-D signals of 10 classes, generated offline by the
  ``mnist1d`` package (:mod:`jdiff.data.mnist1d`).
- ``fortunes``: the Debian package ``fortunes`` (``/usr/share/games/fortunes``), each fortune a
  document; ``text:<path>``: a user's text file, each paragraph (separated by blank lines) a document.
  Character tokens (:mod:`jdiff.data.text`): 5% of the distinct documents are ``test`` (a fixed
  permutation), the rest ``train``; each split's documents are joined by a blank line, encoded with
  the vocabulary of the training split and cut into chunks of ``seq_length`` tokens (default 128).
- ``fashion_mnist_captions``, ``fashion_mnist_pairs``: Fashion-MNIST with captions for text-to-image
  models (:mod:`jdiff.data.captions`): each image with a caption ("a photo of an ankle boot"), or two
  items side by side on a 28x56 canvas ("a bag to the left of a sneaker"; splits ``train``, ``test``
  and ``heldout``, the last of 10 class pairs never seen in training), built deterministically in
  memory. The tokenised captions are the ``int32 [N, 16]`` extra field ``caption``, the tokenizer
  ``source.tokenizer``. ``mnist_captions``, ``mnist_pairs``: the same over TFDS ``mnist``.
- any other name is a TFDS dataset (``mnist``, ``cifar10``, ``celeb_a``, ...), read from ``data_dir``;
  one with a ``text`` feature and no image (``lm1b``, ...) gives tokens of the fixed printable-ASCII
  vocabulary, one record per example cropped or padded with spaces to ``seq_length``
  (:class:`TfdsTextSource`).
"""
from __future__ import annotations

import dataclasses

import gzip
import os
from typing import Optional, Sequence

import numpy as np

from jdiff.data import captions as captions_lib
from jdiff.data import text as text_lib

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
OFFLINE_DATASETS = ("digits", "fashion_mnist", "mixture2d", "mnist1d", "point_clouds", "fortunes",
                    "fashion_mnist_captions", "fashion_mnist_pairs")
# Captioned datasets over TFDS ``mnist`` (need it prepared; see :func:`get_dataset`).
TFDS_CAPTION_DATASETS = ("mnist_captions", "mnist_pairs")
KINDS = ("image", "vector", "points", "signal", "tokens")
TEXT_PREFIX = "text:"  # dataset name "text:<path>": a user's text file
# Datasets whose examples are not images or vectors: their kind, by name (for a trained model's data).
_KIND_OF_DATASET = {"point_clouds": "points", "mnist1d": "signal", "fortunes": "tokens"}
_OFFLINE_SPLITS = ("train", "test")
_TFDS_EXAMPLES = "mnist, cifar10, celeb_a, lm1b"

# IDX type codes (LeCun et al. 1998, MNIST file format): code -> big-endian numpy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class Source:
  """A random-access dataset split.

  Attributes:
    name: dataset name.
    split: split name.
    num_examples: number of examples.
    shape: per-example data shape: ``(H, W, C)`` for images, ``(D,)`` for vectors.
    num_classes: number of label values (``None`` when the dataset has no class label; labels are
      then all 0).
    kind: ``image`` (``[H, W, C]``; ``uint8`` ones are scaled to [-1, 1] by the pipeline, ``float32``
      ones are already in model units), ``vector`` (``[D]``), ``points`` (a set of ``P`` points in 3-D,
      ``[P, 3]``, order meaningless), ``signal`` (``[L, C]``, 1-D, channels-last) or ``tokens``
      (``int32 [L]`` ids into ``vocab``); all but uint8 images and tokens are ``float32`` passed
      through unscaled; tokens pass through as ``int32``.
    vocab: for ``tokens``, the vocabulary as a string: token ``k`` is the character ``vocab[k]``;
      ``None`` for other kinds.
    is_image: ``kind == "image"``.
    extras: names of further per-example fields (``read_extras``; ``int32`` for integer fields,
      else ``float32``) that the pipeline adds to each batch, e.g. reflow's ``noise``
      (``jdiff.reflow``) or a captioned dataset's ``caption`` token ids; none by default.
    tokenizer: the tokenizer of a text source (:class:`jdiff.data.text.CharTokenizer`) or of a
      captioned dataset's ``caption`` field (:class:`jdiff.data.captions.WordTokenizer`); ``None``
      for other sources.
  """

  name: str
  split: str
  num_examples: int
  shape: tuple
  num_classes: Optional[int]
  kind: str = "image"
  vocab: Optional[str] = None
  extras: tuple = ()
  tokenizer = None

  @property
  def is_image(self) -> bool:
    return self.kind == "image"

  def read(self, indices) -> tuple[np.ndarray, np.ndarray]:
    """``(data [n, *shape], labels int32 [n])`` for the examples at ``indices`` (any order,
    repeats allowed)."""
    raise NotImplementedError

  def read_extras(self, indices) -> dict:
    """``{name: array [n, ...]}`` for each of ``extras`` at ``indices`` (``int32`` or ``float32``)."""
    return {}

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, i: int) -> dict:
    data, labels = self.read(np.asarray([i]))
    return {"image": data[0], "label": labels[0]}

  def __repr__(self) -> str:
    return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, "
            f"num_examples={self.num_examples}, shape={self.shape}, "
            f"num_classes={self.num_classes}, kind={self.kind!r})")


class ArraySource(Source):
  """A source held in memory as numpy arrays: ``uint8 [N, H, W, C]`` images (or ``float32`` ones
  already in model units, e.g. generated samples), ``float32 [N, D]`` vectors, or with ``kind=``
  ``"points"`` / ``"signal"`` ``float32 [N, P, 3]`` point sets / ``[N, L, C]`` 1-D signals, or with
  ``kind="tokens"`` integer ``[N, L]`` token ids >= 0 (stored ``int32``; below ``len(vocab)`` when
  ``vocab`` is given); with ``int32 [N]`` labels, and optional ``extras``: ``{name: [N, ...]}``
  further per-example fields, stored ``int32`` when integer (token ids, indices), else ``float32``."""

  def __init__(self, data: np.ndarray, labels: np.ndarray, *, name: str, split: str,
               num_classes: Optional[int], extras: Optional[dict] = None,
               kind: Optional[str] = None, vocab: Optional[str] = None):
    data = np.asarray(data)
    labels = np.asarray(labels)
    if kind is not None and kind not in KINDS:
      raise ValueError(f"unknown data kind {kind!r} for {name!r}; valid kinds are: {', '.join(KINDS)}")
    if data.ndim == 4 and kind in (None, "image"):
      if data.dtype not in (np.uint8, np.float32):
        raise ValueError(f"image data for {name!r} must be uint8 or float32 [N, H, W, C], got dtype "
                         f"{data.dtype}")
      self.kind = "image"
    elif data.ndim == 2 and kind in (None, "vector"):
      data = data.astype(np.float32)
      self.kind = "vector"
    elif data.ndim == 3 and kind in ("points", "signal"):
      if kind == "points" and data.shape[-1] != 3:
        raise ValueError(f"point sets for {name!r} must have shape [N, P, 3], got {data.shape}")
      data = data.astype(np.float32)
      if not np.all(np.isfinite(data)):
        raise ValueError(f"{kind} data for {name!r} contain NaN or Inf")
      self.kind = kind
    elif data.ndim == 2 and kind == "tokens":
      data = _token_data(data, name, vocab)
      self.kind = kind
    else:
      want = {"image": "[N, H, W, C]", "vector": "[N, D]", "points": "[N, P, 3]",
              "signal": "[N, L, C]", "tokens": "int [N, L]"}
      what = (f"{kind} data must have shape {want[kind]}" if kind else
              "data must be images [N, H, W, C] or vectors [N, D] (pass kind='points' for point sets "
              "[N, P, 3] or kind='signal' for 1-D signals [N, L, C])")
      raise ValueError(f"{what} for {name!r}, got shape {data.shape}")
    if vocab is not None and self.kind != "tokens":
      raise ValueError(f"vocab is for token data; {name!r} holds {self.kind} data: pass "
                       f"kind='tokens' or no vocab")
    self.vocab = vocab
    if labels.shape != data.shape[:1]:
      raise ValueError(f"labels for {name!r} must have shape {data.shape[:1]}, got "
                       f"{labels.shape}")
    self._extras = {}
    for key, value in (extras or {}).items():
      value = _extra_array(value, key, name)
      if value.shape[:1] != data.shape[:1]:
        raise ValueError(f"extra field {key!r} of {name!r} must have {data.shape[0]} rows like the "
                         f"data, got shape {value.shape}")
      self._extras[key] = np.ascontiguousarray(value)
    self.extras = tuple(self._extras)
    self._data = np.ascontiguousarray(data)
    self._labels = labels.astype(np.int32)
    self.name, self.split, self.num_classes = name, split, num_classes
    self.num_examples = int(data.shape[0])
    self.shape = tuple(int(s) for s in data.shape[1:])

  @property
  def data(self) -> np.ndarray:
    return self._data

  @property
  def labels(self) -> np.ndarray:
    return self._labels

  def read(self, indices):
    indices = np.asarray(indices, np.int64)
    return self._data[indices], self._labels[indices]

  def read_extras(self, indices):
    indices = np.asarray(indices, np.int64)
    return {k: v[indices] for k, v in self._extras.items()}

  def extra_shape(self, name: str) -> tuple:
    return tuple(int(s) for s in self._extras[name].shape[1:])

  def extra_dtype(self, name: str) -> np.dtype:
    """``int32`` or ``float32``: the dtype of extra field ``name``."""
    return self._extras[name].dtype


def _extra_array(value, key: str, name: str) -> np.ndarray:
  """An extra field as stored: integer arrays as ``int32`` (checked to fit), others ``float32``."""
  value = np.asarray(value)
  if np.issubdtype(value.dtype, np.integer):
    info = np.iinfo(np.int32)
    if value.size and (value.min() < info.min or value.max() > info.max):
      raise ValueError(f"extra field {key!r} of {name!r} holds integers outside int32, got values in "
                       f"[{value.min()}, {value.max()}]; pass smaller ids or a float array")
    return value.astype(np.int32)
  return np.asarray(value, np.float32)


def _token_data(data: np.ndarray, name: str, vocab: Optional[str]) -> np.ndarray:
  """Token ids ``[N, L]`` checked (integers, >= 0, below ``len(vocab)``) and stored ``int32``."""
  if vocab is not None and (not isinstance(vocab, str) or not vocab):
    raise ValueError(f"vocab for {name!r} must be a non-empty string (token k is the character "
                     f"vocab[k]), got {vocab!r}")
  if not np.issubdtype(data.dtype, np.integer):
    raise ValueError(f"token data for {name!r} must be integer ids [N, L], got dtype {data.dtype}; "
                     f"encode text with jdiff.data.text.CharTokenizer (or cast ids with .astype)")
  if data.size and data.min() < 0:
    raise ValueError(f"token data for {name!r} must be ids >= 0, got a minimum of {data.min()}")
  if vocab is not None and data.size and data.max() >= len(vocab):
    raise ValueError(f"token data for {name!r} must be ids below len(vocab)={len(vocab)}, got a "
                     f"maximum of {data.max()}; pass the vocabulary the tokens were encoded with")
  if data.size and data.max() > np.iinfo(np.int32).max:
    raise ValueError(f"token data for {name!r} must fit in int32, got a maximum of {data.max()}")
  return data.astype(np.int32)


class TextSource(ArraySource):
  """A character-level text split held in memory (:func:`text_source`): ``int32 [N, L]`` chunks of
  kind ``tokens``, labels all 0, ``num_classes=None``.

  Attributes (besides :class:`ArraySource`'s):
    vocab: the tokenizer's characters (token ``k`` is ``vocab[k]``).
    tokenizer: the :class:`jdiff.data.text.CharTokenizer`, fitted on the training split.
    documents: this split's documents (normalized, joined by a blank line into the stream).
    num_chars: characters in this split's stream (the chunks hold ``N * L`` of them, the rest of
      the last chunk is dropped).
    dropped_chars: characters of this split outside the training vocabulary, dropped (0 for train).
  """

  def __init__(self, encoded: "text_lib.EncodedSplit", *, name: str):
    super().__init__(encoded.chunks, np.zeros(encoded.chunks.shape[0], np.int32), name=name,
                     split=encoded.split, num_classes=None, kind="tokens",
                     vocab=encoded.tokenizer.chars)
    self.tokenizer = encoded.tokenizer
    self.documents = encoded.documents
    self.num_chars = encoded.num_chars
    self.dropped_chars = encoded.dropped_chars


def text_source(documents, split: str = "train", length: int = text_lib.DEFAULT_LENGTH,
                name: str = "text", *,
                tokenizer: Optional["text_lib.CharTokenizer"] = None) -> TextSource:
  """The ``split`` (``train`` or ``test``) of a corpus of ``documents`` (strings) as a
  :class:`TextSource` of ``int32 [N, length]`` chunks (:func:`jdiff.data.text.encode_split`: 5% of
  the distinct documents are test, by a fixed permutation; each split's documents are joined by a
  blank line into one stream, encoded with a tokenizer fitted on the training split (or
  ``tokenizer``) and cut into non-overlapping chunks, the last partial one dropped).

  The training split's ``data`` are the chunks an n-gram baseline
  (:class:`jdiff.eval.text_metrics.NGramModel`) is fitted on.
  """
  return TextSource(text_lib.encode_split(documents, split, length, tokenizer=tokenizer), name=name)


class TfdsSource(Source):
  """A TFDS split read by index through a ``tfds.data_source`` (``array_record`` files).

  Records are fetched with the data source's batched ``__getitems__`` when it has one. Image
  features must be ``uint8`` with a fixed shape (pass ``image_size`` to center-crop and resize
  variable-size images).
  """

  def __init__(self, data_source, features, *, name: str, split: str,
               image_key: str = "image", label_key: Optional[str] = "label",
               image_size: Optional[int] = None):
    if image_key not in features:
      raise ValueError(f"TFDS dataset {name!r} has no feature {image_key!r}; its features are "
                       f"{', '.join(sorted(features))}: pass image_key=")
    self._ds = data_source
    self._image_key = image_key
    feat = features[image_key]
    dtype = np.dtype(getattr(feat, "np_dtype", np.uint8))  # (``.dtype`` would import TensorFlow)
    if dtype != np.uint8:
      raise ValueError(f"TFDS feature {name}/{image_key} has dtype {dtype}; jdiff reads uint8 "
                       f"images only")
    fshape = tuple(feat.shape)
    if len(fshape) == 2:
      fshape = fshape + (1,)
    if len(fshape) != 3:
      raise ValueError(f"TFDS feature {name}/{image_key} has shape {tuple(feat.shape)}; expected an "
                       f"image [H, W, C]")
    self._image_size = image_size
    if image_size is not None:
      self.shape = (image_size, image_size, fshape[2])
    elif None in fshape:
      raise ValueError(f"TFDS dataset {name!r} has variable image shape {fshape}; pass "
                       f"image_size=N to center-crop and resize to N x N")
    else:
      self.shape = tuple(int(s) for s in fshape)
    if label_key is not None and label_key in features:
      self._label_key = label_key
      self.num_classes = getattr(features[label_key], "num_classes", None)
    else:
      self._label_key = None
      self.num_classes = None
    self.name, self.split, self.kind = name, split, "image"
    self.num_examples = len(data_source)

  def read(self, indices):
    idx = [int(i) for i in np.asarray(indices).reshape(-1)]
    getitems = getattr(self._ds, "__getitems__", None)
    records = getitems(idx) if getitems is not None else [self._ds[i] for i in idx]
    images = np.empty((len(idx),) + self.shape, np.uint8)
    labels = np.zeros((len(idx),), np.int32)
    for j, rec in enumerate(records):
      img = np.asarray(rec[self._image_key])
      if img.ndim == 2:
        img = img[..., None]
      if self._image_size is not None:
        img = center_crop_resize(img, self._image_size)
      images[j] = img
      if self._label_key is not None:
        labels[j] = int(rec[self._label_key])
    return images, labels


class TfdsTextSource(Source):
  """A TFDS text split read by index through a ``tfds.data_source``: record ``i``'s ``text_key``
  feature (bytes or str) is normalized (:func:`jdiff.data.text.normalize_text`), encoded with the
  fixed vocabulary :data:`jdiff.data.text.PRINTABLE` (printable ASCII and ``"\\n"``: no pass over
  the data is needed), cropped to its first ``seq_length`` characters and padded with spaces.

  Kind ``tokens``, ``int32 [seq_length]`` examples, labels all 0, ``num_classes=None``.
  """

  def __init__(self, data_source, features, *, name: str, split: str, text_key: str = "text",
               seq_length: int = text_lib.DEFAULT_LENGTH):
    if text_key not in features:
      raise ValueError(f"TFDS dataset {name!r} has no feature {text_key!r}; its features are "
                       f"{', '.join(sorted(features))}: pass text_key=")
    if isinstance(seq_length, bool) or not isinstance(seq_length, (int, np.integer)) or seq_length < 1:
      raise ValueError(f"seq_length must be an integer >= 1, got {seq_length!r}")
    self._ds = data_source
    self._text_key = text_key
    self.tokenizer = text_lib.CharTokenizer(text_lib.PRINTABLE)
    self._pad = int(self.tokenizer.encode(" ")[0])
    self.vocab = self.tokenizer.chars
    self.shape = (int(seq_length),)
    self.name, self.split, self.kind, self.num_classes = name, split, "tokens", None
    self.num_examples = len(data_source)

  def encode_record(self, value) -> np.ndarray:
    """``int32 [seq_length]``: one record's text, normalized, cropped and padded with spaces."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
      value = value.item()
    if isinstance(value, (bytes, bytearray, np.bytes_)):
      value = bytes(value).decode("utf-8", errors="replace")
    if not isinstance(value, str):
      raise ValueError(f"TFDS feature {self.name}/{self._text_key} must hold text (bytes or str), "
                       f"got {type(value).__name__}; pass text_key= of a text feature")
    length = self.shape[0]
    # Normalizing can shorten text (dropped characters) or lengthen it (tabs): crop generously first.
    ids = self.tokenizer.encode(text_lib.normalize_text(value[:8 * length + 64]))[:length]
    out = np.full((length,), self._pad, np.int32)
    out[:ids.shape[0]] = ids
    return out

  def read(self, indices):
    idx = [int(i) for i in np.asarray(indices).reshape(-1)]
    getitems = getattr(self._ds, "__getitems__", None)
    records = getitems(idx) if getitems is not None else [self._ds[i] for i in idx]
    tokens = np.empty((len(idx),) + self.shape, np.int32)
    for j, rec in enumerate(records):
      tokens[j] = self.encode_record(rec[self._text_key])
    return tokens, np.zeros((len(idx),), np.int32)


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
  """Center-crop a ``uint8 [H, W, C]`` image to a square and resize it to ``size x size``
  (PIL bicubic, antialiased when shrinking)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, w = image.shape[:2]
  s = min(h, w)
  top, left = (h - s) // 2, (w - s) // 2
  crop = image[top:top + s, left:left + s]
  if s == size:
    return crop
  chans = crop.shape[2]
  pil = Image.fromarray(crop[..., 0] if chans == 1 else crop)
  out = np.asarray(pil.resize((size, size), Image.BICUBIC), np.uint8)
  return out[..., None] if chans == 1 else out


# ---------------------------------------------------------------------------------------------------
# IDX files (MNIST / Fashion-MNIST format).


def parse_idx(raw: bytes) -> np.ndarray:
  """Parse an IDX file's bytes: 2 zero bytes, a type code, the number of dimensions ``ndim``, then
  ``ndim`` big-endian ``uint32`` sizes and the data in big-endian row-major order."""
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    raise ValueError("not an IDX file: it must start with two zero bytes")
  code, ndim = raw[2], raw[3]
  if code not in _IDX_DTYPES:
    raise ValueError(f"not an IDX file: unknown type code 0x{code:02x}")
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f"IDX file truncated: {len(raw)} bytes, header needs {header}")
  dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
  dtype = np.dtype(_IDX_DTYPES[code])
  count = int(np.prod(dims, dtype=np.int64))
  if len(raw) != header + count * dtype.itemsize:
    raise ValueError(f"IDX file size {len(raw)} does not match its header (dims {dims}, "
                     f"{dtype.itemsize}-byte items)")
  arr = np.frombuffer(raw, dtype, count=count, offset=header).reshape(dims)
  return arr.astype(dtype.newbyteorder("="))


def read_idx(path: str) -> np.ndarray:
  """Read a (possibly gzip-compressed) IDX file."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    return parse_idx(f.read())


def _idx_paths(directory: str, split: str) -> Optional[tuple[str, str]]:
  prefix = "train" if split == "train" else "t10k"
  for ext in (".gz", ""):
    images = os.path.join(directory, f"{prefix}-images-idx3-ubyte{ext}")
    labels = os.path.join(directory, f"{prefix}-labels-idx1-ubyte{ext}")
    if os.path.isfile(images) and os.path.isfile(labels):
      return images, labels
  return None


def load_idx_images(directory: str, split: str, name: str, num_classes: int) -> ArraySource:
  """An MNIST-format split (``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``) in memory."""
  paths = _idx_paths(directory, split)
  if paths is None:
    raise FileNotFoundError(f"no IDX files for split {split!r} in {directory}")
  images, labels = read_idx(paths[0]), read_idx(paths[1])
  if images.ndim != 3 or images.dtype != np.uint8:
    raise ValueError(f"{paths[0]}: expected uint8 images [N, H, W], got {images.dtype} "
                     f"{images.shape}")
  if labels.shape != images.shape[:1]:
    raise ValueError(f"{paths[1]}: {labels.shape[0] if labels.ndim else 0} labels for "
                     f"{images.shape[0]} images")
  return ArraySource(images[..., None], labels, name=name, split=split, num_classes=num_classes)


# ---------------------------------------------------------------------------------------------------
# Offline datasets.


def _digits(split: str) -> ArraySource:
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  d = load_digits()
  images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # 0..16 -> 0..255
  perm = np.random.default_rng(0).permutation(images.shape[0])
  idx = perm[:1500] if split == "train" else perm[1500:]
  return ArraySource(images[idx], d.target[idx], name="digits", split=split, num_classes=10)


MIXTURE2D_SIZES = {"train": 100_000, "test": 10_000}


def _mixture2d(split: str) -> ArraySource:
  import jax  # pylint: disable=g-import-not-at-top
  from jdiff import toy  # pylint: disable=g-import-not-at-top
  mix = toy.default_mixture()
  seed = {"train": 0, "test": 1}[split]
  x, labels = mix.sample(jax.random.PRNGKey(seed), MIXTURE2D_SIZES[split])
  return ArraySource(np.asarray(x, np.float32), np.asarray(labels), name="mixture2d", split=split,
                     num_classes=mix.num_components)


def _import_tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("reading a TFDS dataset needs tensorflow-datasets: pip install "
                      "tensorflow-datasets array-record importlib_resources") from e
  return tfds


def _unknown_name(name: str) -> ValueError:
  return ValueError(f"unknown dataset {name!r}; valid names are {', '.join(OFFLINE_DATASETS)} "
                    f"(offline), {', '.join(TFDS_CAPTION_DATASETS)} (captioned TFDS mnist), "
                    f"text:<path> (a text file) or a TFDS dataset name such as {_TFDS_EXAMPLES}")


def _prepare_hint(name: str, data_dir) -> str:
  where = f" --data_dir={data_dir}" if data_dir else ""
  return (f"with internet, prepare it (needs TensorFlow for image datasets: pip install tensorflow "
          f"tensorflow-datasets) with `tfds build {name} --file_format=array_record{where}` or "
          f"get_dataset({name!r}, download=True)")


def tfds_source(name: str, split: str = "train", data_dir=None, download: bool = False, *,
                image_key: str = "image", label_key: Optional[str] = "label",
                image_size: Optional[int] = None, text_key: str = "text",
                seq_length: Optional[int] = None) -> Source:
  """A TFDS split through ``tfds.builder(name, data_dir=..., file_format='array_record')`` and
  ``builder.as_data_source(split)`` — what ``tfds.data_source`` does, with clear errors.

  A dataset with an ``image_key`` feature gives a :class:`TfdsSource`; one with a ``text_key``
  feature and no image gives a :class:`TfdsTextSource` of ``seq_length`` tokens (default 128).

  Reading needs ``tensorflow-datasets``, ``array-record`` and ``importlib_resources`` but not
  TensorFlow. Preparing an image dataset (``download=True`` or the ``tfds build`` command) needs
  internet and TensorFlow. ``download=False`` (the default) never touches the network.
  """
  tfds = _import_tfds()
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except tfds.core.DatasetNotFoundError as e:
    raise _unknown_name(name) from e
  if not builder.is_prepared():
    if not download:
      raise ValueError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir}; "
                       f"{_prepare_hint(name, data_dir)}, or pass data_dir= where it is prepared")
    builder.download_and_prepare(file_format="array_record")
  try:
    ds = builder.as_data_source(split=split)
  except NotImplementedError as e:
    raise ValueError(f"TFDS dataset {name!r} in {builder.data_dir} is not stored in a "
                     f"random-access format (array_record); re-prepare it with `tfds build {name} "
                     f"--file_format=array_record` into another data_dir") from e
  except (ValueError, KeyError) as e:
    raise ValueError(f"split {split!r} of TFDS dataset {name!r} cannot be read ({e}); its splits "
                     f"are {', '.join(sorted(builder.info.splits))}") from e
  features = builder.info.features
  if image_key not in features and text_key in features:
    if image_size is not None:
      raise ValueError(f"image_size resizes images; TFDS dataset {name!r} holds text: leave "
                       f"data.image_size at 0")
    return TfdsTextSource(ds, features, name=name, split=split, text_key=text_key,
                          seq_length=text_lib.DEFAULT_LENGTH if seq_length is None else seq_length)
  if seq_length is not None:
    raise ValueError(f"seq_length sets the length of text examples; TFDS dataset {name!r} has no "
                     f"text feature {text_key!r} without an image (pass text_key=): leave "
                     f"data.seq_length at 0")
  return TfdsSource(ds, features, name=name, split=split, image_key=image_key,
                    label_key=label_key, image_size=image_size)


def _resize_array_source(src: ArraySource, image_size: Optional[int]) -> ArraySource:
  if image_size is None or not src.is_image or src.shape[:2] == (image_size, image_size):
    return src
  data = np.stack([center_crop_resize(img, image_size) for img in src.data])
  return ArraySource(data, src.labels, name=src.name, split=src.split,
                     num_classes=src.num_classes)


def _point_clouds(split: str) -> ArraySource:
  from jdiff.data import point_clouds  # pylint: disable=g-import-not-at-top
  x, labels = point_clouds.make_shapes(split, point_clouds.DEFAULT_SIZES[split])
  return ArraySource(x, labels, name="point_clouds", split=split,
                     num_classes=len(point_clouds.CLASSES), kind="points")


def _mnist1d(split: str) -> ArraySource:
  from jdiff.data import mnist1d  # pylint: disable=g-import-not-at-top
  x, labels = mnist1d.load_mnist1d(split)
  return ArraySource(x, labels, name="mnist1d", split=split, num_classes=10, kind="signal")


def kind_of(name: str, data_shape) -> str:
  """The data kind of a model trained on dataset ``name`` with examples of ``data_shape``: ``tokens``
  for ``fortunes`` and ``text:<path>``; else ``image`` for ``[H, W, C]``, ``vector`` for ``[D]``, and
  for ``[P, 3]`` / ``[L, C]`` the kind of the named dataset (``points`` for ``point_clouds``;
  otherwise ``signal``). (A TFDS text dataset's kind is not known from its name: pass the kind.)"""
  if isinstance(name, str) and (name == "fortunes" or name.startswith(TEXT_PREFIX)):
    return "tokens"
  rank = len(tuple(data_shape))
  if rank == 3:
    return "image"
  if rank == 1:
    return "vector"
  return _KIND_OF_DATASET.get(name, "signal")


def get_dataset(name: str, split: str = "train", data_dir=None, download: bool = False, *,
                local_dir: Optional[str] = None, image_size: Optional[int] = None,
                image_key: str = "image", label_key: Optional[str] = "label",
                seq_length: Optional[int] = None, text_key: str = "text") -> Source:
  """A random-access source by name.

  Args:
    name: ``digits``, ``fashion_mnist``, ``mixture2d``, ``mnist1d``, ``point_clouds``, ``fortunes``,
      ``fashion_mnist_captions`` or ``fashion_mnist_pairs`` (offline, see the module docstring),
      ``mnist_captions`` or ``mnist_pairs`` (captions over TFDS ``mnist``), ``text:<path>`` (a UTF-8
      text file whose paragraphs are the documents), or any TFDS dataset name (``mnist``,
      ``cifar10``, ``celeb_a``, ``lm1b``, ...).
    split: ``train`` or ``test`` for offline datasets and text files (the ``*_pairs`` datasets also
      have ``heldout``); any TFDS split string (``train[:90%]``, ...) for TFDS datasets.
    data_dir: TFDS data directory (default ``~/tensorflow_datasets`` or ``$TFDS_DATA_DIR``).
    download: for TFDS datasets only: download and prepare the dataset in ``array_record`` format
      when it is missing. This needs internet and, for image datasets, TensorFlow
      (``pip install tensorflow tensorflow-datasets``); the command-line equivalent is
      ``tfds build NAME --file_format=array_record [--data_dir=DIR]``, or in Python
      ``tfds.builder(NAME, data_dir=DIR, file_format='array_record').download_and_prepare()``.
      Reading a prepared dataset needs no TensorFlow and no network.
    local_dir: directory of the Fashion-MNIST IDX files (default
      ``/usr/share/datasets/fashion-mnist``, installed by ``apt-get install dataset-fashion-mnist``).
    image_size: center-crop images to a square and resize them to ``image_size x image_size``
      (needed for TFDS datasets with variable image sizes; handy for ``celeb_a``).
    image_key, label_key: TFDS feature names of the image and the class label (``label_key=None``
      or a missing feature gives all-zero labels and ``num_classes=None``).
    seq_length: tokens per example of a text dataset (``fortunes``, ``text:<path>``, a TFDS dataset
      with a text feature); default 128. An error for other datasets.
    text_key: the TFDS feature of the text (a dataset with it and no ``image_key`` is text).

  Returns:
    a :class:`Source`.
  """
  if not isinstance(name, str) or not name:
    raise _unknown_name(name)
  from jdiff import _checks  # pylint: disable=g-import-not-at-top
  if image_size is not None:
    image_size = _checks.positive_int(image_size, "image_size")
  if seq_length is not None:
    seq_length = _checks.positive_int(seq_length, "seq_length")
  if name == "fortunes" or name.startswith(TEXT_PREFIX):
    if image_size is not None:
      raise ValueError(f"image_size resizes images; dataset {name!r} holds text tokens: leave "
                       f"data.image_size at 0")
    if split not in text_lib.SPLITS:
      raise ValueError(f"unknown split {split!r} for dataset {name!r}; valid splits are: "
                       f"{', '.join(text_lib.SPLITS)}")
    return _text_dataset(name, split, text_lib.DEFAULT_LENGTH if seq_length is None else seq_length)
  if name in captions_lib.DATASETS:
    if seq_length is not None:
      raise ValueError(f"seq_length sets the length of text examples; dataset {name!r} holds images "
                       f"with {captions_lib.CAPTION_LENGTH}-token captions: leave data.seq_length at 0")
    return caption_dataset(name, split, data_dir, download, local_dir=local_dir, image_size=image_size)
  if seq_length is not None and name in OFFLINE_DATASETS:
    raise ValueError(f"seq_length sets the length of text examples; dataset {name!r} holds "
                     f"{_KIND_OF_DATASET.get(name, 'image or vector')} data: leave data.seq_length "
                     f"at 0")
  if name in OFFLINE_DATASETS:
    if name == "fashion_mnist":
      return _fashion_mnist(split, data_dir, download, local_dir, image_size)
    if split not in _OFFLINE_SPLITS:
      raise ValueError(f"unknown split {split!r} for dataset {name!r}; valid splits are: "
                       f"{', '.join(_OFFLINE_SPLITS)}")
    loader = {"digits": _digits, "mixture2d": _mixture2d, "mnist1d": _mnist1d,
              "point_clouds": _point_clouds}[name]
    if image_size is not None and name in _KIND_OF_DATASET:
      raise ValueError(f"image_size resizes images; dataset {name!r} holds "
                       f"{_KIND_OF_DATASET[name]} data: leave data.image_size at 0")
    return _resize_array_source(loader(split), image_size)
  return tfds_source(name, split, data_dir, download, image_key=image_key, label_key=label_key,
                     image_size=image_size, text_key=text_key, seq_length=seq_length)


def _text_dataset(name: str, split: str, seq_length: int) -> TextSource:
  if name == "fortunes":
    documents = text_lib.read_fortunes(text_lib.FORTUNES_DIR)
  else:
    path = name[len(TEXT_PREFIX):]
    if not path:
      raise ValueError("dataset 'text:' names no file; pass 'text:/path/to/file.txt'")
    documents = text_lib.read_text_file(os.path.expanduser(path))
  return text_source(documents, split, seq_length, name)


def _fashion_mnist(split, data_dir, download, local_dir, image_size) -> Source:
  local_dir = FASHION_MNIST_DIR if local_dir is None else os.fspath(local_dir)
  if split in _OFFLINE_SPLITS and _idx_paths(local_dir, split) is not None:
    src = load_idx_images(local_dir, split, "fashion_mnist", num_classes=10)
    return _resize_array_source(src, image_size)
  try:
    return tfds_source("fashion_mnist", split, data_dir, download, image_size=image_size)
  except (ImportError, ValueError) as e:
    raise ValueError(
        f"fashion_mnist split {split!r} not found: no IDX files in {local_dir} (install them with "
        f"`apt-get install dataset-fashion-mnist`, or pass local_dir=) and TFDS could not read it "
        f"({e})") from e


def dataset_names() -> Sequence[str]:
  """The dataset names jdiff defines: the offline ones and the captioned datasets over TFDS ``mnist``
  (``text:<path>`` and any TFDS name are accepted as well)."""
  return OFFLINE_DATASETS + TFDS_CAPTION_DATASETS


# ---------------------------------------------------------------------------------------------------
# Captioned datasets (text-to-image).


class CaptionSource(ArraySource):
  """A captioned image split held in memory (:func:`caption_dataset`): ``uint8 [N, 28, 28, 1]``
  images (pairs: ``[N, 28, 56, 1]`` canvases) of kind ``image``, ``int32`` labels (pairs:
  ``10 * left + right``), and the extra field ``caption``: ``int32 [N, CAPTION_LENGTH]`` token ids.

  Attributes (besides :class:`ArraySource`'s):
    tokenizer: the :class:`jdiff.data.captions.WordTokenizer` of the whole grammar.
    captions: the caption of each example, a list of ``N`` strings.
    items: ``int32 [N, places]``: the class at each place, left to right (``[N, 1]`` for single items).
    grammar: the :class:`jdiff.data.captions.Grammar` (class names).
    image_split: the split of the image dataset the items were taken from.
  """

  def __init__(self, arrays: "captions_lib.CaptionedArrays", *, name: str, split: str,
               grammar: "captions_lib.Grammar", image_split: str):
    places = arrays.items.shape[1]
    super().__init__(arrays.images, arrays.labels, name=name, split=split,
                     num_classes=grammar.num_classes ** places, extras={"caption": arrays.tokens},
                     kind="image")
    self.tokenizer = arrays.tokenizer
    self.captions = arrays.captions
    self.items = arrays.items
    self.grammar = grammar
    self.image_split = image_split


def caption_dataset(name: str, split: str = "train", data_dir=None, download: bool = False, *,
                    local_dir: Optional[str] = None, seed: int = captions_lib.DATA_SEED,
                    image_size: Optional[int] = None) -> CaptionSource:
  """The captioned dataset ``name`` (``fashion_mnist_captions``, ``fashion_mnist_pairs``,
  ``mnist_captions``, ``mnist_pairs``; :mod:`jdiff.data.captions`) built in memory from the ``train``
  or ``test`` images of its image dataset (read through :func:`get_dataset` with ``data_dir``,
  ``download`` and ``local_dir``). Deterministic for ``seed``; nothing is cached on disk.

  ``image_size`` (single items only; a divisor of 28 such as 14): each image is the ``28 / image_size``
  average pool of the item (rounded to uint8), the same downsampling as the low-resolution input of a
  super-resolution model (``jdiff.conditions.LowRes``), so a 14x14 base model and a 14 -> 28 stage
  form a cascade."""
  if name not in captions_lib.DATASETS:
    raise ValueError(f"unknown captioned dataset {name!r}; valid names are "
                     f"{', '.join(captions_lib.DATASETS)}")
  image_name, layout = captions_lib.DATASETS[name]
  splits = captions_lib.PAIR_SPLITS if layout == "pairs" else captions_lib.SINGLE_SPLITS
  if split not in splits:
    raise ValueError(f"unknown split {split!r} for dataset {name!r}; valid splits are: "
                     f"{', '.join(splits)}")
  image_split = captions_lib.PAIR_IMAGE_SPLIT[split] if layout == "pairs" else split
  src = get_dataset(image_name, image_split, data_dir, download, local_dir=local_dir)
  if isinstance(src, ArraySource):
    images, labels = src.data, src.labels
  else:
    images, labels = src.read(np.arange(src.num_examples))
  grammar = captions_lib.get_grammar(image_name)
  build = captions_lib.pair_arrays if layout == "pairs" else captions_lib.single_arrays
  arrays = build(images, labels, split, dataset=image_name, seed=seed)
  if image_size is not None and image_size != arrays.images.shape[1]:
    size = arrays.images.shape[1]
    if layout == "pairs" or size % image_size:
      raise ValueError(f"image_size={image_size} must divide the {size}x{size} items of {name!r} (e.g. "
                       f"{size // 2}); the two-item canvases of *_pairs datasets are not resized: leave "
                       f"data.image_size at 0")
    f = size // image_size
    n, _, _, ch = arrays.images.shape
    pooled = arrays.images.reshape(n, image_size, f, image_size, f, ch).mean(axis=(2, 4), dtype=np.float64)
    arrays = dataclasses.replace(arrays, images=np.round(pooled).astype(np.uint8))
  return CaptionSource(arrays, name=name, split=split, grammar=grammar, image_split=image_split)


