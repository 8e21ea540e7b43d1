"""A deterministic, resumable, multi-process input pipeline over a random-access :class:`Source`.

The stream is a pure function of ``(seed, step)``:

- epoch ``e`` visits the examples in the order ``np.random.default_rng([seed, e]).permutation(N)``;
- global batch ``step`` (``e = step // steps_per_epoch``) is the next ``global_batch_size`` entries of
  that permutation; the ``N mod global_batch_size`` left over at the end of an epoch are dropped;
- process ``p`` of ``P`` reads only positions ``[p B / P, (p + 1) B / P)`` of each global batch, so the
  processes together read exactly the single-process global batch, each example once;
- the optional horizontal flip of the example at position ``i`` of global batch ``step`` is bit ``i`` of
  ``np.random.default_rng([seed, step, 1]).random(B) < 0.5`` — the same for any process layout.

So the position in the stream is one integer: :meth:`Pipeline.get_state` returns a small JSON-able
dict and :meth:`Pipeline.set_state` resumes it exactly. Each host batch is a dict of numpy arrays
shaped for ``jax.pmap`` over the local devices:

- ``image``: ``float32 [num_local_devices, per_device_batch, H, W, C]`` images scaled from ``uint8``
  to [-1, 1] (``x / 127.5 - 1``), or ``[num_local_devices, per_device_batch, D]`` vectors as stored;
- ``label``: ``int32 [num_local_devices, per_device_batch]``;
- ``index``: ``int32 [num_local_devices, per_device_batch]``, each example's position in the *global*
  batch (``0 .. B - 1``): training folds it into the per-example random key, so the noise an example
  gets does not depend on the device or process count.
"""
from __future__ import annotations

import collections
import concurrent.futures
import threading
from typing import Any, Optional

import numpy as np

from jdiff import _checks
from jdiff.data.sources import ArraySource, Source, get_dataset

_FLIP_STREAM = 1  # distinguishes the flip generator's seed sequence from the permutation's


def _nonneg_int(v, name: str) -> int:
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
    raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
  return int(v)


def _divisible_hint(b: int, d: int) -> str:
  lo = max(d, (b // d) * d)
  hi = (b // d + 1) * d
  return f"{lo} or {hi}" if lo != hi else f"{lo}"


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
      sources, where a batch costs a fraction of a millisecond, and 2 otherwise, e.g. for TFDS
      sources that decode images). Batches are a pure function of the step, so prefetching never
      changes them.

  Iterating yields host batches forever (epochs follow one another); :meth:`batch_at` gives any step
  directly.
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
    pidx = _nonneg_int(process_index, "process_index")
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
      raise ValueError(f"random_flip needs an image dataset; {source.name!r} holds vectors of "
                       f"shape {source.shape}: pass random_flip=False")
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
    self._prefetch = _nonneg_int(prefetch, "prefetch")
    self._seed = _nonneg_int(seed, "seed")
    self._step = 0
    self._perms: collections.OrderedDict[tuple, np.ndarray] = collections.OrderedDict()
    self._lock = threading.Lock()
    self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
    self._queue: collections.deque = collections.deque()

  # -- the stream as a pure function of (seed, step) ------------------------------------------------

  @property
  def seed(self) -> int:
    return self._seed

  @property
  def step(self) -> int:
    """The step of the next batch that iteration returns."""
    return self._step

  @property
  def epoch(self) -> int:
    return self._step // self.steps_per_epoch

  @property
  def shapes(self) -> dict:
    """Shapes of the arrays in each host batch."""
    lead = (self.num_local_devices, self.per_device_batch_size)
    return {"image": lead + tuple(self.source.shape), "label": lead, "index": lead}

  def _permutation(self, seed: int, epoch: int) -> np.ndarray:
    with self._lock:
      perm = self._perms.get((seed, epoch))
      if perm is None:
        perm = np.random.default_rng([seed, epoch]).permutation(self.source.num_examples)
        self._perms[(seed, epoch)] = perm
        while len(self._perms) > 2:  # the current epoch and the next one (prefetch) suffice
          self._perms.popitem(last=False)
      return perm

  def global_indices(self, step: int, seed: Optional[int] = None) -> np.ndarray:
    """Dataset indices of the whole global batch ``step`` (all processes), ``int64 [B]``."""
    step = _nonneg_int(step, "step")
    seed = self._seed if seed is None else seed
    epoch, j = divmod(step, self.steps_per_epoch)
    b = self.global_batch_size
    return self._permutation(seed, epoch)[j * b:(j + 1) * b]

  def batch_at(self, step: int) -> dict:
    """This process's host batch for global step ``step`` (does not move the iterator)."""
    step = _nonneg_int(step, "step")
    seed = self._seed  # read once: set_state may change it while a prefetched batch is built
    lo = self.process_index * self.local_batch_size
    positions = np.arange(lo, lo + self.local_batch_size)
    indices = self.global_indices(step, seed)[positions]
    data, labels = self.source.read(indices)
    x = data.astype(np.float32)
    if self.source.is_image:
      x = x / np.float32(127.5) - np.float32(1.0)
      if self.random_flip:
        flips = flip_mask(seed, step, self.global_batch_size)[positions]
        x[flips] = x[flips, :, ::-1]
    lead = (self.num_local_devices, self.per_device_batch_size)
    return {"image": x.reshape(lead + x.shape[1:]),
            "label": labels.astype(np.int32).reshape(lead),
            "index": positions.astype(np.int32).reshape(lead)}

  # -- iteration with optional prefetch --------------------------------------------------------------

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._prefetch == 0:
      out = self.batch_at(self._step)
    else:
      self._fill_queue()
      _, fut = self._queue.popleft()
      out = fut.result()
    self._step += 1
    return out

  def _fill_queue(self) -> None:
    if self._queue and self._queue[0][0] != self._step:
      self._clear_queue()
    if self._executor is None:
      self._executor = concurrent.futures.ThreadPoolExecutor(
          max_workers=1, thread_name_prefix="jdiff-data")
    nxt = self._queue[-1][0] + 1 if self._queue else self._step
    while len(self._queue) < self._prefetch:
      self._queue.append((nxt, self._executor.submit(self.batch_at, nxt)))
      nxt += 1

  def _clear_queue(self) -> None:
    for _, fut in self._queue:
      fut.cancel()
    self._queue.clear()

  def close(self) -> None:
    """Stop the prefetch thread (iteration restarts it if needed)."""
    self._clear_queue()
    if self._executor is not None:
      self._executor.shutdown(wait=True, cancel_futures=True)
      self._executor = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  # -- checkpointable position -----------------------------------------------------------------------

  def get_state(self) -> dict:
    """The position in the stream as a JSON-serializable dict (store it with the checkpoint)."""
    return {"step": self._step, "seed": self._seed, "global_batch_size": self.global_batch_size,
            "num_examples": self.source.num_examples}

  def set_state(self, state: dict) -> None:
    """Resume at a position from :meth:`get_state`: the following batches are identical to those
    that followed it. The state's seed replaces this pipeline's seed."""
    if not isinstance(state, dict) or "step" not in state or "seed" not in state:
      raise ValueError(f"state must be a dict from Pipeline.get_state() with keys 'step' and "
                       f"'seed', got {state!r}")
    for key, mine in (("global_batch_size", self.global_batch_size),
                      ("num_examples", self.source.num_examples)):
      if key in state and state[key] != mine:
        raise ValueError(f"state was saved with {key}={state[key]} but this pipeline has "
                         f"{key}={mine}; resume with the same dataset and global batch size")
    step = _nonneg_int(state["step"], "state['step']")
    seed = _nonneg_int(state["seed"], "state['seed']")
    self._clear_queue()
    self._seed, self._step = seed, step


def make_pipeline(name: str, global_batch_size: int, seed: int = 0, *, split: str = "train",
                  data_dir=None, download: bool = False, local_dir: Optional[str] = None,
                  image_size: Optional[int] = None, **kwargs: Any) -> Pipeline:
  """``Pipeline(get_dataset(name, split, data_dir, download, ...), global_batch_size, seed,
  **kwargs)``; see :func:`jdiff.data.get_dataset` and :class:`Pipeline`."""
  source = get_dataset(name, split, data_dir, download, local_dir=local_dir, image_size=image_size)
  return Pipeline(source, global_batch_size, seed, **kwargs)
