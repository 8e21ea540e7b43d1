"""Sharded (FSDP / ZeRO-3) training: one ``jax.jit`` train step over a device mesh ``(data, fsdp)``.

The pmapped step (``jdiff.training.loop``, the default) keeps a full copy of the parameters, the EMA and
the optimizer state on every device. Here they are *sharded* along the mesh axis ``fsdp``: each leaf
is a ``jax.Array`` with a ``NamedSharding`` chosen per leaf (:func:`leaf_spec`), so a device holds about
``1 / fsdp`` of the state, and the batch is split along both axes (``data * fsdp`` slices of the
leading axis). The step itself is the per-device step of ``jdiff.training.step`` built with
``axis_name=None`` and run on *global* arrays under ``jit``, so no ``pmean`` is written: XLA's SPMD
partitioner reduces across devices. The model's parameters are all-gathered on entry and their
gradients reduce-scattered back to the shards (:func:`gather_params`), so every activation is computed
data-parallel over the whole mesh. What persists between steps (parameters, EMA, optimizer state) is
``1 / fsdp`` per device; a step also holds one transient gathered copy of the parameters.
``train.py --config.training.parallelism=fsdp`` selects it (``training.mesh`` sets the mesh).

Sharding rule (:func:`leaf_spec`): a leaf of at least ``min_size`` elements is split along its
largest axis whose length the ``fsdp`` size divides (the last such axis on a tie: the output features
of a kernel); every other leaf (scalars, biases and norms below ``min_size``, or no divisible axis) is
replicated. A leaf that cannot be split is therefore never an error, it only costs memory: any
checkpoint restores onto any mesh (restore against :func:`abstract_state`, which carries the new
shardings; orbax reads each device's slice).

Data: the mesh holds the devices in process order, so the devices of process ``p`` cover one
contiguous block of the global batch, the block ``jdiff.data.Pipeline`` reads in process ``p``;
:func:`global_batch` turns that host batch into the global array with
``jax.make_array_from_process_local_data`` (multi-host works the same way). Per-example noise depends
on the example's global index only, so the step equals the pmapped one on the same global batch up to
float32 reduction order (dropout masks are drawn per device under pmap and for the whole batch here).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


AXES = ("data", "fsdp")
BATCH_SPEC = P(AXES)  # the leading (batch) axis split over both mesh axes
MIN_SHARD_SIZE = 1024  # leaves with fewer elements are replicated (a collective costs more than they)


def mesh_shape(mesh: Sequence[int], num_devices: int, process_count: int = 1) -> tuple[int, int]:
  """The ``(data, fsdp)`` sizes of ``training.mesh`` on ``num_devices`` devices. A 0 is inferred:
  ``(0, 0)`` is ``(process_count, num_devices // process_count)`` (fsdp over each host's devices, data
  parallel across hosts); ``(d, 0)`` and ``(0, f)`` fill the other axis. ``data * fsdp`` must equal
  ``num_devices``."""
  given = tuple(mesh) if isinstance(mesh, (tuple, list)) else None
  if (given is None or len(given) != 2 or
      not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in given)):
    raise ValueError(f"config.training.mesh must be two integers >= 0 (data, fsdp), got {mesh!r}; e.g. "
                     f"--config.training.mesh='(1, {num_devices})' (0 = inferred)")
  data, fsdp = (int(v) for v in given)
  if data == 0 and fsdp == 0:
    data = process_count if num_devices % process_count == 0 else 1
  if data == 0 and num_devices % fsdp == 0:
    data = num_devices // fsdp
  if fsdp == 0 and data and num_devices % data == 0:
    fsdp = num_devices // data
  if data * fsdp != num_devices:
    fits = ", ".join(f"({d}, {num_devices // d})" for d in range(1, num_devices + 1)
                     if num_devices % d == 0)
    raise ValueError(f"config.training.mesh={tuple(given)} does not fit the {num_devices} device(s): "
                     f"data * fsdp must equal the device count; use one of {fits} (0 = inferred)")
  return data, fsdp


def make_mesh(shape: Sequence[int], devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A ``(data, fsdp)`` mesh of ``shape`` over ``devices`` (default: all devices of all processes),
  ordered by process then device id, so each process's devices are one contiguous block of the
  flattened mesh (and of the batch)."""
  devices = list(jax.devices() if devices is None else devices)
  data, fsdp = (int(v) for v in shape)
  if data < 1 or fsdp < 1 or data * fsdp != len(devices):
    raise ValueError(f"a mesh of shape ({data}, {fsdp}) needs data * fsdp = {len(devices)} devices "
                     f"(the devices given); pass a shape whose product is {len(devices)}")
  devices.sort(key=lambda d: (d.process_index, d.id))
  return Mesh(np.array(devices, dtype=object).reshape(data, fsdp), AXES)


def mesh_from_config(config, devices: Optional[Sequence[Any]] = None) -> Mesh:
  """The mesh of ``config.training.mesh`` over ``devices`` (default: all devices), with
  ``config.data.batch_size`` checked against it."""
  devices = list(jax.devices() if devices is None else devices)
  nproc = len({d.process_index for d in devices})
  mesh = make_mesh(mesh_shape(config.training.get("mesh", (0, 0)), len(devices), nproc), devices)
  check_batch(config.data.batch_size, mesh)
  return mesh


def check_batch(global_batch_size: int, mesh: Mesh) -> None:
  n = mesh.devices.size
  if global_batch_size % n:
    lo, hi = max(n, global_batch_size // n * n), (global_batch_size // n + 1) * n
    shape = tuple(mesh.devices.shape)
    raise ValueError(f"config.data.batch_size={global_batch_size} must be divisible by data * fsdp = "
                     f"{n} (the mesh {shape} of config.training.mesh); use a multiple of {n} such as "
                     f"{lo if lo == hi else f'{lo} or {hi}'}")


def leaf_spec(shape: Sequence[int], fsdp: int, min_size: int = MIN_SHARD_SIZE) -> P:
  """The ``PartitionSpec`` of one leaf: its largest axis divisible by ``fsdp`` (the last one on a
  tie) split along ``fsdp``, or replicated (``P()``) when ``fsdp`` is 1, the leaf has fewer than
  ``min_size`` elements, or no axis is divisible."""
  shape = tuple(int(d) for d in shape)
  if fsdp <= 1 or math.prod(shape) < min_size:
    return P()
  axes = [i for i, d in enumerate(shape) if d % fsdp == 0]
  if not axes:
    return P()
  best = max(axes, key=lambda i: (shape[i], i))
  return P(*([None] * best + ["fsdp"]))


def state_shardings(abstract, mesh: Mesh, min_size: int = MIN_SHARD_SIZE):
  """A ``NamedSharding`` for each leaf of ``abstract`` (arrays or ``ShapeDtypeStruct``s), by
  :func:`leaf_spec`. Parameters, EMA and the Adam moments have the same shapes, hence the same
  shardings."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree_util.tree_map(
      lambda x: NamedSharding(mesh, leaf_spec(np.shape(x), fsdp, min_size)), abstract)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, BATCH_SPEC)


def abstract_state(init_fn: Callable[[], Any], mesh: Mesh, min_size: int = MIN_SHARD_SIZE):
  """``ShapeDtypeStruct``s of ``init_fn()``'s pytree carrying their shardings on ``mesh``: the target
  to restore a checkpoint onto this mesh (nothing is computed or allocated)."""
  shapes = jax.eval_shape(init_fn)
  shardings = state_shardings(shapes, mesh, min_size)
  return jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                shapes, shardings)


def shardings_of(tree):
  """The shardings of a pytree of ``ShapeDtypeStruct``s or ``jax.Array``s."""
  return jax.tree_util.tree_map(lambda x: x.sharding, tree)


def init_state(init_fn: Callable[[], Any], target) -> Any:
  """``init_fn()`` computed directly into the shardings of ``target`` (:func:`abstract_state`):
  each device computes only its own slices, no device ever holds the whole state."""
  return jax.jit(init_fn, out_shardings=shardings_of(target))()


def put(tree, shardings):
  """Host arrays (the same values in every process) onto the devices with ``shardings``."""
  def one(x, sh):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sh, lambda index: x[index])
  return jax.tree_util.tree_map(one, tree, shardings)


def global_batch(host_batch: dict, mesh: Mesh) -> dict:
  """This process's host batch (``jdiff.data.Pipeline``: ``[local_devices, per_device, ...]``, a
  contiguous block of the global batch) as global arrays ``[global_batch, ...]`` split along
  ``(data, fsdp)``."""
  sharding = batch_sharding(mesh)
  nproc = len({d.process_index for d in mesh.devices.flat})

  def one(x):
    x = np.asarray(x)
    x = x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])
    return jax.make_array_from_process_local_data(sharding, x, (x.shape[0] * nproc,) + x.shape[1:])
  return jax.tree_util.tree_map(one, host_batch)


def gather_params(apply: Callable, shardings) -> Callable:
  """``apply(params, *args, **kwargs)`` with ``params`` all-gathered on entry and their gradient
  reduce-scattered back to ``shardings`` (the parameters' own, :func:`state_shardings`): ZeRO-3's
  communication, written out so that the partitioner computes every activation data-parallel over
  the whole mesh instead of choosing a model-parallel layout for some layers (which it reaches only
  by replicating activations: "involuntary full rematerialization")."""
  replicated = NamedSharding(jax.tree_util.tree_leaves(shardings)[0].mesh, P())

  @jax.custom_vjp
  def gather(params):
    return jax.lax.with_sharding_constraint(
        params, jax.tree_util.tree_map(lambda _: replicated, params))

  def gather_fwd(params):
    return gather(params), None

  def gather_bwd(_, grads):
    return (jax.lax.with_sharding_constraint(grads, shardings),)

  gather.defvjp(gather_fwd, gather_bwd)
  return lambda params, *args, **kwargs: apply(gather(params), *args, **kwargs)


def make_step(step_fn: Callable, target, mesh: Mesh, donate: bool = True) -> Callable:
  """``jit(step_fn)`` with the state in the shardings of ``target``, the batch split along
  ``(data, fsdp)`` and the metrics replicated. ``step_fn`` is the step of
  ``jdiff.training.step.make_train_step(..., axis_name=None)`` (or the classifier's) over the global
  batch."""
  return jax.jit(step_fn, in_shardings=(shardings_of(target), batch_sharding(mesh)),
                 out_shardings=(shardings_of(target), NamedSharding(mesh, P())),
                 donate_argnums=(0,) if donate else ())


def scalars(metrics: dict) -> dict:
  """Replicated scalar metrics as Python floats (read from a local copy: works on every process)."""
  return {k: float(np.asarray(v.addressable_data(0))) for k, v in metrics.items()}


def to_host(tree):
  """A sharded pytree as host numpy arrays (gathered from every process when there are several)."""
  leaves = jax.tree_util.tree_leaves(tree)
  if any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in leaves):
    return jax.tree_util.tree_map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
  return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def per_device_bytes(tree) -> dict:
  """``{device: bytes}`` that the leaves of ``tree`` occupy on each addressable device."""
  out = {}
  for x in jax.tree_util.tree_leaves(tree):
    for shard in x.addressable_shards:
      out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
  return out


def describe(mesh: Optional[Mesh]) -> str:
  """``fsdp mesh (data=D, fsdp=F)`` (``pmap`` when there is no mesh)."""
  if mesh is None:
    return "pmap"
  return f"fsdp mesh (data={mesh.shape['data']}, fsdp={mesh.shape['fsdp']})"
