"""Conditions as a pytree of named kinds.

A model's ``cond`` is a dict ``{kind name: array [batch, ...]}`` (or ``None`` for an unconditional
model). Each kind says, in one place, everything the floors above need to know about it:

* ``name``: its key in ``cond`` and its field in a data batch (``jdiff.data`` batches carry ``label``);
* ``null()``: its null value, the "no condition" input that classifier-free guidance contrasts with
  (Ho & Salimans 2022, eq. 6) and that condition dropout trains (Alg. 1);
* ``check(value, batch)``: its shape, dtype and range, one clear ``ValueError`` before tracing;
* ``for_indices(indices, given)``: what sample ``i`` is conditioned on at sampling time, a pure
  function of its global index ``i`` (so sample ``i`` is the same at any batch size).

``Conditions`` is the set of kinds a model was trained with: ``from_batch`` reads them from a data batch,
``drop`` replaces all of an example's conditions by their nulls with probability ``p`` (one decision per
example, from ``fold_in(key, global index)``), and ``null`` is the pytree for ``guidance.classifier_free``.
Kinds: class labels (``Label``); captions as token ids (``Caption``, text-to-image in the GLIDE line,
Nichol et al. 2022); precomputed text embeddings with their mask (``TextEmbedding`` and
``TextMask``, Imagen's frozen encoder, Saharia et al. 2022); the low-resolution image of a
super-resolution stage and its noise-augmentation level (``LowRes``, ``LowResLevel``; never dropped,
noised by ``noised``). A new kind is a new subclass of ``Kind``, with no change to the training step,
the sampling program or guidance.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import _checks


class Kind:
  """One kind of condition (subclass it); see the module docstring. ``droppable``: condition dropout
  and the null condition of guidance replace it (a low-resolution image that a super-resolution model
  refines is kept: guidance contrasts the caption only)."""
  name: str = ""
  droppable: bool = True

  def read(self, batch: dict):
    """Its value from a data batch (default: the field of its name)."""
    return batch[self.name]

  def null(self) -> Any:
    raise NotImplementedError

  def check(self, value, batch: int) -> None:
    raise NotImplementedError

  def for_indices(self, indices: np.ndarray, given: Optional[Sequence] = None) -> np.ndarray:
    raise NotImplementedError

  def placeholder(self, n: int) -> np.ndarray:
    """A valid value for ``n`` examples (to initialise a model's parameters)."""
    return self.for_indices(np.zeros((n,), np.int32))


class Label(Kind):
  """A class label: ``int32 [batch]`` in ``[0, num_classes)``; the null label is ``num_classes`` (an
  extra row of the model's label embedding). At sampling time sample ``i`` gets ``given[i % len(given)]``,
  by default ``i % num_classes``."""
  name = "label"

  def __init__(self, num_classes: int):
    self.num_classes = _checks.positive_int(num_classes, "num_classes")

  def __repr__(self) -> str:
    return f"Label(num_classes={self.num_classes})"

  def __eq__(self, other) -> bool:
    return isinstance(other, Label) and other.num_classes == self.num_classes

  def __hash__(self) -> int:
    return hash(("label", self.num_classes))

  def null(self):
    return jnp.int32(self.num_classes)

  def check(self, value, batch: int) -> None:
    dt = np.asarray(value).dtype if not hasattr(value, "dtype") else value.dtype
    if not np.issubdtype(np.dtype(dt), np.integer):
      raise ValueError(f"label must be integer class labels, got dtype {dt}")
    if np.shape(value) != (batch,):
      raise ValueError(f"label must have shape [batch]=({batch},), got {np.shape(value)}")
    if _checks.is_concrete(value):
      self.check_values(np.asarray(value), allow_null=True)

  def check_values(self, values, allow_null: bool = False) -> None:
    """Labels a user asked for lie in ``[0, num_classes)`` (``allow_null``: ``num_classes`` too)."""
    hi = self.num_classes + (1 if allow_null else 0)
    bad = [int(v) for v in np.ravel(values) if not 0 <= int(v) < hi]
    if bad:
      raise ValueError(f"label {bad[0]} is out of range: the model has {self.num_classes} classes, "
                       f"labels must be in [0, {self.num_classes - 1}]")

  def for_indices(self, indices, given=None) -> np.ndarray:
    indices = np.asarray(indices)
    if given is None:
      return (indices % self.num_classes).astype(np.int32)
    lab = np.asarray(given, np.int32)
    if lab.size == 0:
      raise ValueError("labels is empty; pass class labels such as 0,1,2")
    self.check_values(lab)
    return lab[indices % lab.size]


def _check_rows(value, batch: int, per_example: tuple, what: str, integer: bool) -> None:
  """``value`` is ``[batch, *per_example]`` of an integer (or floating) dtype: one ``ValueError``."""
  dt = np.dtype(value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype)
  if integer and not np.issubdtype(dt, np.integer) and dt != np.bool_:
    raise ValueError(f"{what} must be integers, got dtype {dt}")
  if not integer and not np.issubdtype(dt, np.floating):
    raise ValueError(f"{what} must be floating point, got dtype {dt}")
  want = (batch,) + tuple(per_example)
  if tuple(np.shape(value)) != want:
    raise ValueError(f"{what} must have shape {list(want)}, got {list(np.shape(value))}")


def _cycled(given: np.ndarray, indices: np.ndarray, what: str) -> np.ndarray:
  """Row ``i % len(given)`` of ``given`` for each global index ``i`` (sample ``i`` is the same at any
  batch size)."""
  if given.shape[0] == 0:
    raise ValueError(f"{what} is empty; give at least one")
  return given[np.asarray(indices) % given.shape[0]]


class Caption(Kind):
  """A caption as token ids: ``int32 [batch, length]``, id 0 is padding (at the end). The null caption
  is all padding, the empty text: classifier-free guidance (Nichol et al. 2022, GLIDE, Sec. 3.2) drops
  captions to it. ``encode`` (texts -> ``int [n, length]``) is the model's tokenizer, so prompts can be
  given as text; it raises on text the model cannot represent (an unknown word, too many words), never
  truncating. At sampling time sample ``i`` gets prompt ``i % len(prompts)`` (default: ``defaults``,
  token rows; none: the null caption)."""
  name = "caption"

  def __init__(self, length: int, vocab_size: int, encode=None, defaults=None, decode=None):
    self.length = _checks.positive_int(length, "caption length")
    self.vocab_size = _checks.int_at_least(vocab_size, "caption vocab_size", 2)
    self.encode, self._decode = encode, decode
    self.defaults = None if defaults is None else self.tokens(defaults)

  def decode(self, ids) -> str:
    """The text of one row of token ids (with no tokenizer: the ids, space-separated)."""
    ids = np.asarray(ids)
    if self._decode is not None:
      return self._decode(ids)
    return " ".join(str(int(i)) for i in ids if i != 0)

  def __repr__(self) -> str:
    return f"Caption(length={self.length}, vocab_size={self.vocab_size})"

  def __eq__(self, other) -> bool:
    return (isinstance(other, Caption) and (other.length, other.vocab_size) ==
            (self.length, self.vocab_size))

  def __hash__(self) -> int:
    return hash(("caption", self.length, self.vocab_size))

  def null(self):
    return jnp.int32(0)

  def check(self, value, batch: int) -> None:
    _check_rows(value, batch, (self.length,), "caption token ids", integer=True)
    if _checks.is_concrete(value):
      self.check_ids(np.asarray(value))

  def check_ids(self, ids) -> None:
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
      bad = int(ids.min() if ids.min() < 0 else ids.max())
      raise ValueError(f"caption token id {bad} is out of range: the model's vocabulary has "
                       f"{self.vocab_size} ids (0 = padding)")

  def tokens(self, given) -> np.ndarray:
    """``int32 [n, length]`` from prompts: texts (through ``encode``) or token rows."""
    if isinstance(given, str):
      given = [given]
    if len(given) and all(isinstance(g, str) for g in given):
      if self.encode is None:
        raise ValueError("this caption condition has no tokenizer; give token ids instead of text")
      ids = np.asarray(self.encode(list(given)))
    else:
      ids = np.asarray(given)
    if ids.ndim != 2 or ids.shape[1] != self.length or not (
        np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
      raise ValueError(f"caption token rows must be integers of shape [n, {self.length}], got "
                       f"{ids.dtype} {list(ids.shape)}")
    self.check_ids(ids)
    return ids.astype(np.int32)

  def for_indices(self, indices, given=None) -> np.ndarray:
    indices = np.asarray(indices)
    if given is None:
      if self.defaults is None:
        return np.zeros((indices.size, self.length), np.int32)
      return _cycled(self.defaults, indices, "default prompts")
    return _cycled(self.tokens(given), indices, "prompts")


class TextEmbedding(Kind):
  """A precomputed text embedding sequence ``float32 [batch, length, dim]`` (e.g. from a frozen T5 or
  CLIP encoder a user ran elsewhere; Saharia et al. 2022, Imagen, Sec. 2.1), read together with its
  ``TextMask``. The null embedding is zeros (and the mask all zeros). Given at sampling time as rows
  ``[n, length, dim]``, sample ``i`` gets row ``i % n``; default: the null."""
  name = "text_emb"

  def __init__(self, length: int, dim: int):
    self.length = _checks.positive_int(length, "text embedding length")
    self.dim = _checks.positive_int(dim, "text embedding dim")

  def __repr__(self) -> str:
    return f"TextEmbedding(length={self.length}, dim={self.dim})"

  def __eq__(self, other) -> bool:
    return isinstance(other, TextEmbedding) and (other.length, other.dim) == (self.length, self.dim)

  def __hash__(self) -> int:
    return hash(("text_emb", self.length, self.dim))

  def null(self):
    return jnp.float32(0.0)

  def check(self, value, batch: int) -> None:
    _check_rows(value, batch, (self.length, self.dim), "text embeddings", integer=False)

  def for_indices(self, indices, given=None) -> np.ndarray:
    indices = np.asarray(indices)
    if given is None:
      return np.zeros((indices.size, self.length, self.dim), np.float32)
    rows = np.asarray(given, np.float32)
    if rows.ndim != 3 or rows.shape[1:] != (self.length, self.dim):
      raise ValueError(f"text embeddings must have shape [n, {self.length}, {self.dim}] (the model's "
                       f"length and width), got {list(rows.shape)}")
    _checks.check_finite(rows, "text embeddings")
    return _cycled(rows, indices, "text embeddings")


class TextMask(Kind):
  """Which positions of a ``TextEmbedding`` are real tokens: ``int32 [batch, length]``, 1 = token,
  0 = padding; the null mask is all zeros (no text)."""
  name = "text_mask"

  def __init__(self, length: int):
    self.length = _checks.positive_int(length, "text mask length")

  def __repr__(self) -> str:
    return f"TextMask(length={self.length})"

  def __eq__(self, other) -> bool:
    return isinstance(other, TextMask) and other.length == self.length

  def __hash__(self) -> int:
    return hash(("text_mask", self.length))

  def null(self):
    return jnp.int32(0)

  def check(self, value, batch: int) -> None:
    _check_rows(value, batch, (self.length,), "the text mask", integer=True)
    if _checks.is_concrete(value):
      v = np.asarray(value)
      if v.size and not np.isin(v, (0, 1)).all():
        raise ValueError("the text mask must hold 0 (padding) and 1 (token) only")

  def for_indices(self, indices, given=None) -> np.ndarray:
    indices = np.asarray(indices)
    if given is None:
      return np.zeros((indices.size, self.length), np.int32)
    rows = np.asarray(given)
    if rows.ndim != 2 or rows.shape[1] != self.length:
      raise ValueError(f"the text mask must have shape [n, {self.length}], got {list(rows.shape)}")
    if rows.size and not np.isin(rows, (0, 1)).all():
      raise ValueError("the text mask must hold 0 (padding) and 1 (token) only")
    return _cycled(rows.astype(np.int32), indices, "text masks")


class Conditions:
  """The kinds of condition a model takes (empty: unconditional)."""

  def __init__(self, kinds: Sequence[Kind] = ()):
    self.kinds = {k.name: k for k in kinds}
    if len(self.kinds) != len(kinds):
      raise ValueError(f"two condition kinds share a name: {[k.name for k in kinds]}")

  def __bool__(self) -> bool:
    return bool(self.kinds)

  def __repr__(self) -> str:
    return f"Conditions({list(self.kinds.values())})"

  def __contains__(self, name: str) -> bool:
    return name in self.kinds

  def __getitem__(self, name: str) -> Kind:
    return self.kinds[name]

  def from_batch(self, batch: dict) -> Optional[dict]:
    """``cond`` from a data batch's fields (``None`` when unconditional)."""
    if not self.kinds:
      return None
    missing = sorted(n for n, k in self.kinds.items() if type(k).read is Kind.read and n not in batch)
    if missing:
      raise ValueError(f"the data batch has no field {missing[0]!r} for the condition of that name; "
                       f"use a dataset that provides it")
    return {name: k.read(batch) for name, k in self.kinds.items()}

  def null(self) -> Optional[dict]:
    """Every kind's null value (broadcast by ``guidance.classifier_free`` to the batch)."""
    return {name: k.null() for name, k in self.kinds.items()} if self.kinds else None

  def null_like(self, cond):
    """``cond`` with every droppable kind replaced by its null (the unconditional input of
    classifier-free guidance; kinds that are never dropped, e.g. a low-resolution image, are kept)."""
    if not self.kinds:
      return cond
    out = {}
    for name, value in cond.items():
      value = jnp.asarray(value)
      k = self.kinds[name]
      out[name] = jnp.broadcast_to(jnp.asarray(k.null(), value.dtype), value.shape) if k.droppable \
          else value
    return out

  @property
  def droppable(self) -> bool:
    """Whether any kind is dropped (so classifier-free guidance has something to contrast)."""
    return any(k.droppable for k in self.kinds.values())

  def check(self, cond, batch: int) -> None:
    if not self.kinds:
      if cond is not None:
        raise ValueError("the model is unconditional but got a condition; pass cond=None")
      return
    if not isinstance(cond, dict) or set(cond) != set(self.kinds):
      got = sorted(cond) if isinstance(cond, dict) else type(cond).__name__
      raise ValueError(f"cond must be a dict with the keys {sorted(self.kinds)}, got {got}")
    for name, k in self.kinds.items():
      k.check(cond[name], batch)

  def drop(self, cond, key, index, prob):
    """Condition dropout for classifier-free guidance (Ho & Salimans 2022, Alg. 1): example ``b``
    (global index ``index[b]``) has all its conditions replaced by their nulls with probability ``prob``,
    decided by ``uniform(fold_in(key, index[b]))`` (independent of the device layout)."""
    if not self.kinds:
      return cond
    u = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))(index)
    dropped = u < prob

    def one(name, value):
      value = jnp.asarray(value)
      if not self.kinds[name].droppable:
        return value
      null = jnp.broadcast_to(jnp.asarray(self.kinds[name].null(), value.dtype), value.shape)
      mask = dropped.reshape(dropped.shape + (1,) * (value.ndim - 1))
      return jnp.where(mask, null, value)

    return {name: one(name, v) for name, v in cond.items()}

  def placeholder(self, n: int) -> Optional[dict]:
    """A valid ``cond`` for ``n`` examples (to initialise a model's parameters)."""
    return {name: k.placeholder(n) for name, k in self.kinds.items()} if self.kinds else None

  def noised(self, cond, key, index, train: bool):
    """``cond`` after the kinds that add noise to their value (``LowRes``'s noise-conditioning
    augmentation) did so: in training at a random level per example, at sampling at the given level;
    example ``b``'s noise comes from ``fold_in(key, index[b])`` (independent of the device layout)."""
    if not self.kinds:
      return cond
    cond = dict(cond)
    for k in self.kinds.values():
      if hasattr(k, "noise"):
        cond.update(k.noise(cond, key, index, train))
    return cond

  def for_training(self, batch: dict, key, index, prob):
    """The training step's ``cond``: read from ``batch``, dropped to the null with probability
    ``prob`` (``drop``), then noised (``noised``)."""
    if not self.kinds:
      return None
    cond = self.drop(self.from_batch(batch), key, index, prob)
    return self.noised(cond, jax.random.split(key)[1], index, train=True)

  def for_indices(self, indices, given: Optional[dict] = None) -> Optional[dict]:
    """``cond`` for the samples with these global indices (``given``: per kind, the values a user asked
    for, cycled over the indices)."""
    if not self.kinds:
      return None
    given = dict(given or {})
    return {name: k.for_indices(indices, given.get(name)) for name, k in self.kinds.items()}


def avgpool(images, factor: int):
  """``[b, H, W, C]`` -> ``[b, H/f, W/f, C]``: the mean of each ``f x f`` block (H, W divisible by f)."""
  b, h, w, c = images.shape
  return images.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


class LowRes(Kind):
  """The low-resolution image a super-resolution model refines (Ho et al. 2022, "Cascaded diffusion
  models"; Saharia et al. 2022, Imagen): ``float32 [batch, h, w, C]`` in data units, read from a batch
  as the ``factor`` x ``factor`` average pool of its images, given at sampling time as the base model's
  samples (row ``i % n`` for sample ``i``). Never dropped.

  Noise-conditioning augmentation (Ho et al. 2022, Sec. 3.2, Gaussian augmentation): the condition is
  corrupted by the model's own forward process, ``z = alpha(s) low_res + sigma(s) eps``, and the level
  ``s`` (kind ``LowResLevel``, ``low_res_t``) is an input of the model. Training draws ``s`` uniformly in
  ``[0, max_level]`` per example; sampling uses one chosen level (``LowResLevel.level``, or the one
  given). The augmentation makes the model robust to the base model's artefacts: the base samples are
  not the clean downsampled images it was trained on."""
  name = "low_res"
  droppable = False

  def __init__(self, shape, factor: int, schedule, max_level: float):
    self.shape = tuple(int(d) for d in shape)
    if len(self.shape) != 3:
      raise ValueError(f"the low-resolution shape must be (h, w, C), got {shape!r}")
    self.factor = _checks.positive_int(factor, "low-resolution factor")
    self.schedule = schedule
    self.max_level = float(max_level)
    if not 0.0 <= self.max_level <= 1.0:
      raise ValueError(f"the maximum noise-augmentation level must be in [0, 1], got {max_level!r}")

  def __repr__(self) -> str:
    return f"LowRes(shape={self.shape}, factor={self.factor}, max_level={self.max_level})"

  def read(self, batch: dict):
    return avgpool(jnp.asarray(batch["image"], jnp.float32), self.factor)

  def null(self):
    return jnp.float32(0.0)

  def check(self, value, batch: int) -> None:
    _check_rows(value, batch, self.shape, "low-resolution images", integer=False)

  def for_indices(self, indices, given=None) -> np.ndarray:
    if given is None:
      raise ValueError("a super-resolution model needs the low-resolution images it refines: sample the "
                       "base model first (sample.py --workdir=BASE --sr_workdir=THIS) or pass low_res rows")
    rows = np.asarray(given, np.float32)
    if rows.ndim != 4 or rows.shape[1:] != self.shape:
      raise ValueError(f"low-resolution images must have shape [n, {', '.join(map(str, self.shape))}] "
                       f"(the super-resolution model's input), got {list(rows.shape)}")
    _checks.check_finite(rows, "low-resolution images")
    return _cycled(rows, indices, "low-resolution images")

  def placeholder(self, n: int) -> np.ndarray:
    return np.zeros((n,) + self.shape, np.float32)

  def noise(self, cond, key, index, train: bool) -> dict:
    """``{low_res: alpha(s) low_res + sigma(s) eps, low_res_t: s}`` (see the class docstring)."""
    lr = jnp.asarray(cond[self.name], jnp.float32)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(index))
    if train:
      s = self.max_level * jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 0)))(keys)
    else:
      s = jnp.asarray(cond[LowResLevel.name], jnp.float32)
    eps = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), lr.shape[1:]))(keys)
    alpha, sigma = self.schedule.alpha_sigma(s)
    shape = (-1,) + (1,) * (lr.ndim - 1)
    return {self.name: alpha.reshape(shape) * lr + sigma.reshape(shape) * eps, LowResLevel.name: s}


class LowResLevel(Kind):
  """The noise-augmentation level ``s`` in ``[0, 1]`` of a ``LowRes`` condition: ``float32 [batch]``.
  Set by the augmentation in training; at sampling time ``level`` (or the one given), the same for
  every sample. Never dropped."""
  name = "low_res_t"
  droppable = False

  def __init__(self, level: float):
    self.level = self.check_level(level)

  def __repr__(self) -> str:
    return f"LowResLevel(level={self.level})"

  @staticmethod
  def check_level(level) -> float:
    if not isinstance(level, (int, float, np.floating)) or not 0.0 <= float(level) <= 1.0:
      raise ValueError(f"the noise-augmentation level of the low-resolution image must be in [0, 1], "
                       f"got {level!r}")
    return float(level)

  def read(self, batch: dict):
    return jnp.zeros(np.shape(batch["image"])[:1], jnp.float32)  # set by LowRes.noise

  def null(self):
    return jnp.float32(0.0)

  def check(self, value, batch: int) -> None:
    _check_rows(value, batch, (), "the low-resolution noise level", integer=False)

  def for_indices(self, indices, given=None) -> np.ndarray:
    level = self.level if given is None else self.check_level(given)
    return np.full((np.asarray(indices).size,), level, np.float32)


def for_model(num_classes: int, text: Optional[dict] = None,
              low_res: Optional[dict] = None) -> Conditions:
  """The conditions of a model with ``num_classes`` class labels (0: none) and ``text``: ``None``, or
  ``{"length", "vocab_size"[, "encode", "defaults", "decode"]}`` for captions as token ids, or ``{"length",
  "dim"}`` for precomputed embeddings with a mask; ``low_res``: ``None`` or ``{"shape", "factor",
  "schedule", "max_level", "level"}`` for a super-resolution model."""
  kinds = [Label(num_classes)] if num_classes else []
  if low_res:
    kinds += [LowRes(low_res["shape"], low_res["factor"], low_res["schedule"], low_res["max_level"]),
              LowResLevel(low_res["level"])]
  if text:
    if "dim" in text:
      kinds += [TextEmbedding(text["length"], text["dim"]), TextMask(text["length"])]
    else:
      kinds.append(Caption(text["length"], text["vocab_size"], text.get("encode"),
                           text.get("defaults"), text.get("decode")))
  return Conditions(kinds)
