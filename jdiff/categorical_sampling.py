"""Samplers for categorical diffusion (``jdiff.categorical``), all run by one driver in one ``lax.scan``.

* ``time_grid(steps)``: ``linspace(1, 0, steps + 1)``, uniform in ``t``.
* ``initial_tokens(process, key, indices, length)``: the prior draw at ``t = 1``: all mask (absorbing) or
  uniform ids from ``fold_in(key, i)`` (uniform).
* ``sample(process, denoise, x_init, ts, key, indices, sampler=...)`` with ``denoise(x_t, t[B]) ->
  logits [B, L, K]`` (params and cond bound), an x0-parametrization ``p~(x0 | x_t)``:

  - ``ancestral`` (both kinds): ``x_s ~ p(x_s | x_t)  propto  sum_x0 q(x_t | x_s) q(x_s | x0) p~(x0)``
    with ``p~ = softmax(logits / temperature)`` (Austin et al. 2021, eq. 4; for the absorbing
    process the reverse step of Sahoo et al. 2024 and Shi et al. 2024). Unmasked tokens carry over;
    the step to ``s = 0`` unmasks everything.
  - ``unmask`` (absorbing only): a fixed number of tokens revealed per step, as in MaskGIT (Chang et
    al. 2022) but at uniformly random positions (the masked-diffusion reverse process with the count
    of revealed tokens fixed to its expectation): after the step to ``s``, exactly
    ``round(M0 (1 - alpha(s)) / (1 - alpha(ts[0])))`` tokens stay masked, ``M0`` the number masked at
    the start (``round(L (1 - alpha(s)))`` from an all-mask start at ``t = 1``; known tokens count as
    revealed from the start, so the schedule spreads over the unknown ones). The positions revealed
    are drawn uniformly among the masked ones, their values from ``p~``.

  ``known`` / ``known_mask`` clamp positions to given tokens at the start and after every step
  (infilling, prefix conditioning). Step ``k`` of example ``b`` draws from
  ``fold_in(fold_in(key, indices[b]), k)``, so sample ``i`` is the same at any batch size; ``ts``, the
  key and the temperature are traced (changing them never recompiles).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import _checks
from jdiff.categorical import Process, posterior_log_probs, validate_tokens
from jdiff.keys import check_indices, per_example_keys
from jdiff.samplers import SampleOutput

SAMPLERS = ("ancestral", "unmask")


def time_grid(steps: int):
  """``steps + 1`` times from 1 (prior) to 0 (data), uniform in ``t``, float32."""
  steps = _checks.positive_int(steps, "steps")
  return jnp.linspace(1.0, 0.0, steps + 1, dtype=jnp.float32)


def initial_tokens(process: Process, key, indices, length: int):
  """``x_1 ~ pi``, int32 ``[B, L]``: all ``mask_id`` (absorbing) or uniform ids drawn from
  ``fold_in(key, indices[b])`` (uniform)."""
  indices = check_indices(indices)
  length = _checks.positive_int(length, "length")
  if process.kind == "absorbing":
    return jnp.full((indices.shape[0], length), process.mask_id, jnp.int32)
  _checks.check_key(key)
  draw = lambda k: jax.random.randint(k, (length,), 0, process.num_tokens, jnp.int32)
  return jax.vmap(draw)(per_example_keys(key, indices))


def _check_ts(ts):
  if np.ndim(ts) != 1 or np.shape(ts)[0] < 2:
    raise ValueError(f"ts must be a 1-D array of at least 2 times (steps + 1 for steps >= 1), got "
                     f"shape {np.shape(ts)}; build one with time_grid(steps)")
  if _checks.is_concrete(ts):
    a = np.asarray(ts, np.float64)
    _checks.check_t(a, "ts")
    if np.any(np.diff(a) >= 0):
      raise ValueError(f"ts must be strictly descending (from the prior at 1 towards the data at 0), "
                       f"got {np.array2string(a, precision=4, threshold=8)}")


def _check_known(known, known_mask, process, shape):
  if (known is None) != (known_mask is None):
    raise ValueError("pass known and known_mask together (the tokens and where they are known)")
  if known is None:
    return None, None
  if tuple(validate_tokens(known, process, "known")) != shape:
    raise ValueError(f"known must have the shape of x_init {shape}, got {np.shape(known)}")
  dt = np.dtype(known_mask.dtype) if hasattr(known_mask, "dtype") else np.asarray(known_mask).dtype
  if dt != np.bool_ or tuple(np.shape(known_mask)) != shape:
    raise ValueError(f"known_mask must be a bool array of shape {shape}, got {dt} of shape "
                     f"{np.shape(known_mask)}")
  return jnp.asarray(known, jnp.int32), jnp.asarray(known_mask)


def _ancestral(process, x, logits, s, t, gumbel):
  """``x_s ~ p(x_s | x_t)`` by the Gumbel-max trick."""
  log_post = posterior_log_probs(process, x, jax.nn.log_softmax(logits, axis=-1), s, t)
  return jnp.argmax(log_post + gumbel[..., :log_post.shape[-1]], axis=-1)


def _unmask(process, x, logits, s, n0, gumbel):
  """Reveal all but ``round(n0 (1 - alpha_s))`` masked tokens (``n0`` the masked count at the start
  over ``1 - alpha`` there), at uniformly random positions (the masked positions ranked by an
  independent Gumbel draw), with values ``~ softmax(logits)``."""
  masked = x == process.mask_id
  n_keep = jnp.minimum(jnp.round(n0 * process.one_minus_alpha(s)).astype(jnp.int32),
                       jnp.sum(masked, axis=-1))
  score = jnp.where(masked, gumbel[..., -1], jnp.inf)  # unmasked positions rank last
  rank = jnp.argsort(jnp.argsort(score, axis=-1), axis=-1)
  reveal = masked & (rank >= n_keep[:, None])
  values = jnp.argmax(logits + gumbel[..., :process.num_tokens], axis=-1)
  return jnp.where(reveal, values, x)


def sample(process: Process, denoise: Callable, x_init, ts, key, indices=None, *,
           sampler: str = "ancestral", known=None, known_mask=None,
           temperature=1.0) -> SampleOutput:
  """Run ``sampler`` from ``x_init`` (tokens at ``ts[0]``, e.g. ``initial_tokens``) down ``ts``
  (descending; ends at 0 for finished samples) in one ``lax.scan``; ``nfe`` = ``steps`` denoiser calls.

  Args:
    process: the categorical process.
    denoise: ``denoise(x_t, t) -> logits [B, L, K]`` with ``t`` float32 ``[B]``.
    x_init: int ``[B, L]`` ids in ``[0, input_vocab)``.
    ts: ``steps + 1`` descending times in [0, 1] (``time_grid``); traced.
    key: PRNG key; step ``k`` of example ``b`` uses ``fold_in(fold_in(key, indices[b]), k)``.
    indices: global sample indices ``[B]`` (default ``arange(B)``).
    sampler: ``ancestral`` or ``unmask`` (absorbing only).
    known, known_mask: int ``[B, L]`` tokens in ``[0, K)`` and bool ``[B, L]``: clamped positions.
    temperature: ``p~ = softmax(logits / temperature)``, > 0; traced.
  """
  _checks.choice("categorical sampler", sampler, SAMPLERS)
  if sampler == "unmask" and process.kind != "absorbing":
    raise ValueError("sampler 'unmask' reveals masked tokens and needs the absorbing process; use "
                     "'ancestral' for a uniform process")
  shape = validate_tokens(x_init, process, "x_init", allow_mask=True)
  _check_ts(ts)
  _checks.check_key(key)
  known, known_mask = _check_known(known, known_mask, process, shape)
  if _checks.is_concrete(temperature) and not (np.ndim(temperature) == 0
                                               and 0 < float(temperature) < np.inf):
    raise ValueError(f"temperature must be a positive finite scalar, got {temperature!r}")
  batch, length = shape
  indices = jnp.arange(batch, dtype=jnp.int32) if indices is None else check_indices(indices, batch)
  ts = jnp.asarray(ts, jnp.float32)
  x = jnp.asarray(x_init, jnp.int32)
  out = jax.eval_shape(denoise, x, jnp.zeros((batch,), jnp.float32))
  if tuple(out.shape) != shape + (process.num_tokens,):
    raise ValueError(f"denoise must return logits over the K={process.num_tokens} data tokens, shape "
                     f"{shape + (process.num_tokens,)}, got {tuple(out.shape)}")
  clamp = (lambda y: y) if known is None else (lambda y: jnp.where(known_mask, known, y))
  x = clamp(x)
  n0 = None  # unmask: masked count at the start per unit of 1 - alpha(ts[0]) (> 0 as ts[0] > 0)
  if process.kind == "absorbing":
    n0 = jnp.sum(x == process.mask_id, axis=-1) / process.one_minus_alpha(ts[0])
  keys = per_example_keys(key, indices)
  temperature = jnp.asarray(temperature, jnp.float32)

  def body(x, k):
    t, s = jnp.full((batch,), ts[k]), jnp.full((batch,), ts[k + 1])
    # One draw per example and step: Gumbel noise [L, V + 1] from fold_in(fold_in(key, i), k).
    gumbel = jax.vmap(lambda kb: jax.random.gumbel(jax.random.fold_in(kb, k),
                                                   (length, process.input_vocab + 1)))(keys)
    logits = jnp.asarray(denoise(x, t), jnp.float32) / temperature
    if sampler == "ancestral":
      x = _ancestral(process, x, logits, s, t, gumbel)
    else:
      x = _unmask(process, x, logits, s, n0, gumbel)
    return clamp(x.astype(jnp.int32)), None

  steps = ts.shape[0] - 1
  x, _ = jax.lax.scan(body, x, jnp.arange(steps, dtype=jnp.int32))
  return SampleOutput(x, jnp.int32(steps))
