"""The training loop behind ``train.py``: data -> pmapped train step -> logs, sample grids, checkpoints.

Everything is rebuilt from the config and the workdir, so a restarted run resumes from the latest complete
checkpoint (state and data position) and continues exactly as an uninterrupted run would.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import jdiff
from jdiff import data as jdata
from jdiff import models
from jdiff.training import checkpoint as ckpt_lib
from jdiff.training import config_check
from jdiff.training.state import TrainState, create_state, make_optimizer
from jdiff.training.step import make_classifier_train_step, make_model_fn, make_train_step
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


class Experiment:
  """Everything built from a config: data, model, schedule, optimizer, step functions."""

  def __init__(self, config: ml_collections.ConfigDict, *, num_local_devices: Optional[int] = None,
               process_index: Optional[int] = None, process_count: Optional[int] = None):
    config_check.validate(config)
    self.config = c = config
    self.num_local_devices = num_local_devices or jax.local_device_count()
    self.process_index = jax.process_index() if process_index is None else process_index
    self.process_count = process_count or jax.process_count()
    self.source = jdata.get_dataset(c.data.name, c.data.split, data_dir=c.data.data_dir or None,
                                    download=c.data.download,
                                    **({"image_size": c.data.image_size} if c.data.image_size else {}))
    self.pipeline = jdata.Pipeline(
        self.source, c.data.batch_size, seed=c.seed, num_local_devices=self.num_local_devices,
        process_index=self.process_index, process_count=self.process_count,
        random_flip=c.data.random_flip)
    self.task = config_check.task_of(c)
    labelled = c.training.conditional or self.task == "classifier"
    self.num_classes = int(self.source.num_classes) if labelled else 0
    if c.training.conditional and not self.num_classes:
      raise ValueError(f"training.conditional=True but dataset {c.data.name!r} has no labels; set "
                       f"--config.training.conditional=False")
    if self.task == "classifier" and not self.num_classes:
      raise ValueError(f"a classifier needs labelled data but dataset {c.data.name!r} has no labels")
    self.model = build_model(c, tuple(self.source.shape), self.num_classes)
    self.module, self.init_fn, self.apply_fn = self.model.module, self.model.init_fn, self.model.apply_fn
    self.schedule = self.model.schedule
    self.optimizer = make_optimizer(c.optim, c.training.num_steps)
    self.data_shape = self.model.data_shape
    self.learned_variance = self.model.learned_variance

  def init_state(self) -> TrainState:
    return self.model.init_state(self.optimizer)

  def meta(self, state: TrainState) -> dict:
    return self.model.meta(state)

  def train_step_fn(self, axis_name: Optional[str] = "data"):
    f = self.config.diffusion
    if self.task == "classifier":
      return make_classifier_train_step(
          self.apply_fn, self.schedule, self.optimizer, time_sampling=f.time_sampling,
          ema_decay=self.config.training.ema_decay, global_batch_size=self.config.data.batch_size,
          axis_name=axis_name, ema_warmup=self.config.training.get("ema_warmup", True))
    return make_train_step(
        self.apply_fn, self.schedule, self.optimizer, parametrization_name=f.parametrization,
        weighting=f.weighting, time_sampling=f.time_sampling, ema_decay=self.config.training.ema_decay,
        num_classes=self.num_classes, cond_drop_prob=self.config.training.cond_drop_prob,
        global_batch_size=self.config.data.batch_size, axis_name=axis_name,
        sigma_data=f.sigma_data, learned_variance=self.learned_variance,
        ema_warmup=self.config.training.get("ema_warmup", True))

  def model_fn(self):
    """``(fn(params, x, t, cond), parametrization)`` for sampling (no dropout)."""
    return self.model.model_fn()


class Model:
  """The model half of an ``Experiment``: network, schedule and parametrization built from a config,
  the data shape and the number of classes, without touching the dataset (``sample.py`` builds one
  from a workdir's ``config.json`` and the checkpoint's metadata)."""

  def __init__(self, config: ml_collections.ConfigDict, data_shape, num_classes: int):
    c = self.config = config
    self.data_shape = tuple(int(d) for d in data_shape)
    self.num_classes = int(num_classes)
    self.task = config_check.task_of(c)  # "diffusion", or "classifier": num_classes are its logits
    model_kwargs = {k: v for k, v in c.model.items() if k != "name"}
    self.module = models.create(c.model.name, num_classes=self.num_classes, **model_kwargs)
    self.init_fn, self.apply_fn = models.functional(self.module)
    self.schedule = jdiff.get_schedule(c.diffusion.schedule, **dict(c.diffusion.schedule_kwargs))
    self.learned_variance = bool(c.model.get("learned_variance", False))

  def init_params(self):
    x = jnp.zeros((1,) + self.data_shape, jnp.float32)
    cond = jnp.zeros((1,), jnp.int32) if self.num_classes and self.task == "diffusion" else None
    return self.init_fn(jax.random.PRNGKey(self.config.seed), x, jnp.zeros((1,), jnp.float32), cond)

  def init_state(self, optimizer) -> TrainState:
    return create_state(self.init_params(), optimizer, self.config.seed + 1)

  def meta(self, state: TrainState) -> dict:
    c = self.config
    meta = {"params": ckpt_lib.param_signature(state.params), "model": c.model.name,
            "data_shape": list(self.data_shape), "num_classes": self.num_classes,
            "parametrization": c.diffusion.parametrization, "schedule": c.diffusion.schedule}
    if self.task != "diffusion":  # diffusion checkpoints predate the field: no "task" means diffusion
      meta["task"] = self.task
    return meta

  def model_fn(self):
    """``(fn(params, x, t, cond), parametrization)`` for sampling (no dropout); for a classifier
    ``(fn(params, x, t) -> logits, "logits")``."""
    if self.task == "classifier":
      return (lambda params, x, t: self.apply_fn(params, x, t, None)), "logits"
    factory, core = make_model_fn(self.apply_fn, self.schedule, self.config.diffusion.parametrization,
                                  self.config.diffusion.sigma_data)
    return factory(None, False), core


def build_model(config: ml_collections.ConfigDict, data_shape, num_classes: int) -> Model:
  """The network, schedule and parametrization of ``config`` for data of ``data_shape`` (no dataset)."""
  return Model(config, data_shape, num_classes)


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


def clip_model_x0(fn, schedule, parametrization: str, lo: float = -1.0, hi: float = 1.0):
  """A model that predicts ``clip(x0_hat, lo, hi)`` (parametrization ``x0``): DDPM's clipping of the
  denoised image to the data range at every sampling step (Ho et al. 2020; Nichol & Dhariwal 2021)."""
  def clipped(params, x, t, cond):
    tb = jdiff.parametrization.broadcast_t(t, x)
    out = fn(params, x, tb, cond)
    a, s = schedule.alpha_sigma(tb)
    return jnp.clip(jdiff.to_x0_eps(parametrization, out, x, a, s)[0], lo, hi)
  return clipped


def sample_grid(exp: Experiment, params, num: int, seed: int, path: Optional[str]):
  """Sample ``num`` examples from ``params`` with the config's sampler; write a PNG grid (images)."""
  from jdiff import grids, sampling
  c = exp.config.sampling
  fn, param = exp.model_fn()
  if c.get("clip_x0", True) and len(exp.data_shape) == 3:
    fn, param = clip_model_x0(fn, exp.schedule, param), "x0"
  sample_fn = sampling.make_sample_fn(fn, exp.schedule, param, c.sampler, c.steps,
                                      learned_variance=exp.learned_variance)
  ts = grids.get_grid(c.grid, exp.schedule, c.steps)
  cond = None
  if exp.num_classes:
    cond = jnp.arange(num, dtype=jnp.int32) % exp.num_classes
  x = np.asarray(jax.device_get(sample_fn(params, (num,) + exp.data_shape, ts,
                                          jax.random.PRNGKey(seed), cond).x))
  if path is not None and len(exp.data_shape) == 3:
    image_utils.save_grid(x, path, ncols=int(np.ceil(np.sqrt(num))), scale=2)
  return x


def train(config: ml_collections.ConfigDict, workdir: str, *, log=print) -> TrainState:
  """Train (or resume) into ``workdir``; returns the final state (host copy)."""
  # Every check of the config (data, model, train step) runs before anything is created or written,
  # so a bad config leaves no workdir, checkpoint directory or config.json behind.
  workdir = check_workdir(workdir, create=False)
  exp = Experiment(config)
  train_step = exp.train_step_fn("data")
  from jdiff.training.periodic_eval import PeriodicEval  # pylint: disable=g-import-not-at-top
  evaluator = PeriodicEval.from_experiment(exp, log)  # config.eval: None when off
  workdir = check_workdir(workdir)
  c = config
  is_main = jax.process_index() == 0
  ckpt = ckpt_lib.Checkpointer(workdir, c.training.keep_checkpoints)
  state = exp.init_state()
  meta = exp.meta(state)
  restored = ckpt.restore_latest(state, meta,
                                 fallback=c.training.get("fallback_to_previous_checkpoint", False),
                                 warn=log)
  if restored is not None:
    start, state, data_state, _ = restored
    exp.pipeline.set_state(data_state)
    log(f"resumed from checkpoint step {start} in {ckpt.directory}")
  if is_main:  # after the checkpoint was accepted: a refused run leaves the workdir's config.json as is
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(c.to_json_best_effort(indent=2))
  step = int(state.step)
  if is_main:
    log(f"training on {jax.device_count()} {jax.default_backend()} device(s) in {jax.process_count()} "
        f"process(es), {c.data.batch_size // jax.device_count()} examples per device")

  p_step = jax.pmap(train_step, axis_name="data", donate_argnums=(0,))
  rstate = replicate(state)
  if jax.process_count() == 1:
    # Commit the host copy to the devices with the sharding pmap gives its outputs: from host numpy
    # arrays pmap (JAX 0.10) compiles the step once for the first call and again for the second.
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("data",))
    rstate = jax.device_put(rstate, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  writer = _MetricWriter(workdir) if is_main else None
  progress = Progress(c.training.num_steps, initial=step, enabled=is_main)
  total = c.training.num_steps
  with _StopFlag() as stop:
    while step < total:
      batch = next(exp.pipeline)
      rstate, metrics = p_step(rstate, batch)
      # Reading the metrics blocks on this step (also avoids a CPU collectives deadlock, see README).
      m = {k: float(v) for k, v in unreplicate(metrics).items()}
      step += 1
      progress.update(step, m["loss"], c.data.batch_size)
      if writer and (step % c.training.log_every == 0 or step == total):
        writer.write(step, {**m, "images_per_sec": progress.rate(c.data.batch_size)})
      if (m.get("finite", 1.0) == 0.0 or not np.isfinite(m["loss"])) and is_main:
        log(f"step {step}: non-finite loss or gradient, update skipped ({int(m['skipped'])} skipped "
            f"so far)")
      done = step == total or stop.signal is not None
      if step % c.training.ckpt_every == 0 or done:
        ckpt.save(step, unreplicate(rstate), exp.pipeline.get_state(), meta)
      if c.training.sample_every and (step % c.training.sample_every == 0 or step == total) and \
          is_main and exp.task == "diffusion":
        path = os.path.join(workdir, "samples", f"step_{step:07d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        sample_grid(exp, unreplicate(rstate).ema_params, min(c.sampling.num, 64), c.seed, path)
      if evaluator is not None and evaluator.due(step, total) and is_main:
        writer.write(step, evaluator(unreplicate(rstate).ema_params, step))
      if stop.signal is not None:
        log(f"received signal {stop.signal}: saved checkpoint at step {step}, exiting")
        break
  progress.close()
  if writer:
    writer.close()
  ckpt.close()
  return unreplicate(rstate)


class _MetricWriter:
  """JSON lines in ``metrics.jsonl`` and TensorBoard scalars under ``tb/``."""

  def __init__(self, workdir: str):
    self.f = open(os.path.join(workdir, "metrics.jsonl"), "a")
    try:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(workdir, "tb"))
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
