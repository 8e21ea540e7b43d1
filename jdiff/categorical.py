"""Discrete (categorical) diffusion over token sequences: D3PM and masked diffusion.

Tokens are int32 ``[batch, length]`` ids in ``[0, K)``; time ``t`` in [0, 1], data at 0, prior at 1. A
token keeps its value with probability ``alpha(t)``, else it is replaced by a draw from ``pi``:

  ``q(x_t | x0) = alpha_t onehot(x0) + (1 - alpha_t) pi``             (Austin et al. 2021, Sec. 3)
  ``q(x_t | x_s) = alpha_{t|s} onehot(x_s) + (1 - alpha_{t|s}) pi``,  ``alpha_{t|s} = alpha_t / alpha_s``

with ``pi = e_mask`` (``absorbing``, the extra id ``mask_id = K``) or ``1 / K`` (``uniform``); no
``K x K`` matrix is ever built. A network ``logits_fn(params, x_t, t, cond) -> [B, L, K]`` gives
``p~(x0 | x_t)`` and the reverse step is (Austin et al. 2021, eq. 4, the x0-parametrization)

  ``p(x_s | x_t)  propto  sum_x0 q(x_t | x_s) q(x_s | x0) p~(x0 | x_t)``,

computed in log space (``posterior_log_probs``; no NaN at ``alpha = 0``). One-hot ``p~`` gives the
true posterior. At a masked ``x_t`` (absorbing), ``q(x_t | x0)`` does not depend on ``x0`` and the
step is exact for ``p~ = p(x0 | x_t)`` (Sahoo et al. 2024; Shi et al. 2024); for the uniform process
it is exact for ``p~ propto p(x0 | x_t) / q(x_t | x0)``, which the VLB (not the cross-entropy) trains
towards.

Losses are per example, in nats per *sequence* (``bits_per_token`` converts): ``vlb_loss`` /
``vlb_exact``, D3PM's bound with ``T`` steps on ``t_i = i / T`` (Austin et al. 2021, eq. 1) and its
cross-entropy auxiliary (their eq. 5); ``masked_elbo``, the continuous-time ELBO of the absorbing process
(Sahoo et al. 2024, eq. 10; Shi et al. 2024, eq. 5). Example ``b`` draws from ``fold_in(key,
indices[b])`` (``jdiff.keys``), so its draw does not depend on the batch.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import _checks
from jdiff.keys import per_example_keys, resolve_indices
from jdiff.losses import sample_times

KINDS = ("absorbing", "uniform")
SCHEDULES = ("linear", "cosine")
LOSSES = ("elbo", "vlb")
TIME_SAMPLINGS = ("uniform", "low_discrepancy")
_TINY = 1e-30


@dataclasses.dataclass(frozen=True)
class Process:
  """A categorical forward process (build it with ``get_process``)."""
  kind: str  # "absorbing" | "uniform"
  num_tokens: int  # K, the data vocabulary
  schedule: str = "linear"  # "linear" | "cosine"

  @property
  def mask_id(self) -> Optional[int]:  # K for the absorbing process, None for the uniform one
    return self.num_tokens if self.kind == "absorbing" else None

  @property
  def input_vocab(self) -> int:  # the ids x_t takes (a network's embedding size): K + 1 or K
    return self.num_tokens + (self.kind == "absorbing")

  def alpha(self, t):
    """P(a token still carries its data value): ``1 - t`` (linear) or ``cos(pi t / 2)`` (cosine)."""
    t = jnp.asarray(t, jnp.float32)
    a = 1.0 - t if self.schedule == "linear" else jnp.cos(0.5 * math.pi * t)
    return jnp.clip(a, 0.0, 1.0)

  def one_minus_alpha(self, t):
    """``1 - alpha(t)`` without cancellation at small ``t`` (``2 sin^2(pi t / 4)`` for cosine)."""
    t = jnp.asarray(t, jnp.float32)
    if self.schedule == "linear":
      return jnp.clip(t, 0.0, 1.0)
    a = self.alpha(t)  # 1 - cos(x) = 2 sin^2(x / 2) for small x; exactly 1 where alpha = 0
    return jnp.where(a > 0.5, 2.0 * jnp.square(jnp.sin(0.25 * math.pi * t)), 1.0 - a)

  def dalpha(self, t):
    """``d alpha / dt``: ``-1`` (linear) or ``-(pi / 2) sin(pi t / 2)`` (cosine)."""
    t = jnp.asarray(t, jnp.float32)
    if self.schedule == "linear":
      return -jnp.ones_like(t)
    return -0.5 * math.pi * jnp.sin(0.5 * math.pi * t)

  def prior(self):
    """``pi``, the distribution at ``t = 1``, ``[input_vocab]``: ``e_mask`` or ``1 / K``."""
    if self.kind == "absorbing":
      return jax.nn.one_hot(self.num_tokens, self.input_vocab, dtype=jnp.float32)
    return jnp.full((self.num_tokens,), 1.0 / self.num_tokens, jnp.float32)


def get_process(kind: str, num_tokens: int, schedule: str = "linear") -> Process:
  """A ``Process`` by name; ``kind`` in ``KINDS``, ``schedule`` in ``SCHEDULES``, ``num_tokens >= 2``."""
  _checks.choice("categorical process kind", kind, KINDS)
  _checks.choice("categorical schedule", schedule, SCHEDULES)
  return Process(kind, _checks.int_at_least(num_tokens, "num_tokens", 2), schedule)


def _dtype(x) -> np.dtype:
  return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def validate_tokens(x, process: Process, name: str = "tokens", allow_mask: bool = False):
  """Check ``x`` is an integer ``[batch, length]`` array of ids in ``[0, K)`` (``[0, input_vocab)`` with
  ``allow_mask``); values are checked only when concrete. Returns ``(batch, length)``."""
  hi = process.input_vocab if allow_mask else process.num_tokens
  if not np.issubdtype(_dtype(x), np.integer):
    raise ValueError(f"{name}: tokens must be an integer array of ids in [0, {hi}), got {_dtype(x)}; "
                     f"cast it with .astype(jnp.int32)")
  if np.ndim(x) != 2 or 0 in np.shape(x):
    raise ValueError(f"{name}: tokens must have shape [batch, length], got {np.shape(x)}")
  a = np.asarray(x) if _checks.is_concrete(x) else None  # (numpy: no tracing inside an outer jit)
  if a is not None and (a.min() < 0 or a.max() >= hi):
    raise ValueError(f"{name}: tokens must be ids in [0, {hi}){' (the mask id included)' * allow_mask}, "
                     f"got values in [{a.min()}, {a.max()}]")
  return tuple(int(d) for d in np.shape(x))


def _per_example_t(t, batch: int, name: str = "t"):
  if np.ndim(t) > 1 or (np.ndim(t) == 1 and np.shape(t)[0] != batch):
    raise ValueError(f"{name} must be a scalar or one time per example [{batch}], got shape "
                     f"{np.shape(t)}")
  _checks.check_t(t, name)
  return jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))


def _check_logits(logits, batch: int, length: int, process: Process):
  want = (batch, length, process.num_tokens)
  if tuple(np.shape(logits)) != want:
    raise ValueError(f"logits_fn must return logits over the K={process.num_tokens} data tokens, shape "
                     f"[batch, length, K]={want}, got {tuple(np.shape(logits))}")
  return jnp.asarray(logits, jnp.float32)


def q_probs(process: Process, x0, t):
  """``q(x_t | x0) = alpha_t onehot(x0) + (1 - alpha_t) pi``, ``[B, L, V]`` (``x0 Qbar_t`` of Austin
  et al. 2021, Sec. 3)."""
  batch, _ = validate_tokens(x0, process, "x0")
  t = _per_example_t(t, batch)[:, None, None]
  onehot = jax.nn.one_hot(x0, process.input_vocab, dtype=jnp.float32)
  return process.alpha(t) * onehot + process.one_minus_alpha(t) * process.prior()


def _q_sample(process: Process, key, x0, t, indices):
  def one(k, x, tb):
    u = jax.random.uniform(k, (1 + (process.kind == "uniform"),) + x.shape)  # one draw per example
    keep = u[0] >= process.one_minus_alpha(tb)
    if process.kind == "absorbing":
      return jnp.where(keep, x, process.num_tokens)
    noise = jnp.minimum(jnp.floor(u[1] * process.num_tokens), process.num_tokens - 1).astype(jnp.int32)
    return jnp.where(keep, x, noise)

  return jax.vmap(one)(per_example_keys(key, indices), jnp.asarray(x0, jnp.int32), t)


def q_sample(process: Process, key, x0, t, indices=None):
  """Draw ``x_t ~ q(x_t | x0)``, int32 ``[B, L]``; example ``b`` uses ``fold_in(key, indices[b])``."""
  batch, _ = validate_tokens(x0, process, "x0")
  _checks.check_key(key)
  indices, _ = resolve_indices(batch, indices, None, False)
  return _q_sample(process, key, x0, _per_example_t(t, batch), indices)


def posterior_log_probs(process: Process, x_t, x0_log_probs, s, t):
  """``log p(x_s | x_t)`` ``[B, L, V]`` for normalised ``x0_log_probs [B, L, K]`` (e.g. log_softmax of
  logits; ``-inf`` allowed) and ``s < t`` (scalars or ``[B]``), Austin et al. 2021, eq. 4:
  ``p(x_s = j | x_t) propto q(x_t | x_s = j) (alpha_s p~(j) + (1 - alpha_s) pi_j)``. An ``x_t`` that
  no ``x_s`` reaches gets all ``-inf`` rather than NaN."""
  batch, length = validate_tokens(x_t, process, "x_t", allow_mask=True)
  if tuple(np.shape(x0_log_probs)) != (batch, length, process.num_tokens):
    raise ValueError(f"x0 probabilities must have shape [batch, length, K]="
                     f"{(batch, length, process.num_tokens)}, got {tuple(np.shape(x0_log_probs))}")
  s = _per_example_t(s, batch, "s")[:, None, None]
  t = _per_example_t(t, batch, "t")[:, None, None]
  logp0 = jnp.asarray(x0_log_probs, jnp.float32)
  a_s, a_t = process.alpha(s), process.alpha(t)
  a_ts = jnp.where(a_s > 0, a_t / jnp.maximum(a_s, _TINY), 1.0)
  onehot = jax.nn.one_hot(x_t, process.input_vocab)
  # r_j propto q(x_t | x_s = j), zero where x_s = j cannot reach x_t. An unmasked absorbing token
  # carries over (r = onehot), even at alpha_{t|s} = 0 (a token clamped at t = 1).
  r = a_ts * onehot + (1.0 - a_ts) * process.prior()[x_t][..., None]
  if process.kind == "absorbing":
    r = jnp.where((x_t == process.mask_id)[..., None], r, onehot)
  log_a_s = jnp.log(a_s) + logp0  # log(alpha_s p~(j)) on the data ids
  if process.kind == "absorbing":
    log_m = jnp.concatenate([log_a_s, jnp.broadcast_to(jnp.log(process.one_minus_alpha(s)),
                                                       (batch, length, 1))], axis=-1)
  else:
    log_m = jnp.logaddexp(log_a_s, jnp.log(process.one_minus_alpha(s) / process.num_tokens))
  return _log_normalize(jnp.log(r) + log_m)


def _log_normalize(lp):
  mx = jax.lax.stop_gradient(jnp.max(lp, axis=-1, keepdims=True))
  mx = jnp.where(jnp.isfinite(mx), mx, 0.0)
  z = jnp.sum(jnp.exp(lp - mx), axis=-1, keepdims=True)
  return lp - mx - jnp.log(jnp.maximum(z, _TINY))


def posterior_probs(process: Process, x_t, x0_probs, s, t):
  """``p(x_s | x_t)`` ``[B, L, V]`` of ``posterior_log_probs`` for probabilities ``x0_probs [B, L, K]``
  (Austin et al. 2021, eq. 4); one-hot ``x0_probs`` give the true posterior ``q(x_s | x_t, x0)``."""
  log_p0 = jnp.log(jnp.asarray(x0_probs, jnp.float32))
  return jnp.exp(posterior_log_probs(process, x_t, log_p0, s, t))


def _kl(log_q, log_p):
  """``sum_j q_j (log q_j - log p_j)`` over the last axis, 0 where ``q_j = 0`` (NaN-free gradients)."""
  pos = log_q > -jnp.inf
  lq, lp = jnp.where(pos, log_q, 0.0), jnp.where(pos, log_p, 0.0)
  return jnp.sum(jnp.where(pos, jnp.exp(lq) * (lq - lp), 0.0), axis=-1)


# D3PM's discrete-time bound ------------------------------------------------------------------------


class VLBTerms(NamedTuple):
  vlb: jnp.ndarray  # [batch] nats per sequence: an unbiased estimate of the negative ELBO
  ce: jnp.ndarray  # [batch] -sum_l log p~(x0^l | x_t), the auxiliary cross-entropy


def bits_per_token(nats, length: int):
  """Nats per sequence to bits per token: ``nats / (length ln 2)``."""
  return jnp.asarray(nats) / (_checks.positive_int(length, "length") * math.log(2.0))


def vlb_term(process: Process, logits, x_t, x0, s, t):
  """``KL(q(x_s | x_t, x0) || p(x_s | x_t))`` at a drawn ``x_t``, summed over positions, ``[B]``, ``p``
  from ``posterior_log_probs(log_softmax(logits))`` (Austin et al. 2021, eq. 1, ``L_{t-1}``). At
  ``s = 0`` the posterior is ``onehot(x0)`` and the term is ``-log p(x0 | x_t)``, their ``L_0``."""
  batch, length = validate_tokens(x0, process, "x0")
  logits = _check_logits(logits, batch, length, process)
  log_onehot = jnp.where(jax.nn.one_hot(x0, process.num_tokens) > 0, 0.0, -jnp.inf)
  log_q = posterior_log_probs(process, x_t, log_onehot, s, t)
  log_p = posterior_log_probs(process, x_t, jax.nn.log_softmax(logits, axis=-1), s, t)
  return jnp.sum(_kl(log_q, log_p), axis=-1)


def prior_kl(process: Process, x0):
  """``KL(q(x_1 | x0) || pi)`` summed over positions, ``[B]`` (``L_T``; 0 when ``alpha(1) = 0``)."""
  q = q_probs(process, x0, 1.0)
  log_q = jnp.where(q > 0, jnp.log(jnp.maximum(q, _TINY)), -jnp.inf)
  return jnp.sum(_kl(log_q, jnp.log(process.prior())), axis=-1)


def _nll(logits, x0):
  """``-log softmax(logits)[x0]`` per position, ``[B, L]``."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(logp, jnp.asarray(x0, jnp.int32)[..., None], axis=-1)[..., 0]


def _setup(process, x0, key, cond, num_steps=None):
  if not isinstance(process, Process):
    raise ValueError(f"process must be a jdiff.categorical.Process (get_process), got {type(process)}")
  batch, length = validate_tokens(x0, process, "x0")
  _checks.check_key(key)
  _checks.check_cond(cond, batch)
  if num_steps is not None:
    _checks.int_at_least(num_steps, "num_steps", 1)
  return batch, length, jnp.asarray(x0, jnp.int32)


def _step_term(logits_fn, params, process, x0, key, i, num_steps, cond, indices):
  """``(L_i, ce)`` at step ``i [B]``: ``x_t ~ q(x_{i/T} | x0)``, ``s = (i - 1) / T``."""
  t = i.astype(jnp.float32) / num_steps
  s = (i - 1).astype(jnp.float32) / num_steps
  x_t = _q_sample(process, key, x0, t, indices)
  logits = _check_logits(logits_fn(params, x_t, t, cond), *x0.shape, process)
  return vlb_term(process, logits, x_t, x0, s, t), jnp.sum(_nll(logits, x0), axis=-1)


def vlb_loss(logits_fn: Callable, params, process: Process, x0, key, num_steps: int, cond=None,
             indices=None, t_index=None) -> VLBTerms:
  """D3PM's negative ELBO with ``T = num_steps`` steps, one random step per example (Austin et al. 2021,
  eq. 1): ``vlb = T L_i + KL(q(x_1 | x0) || pi)`` with ``i ~ U{1..T}`` (or ``t_index [B]``) drawn from
  ``fold_in(k_i, index)`` and ``x_t`` from ``fold_in(k_x, index)``, ``k_i, k_x = split(key)``. Its
  expectation is ``vlb_exact``'s. The training loss is ``vlb + lambda * ce`` (their eq. 5)."""
  batch, _, x0 = _setup(process, x0, key, cond, num_steps)
  indices, _ = resolve_indices(batch, indices, None, False)
  k_i, k_x = jax.random.split(key)
  if t_index is None:
    i = jax.vmap(lambda k: jax.random.randint(k, (), 1, num_steps + 1))(per_example_keys(k_i, indices))
  else:
    if np.shape(t_index) != (batch,) or not np.issubdtype(_dtype(t_index), np.integer):
      raise ValueError(f"t_index must be integers of shape [batch]=({batch},), got {np.shape(t_index)}")
    a = np.asarray(t_index) if _checks.is_concrete(t_index) else None
    if a is not None and (a.min() < 1 or a.max() > num_steps):
      raise ValueError(f"t_index must lie in [1, num_steps={num_steps}], got values in "
                       f"[{a.min()}, {a.max()}]")
    i = jnp.asarray(t_index, jnp.int32)
  term, ce = _step_term(logits_fn, params, process, x0, k_x, i, num_steps, cond, indices)
  return VLBTerms(num_steps * term + prior_kl(process, x0), ce)


def vlb_exact(logits_fn: Callable, params, process: Process, x0, key, num_steps: int, cond=None,
              indices=None) -> VLBTerms:
  """The bound of ``vlb_loss`` with the sum over all ``i = 1..T`` (one ``lax.scan``; for evaluation):
  ``vlb = sum_i L_i + L_T``, each ``x_{t_i}`` drawn once from ``fold_in(fold_in(key, i), index)``.
  ``ce`` is the cross-entropy averaged over the ``T`` steps."""
  batch, _, x0 = _setup(process, x0, key, cond, num_steps)
  indices, _ = resolve_indices(batch, indices, None, False)

  def body(acc, i):
    term, ce = _step_term(logits_fn, params, process, x0, jax.random.fold_in(key, i),
                          jnp.full((batch,), i), num_steps, cond, indices)
    return (acc[0] + term, acc[1] + ce / num_steps), None

  zero = jnp.zeros((batch,), jnp.float32)
  (vlb, ce), _ = jax.lax.scan(body, (zero, zero), jnp.arange(1, num_steps + 1, dtype=jnp.int32))
  return VLBTerms(vlb + prior_kl(process, x0), ce)


# Masked diffusion's continuous-time ELBO ------------------------------------------------------------


def masked_elbo_term(process: Process, logits, x_t, x0, t):
  """The integrand at a drawn ``x_t``, ``[B]``: ``-alpha'(t) / (1 - alpha(t)) sum_{l: x_t^l = mask}
  -log p~(x0^l | x_t)`` (Sahoo et al. 2024, eq. 10; Shi et al. 2024, eq. 5); unmasked positions carry
  over and cost nothing."""
  batch, length = validate_tokens(x0, process, "x0")
  validate_tokens(x_t, process, "x_t", allow_mask=True)
  logits = _check_logits(logits, batch, length, process)
  t = _per_example_t(t, batch)
  weight = -process.dalpha(t) / jnp.maximum(process.one_minus_alpha(t), _TINY)
  return weight * jnp.sum(jnp.where(x_t == process.mask_id, _nll(logits, x0), 0.0), axis=-1)


def masked_elbo(logits_fn: Callable, params, process: Process, x0, key, cond=None, indices=None,
                time_sampling: str = "low_discrepancy", global_batch_size: Optional[int] = None, t=None,
                t_min: float = 1e-4):
  """Per-example negative ELBO (nats per sequence) of the absorbing process in continuous time at one
  ``t`` per example: ``uniform`` or ``low_discrepancy`` over the global batch (``losses.sample_times``
  from ``k_t``) or the given ``t``, clipped to ``[t_min, 1]``; ``x_t`` from ``fold_in(k_x, index)``,
  ``k_t, k_x = split(key)``. See ``masked_elbo_term``."""
  batch, _, x0 = _setup(process, x0, key, cond)
  if process.kind != "absorbing":
    raise ValueError("masked_elbo is the continuous-time ELBO of the absorbing process; for a "
                     "uniform process use vlb_loss")
  _checks.choice("time sampling", time_sampling, TIME_SAMPLINGS)
  t_min = _checks.check_time_bound(t_min, "t_min")
  need_global = t is None and time_sampling == "low_discrepancy"
  indices, gbs = resolve_indices(batch, indices, global_batch_size, need_global)
  k_t, k_x = jax.random.split(key)
  if t is None:
    t = sample_times(k_t, indices, time_sampling, t_min=0.0, global_batch_size=gbs)
  t = jnp.clip(_per_example_t(t, batch), t_min, 1.0)
  x_t = _q_sample(process, k_x, x0, t, indices)
  logits = logits_fn(params, x_t, t, cond)
  return masked_elbo_term(process, logits, x_t, x0, t)
