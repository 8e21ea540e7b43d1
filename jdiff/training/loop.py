"""The training loop behind ``train.py``: data -> pmapped train step -> logs, sample grids, checkpoints.
With ``training.parallelism='fsdp'`` the step is instead one ``jit`` over a ``(data, fsdp)`` mesh with
the state sharded (``jdiff.training.sharded``); everything else is the same.

Everything is rebuilt from the config and the workdir, so a restarted run resumes from the latest complete
checkpoint (state and data position) and continues exactly as an uninterrupted run would.

The workdir has one writer: a run holds ``<workdir>/train.lock`` (an ``flock`` recording its pid, host
and start time) from before it touches the checkpoints until it ends; a second run is refused with a
one-line error, and the lock of a run that was killed is taken over (with a warning naming it). On
resume, the log lines past the restored step are dropped from ``metrics.jsonl`` (rewritten atomically),
and the TensorBoard writer starts with ``purge_step`` = restored step + 1: a ``SessionLog.START`` event at
that step, on which TensorBoard hides the events of earlier files at or past it (its default
``--purge_orphaned_data``), so no step is shown twice.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import socket
import time
from typing import Optional

import jax
import ml_collections
import numpy as np

from jdiff import data as jdata
from jdiff import generation, reflow
from jdiff.experiment import checkpoint as ckpt_lib
from jdiff.experiment import config as config_check
from jdiff.experiment.builder import build_model, text_spec
from jdiff.experiment.state import TrainState, make_optimizer
from jdiff.eval import model_eval
from jdiff.training import distill as distill_lib
from jdiff.training import reflow as reflow_lib
from jdiff.training import sharded
from jdiff.training.periodic_eval import PeriodicEval
from jdiff.training.step import (make_categorical_train_step, make_classifier_train_step,
                                 make_train_step)
from jdiff.utils import cli, files, memory
from jdiff.utils import images as image_utils
from jdiff.utils.progress import Progress


def check_workdir(workdir: str, create: bool = True) -> str:
  """``workdir`` as an absolute path, created (``create=False``: only checked, nothing created: it or
  its nearest existing parent must be a writable directory)."""
  workdir = os.path.abspath(workdir)
  if not create:
    existing = workdir
    while not os.path.exists(existing):
      existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
      raise ValueError(f"workdir {workdir} is not writable ({existing} is not a writable directory); "
                       f"pass a --workdir you can write to")
    return workdir
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write-test-{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ValueError(f"workdir {workdir} is not writable ({e.strerror}); pass a --workdir you can "
                     f"write to") from None
  return workdir


_KIND_SHAPES = {"image": "[H, W, C]", "vector": "[D]", "points": "[P, 3]", "signal": "[L, C]",
                "tokens": "[L] int"}


class Experiment:
  """Everything built from a config: data, model, schedule, optimizer, step functions."""

  def __init__(self, config: ml_collections.ConfigDict, *, num_local_devices: Optional[int] = None,
               process_index: Optional[int] = None, process_count: Optional[int] = None):
    config_check.validate(config)
    self.config = c = config
    # fsdp: the mesh, and the batch's fit to it, are checked before any data or model is built.
    self.parallelism = config_check.parallelism_of(c)
    self.mesh = sharded.mesh_from_config(c) if self.parallelism == "fsdp" else None
    self.num_local_devices = num_local_devices or jax.local_device_count()
    self.process_index = jax.process_index() if process_index is None else process_index
    self.process_count = process_count or jax.process_count()
    extra = {"image_size": c.data.image_size} if c.data.image_size else {}
    if c.data.get("seq_length", 0):
      extra["seq_length"] = c.data.seq_length
    self.source = jdata.get_dataset(c.data.name, c.data.split, data_dir=c.data.data_dir or None,
                                    download=c.data.download, **extra)
    want = c.data.get("kind", "")
    if want and self.source.kind != want:
      raise ValueError(f"this config is for {want} data ({_KIND_SHAPES[want]}), but dataset "
                       f"{c.data.name!r} holds {self.source.kind} data of shape {self.source.shape}: "
                       f"pass a dataset of {want} data or a config for {self.source.kind} data (or "
                       f"--config.data.kind='' to skip this check)")
    categorical = config_check.is_categorical(c)
    if categorical != (self.source.kind == "tokens"):
      raise ValueError(
          f"dataset {c.data.name!r} holds text tokens: train it with a categorical process "
          f"(configs/fortunes_mdlm.py, or --config.diffusion.process=absorbing)" if not categorical else
          f"diffusion.process={config_check.process_of(c)!r} models tokens but dataset {c.data.name!r} "
          f"holds {self.source.kind} data of shape {self.source.shape}; pass a text dataset "
          f"(fortunes, text:<file>) or --config.diffusion.process=gaussian")
    self.use_source(self.source)
    self.task = config_check.task_of(c)
    labelled = c.training.conditional or self.task == "classifier"
    self.num_classes = int(self.source.num_classes) if labelled else 0
    if c.training.conditional and not self.num_classes:
      raise ValueError(f"training.conditional=True but dataset {c.data.name!r} has no labels; set "
                       f"--config.training.conditional=False")
    if self.task == "classifier" and not self.num_classes:
      raise ValueError(f"a classifier needs labelled data but dataset {c.data.name!r} has no labels")
    self.objective = c.training.get("objective", "denoising")
    self.teacher = (distill_lib.load_teacher(c, tuple(self.source.shape), self.num_classes)
                    if self.objective in config_check.TEACHER_OBJECTIVES else None)
    self.init_from = None
    if c.training.get("init_from", ""):
      same = self.teacher is not None and os.path.abspath(c.training.init_from) == os.path.abspath(
          c.distill.teacher_workdir)
      self.init_from = (self.teacher if same else
                        distill_lib.load_init(c, tuple(self.source.shape), self.num_classes))
    if self.objective in config_check.REFLOW_OBJECTIVES:
      reflow.check_flow(self.teacher.schedule, f"training.objective={self.objective!r}")
      reflow_lib.settings(c, self.teacher, 1)  # the pairs' sampler: checked before anything is written
    text = None
    if c.training.get("text_conditional", False):
      if self.task != "diffusion" or categorical:
        raise ValueError("training.text_conditional applies to Gaussian diffusion models of images; set "
                         "--config.training.text_conditional=False")
      text = text_spec(self.source)
    self.model = build_model(c, tuple(self.source.shape), self.num_classes,
                             getattr(self.source, "vocab", None), text)
    self.module, self.init_fn, self.apply_fn = self.model.module, self.model.init_fn, self.model.apply_fn
    self.schedule = self.model.schedule
    self.optimizer = make_optimizer(c.optim, c.training.num_steps)
    self.data_shape = self.model.data_shape
    self.learned_variance = self.model.learned_variance

  def use_source(self, source: jdata.Source) -> None:
    """Train on ``source`` (e.g. reflow's pairs, drawn once the workdir is locked)."""
    c = self.config
    self.source = source
    self.pipeline = jdata.Pipeline(
        source, c.data.batch_size, seed=c.seed, num_local_devices=self.num_local_devices,
        process_index=self.process_index, process_count=self.process_count,
        random_flip=c.data.random_flip)

  def init_state(self) -> TrainState:
    """A fresh state; the students of progressive distillation and of reflow start from their
    teacher's EMA weights, a run with ``training.init_from`` from that run's."""
    start = self.teacher.params if self.objective in STARTS_FROM_TEACHER else None
    if self.init_from is not None:
      start = self.init_from.params
    return self.model.init_state(self.optimizer, start)

  def meta(self, state: TrainState) -> dict:
    """The checkpoint metadata: the model's, plus the device layout (for bit-exact resume)."""
    meta = {**self.model.meta(state), "num_devices": jax.device_count(),
            "process_count": jax.process_count()}
    if self.mesh is not None:  # pmap checkpoints predate the fields: none means pmap
      meta.update(parallelism="fsdp", mesh=[self.mesh.shape[a] for a in sharded.AXES])
    if self.teacher is not None:
      meta["teacher"] = {"checkpoint": self.teacher.checkpoint_dir, "step": self.teacher.step}
    return meta

  def train_step_fn(self, axis_name: Optional[str] = "data", target=None):
    """The per-device step (pmean over ``axis_name``). With ``target`` (the state's abstract shapes
    carrying their shardings on a mesh, ``sharded.abstract_state``) and ``axis_name=None``: the
    step over the global batch for ``sharded.make_step``, its parameters gathered for the model and
    their gradients reduce-scattered (``sharded.gather_params``)."""
    f = self.config.diffusion
    apply = self.apply_fn
    if target is not None:
      apply = sharded.gather_params(apply, sharded.shardings_of(target.params))
    if self.model.process is not None:
      return make_categorical_train_step(
          apply, self.model.process, self.optimizer, loss=f.get("loss", "elbo"),
          num_steps=int(f.get("num_steps", 1000)), aux_weight=float(f.get("aux_weight", 0.0)),
          time_sampling=f.time_sampling, ema_decay=self.config.training.ema_decay,
          conditions=self.model.conditions, cond_drop_prob=self.config.training.cond_drop_prob,
          global_batch_size=self.config.data.batch_size, axis_name=axis_name,
          ema_warmup=self.config.training.get("ema_warmup", True),
          ema_power=float(self.config.training.get("ema_power", 0.0)))
    if self.task == "classifier":
      return make_classifier_train_step(
          apply, self.schedule, self.optimizer, time_sampling=f.time_sampling,
          ema_decay=self.config.training.ema_decay, global_batch_size=self.config.data.batch_size,
          axis_name=axis_name, ema_warmup=self.config.training.get("ema_warmup", True),
          ema_power=float(self.config.training.get("ema_power", 0.0)))
    return make_train_step(
        apply, self.schedule, self.optimizer, parametrization_name=f.parametrization,
        weighting=f.weighting, time_sampling=f.time_sampling, ema_decay=self.config.training.ema_decay,
        conditions=self.model.conditions, cond_drop_prob=self.config.training.cond_drop_prob,
        global_batch_size=self.config.data.batch_size, axis_name=axis_name,
        sigma_data=f.sigma_data, learned_variance=self.learned_variance,
        loss_kwargs={k: f[k] for k in ("p_mean", "p_std", "logit_mean", "logit_std") if k in f},
        ema_warmup=self.config.training.get("ema_warmup", True),
        objective=self.objective, consistency_kwargs=consistency_kwargs(self.config),
        total_steps=self.config.training.num_steps,
        teacher=(distill_lib.teacher_of(self.teacher)
                 if self.objective in config_check.DISTILLATION_OBJECTIVES else None),
        distill_kwargs=distill_kwargs(self.config), consistency_base=self.model.consistency_base,
        ema_power=float(self.config.training.get("ema_power", 0.0)))

  def model_fn(self):
    """``(fn(params, x, t, cond), parametrization)`` for sampling (no dropout)."""
    return self.model.model_fn()


STARTS_FROM_TEACHER = ("progressive_distillation",) + config_check.REFLOW_OBJECTIVES


def consistency_kwargs(config: ml_collections.ConfigDict) -> dict:
  """``config.consistency`` as keyword arguments of ``jdiff.consistency.consistency_training_loss``
  (``huber_c = 0``: the default ``0.00054 sqrt(d)``)."""
  c = config.get("consistency", None)
  if c is None:
    return {}
  kw = {k: c[k] for k in ("s0", "s1", "p_mean", "p_std", "weighting", "metric") if k in c}
  if c.get("huber_c", 0.0):
    kw["huber_c"] = float(c.huber_c)
  return kw


def distill_kwargs(config: ml_collections.ConfigDict) -> dict:
  """``config.distill`` as the train step's ``distill_kwargs`` (``jdiff.training.step``)."""
  d = config.get("distill", None)
  if d is None or config.training.get("objective", "denoising") not in \
      config_check.DISTILLATION_OBJECTIVES:
    return {}
  kw = {k: d[k] for k in ("num_levels", "target_ema", "weighting") if k in d}
  if config.training.objective == "progressive_distillation":
    kw["student_steps"] = int(d.student_steps) or max(int(d.teacher_steps) // 2, 1)
  return kw


def replicate(tree, num_devices: Optional[int] = None):
  """Stack ``num_devices`` (default: all local devices) copies along a new leading axis; ``pmap``
  places one on each device."""
  n = num_devices or jax.local_device_count()
  return jax.tree_util.tree_map(lambda x: np.stack([np.asarray(x)] * n), tree)


def unreplicate(tree):
  """Device 0's copy of a pmapped pytree, as host numpy arrays."""
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x.addressable_data(0)).reshape(x.shape[1:]), tree)


class _StopFlag:
  """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the end of the current step and exits."""

  def __init__(self):
    self.signal = None
    self._old = {}

  def __enter__(self):
    for s in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[s] = signal.signal(s, self._handle)
      except ValueError:  # not in the main thread
        pass
    return self

  def _handle(self, signum, frame):
    self.signal = signum

  def __exit__(self, *exc):
    for s, h in self._old.items():
      signal.signal(s, h)


def grid_low_res(exp: Experiment) -> Optional[np.ndarray]:
  """A super-resolution model's train-time grids refine fixed real images: the low-resolution view
  (``LowRes.read``) of the first training batch of this process (``pipeline.batch_at(0)``, the same
  after any resume), ``[n, h, w, C]``; ``None`` for every other model."""
  if exp.task != "diffusion" or "low_res" not in exp.model.conditions:
    return None
  kind = exp.model.conditions["low_res"]
  images = np.asarray(exp.pipeline.batch_at(0)["image"])
  return np.asarray(kind.read({"image": images.reshape((-1,) + images.shape[2:])}))


def sample_grid(exp: Experiment, params, num: int, seed: int, path: Optional[str], *,
                restored: Optional[generation.Restored] = None, low_res: Optional[np.ndarray] = None):
  """Sample ``num`` examples from ``params`` with the config's sampling settings through the one front
  door (``jdiff.generation.generate``, as ``sample.py --seed=seed`` draws them); write a PNG grid
  (images, point-set views or signal plots). Pass the ``restored`` of an earlier call to reuse its
  compiled program. A super-resolution model refines ``low_res`` (``grid_low_res``; sample i reads
  row i modulo their count) at its config's augmentation level, and the grid shows each input
  (nearest-neighbour upsampled) to the left of its refinement."""
  restored = restored or generation.Restored.from_params(exp.model, params)
  restored = dataclasses.replace(restored, params=params)
  guidance = float(exp.config.sampling.get("guidance", 0.0) or 0.0)
  settings = generation.Settings(num=num, seed=seed, guidance=guidance if guidance else None)
  if "low_res" in exp.model.conditions and low_res is None:
    low_res = grid_low_res(exp)
  result = generation.generate(restored, settings, progress=False,
                               cond=None if low_res is None else {"low_res": low_res})
  picture = result.samples
  if low_res is not None:
    f = picture.shape[1] // low_res.shape[1]
    inputs = np.repeat(np.repeat(low_res[np.arange(num) % low_res.shape[0]], f, axis=1), f, axis=2)
    picture = np.concatenate([inputs, picture], axis=2)
  kind = exp.model.data_kind
  if path is not None and kind == "tokens":  # the decoded texts, one per paragraph
    files.write_text(os.path.splitext(path)[0] + ".txt", generation.texts_file(
        jdata.text.decode_rows(exp.model.vocab, result.samples), result.indices))
  elif path is not None and kind == "image" and result.captions is not None:  # prompts under the images
    prompts = len(exp.config.sampling.get("prompts", ()) or ()) or int(np.ceil(np.sqrt(num)))
    files.write_bytes(path, image_utils.captioned_grid_png(picture, result.captions,
                                                           ncols=min(prompts, 10)))
  elif path is not None and image_utils.has_preview(kind):
    files.write_bytes(path, image_utils.preview_png(picture, kind, ncols=int(np.ceil(np.sqrt(num)))))
  return result.samples


def _check_devices(saved_meta: dict, step: int, allow_change: bool, log,
                   meta: Optional[dict] = None) -> None:
  """Bit-exact resume needs the device layout a checkpoint was trained on (reduction order): the
  device count, and for fsdp the mesh (``meta``: this run's checkpoint metadata)."""
  layout = lambda m: (m.get("parallelism", "pmap"), list(m.get("mesh") or []))
  if meta is not None and layout(saved_meta) != layout(meta):
    describe = lambda m: (f"{m['parallelism']} mesh {tuple(m['mesh'])}" if "mesh" in m else
                          f"pmap on {m.get('num_devices', '?')} device(s)")
    what = (f"checkpoint step {step} was trained with {describe(saved_meta)} but this run uses "
            f"{describe(meta)}")
    if not allow_change:
      raise ValueError(f"{what}; resume with the same --config.training.parallelism and "
                       f"--config.training.mesh (bit-exact), or pass --allow_device_change to continue "
                       f"(not bit-exact)")
    log(f"warning: {what}; continuing (--allow_device_change): not bit-exact")
    return
  saved = saved_meta.get("num_devices")
  if saved is None or saved == jax.device_count():
    return
  what = (f"checkpoint step {step} was trained on {saved} device(s) but this run has "
          f"{jax.device_count()}")
  if not allow_change:
    raise ValueError(f"{what}; resume with --cpu_devices={saved} (bit-exact), or pass "
                     f"--allow_device_change to continue on {jax.device_count()} (not bit-exact)")
  log(f"warning: {what}; continuing (--allow_device_change): not bit-exact")


LOCK_FILE = "train.lock"  # in a workdir: held by the one training process writing to it


def _describe_owner(owner) -> str:
  if not owner:
    return "owner unknown"
  if "pid" not in owner:
    return f"lock record {owner.get('record', owner)!r}"
  return (f"pid {owner.get('pid')} on host {owner.get('host', '?')}, started "
          f"{owner.get('started', '?')}")


class _WorkdirLock:
  """One writer per workdir (process 0 of a run takes it): ``<workdir>/train.lock``, see the module
  docstring. Refuses a second run with a ``ValueError`` (train.py: one ``error:`` line, exit 2)."""

  def __init__(self, workdir: str, log):
    self.workdir, self.log = workdir, log
    self.lock = files.FileLock(os.path.join(workdir, LOCK_FILE)) if jax.process_index() == 0 else None

  def __enter__(self):
    if self.lock is None:
      return self
    owner = {"pid": os.getpid(), "host": socket.gethostname(),
             "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
      stale = self.lock.acquire(owner)
    except files.LockHeld as e:
      raise ValueError(f"workdir {self.workdir} is in use by another training process "
                       f"({_describe_owner(e.owner)}); wait for it to end or stop it, or pass another "
                       f"--workdir") from None
    except OSError as e:  # a filesystem without locks
      self.lock = None
      self.log(f"warning: cannot lock {os.path.join(self.workdir, LOCK_FILE)} ({e.strerror or e}); "
               f"nothing keeps a second train.py from writing to this workdir")
      return self
    if stale:
      self.log(f"warning: took over the stale lock of {_describe_owner(stale)}: that process is gone")
    return self

  def __exit__(self, *exc):
    if self.lock is not None:
      self.lock.release()


def train(config: ml_collections.ConfigDict, workdir: str, *, log=print,
          allow_device_change: bool = False) -> TrainState:
  """Train (or resume) into ``workdir``; returns the final state (host copy).

  A resumed run must have the device count its checkpoint was trained on (recorded in the checkpoint
  and in ``<workdir>/devices.json``, which ``train.py`` reads to choose it again); with
  ``allow_device_change`` another count is accepted with a warning. Another run training in
  ``workdir`` makes this one fail with a ``ValueError`` before anything is written."""
  if config.training.get("objective", "denoising") == "progressive_distillation" and len(
      distill_lib.rounds(config)) > 1:
    config_check.validate(config)
    return distill_lib.train_rounds(
        config, workdir, lambda c, w: _train_one(c, w, log, allow_device_change), log)
  return _train_one(config, workdir, log, allow_device_change)


def _train_one(config: ml_collections.ConfigDict, workdir: str, log, allow_device_change: bool):
  # Every check of the config (data, model, train step) runs before anything is created or written,
  # so a bad config leaves no workdir, checkpoint directory or config.json behind.
  workdir = check_workdir(workdir, create=False)
  objective = config.training.get("objective", "denoising")
  if objective == "progressive_distillation":
    (t_steps, s_steps), = distill_lib.rounds(config)
    config = distill_lib.round_config(config, config.distill.teacher_workdir, t_steps, s_steps)
  elif objective in config_check.REFLOW_OBJECTIVES:
    time_sampling = config.reflow.get("time_sampling", "")
    config = distill_lib.with_teacher_model(config, config.distill.teacher_workdir)
    if time_sampling:
      with config.unlocked():
        config.diffusion.time_sampling = time_sampling
  if config.training.get("init_from", ""):
    config = distill_lib.with_init_model(config)
  exp = Experiment(config)
  # fsdp: the shapes and shardings of the state (nothing allocated), and the step on the global batch,
  # with no pmean (jit over the mesh reduces across devices).
  target = None if exp.mesh is None else sharded.abstract_state(exp.init_state, exp.mesh)
  train_step = exp.train_step_fn("data" if target is None else None, target)
  evaluator = PeriodicEval.from_experiment(exp, log)  # config.eval: None when off
  workdir = check_workdir(workdir)
  # SIGTERM/SIGINT from here on: a checkpoint at the end of the current step, then exit (before the
  # first step: nothing new to save, exit at once).
  memory.fix_mmap_threshold()  # a long run's RSS stays flat (jdiff.utils.memory, bench/soak.py)
  with _StopFlag() as stop, _WorkdirLock(workdir, log):
    return _train(exp, train_step, evaluator, workdir, log, allow_device_change, stop, target)


def _train(exp: Experiment, train_step, evaluator, workdir: str, log, allow_device_change: bool,
           stop: "_StopFlag", target=None) -> TrainState:
  c = exp.config
  is_main = jax.process_index() == 0
  if exp.objective in config_check.REFLOW_OBJECTIVES:  # the pairs, drawn under the workdir's lock
    exp.use_source(reflow_lib.ensure_pairs(c, exp.teacher, workdir, log))
  # The one writer (under the lock) removes the temporary directories of interrupted saves.
  ckpt = ckpt_lib.Checkpointer(workdir, c.training.keep_checkpoints, cleanup_tmp=True)
  writer = None
  try:
    fsdp = target is not None
    if not fsdp:
      target = state = exp.init_state()
    # fsdp: a checkpoint (of any mesh, or of pmap) is restored straight into the target's shardings,
    # and a fresh state is initialised shard by shard, never whole on one device.
    meta = exp.meta(target)
    restored = ckpt.restore_latest(target, meta,
                                   fallback=c.training.get("fallback_to_previous_checkpoint", False),
                                   warn=log)
    if restored is not None:
      start, state, data_state, saved_meta = restored
      _check_devices(saved_meta, start, allow_device_change, log, meta)
      saved_teacher = saved_meta.get("teacher")
      if saved_teacher and exp.teacher is not None and saved_teacher.get("step") != exp.teacher.step:
        raise ValueError(f"checkpoint step {start} was distilled from the teacher's step "
                         f"{saved_teacher.get('step')} but distill.teacher_step now gives step "
                         f"{exp.teacher.step}; resume with --config.distill.teacher_step="
                         f"{saved_teacher.get('step')}")
      exp.pipeline.set_state(data_state)
      log(f"resumed from checkpoint step {start} in {ckpt.directory}")
    elif fsdp:
      state = sharded.init_state(exp.init_state, target)
    if stop.signal is not None:
      log(f"received signal {stop.signal} before the first step: nothing new to save, exiting")
      return sharded.to_host(state) if fsdp else state
    if is_main:  # after the checkpoint was accepted: a refused run leaves the workdir's files as they are
      files.write_text(os.path.join(workdir, "config.json"), c.to_json_best_effort(indent=2))
      files.write_json(os.path.join(workdir, cli.DEVICES_FILE),
                       {"num_devices": jax.device_count(), "platform": jax.default_backend(),
                        "process_count": jax.process_count()})
    step = int(np.asarray(state.step.addressable_data(0))) if fsdp else int(state.step)
    if is_main:
      log(f"training on {jax.device_count()} {jax.default_backend()} device(s) in "
          f"{jax.process_count()} process(es), {c.data.batch_size // jax.device_count()} examples per "
          f"device" + (f", {sharded.describe(exp.mesh)}" if fsdp else ""))

    if fsdp:
      # The state stays sharded throughout: each process feeds its block of the global batch, saves
      # its own shards, and gathers only the EMA parameters for sample grids and evaluation.
      p_step = sharded.make_step(train_step, target, exp.mesh)
      rstate = state
      feed = lambda batch: sharded.global_batch(batch, exp.mesh)
      read = sharded.scalars
      host, to_save = sharded.to_host, (lambda s: s)
    else:
      p_step = jax.pmap(train_step, axis_name="data", donate_argnums=(0,))
      if exp.objective in config_check.DISTILLATION_OBJECTIVES:
        # the teacher's parameters: a third argument, put on the devices once
        mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("data",))
        rteacher = jax.device_put(replicate(exp.teacher.params), jax.sharding.NamedSharding(
            mesh, jax.sharding.PartitionSpec("data")))
        p_step = functools.partial(lambda f, s, b: f(s, b, rteacher), p_step)
      rstate = replicate(state)
      if jax.process_count() == 1:
        # Commit the host copy to the devices with the sharding pmap gives its outputs: from host numpy
        # arrays pmap (JAX 0.10) compiles the step once for the first call and again for the second.
        mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("data",))
        rstate = jax.device_put(rstate,
                                jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
      feed = lambda batch: batch
      read = lambda metrics: {k: float(v) for k, v in unreplicate(metrics).items()}
      host = to_save = unreplicate
    writer = _MetricWriter(workdir, step) if is_main else None
    grid_model = generation.Restored.from_params(exp.model, None, workdir=workdir)  # programs cached
    low_res = grid_low_res(exp) if is_main and c.training.sample_every else None
    progress = Progress(c.training.num_steps, initial=step, enabled=is_main)
    total = c.training.num_steps
    last_grid = None  # (path, seconds per image) of the newest sample grid
    while step < total:
      batch = feed(next(exp.pipeline))
      rstate, metrics = p_step(rstate, batch)
      # Reading the metrics blocks on this step (also avoids a CPU collectives deadlock, see README).
      m = read(metrics)
      step += 1
      progress.update(step, m["loss"], c.data.batch_size)
      if writer and (step % c.training.log_every == 0 or step == total):
        writer.write(step, {**m, "images_per_sec": progress.rate(c.data.batch_size)})
      if (m.get("finite", 1.0) == 0.0 or not np.isfinite(m["loss"])) and is_main:
        log(f"step {step}: non-finite loss or gradient, update skipped ({int(m['skipped'])} skipped "
            f"so far)")
      done = step == total or stop.signal is not None
      if step % c.training.ckpt_every == 0 or done:
        ckpt.save(step, to_save(rstate), exp.pipeline.get_state(), meta)
        memory.release_free_memory()  # a save's freed buffers otherwise stay in the heap (soak)
      grid_due = bool(c.training.sample_every) and exp.task == "diffusion" and (
          step % c.training.sample_every == 0 or step == total)
      eval_due = evaluator is not None and evaluator.due(step, total)
      # fsdp over several processes: gathering the EMA parameters is a collective, all processes join.
      ema = host(rstate.ema_params) if (grid_due or eval_due) and (is_main or fsdp) else None
      if grid_due and is_main:
        ext = ".txt" if exp.model.data_kind == "tokens" else ".png"
        path = os.path.join(workdir, "samples", f"step_{step:07d}{ext}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        t0, num = time.perf_counter(), min(c.sampling.num, 64)
        sample_grid(exp, ema, num, c.seed, path, restored=grid_model, low_res=low_res)
        last_grid = (path, (time.perf_counter() - t0) / num)
        memory.release_free_memory()
      if eval_due and is_main:
        writer.write(step, evaluator(ema, step))
      if stop.signal is not None:
        log(f"received signal {stop.signal}: saved checkpoint at step {step}, exiting")
        break
    progress.close()
    if is_main and step == total:
      log(_next_steps(workdir, step, exp, last_grid))
    return host(rstate)
  finally:
    if writer:
      writer.close()
    ckpt.close()


def _next_steps(workdir: str, step: int, exp: Experiment, last_grid) -> str:
  """The last lines of a finished run: where its checkpoint and sample grids are, and how to sample."""
  c = exp.config
  lines = [f"done: {step} steps; checkpoint {os.path.join(workdir, 'checkpoints', str(step))}"]
  if last_grid is not None and os.path.exists(last_grid[0]):
    lines.append(f"sample grids: {os.path.dirname(last_grid[0])} (last: {os.path.basename(last_grid[0])})")
  if exp.task == "diffusion":
    timing = "" if last_grid is None else f"; ~{last_grid[1]:.2g} s per image on the last grid"
    labels = ""
    if c.training.conditional and exp.num_classes:
      labels = f"; labels i % {exp.num_classes}, or --labels=..."
      if c.training.cond_drop_prob > 0:
        labels += ", and --guidance=W for classifier-free guidance"
    hp = generation.config_hparams(c, c.sampling.sampler)
    hp = "".join(f" {k}={v:g}" for k, v in sorted(hp.items()))
    lines.append(f"draw samples: python sample.py --workdir={workdir} --num=64   (the config's "
                 f"{c.sampling.sampler}{hp} sampler, {c.sampling.steps} steps{labels}{timing})")
    try:
      model_eval.check_sample_metrics(generation.Restored.from_params(exp.model, None), 600)
      num = {"points": "600", "tokens": "256 --bpd --bpd_num=512"}.get(exp.model.data_kind, "1000")
      lines.append(f"score them:   python eval.py --workdir={workdir} --num={num}")
    except ValueError:
      pass  # no report for this dataset
  return "\n".join(lines)


def _drop_metrics_after(path: str, step: int) -> None:
  """Rewrite ``metrics.jsonl`` (atomically) without the lines past ``step`` (logged by a run that
  ended after its last checkpoint; the resumed run logs those steps again) and without a partial last
  line (a run killed while writing it)."""
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8", errors="replace") as f:
    text = f.read()
  keep = []
  for line in text.splitlines():
    try:
      entry = json.loads(line)
      if int(entry["step"]) <= step:
        keep.append(line + "\n")
    except (ValueError, KeyError, TypeError):
      continue
  if "".join(keep) != text:
    files.write_text(path, "".join(keep))


class _MetricWriter:
  """JSON lines in ``metrics.jsonl`` and TensorBoard scalars under ``tb/``, continuing at ``step``
  (the restored step: later lines of an earlier run are dropped, see the module docstring)."""

  def __init__(self, workdir: str, step: int = 0):
    path = os.path.join(workdir, "metrics.jsonl")
    _drop_metrics_after(path, step)
    self.f = open(path, "a")
    try:
      from tensorboardX import SummaryWriter
      # A unique file name: tensorboardX names event files by the second and opens them with "wb", so
      # a resume within the same second would overwrite the previous run's events.
      self.tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=step + 1,
                              filename_suffix=f".{time.time_ns()}")
    except ImportError:  # pragma: no cover - tensorboardX is a dependency
      self.tb = None

  def write(self, step: int, scalars: dict):
    self.f.write(json.dumps({"step": step, **scalars}) + "\n")
    self.f.flush()
    if self.tb:
      for k, v in scalars.items():
        self.tb.add_scalar(k, v, step)
      self.tb.flush()

  def close(self):
    self.f.close()
    if self.tb:
      self.tb.close()
