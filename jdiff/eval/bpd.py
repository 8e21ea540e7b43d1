"""Bits per dimension of held-out data under a trained model: probability-flow ODE and continuous VLB.

Two numbers for the same images (``eval.py --bpd``):

- **ODE**: ``-log2 p(x) / D`` of the model's probability-flow ODE (Song et al. 2021b, App. D.2;
  :func:`jdiff.ode_likelihood.ode_nll`), Hutchinson trace estimator, adaptive solver; 8-bit images are
  uniformly dequantized, so the figure is an upper bound on the 8-bit NLL in expectation.
- **VLB**: the continuous-time variational bound (Kingma et al. 2021; :func:`jdiff.continuous_vlb`),
  importance-sampled in logSNR, with the discretized 256-bin decoder for 8-bit images (an 8-bit bound)
  or the Gaussian decoder for continuous data; averaged over ``vlb_repeats`` draws per image.

Both are Monte-Carlo estimates: each comes with its standard error over images (and probes/times).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import _checks
from jdiff import likelihood
from jdiff import ode_likelihood


def _mean_se(v: np.ndarray) -> tuple[float, float]:
  v = np.asarray(v, np.float64)
  se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")
  return float(v.mean()), se


def bits_per_dim_report(model_fn, params, schedule, parametrization: str, x, *, cond: Any = None,
                        learned_variance: bool = False, discrete: bool = True, seed: int = 0,
                        batch_size: int = 64, ode: bool = True, vlb: bool = True,
                        trace: str = "rademacher", rtol: float = 1e-5, atol: float = 1e-5,
                        t_min: float = 1e-5, vlb_repeats: int = 4, progress=None) -> dict:
  """ODE and VLB bits/dim of ``x [N, ...]`` (in the model's data space; 8-bit values ``v / 127.5 - 1``
  when ``discrete``). ``cond``: one label per example for conditional models (the likelihood is then
  conditional on it), else ``None``. Batches are padded to ``batch_size`` (one compiled program);
  example ``i`` uses probe / dequantization / time noise folded from ``seed`` and ``i``.

  Returns ``{"num": N, "discrete": bool, "ode": {"bpd", "stderr", "nfe_mean", "nfe_max", "trace",
  "rtol", "atol", "t_min"} or None, "vlb": {"bpd", "stderr", "repeats", "t_min", "decoder"} or None}``.
  """
  x = np.asarray(x, np.float32)
  if x.ndim < 2 or x.shape[0] < 2:
    raise ValueError(f"bits/dim needs at least 2 examples [N, ...] (for a standard error), got shape "
                     f"{x.shape}")
  if discrete:
    ode_likelihood.check_dequantization(x)  # here: inside jit the data are not concrete
  batch_size = _checks.positive_int(batch_size, "batch_size")
  vlb_repeats = _checks.positive_int(vlb_repeats, "vlb_repeats")
  n = x.shape[0]
  b = min(batch_size, n)
  cond = None if cond is None else np.asarray(cond)
  key = jax.random.PRNGKey(seed)
  k_ode, k_vlb = jax.random.split(key)
  d = int(np.prod(x.shape[1:]))
  to_bits = 1.0 / (d * math.log(2))

  ode_fn = jax.jit(lambda p, xb, c, idx: ode_likelihood.ode_nll(
      model_fn, p, schedule, xb, k_ode, c, parametrization, trace=trace, dequantize=discrete,
      t_min=t_min, learned_variance=learned_variance, rtol=rtol, atol=atol, indices=idx))

  def vlb_one(p, xb, c, idx, r):
    terms = likelihood.continuous_vlb(
        _mean_only(model_fn) if learned_variance else model_fn, p, schedule, xb,
        jax.random.fold_in(k_vlb, r), c, parametrization, t_min=t_min, variable="logsnr",
        decoder="discretized" if discrete else "gaussian", indices=idx)
    return terms.total

  vlb_fn = jax.jit(vlb_one)
  ode_nll, vlb_nll, nfes = [], [], []
  num_batches = -(-n // b)
  for i in range(num_batches):
    idx = np.arange(i * b, (i + 1) * b)
    take = np.minimum(idx, n - 1)  # pad the last batch by repeating the last example (discarded)
    xb = x[take]
    cb = None if cond is None else cond[take]
    m = min(b, n - i * b)
    if ode:
      out = ode_fn(params, xb, cb, idx.astype(np.int32))
      ode_nll.append(np.asarray(out.nll)[:m])
      nfes.append(int(out.nfe))
    if vlb:
      reps = [np.asarray(vlb_fn(params, xb, cb, idx.astype(np.int32), r))[:m]
              for r in range(vlb_repeats)]
      vlb_nll.append(np.mean(reps, axis=0))
    if progress is not None:
      progress(i + 1, num_batches)
  result = {"num": int(n), "discrete": bool(discrete), "ode": None, "vlb": None}
  if ode:
    mean, se = _mean_se(np.concatenate(ode_nll) * to_bits)
    result["ode"] = {"bpd": mean, "stderr": se, "nfe_mean": float(np.mean(nfes)),
                     "nfe_max": int(np.max(nfes)), "trace": trace, "rtol": rtol, "atol": atol,
                     "t_min": t_min, "dequantized": bool(discrete)}
  if vlb:
    mean, se = _mean_se(np.concatenate(vlb_nll) * to_bits)
    result["vlb"] = {"bpd": mean, "stderr": se, "repeats": vlb_repeats, "t_min": t_min,
                     "decoder": "discretized" if discrete else "gaussian"}
  return result


def _mean_only(model_fn):
  """A learned-variance model's mean output (the first half of the channels): the continuous VLB uses
  only the mean prediction."""
  def fn(params, x, t, cond):
    return jnp.split(model_fn(params, x, t, cond), 2, axis=-1)[0]
  return fn


def format_bpd(r: dict) -> str:
  parts = [f"N={r['num']}"]
  if r.get("ode"):
    o = r["ode"]
    parts.append(f"ODE {o['bpd']:.4f}±{o['stderr']:.4f} bits/dim (NFE {o['nfe_mean']:.0f}"
                 f"{', dequantized' if o['dequantized'] else ''})")
  if r.get("vlb"):
    v = r["vlb"]
    parts.append(f"VLB {v['bpd']:.4f}±{v['stderr']:.4f} bits/dim ({v['decoder']} decoder)")
  return ", ".join(parts)


__all__ = ["bits_per_dim_report", "format_bpd"]
