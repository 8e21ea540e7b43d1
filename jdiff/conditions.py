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
Class labels (``Label``) are the first kind; a new kind (token sequences, embedding sequences with a
mask, low-resolution images) is a new subclass of ``Kind``, with no change to the training step, the
sampling program or guidance.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import _checks


class Kind:
  """One kind of condition (subclass it); see the module docstring."""
  name: str = ""

  def null(self) -> Any:
    raise NotImplementedError

  def check(self, value, batch: int) -> None:
    raise NotImplementedError

  def for_indices(self, indices: np.ndarray, given: Optional[Sequence] = None) -> np.ndarray:
    raise NotImplementedError


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
    missing = sorted(set(self.kinds) - set(batch))
    if missing:
      raise ValueError(f"the data batch has no field {missing[0]!r} for the condition of that name; "
                       f"use a dataset that provides it")
    return {name: batch[name] for name in self.kinds}

  def null(self) -> Optional[dict]:
    """Every kind's null value (broadcast by ``guidance.classifier_free`` to the batch)."""
    return {name: k.null() for name, k in self.kinds.items()} if self.kinds else None

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
      null = jnp.broadcast_to(jnp.asarray(self.kinds[name].null(), value.dtype), value.shape)
      mask = dropped.reshape(dropped.shape + (1,) * (value.ndim - 1))
      return jnp.where(mask, null, value)

    return {name: one(name, v) for name, v in cond.items()}

  def for_indices(self, indices, given: Optional[dict] = None) -> Optional[dict]:
    """``cond`` for the samples with these global indices (``given``: per kind, the values a user asked
    for, cycled over the indices)."""
    if not self.kinds:
      return None
    given = dict(given or {})
    return {name: k.for_indices(indices, given.get(name)) for name, k in self.kinds.items()}


def for_model(num_classes: int) -> Conditions:
  """The conditions of a model with ``num_classes`` class labels (0: unconditional)."""
  return Conditions([Label(num_classes)] if num_classes else [])
