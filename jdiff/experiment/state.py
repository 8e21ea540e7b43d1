"""The training state pytree and the Optax optimizer built from a config.

``TrainState`` holds everything that changes during training (in the spirit of VDM's ``TrainState``):
step, parameters, EMA parameters, optimizer state, the base RNG key and the count of skipped
(non-finite) updates. It is a plain pytree, so it can be pmapped, donated and checkpointed as is.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

DECAYS = ("constant", "cosine")
OPTIMIZERS = ("adam", "adamw")


@dataclasses.dataclass(frozen=True)
class TrainState:
  step: jnp.ndarray  # int32 scalar
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jnp.ndarray  # uint32[2] raw PRNG key
  skipped: jnp.ndarray  # int32 scalar: updates skipped for a non-finite loss or gradient
  # Consistency distillation only: the target network, an EMA of the parameters with its own decay
  # (Song et al. 2023, Alg. 2); None (no leaves) otherwise.
  target: Any = None

  def replace(self, **kw) -> "TrainState":
    return dataclasses.replace(self, **kw)


# The pytree: the six fields every checkpoint holds, plus ``target`` only when a state has one, so the
# saved tree of every other run is exactly the one written before the field existed (orbax refuses to
# restore a checkpoint into a tree of another structure, even one that differs by a None).
_FIELDS = ("step", "params", "ema_params", "opt_state", "rng", "skipped")


def _flatten_with_keys(state: TrainState):
  names = _FIELDS + (("target",) if state.target is not None else ())
  return [(jax.tree_util.GetAttrKey(n), getattr(state, n)) for n in names], state.target is not None


def _unflatten(has_target: bool, children) -> TrainState:
  children = list(children)
  target = children.pop() if has_target else None
  return TrainState(*children, target=target)


jax.tree_util.register_pytree_with_keys(
    TrainState, _flatten_with_keys, _unflatten,
    flatten_func=lambda s: (tuple(v for _, v in _flatten_with_keys(s)[0]), s.target is not None))


def create_state(params, optimizer: optax.GradientTransformation, seed: int,
                 with_target: bool = False) -> TrainState:
  copy = lambda: jax.tree_util.tree_map(jnp.array, params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=copy(),
                    opt_state=optimizer.init(params), rng=jax.random.PRNGKey(seed),
                    skipped=jnp.zeros((), jnp.int32), target=copy() if with_target else None)


def learning_rate_schedule(lr: float, warmup_steps: int, decay: str, total_steps: int):
  """Linear warm-up to ``lr`` over ``warmup_steps``, then constant or cosine decay to 0 at
  ``total_steps``."""
  if decay not in DECAYS:
    raise ValueError(f"unknown optim.decay {decay!r}; valid decays are: {', '.join(DECAYS)}")
  warm = optax.linear_schedule(0.0, lr, max(warmup_steps, 1)) if warmup_steps > 0 else None
  if decay == "constant":
    after = optax.constant_schedule(lr)
  else:
    after = optax.cosine_decay_schedule(lr, max(total_steps - warmup_steps, 1))
  if warm is None:
    return after
  return optax.join_schedules([warm, after], [warmup_steps])


def make_optimizer(optim_cfg, total_steps: int) -> optax.GradientTransformation:
  """Global-norm clipping then Adam/AdamW with warm-up and constant or cosine LR (DDPM used Adam,
  lr 2e-4, 5000 warm-up steps, clipping at 1.0; Ho et al. 2020, App. B)."""
  name = optim_cfg.optimizer
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optim.optimizer {name!r}; valid optimizers are: {', '.join(OPTIMIZERS)}")
  if optim_cfg.lr <= 0:
    raise ValueError(f"optim.lr must be > 0, got {optim_cfg.lr}")
  sched = learning_rate_schedule(optim_cfg.lr, optim_cfg.warmup_steps, optim_cfg.decay, total_steps)
  if name == "adam":
    opt = optax.adam(sched, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps)
  else:
    opt = optax.adamw(sched, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                      weight_decay=optim_cfg.weight_decay)
  parts = []
  if optim_cfg.grad_clip and optim_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
  parts.append(opt)
  return optax.chain(*parts)
