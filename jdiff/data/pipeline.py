"""A deterministic, resumable, multi-process input pipeline over a random-access :class:`Source`, on
grain's ``MapDataset``.

The order is a grain ``MapDataset`` of *global* dataset indices, the same in every process::

    grain.MapDataset.range(N).seed(seed).shuffle().batch(B, drop_remainder=True).repeat()

- ``seed`` -> ``shuffle``: grain derives the shuffle's seed ``s`` from ``seed``
  (``MapDataset.seed``: a ``numpy.random.SeedSequence`` hash, so nearby seeds give unrelated
  orders), and ``ShuffleMapDataset`` visits epoch ``e`` in the order of grain's
  ``experimental.index_shuffle`` permutation of ``0 .. N-1`` seeded with ``s + e``: a fresh shuffle
  each epoch, each example once per epoch;
- ``batch(B, drop_remainder=True)``: global batch ``j`` of an epoch is entries ``[jB, (j+1)B)`` of
  that epoch's permutation; the ``N mod B`` left over are dropped, per epoch;
- ``repeat()``: epochs follow one another forever; element ``step`` of this dataset is global batch
  ``step`` (epoch ``step // steps_per_epoch``) -- :meth:`Pipeline.global_indices`.

Process ``p`` of ``P`` then reads from the source only the examples at positions
``[p B / P, (p + 1) B / P)`` of each global batch (one batched ``Source.read``), so the processes
together read exactly the single-process global batch, each example once. The optional horizontal
flip of the example at position ``i`` of global batch ``step`` is :func:`flip_mask` bit ``i``, a pure
function of ``(seed, step, i)``: the same for any process layout.

Iteration is a grain iterator (``MapDataset.to_iter_dataset`` with ``grain.ReadOptions``) over the
step numbers ``0, 1, 2, ...`` mapped to :meth:`Pipeline.batch_at`: no worker processes; with
``prefetch > 0`` one grain thread prepares that many batches ahead. Its state is the next step
(grain's ``next_index``), so the position in the stream is one integer: :meth:`Pipeline.get_state`
returns it in a small JSON-able dict and :meth:`Pipeline.set_state` resumes it exactly, with any
number of processes. (grain's ``IndexSampler``/``ShardOptions`` are not used: they give each process
a contiguous range of *records*, so the stream would depend on the process count.) The order is
grain's: a grain release that changed ``index_shuffle`` or the seed derivation would change it.

Each host batch is a dict of numpy arrays shaped for ``jax.pmap`` over the local devices:

- ``image``: ``float32 [num_local_devices, per_device_batch, H, W, C]`` images scaled from ``uint8``
  to [-1, 1] (``x / 127.5 - 1``; ``float32`` images as stored), or ``[num_local_devices,
  per_device_batch, *shape]`` vectors, point sets or 1-D signals as stored, or for a ``tokens`` source
  ``int32 [num_local_devices, per_device_batch, L]`` token ids as stored (no cast, no scaling);
- ``label``: ``int32 [num_local_devices, per_device_batch]``;
- ``index``: ``int32 [num_local_devices, per_device_batch]``, each example's position in the *global*
  batch (``0 .. B - 1``): training folds it into the per-example random key, so the noise an example
  gets does not depend on the device or process count;
- one ``[num_local_devices, per_device_batch, ...]`` array per ``Source.extras`` field: ``int32`` for an
  integer field (a captioned dataset's ``caption`` token ids, ``int32 [..., CAPTION_LENGTH]``),
  ``float32`` otherwise (reflow's ``noise``); never scaled or flipped.
"""
from __future__ import annotations

import sys
from typing import Any, Optional

import grain
import numpy as np

from jdiff import _checks
from jdiff.data.sources import ArraySource, Source, get_dataset

_FLIP_STREAM = 1  # distinguishes the flip generator's seed sequence from other uses of the seed


def _divisible_hint(b: int, d: int) -> str:
  lo = max(d, (b // d) * d)
  hi = (b // d + 1) * d
  return f"{lo} or {hi}" if lo != hi else f"{lo}"


def _extra_batch(value) -> np.ndarray:
  """An extra field's batch: integer arrays as ``int32``, others as ``float32``."""
  value = np.asarray(value)
  return value.astype(np.int32 if np.issubdtype(value.dtype, np.integer) else np.float32)


def _extra_dtype(source: Source, name: str) -> np.dtype:
  dtype = getattr(source, "extra_dtype", None)
  if dtype is not None:
    return np.dtype(dtype(name))
  return _extra_batch(source.read_extras(np.zeros((1,), np.int64))[name]).dtype


def flip_mask(seed: int, step: int, global_batch_size: int) -> np.ndarray:
  """Which positions of global batch ``step`` are flipped horizontally: ``bool [B]``."""
  rng = np.random.default_rng([seed, step, _FLIP_STREAM])
  return rng.random(global_batch_size) < 0.5


class Pipeline:
  """Deterministic batches from a :class:`Source` (see the module docstring for the exact order).

  Args:
    source: a random-access source (:func:`jdiff.data.get_dataset`).
    global_batch_size: examples per step over all processes and devices; must be a multiple of
      ``process_count * num_local_devices`` and at most ``source.num_examples``.
    seed: integer >= 0 fixing the order and the flips.
    num_local_devices: devices of this process (default ``jax.local_device_count()``).
    process_index, process_count: this process and the number of processes (default
      ``jax.process_index()`` and ``jax.process_count()``).
    random_flip: flip images horizontally with probability 1/2 (images only).
    prefetch: batches prepared ahead on a background thread (0: none; default 0 for in-memory
      sources, where a batch costs about 10 us per example, mostly grain's shuffle, and 2 otherwise,
      e.g. for TFDS sources that decode images). Batches are a pure function of the step, so
      prefetching never changes them.

  Iterating yields ``batch_at(step)`` for ``step = self.step, self.step + 1, ...`` forever (epochs
  follow one another); :meth:`batch_at` gives any step directly.
  """

  def __init__(self, source: Source, global_batch_size: int, seed: int = 0, *,
               num_local_devices: Optional[int] = None, process_index: Optional[int] = None,
               process_count: Optional[int] = None, random_flip: bool = False,
               prefetch: Optional[int] = None):
    if not isinstance(source, Source):
      raise ValueError(f"source must be a jdiff.data.Source (from jdiff.data.get_dataset), got "
                       f"{type(source).__name__}")
    if num_local_devices is None or process_index is None or process_count is None:
      import jax  # pylint: disable=g-import-not-at-top
      num_local_devices = jax.local_device_count() if num_local_devices is None else num_local_devices
      process_index = jax.process_index() if process_index is None else process_index
      process_count = jax.process_count() if process_count is None else process_count
    b = _checks.positive_int(global_batch_size, "global_batch_size")
    ndev = _checks.positive_int(num_local_devices, "num_local_devices")
    nproc = _checks.positive_int(process_count, "process_count")
    pidx = _checks.int_at_least(process_index, "process_index", 0)
    if pidx >= nproc:
      raise ValueError(f"process_index must lie in [0, process_count={nproc}), got {pidx}")
    div = nproc * ndev
    if b % div:
      raise ValueError(f"global_batch_size={b} must be divisible by process_count * "
                       f"num_local_devices = {nproc} * {ndev} = {div}; use a multiple of {div} such "
                       f"as {_divisible_hint(b, div)}")
    if source.num_examples < b:
      raise ValueError(f"dataset {source.name!r} split {source.split!r} has {source.num_examples} "
                       f"examples, fewer than global_batch_size={b}; use a smaller batch")
    if random_flip and not source.is_image:
      raise ValueError(f"random_flip needs an image dataset; {source.name!r} holds {source.kind} data "
                       f"of shape {source.shape}: pass random_flip=False "
                       f"(--config.data.random_flip=False)")
    if random_flip and source.extras:
      raise ValueError(f"random_flip would flip the images of {source.name!r} but not their "
                       f"{', '.join(source.extras)}: pass random_flip=False")
    self.source = source
    self.global_batch_size = b
    self.num_local_devices = ndev
    self.process_index = pidx
    self.process_count = nproc
    self.local_batch_size = b // nproc
    self.per_device_batch_size = b // div
    self.steps_per_epoch = source.num_examples // b
    self.random_flip = bool(random_flip)
    if prefetch is None:
      prefetch = 0 if isinstance(source, ArraySource) else 2
    prefetch = _checks.int_at_least(prefetch, "prefetch", 0)
    self._read_options = grain.ReadOptions(num_threads=min(prefetch, 1),
                                           prefetch_buffer_size=prefetch)
    # The step numbers, each mapped to its host batch (late-bound, so batch_at is the one source of
    # batches); a grain iterator over them holds the position and does the prefetching.
    self._steps = grain.MapDataset.range(sys.maxsize).map(lambda step: self.batch_at(step))
    self._iterator = None
    self._start(_checks.int_at_least(seed, "seed", 0), 0)

  def _start(self, seed: int, step: int) -> None:
    """(Re)start the stream of ``seed`` at ``step``, dropping any prefetched batches."""
    if self._iterator is not None:
      self._iterator.close()
    self._seed = seed
    self._order = (grain.MapDataset.range(self.source.num_examples).seed(seed).shuffle()
                   .batch(self.global_batch_size, drop_remainder=True).repeat())
    self._iterator = iter(self._steps.to_iter_dataset(self._read_options))
    self._iterator.set_state({"next_index": step})

  # -- the stream as a pure function of (seed, step) ------------------------------------------------

  @property
  def seed(self) -> int:
    return self._seed

  @property
  def step(self) -> int:
    """The step of the next batch that iteration returns."""
    return self._iterator.get_state()["next_index"]

  @property
  def epoch(self) -> int:
    return self.step // self.steps_per_epoch

  @property
  def shapes(self) -> dict:
    """Shapes of the arrays in each host batch."""
    lead = (self.num_local_devices, self.per_device_batch_size)
    extras = {k: lead + self.source.extra_shape(k) for k in self.source.extras}
    return {"image": lead + tuple(self.source.shape), "label": lead, "index": lead, **extras}

  @property
  def dtypes(self) -> dict:
    """Dtypes of the arrays in each host batch (``int32`` for tokens, labels, indices and integer
    extras; ``float32`` otherwise)."""
    data = np.int32 if self.source.kind == "tokens" else np.float32
    extras = {k: _extra_dtype(self.source, k) for k in self.source.extras}
    return {"image": np.dtype(data), "label": np.dtype(np.int32), "index": np.dtype(np.int32),
            **extras}

  def global_indices(self, step: int) -> np.ndarray:
    """Dataset indices of the whole global batch ``step`` (all processes), ``int64 [B]``."""
    return self._order[_checks.int_at_least(step, "step", 0)]

  def batch_at(self, step: int) -> dict:
    """This process's host batch for global step ``step`` (does not move the iterator)."""
    lo = self.process_index * self.local_batch_size
    positions = np.arange(lo, lo + self.local_batch_size)
    indices = self.global_indices(step)[positions]
    data, labels = self.source.read(indices)
    if self.source.kind == "tokens":
      x = np.asarray(data, np.int32)
    else:
      x = data.astype(np.float32)
    if self.source.is_image and data.dtype == np.uint8:
      x = x / np.float32(127.5) - np.float32(1.0)
      if self.random_flip:
        flips = flip_mask(self._seed, step, self.global_batch_size)[positions]
        x[flips] = x[flips, :, ::-1]
    lead = (self.num_local_devices, self.per_device_batch_size)
    extras = {k: _extra_batch(v).reshape(lead + np.shape(v)[1:])
              for k, v in self.source.read_extras(indices).items()}
    return {"image": x.reshape(lead + x.shape[1:]),
            "label": labels.astype(np.int32).reshape(lead),
            "index": positions.astype(np.int32).reshape(lead), **extras}

  # -- iteration -------------------------------------------------------------------------------------

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    return next(self._iterator)

  def close(self) -> None:
    """Stop the prefetch thread (iteration restarts it if needed)."""
    self._start(self._seed, self.step)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  # -- checkpointable position -----------------------------------------------------------------------

  def _identity(self) -> dict:
    return {"dataset": f"{self.source.name}/{self.source.split}",
            "num_examples": self.source.num_examples, "global_batch_size": self.global_batch_size}

  def get_state(self) -> dict:
    """The position in the stream as a JSON-serializable dict (store it with the checkpoint)."""
    return {"step": self.step, "seed": self._seed, **self._identity()}

  def set_state(self, state: dict) -> None:
    """Resume at a position from :meth:`get_state`: the following batches are identical to those
    that followed it. The state's seed replaces this pipeline's seed."""
    if not isinstance(state, dict) or "step" not in state or "seed" not in state:
      raise ValueError(f"state must be a dict from Pipeline.get_state() with keys 'step' and "
                       f"'seed', got {state!r}")
    for key, mine in self._identity().items():
      if key in state and state[key] != mine:  # (older states lack 'dataset')
        raise ValueError(f"state was saved with {key}={state[key]!r} but this pipeline has "
                         f"{key}={mine!r}; resume with the same dataset and global batch size")
    step = _checks.int_at_least(state["step"], "state['step']", 0)
    self._start(_checks.int_at_least(state["seed"], "state['seed']", 0), step)


def make_pipeline(name: str, global_batch_size: int, seed: int = 0, *, split: str = "train",
                  data_dir=None, download: bool = False, local_dir: Optional[str] = None,
                  image_size: Optional[int] = None, seq_length: Optional[int] = None,
                  **kwargs: Any) -> Pipeline:
  """``Pipeline(get_dataset(name, split, data_dir, download, ...), global_batch_size, seed,
  **kwargs)``; see :func:`jdiff.data.get_dataset` and :class:`Pipeline`."""
  source = get_dataset(name, split, data_dir, download, local_dir=local_dir, image_size=image_size,
                       seq_length=seq_length)
  return Pipeline(source, global_batch_size, seed, **kwargs)
