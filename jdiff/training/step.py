"""The pure train step: core loss, gradients averaged over the ``data`` axis, Optax update, EMA, and a
guard that skips non-finite updates; ``make_classifier_train_step`` is the same for a noise-conditional
classifier (classifier guidance).

``make_train_step`` returns ``train_step(state, batch) -> (state, metrics)`` for ONE device's share of
the batch. With ``axis_name='data'`` it averages gradients and metrics with ``lax.pmean`` over that axis,
and it relies on nothing else, so the same function runs under ``jax.pmap(..., axis_name='data')`` (what
``train.py`` uses) and under ``shard_map`` over a mesh axis named ``data``. With ``axis_name=None`` it is
a plain single-device step.

Randomness: the per-example noise and time come from ``fold_in(fold_in(rng, step), global_index)`` inside
the loss, so 1 device and N devices draw the same noise for the same example. Dropout and label dropout
use keys folded with the step and the example's global index (label dropout) or the index of the first
example on the device (dropout masks), so dropout masks depend on the device layout.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from jdiff import categorical
from jdiff import conditions as conditions_lib
from jdiff import consistency, distillation, likelihood, losses, reflow
from jdiff.experiment import config as config_lib
from jdiff.experiment.builder import make_model_fn
from jdiff.experiment.state import TrainState
from jdiff.parametrization import make_denoiser
from jdiff.schedules import Schedule


def make_train_step(apply: Callable, schedule: Schedule, optimizer: optax.GradientTransformation, *,
                    parametrization_name: str = "eps", weighting: str = "simple",
                    time_sampling: str = "uniform", loss_kwargs: Optional[dict] = None,
                    ema_decay: float = 0.9999, conditions: Optional[conditions_lib.Conditions] = None,
                    num_classes: int = 0, cond_drop_prob: float = 0.0,
                    global_batch_size: Optional[int] = None, axis_name: Optional[str] = "data",
                    sigma_data: float = 0.5, learned_variance: bool = False,
                    hybrid_num_steps: int = 1000, ema_warmup: bool = True,
                    objective: str = "denoising", consistency_kwargs: Optional[dict] = None,
                    total_steps: int = 1, teacher: Optional[Teacher] = None,
                    distill_kwargs: Optional[dict] = None,
                    consistency_base: Optional[tuple] = None,
                    ema_power: float = 0.0) -> Callable[..., tuple[TrainState, dict]]:
  """Build the per-device train step. ``batch`` holds ``image`` (the data, any shape ``[b, ...]``),
  ``index`` (int32 ``[b]``, each example's position in the global batch) and a field per condition kind.

  ``conditions`` (``jdiff.conditions``; ``num_classes`` > 0 is shorthand for class labels) are read from
  the batch and dropped to their nulls with probability ``cond_drop_prob`` per example, for
  classifier-free guidance (Ho & Salimans 2022, Alg. 1).

  With ``learned_variance`` the model predicts its variance too and is trained with the hybrid loss
  ``L_simple + 0.001 L_vlb`` over ``hybrid_num_steps`` discrete steps (Nichol & Dhariwal 2021, Sec. 3.1).

  ``objective='consistency_training'`` trains a consistency model (``parametrization_name=
  'consistency'``) by improved consistency training (Song & Dhariwal 2023;
  ``jdiff.consistency.consistency_training_loss`` with ``consistency_kwargs``): the discretization
  curriculum runs over ``total_steps`` training steps, the target network is ``stop_gradient`` of the
  parameters and the same dropout masks.

  The distillation objectives take the ``teacher`` (its network, schedule and parametrization) and
  its parameters as the step's third argument, ``train_step(state, batch, teacher_params)``:

  * ``progressive_distillation``: ``jdiff.distillation.progressive_distillation_loss`` with
    ``distill_kwargs['student_steps']`` (Salimans & Ho 2022, Alg. 2);
  * ``consistency_distillation``: ``jdiff.consistency.consistency_distillation_loss`` with a Heun step of
    the teacher (any schedule, read on the VE process) and the target network ``state.target``, updated
    after each step as ``mu target + (1 - mu) params`` with ``mu = distill_kwargs['target_ema']`` (Song
    et al. 2023, Alg. 2); ``num_levels``, ``weighting`` from ``distill_kwargs``, the metric from
    ``consistency_kwargs``.

  ``consistency_base = (schedule, parametrization)``: the consistency model's network is a denoiser of
  that kind (``jdiff.experiment.builder.make_model_fn``).

  ``reflow`` / ``reflow_distill`` (Liu et al. 2023; ``jdiff.reflow.reflow_loss``) train a flow on
  (noise, sample) pairs: ``batch['noise']`` is each example's noise, with ``t`` drawn by
  ``time_sampling`` (reflow) or ``t = 1`` (one-step distillation).
  """
  config_lib.check_objective(objective, parametrization_name, learned_variance)
  distill_kwargs = dict(distill_kwargs or {})
  if (objective in config_lib.DISTILLATION_OBJECTIVES) != (teacher is not None):
    raise ValueError(f"training.objective={objective!r}: a teacher is needed exactly for the "
                     f"distillation objectives ({', '.join(config_lib.DISTILLATION_OBJECTIVES)})")
  target_ema = float(distill_kwargs.pop("target_ema", 0.95))
  factory, core_param = make_model_fn(apply, schedule, parametrization_name, sigma_data,
                                      consistency_base)
  loss_kwargs = dict(loss_kwargs or {})
  if learned_variance and (parametrization_name == "edm" or weighting != "simple"):
    raise ValueError("learned_variance trains with the hybrid loss of Nichol & Dhariwal 2021: use "
                     "weighting='simple' and a parametrization other than 'edm'")
  if weighting == "edm":
    loss_kwargs.setdefault("sigma_data", sigma_data)
  if not 0.0 <= cond_drop_prob <= 1.0:
    raise ValueError(f"training.cond_drop_prob must be in [0, 1], got {cond_drop_prob}")
  update = make_update(optimizer, ema_decay, ema_warmup, ema_power)
  if conditions is None:
    conditions = conditions_lib.for_model(num_classes)

  def pmean(x):
    return jax.lax.pmean(x, axis_name) if axis_name is not None else x

  def teacher_denoiser(teacher_params, cond):
    return make_denoiser(teacher.model_fn, teacher_params, teacher.schedule, teacher.parametrization,
                         cond)

  def train_step(state: TrainState, batch: dict, teacher_params=None):
    x0 = batch["image"]
    index = batch["index"]
    step_key = jax.random.fold_in(state.rng, state.step)
    k_loss, k_drop, k_cond = jax.random.split(step_key, 3)
    cond = conditions.for_training(batch, k_cond, index, cond_drop_prob)
    model_fn = factory(jax.random.fold_in(k_drop, index[0]), True)

    def loss_fn(params):
      if objective == "progressive_distillation":
        denoise = teacher_denoiser(teacher_params, cond)
        return jnp.mean(distillation.progressive_distillation_loss(
            model_fn, params, lambda z, t: denoise(z, t).x0, schedule, x0, k_loss,
            distill_kwargs["student_steps"], cond=cond, parametrization=core_param, indices=index))
      if objective == "consistency_distillation":
        teacher_x0 = consistency.ve_denoiser(teacher_denoiser(teacher_params, cond), teacher.schedule)
        ckw = {k: v for k, v in dict(consistency_kwargs or {}).items() if k in ("metric", "huber_c")}
        return jnp.mean(consistency.consistency_distillation_loss(
            model_fn, params, state.target, teacher_x0, schedule, x0, k_loss, cond=cond, indices=index,
            num_levels=distill_kwargs.get("num_levels", 18),
            weighting=distill_kwargs.get("weighting", "uniform"), **ckw))
      if objective == "consistency_training":
        return jnp.mean(consistency.consistency_training_loss(
            model_fn, params, schedule, x0, k_loss, state.step, total_steps, cond=cond, indices=index,
            **dict(consistency_kwargs or {})))
      if objective in ("reflow", "reflow_distill"):
        if "noise" not in batch:
          raise ValueError(f"training.objective={objective!r} trains on (noise, sample) pairs: the batch "
                           f"needs a 'noise' field (jdiff.training.reflow draws them)")
        return jnp.mean(reflow.reflow_loss(
            model_fn, params, schedule, x0, batch["noise"], k_loss, cond, parametrization=core_param,
            one_step=objective == "reflow_distill", weighting=weighting, time_sampling=time_sampling,
            indices=index, global_batch_size=global_batch_size, **loss_kwargs))
      if learned_variance:
        terms = likelihood.hybrid_loss(model_fn, params, schedule, x0, k_loss, hybrid_num_steps,
                                       cond=cond, parametrization=core_param, indices=index)
        return jnp.mean(terms.total)
      per_example = losses.denoising_loss(
          model_fn, params, schedule, x0, k_loss, cond=cond, parametrization=core_param,
          weighting=weighting, time_sampling=time_sampling, indices=index,
          global_batch_size=global_batch_size, **loss_kwargs)
      return jnp.mean(per_example)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    loss, grads = pmean(loss), pmean(grads)
    new_state, metrics = update(state, loss, grads)
    if state.target is not None:  # consistency distillation's target network
      new_state = new_state.replace(target=jax.tree_util.tree_map(
          lambda a, p: target_ema * a + (1.0 - target_ema) * p, state.target, new_state.params))
    return new_state, metrics

  return train_step


def make_categorical_train_step(
    apply: Callable, process: categorical.Process, optimizer: optax.GradientTransformation, *,
    loss: str = "elbo", num_steps: int = 1000, aux_weight: float = 0.0,
    time_sampling: str = "low_discrepancy", ema_decay: float = 0.9999,
    conditions: Optional[conditions_lib.Conditions] = None, cond_drop_prob: float = 0.0,
    global_batch_size: Optional[int] = None, axis_name: Optional[str] = "data", ema_warmup: bool = True,
    ema_power: float = 0.0) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The per-device train step of a categorical (token) diffusion model; ``batch['image']`` holds the
  int32 tokens ``[b, L]``. The network ``apply(params, x_t, t, cond)`` gives logits of the clean tokens.

  * ``loss='elbo'``: the continuous-time ELBO of the absorbing (masking) process
    (``jdiff.categorical.masked_elbo``; Sahoo et al. 2024, Shi et al. 2024), ``time_sampling``
    ``uniform`` or ``low_discrepancy`` over the global batch;
  * ``loss='vlb'``: D3PM's bound in ``num_steps`` discrete steps plus ``aux_weight`` times its auxiliary
    cross-entropy (Austin et al. 2021, Sec. 3.4: ``L_vb + lambda L_aux``).

  The loss is in nats per sequence; the metrics add ``bits_per_token`` (the bound alone, without the
  auxiliary term). Conditions, dropout keys, the update, EMA and non-finite guard are those of
  ``make_train_step``.
  """
  if loss not in categorical.LOSSES:
    raise ValueError(f"unknown categorical loss {loss!r}; valid losses are: "
                     f"{', '.join(categorical.LOSSES)}")
  if not 0.0 <= cond_drop_prob <= 1.0:
    raise ValueError(f"training.cond_drop_prob must be in [0, 1], got {cond_drop_prob}")
  update = make_update(optimizer, ema_decay, ema_warmup, ema_power)
  conditions = conditions if conditions is not None else conditions_lib.Conditions()

  def pmean(x):
    return jax.lax.pmean(x, axis_name) if axis_name is not None else x

  def train_step(state: TrainState, batch: dict):
    x0, index = batch["image"], batch["index"]
    k_loss, k_drop, k_cond = jax.random.split(jax.random.fold_in(state.rng, state.step), 3)
    cond = conditions.for_training(batch, k_cond, index, cond_drop_prob)
    rng = jax.random.fold_in(k_drop, index[0])
    logits_fn = lambda p, x, t, c: apply(p, x, t, c, rng=rng, train=True)

    def loss_fn(params):
      if loss == "elbo":
        bound = categorical.masked_elbo(logits_fn, params, process, x0, k_loss, cond=cond,
                                        indices=index, time_sampling=time_sampling,
                                        global_batch_size=global_batch_size)
        return jnp.mean(bound), jnp.mean(bound)
      terms = categorical.vlb_loss(logits_fn, params, process, x0, k_loss, num_steps, cond=cond,
                                   indices=index)
      return jnp.mean(terms.vlb + aux_weight * terms.ce), jnp.mean(terms.vlb)

    (value, bound), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    value, bound, grads = pmean(value), pmean(bound), pmean(grads)
    new_state, metrics = update(state, value, grads)
    return new_state, {**metrics, "bits_per_token": categorical.bits_per_token(bound, x0.shape[-1])}

  return train_step


class Teacher(NamedTuple):
  """A distillation teacher without its parameters: ``model_fn(params, x, t, cond)`` (no dropout) read
  with ``parametrization`` on ``schedule`` (``jdiff.generation.Restored`` provides all three)."""
  model_fn: Callable
  schedule: Schedule
  parametrization: str


def make_update(optimizer: optax.GradientTransformation, ema_decay: float = 0.9999,
                ema_warmup: bool = True,
                ema_power: float = 0.0) -> Callable[[TrainState, Any, Any], tuple[TrainState, dict]]:
  """``update(state, loss, grads) -> (state, metrics)`` with already averaged ``loss`` and ``grads``:
  the Optax update, the EMA of the parameters, and the guard that skips a non-finite update (shared
  by the diffusion and the classifier train steps).

  ``ema_power = gamma > 0`` replaces ``ema_decay``: the power-function EMA of Karras et al. 2024 (EDM2,
  Sec. 3.1), decay ``(1 - 1/n)^(gamma + 1)`` at the ``n``-th update, which weighs the parameters of
  update ``k`` about as ``k^gamma`` whatever the run's length (``gamma = 0``: the plain mean of all
  updates). The default warm-up ``min(decay, (1 + n) / (10 + n))`` is about ``gamma = 8`` until it
  reaches ``ema_decay``."""
  if not 0.0 <= ema_decay < 1.0:
    raise ValueError(f"training.ema_decay must be in [0, 1), got {ema_decay}")
  if not (isinstance(ema_power, (int, float)) and 0.0 <= ema_power < float("inf")):
    raise ValueError(f"training.ema_power must be a number >= 0 (0: off), got {ema_power!r}")

  def update(state: TrainState, loss, grads):
    # One scalar test (any NaN/Inf makes the global norm non-finite); a per-leaf all() over the tree
    # gets duplicated into every fused update by XLA and made compiles 3-5x slower.
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # Zero the gradient of a skipped step so the optimizer never sees a NaN, then keep the old state.
    safe_grads = jax.tree_util.tree_map(lambda g: jnp.where(finite, g, 0.0), grads)
    updates, new_opt = optimizer.update(safe_grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    decay = jnp.float32(ema_decay)
    if ema_power > 0:
      n = (state.step - state.skipped + 1).astype(jnp.float32)  # this update is the n-th
      decay = jnp.power(1.0 - 1.0 / n, jnp.float32(ema_power + 1.0))
    elif ema_warmup:
      # min(decay, (1 + n) / (10 + n)) over the n updates made so far, so the average is not
      # dominated by the random initialisation early in training (as tf.train.ExponentialMovingAverage
      # with num_updates).
      n = (state.step - state.skipped).astype(jnp.float32)
      decay = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
    new_ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p,
                                     state.ema_params, new_params)
    keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = state.replace(
        step=state.step + 1,
        params=keep(new_params, state.params),
        ema_params=keep(new_ema, state.ema_params),
        opt_state=keep(new_opt, state.opt_state),
        skipped=state.skipped + jnp.where(finite, 0, 1).astype(jnp.int32))
    metrics = {"loss": loss, "grad_norm": grad_norm,
               "skipped": new_state.skipped, "finite": finite.astype(jnp.float32)}
    return new_state, metrics

  return update


def make_classifier_train_step(
    apply: Callable, schedule: Schedule, optimizer: optax.GradientTransformation, *,
    time_sampling: str = "uniform", ema_decay: float = 0.9999, global_batch_size: Optional[int] = None,
    axis_name: Optional[str] = "data", ema_warmup: bool = True,
    ema_power: float = 0.0) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The per-device train step of a noise-conditional classifier (Dhariwal & Nichol 2021, Sec. 4.1):
  cross-entropy on ``x_t`` at random ``t`` (``losses.noisy_classifier_loss``), gradients and metrics
  averaged with ``lax.pmean`` over ``axis_name``, then the same update, EMA and non-finite guard as
  the diffusion step. ``batch`` holds ``image``, ``label`` and ``index``; the metrics add ``accuracy``
  (on the noisy training inputs, averaged over t)."""
  update = make_update(optimizer, ema_decay, ema_warmup, ema_power)

  def pmean(x):
    return jax.lax.pmean(x, axis_name) if axis_name is not None else x

  def train_step(state: TrainState, batch: dict):
    index = batch["index"]
    k_loss, k_drop = jax.random.split(jax.random.fold_in(state.rng, state.step))

    def loss_fn(params):
      logits_fn = lambda p, x, t: apply(p, x, t, None, rng=jax.random.fold_in(k_drop, index[0]),
                                        train=True)
      terms = losses.noisy_classifier_loss(
          logits_fn, params, schedule, batch["image"], batch["label"], k_loss, time_sampling,
          indices=index, global_batch_size=global_batch_size)
      return jnp.mean(terms.total), jnp.mean(terms.correct)

    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    loss, grads = pmean(loss), pmean(grads)
    new_state, metrics = update(state, loss, grads)
    return new_state, {**metrics, "accuracy": pmean(acc)}

  return train_step
