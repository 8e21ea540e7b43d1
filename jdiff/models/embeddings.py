"""Noise-level and class-label embeddings shared by the denoisers, plus the input checks they share.

* Sinusoidal embedding: Vaswani et al. 2017, Sec. 3.5, as used for the timestep by Ho et al. 2020,
  App. B (``get_timestep_embedding``: ``half`` frequencies ``exp(-log(10000) k / (half - 1))``,
  ``[sin, cos]`` concatenated). DDPM feeds the integer step, i.e. ``1000 t`` for ``t`` in [0, 1]: this is
  the ``time_scale`` argument.
* Random Fourier features: Tancik et al. 2020; Song et al. 2021 (score SDE), App. C / H.2
  (``GaussianFourierProjection``): ``[sin(2 pi t w), cos(2 pi t w)]`` with fixed ``w ~ N(0, scale^2)``.
  The frequencies are drawn once from a fixed seed and kept as a constant of the module (not a
  parameter), so no optimizer or weight decay can ever change them.
* Both are followed by a 2-layer MLP (Dense, SiLU, Dense) of width ``4 ch`` (Ho et al. 2020, App. B).
* Class labels (classifier-free guidance, Ho & Salimans 2022, Sec. 3.2): ``nn.Embed(num_classes + 1)``;
  the extra row ``num_classes`` is the NULL label, and ``cond=None`` means NULL for every example.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jdiff import _checks

EMBEDDINGS = ("sinusoidal", "fourier")

# DDPM's initializer (Ho et al. 2020 code, ``default_init``): variance scaling, fan_avg, uniform.
default_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
zeros_init = nn.initializers.zeros


def sinusoidal_embedding(t, dim: int, max_period: float = 10000.0):
  """Transformer/DDPM sinusoidal embedding of ``t`` (shape ``[batch]``) -> ``[batch, dim]`` float32.

  Frequencies ``exp(-log(max_period) k / (half - 1))``, ``k = 0..half-1`` (Ho et al. 2020, App. B);
  an odd ``dim`` gets one zero column.
  """
  half = dim // 2
  freqs = np.exp(-math.log(max_period) * np.arange(half, dtype=np.float64) / max(half - 1, 1))
  args = jnp.asarray(t, jnp.float32)[:, None] * jnp.asarray(freqs, jnp.float32)[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def fourier_embedding(t, dim: int, scale: float = 16.0, seed: int = 0):
  """Random Fourier features (Song et al. 2021, App. C): ``[sin(2 pi t w), cos(2 pi t w)]``.

  ``w`` has ``dim // 2`` entries drawn once from ``N(0, scale^2)`` with a fixed numpy seed (a constant,
  not a parameter). Returns ``[batch, dim]`` float32 (an odd ``dim`` gets one zero column).
  """
  half = dim // 2
  w = np.random.default_rng(seed).standard_normal(half) * scale
  args = (2.0 * np.pi) * jnp.asarray(t, jnp.float32)[:, None] * jnp.asarray(w, jnp.float32)[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class NoiseEmbedding(nn.Module):
  """Noise level (and optional class label) -> conditioning vector ``[batch, out_dim]``.

  ``base(t)`` (sinusoidal or Fourier, ``base_dim`` wide) -> Dense(out_dim) -> SiLU -> Dense(out_dim)
  (Ho et al. 2020, App. B), plus ``Embed(num_classes + 1, out_dim)(label)`` when ``num_classes > 0``
  (added after the MLP, as in Dhariwal & Nichol 2021's class-conditional ADM).
  """
  base_dim: int
  out_dim: int
  embedding: str = "sinusoidal"
  time_scale: float = 1000.0
  fourier_scale: float = 16.0
  num_classes: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t, labels=None):
    if self.embedding == "sinusoidal":
      e = sinusoidal_embedding(t * self.time_scale, self.base_dim)
    else:
      e = fourier_embedding(t, self.base_dim, self.fourier_scale)
    dense = lambda n: nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=default_init, name=n)
    e = dense("dense0")(e.astype(self.dtype))
    e = dense("dense1")(nn.silu(e))
    if self.num_classes > 0:
      e = e + nn.Embed(self.num_classes + 1, self.out_dim, dtype=self.dtype, name="label_embed")(labels)
    return e


# ----------------------------------------------------------------------------------------------------
# Shared configuration and input checks (static shapes only, so they also run while tracing).
# ----------------------------------------------------------------------------------------------------


def check_common_config(m) -> None:
  """Checks the fields every denoiser shares; ``m`` is a model instance."""
  _checks.choice("embedding", m.embedding, EMBEDDINGS)
  if isinstance(m.num_classes, bool) or not isinstance(m.num_classes, (int, np.integer)) \
      or m.num_classes < 0:
    raise ValueError(f"num_classes must be an integer >= 0 (0: unconditional), got {m.num_classes!r}")
  if not (isinstance(m.dropout, (int, float)) and 0.0 <= m.dropout < 1.0):
    raise ValueError(f"dropout must be a float in [0, 1), got {m.dropout!r}")
  if m.learned_variance not in (True, False):
    raise ValueError(f"learned_variance must be a bool, got {m.learned_variance!r}")
  try:
    dt = jnp.dtype(m.dtype)
  except TypeError:
    dt = None
  if dt is None or not jnp.issubdtype(dt, jnp.floating):
    raise ValueError(f"dtype must be a floating dtype such as jnp.float32 or jnp.bfloat16, got {m.dtype!r}")


def prepare_t(t, batch: int, model: str):
  """``t``: a scalar (broadcast) or shape ``[batch]`` -> float32 ``[batch]``."""
  if not hasattr(t, "shape"):
    t = np.asarray(t)
  if not (jnp.issubdtype(t.dtype, jnp.floating) or jnp.issubdtype(t.dtype, jnp.integer)):
    raise ValueError(f"{model}: t must be a float array of shape [batch] (or a scalar), got dtype {t.dtype}")
  if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != batch):
    raise ValueError(f"{model}: t must be a scalar or have shape [batch]=({batch},), got shape "
                     f"{tuple(t.shape)}; pass one noise level per example")
  _checks.check_finite(t, "t")
  t = jnp.asarray(t, jnp.float32)
  return jnp.broadcast_to(t, (batch,)) if t.ndim == 0 else t


def prepare_labels(cond, batch: int, num_classes: int, model: str):
  """``cond``: the condition pytree ``{"label": int [batch]}`` (``jdiff.conditions``), bare int labels
  ``[batch]``, or ``None``; labels lie in ``[0, num_classes]`` (``num_classes`` = NULL)."""
  if isinstance(cond, dict):
    unknown = sorted(set(cond) - {"label"})
    if unknown:
      raise ValueError(f"{model} takes the condition 'label' only, got {unknown}; drop them or use a "
                       f"model that reads them")
    cond = cond.get("label")
  if num_classes == 0:
    if cond is not None:
      raise ValueError(f"{model} was created with num_classes=0 (unconditional) but got labels; pass "
                       f"cond=None or create the model with num_classes=K")
    return None
  if cond is None:
    return jnp.full((batch,), num_classes, jnp.int32)
  if not hasattr(cond, "shape"):
    cond = np.asarray(cond)
  if not jnp.issubdtype(cond.dtype, jnp.integer):
    raise ValueError(f"{model}: cond must be integer class labels of shape [batch], got dtype "
                     f"{cond.dtype}; cast with .astype(jnp.int32)")
  if cond.shape != (batch,):
    raise ValueError(f"{model}: cond must have shape [batch]=({batch},), got shape {tuple(cond.shape)}")
  if _checks.is_concrete(cond):
    a = np.asarray(cond)
    if a.size and (a.min() < 0 or a.max() > num_classes):
      raise ValueError(f"{model}: labels must lie in [0, {num_classes}] ({num_classes} is the NULL label "
                       f"for classifier-free guidance), got values in [{a.min()}, {a.max()}]")
  return jnp.asarray(cond, jnp.int32)


def check_x(x, rank, layout: str, model: str) -> None:
  """``x`` is a float array whose rank is ``rank`` (an int, or a tuple of the accepted ranks)."""
  ranks = (rank,) if isinstance(rank, int) else tuple(rank)
  if not hasattr(x, "shape") or x.ndim not in ranks:
    raise ValueError(f"{model} expects x of shape {layout}, got shape {tuple(np.shape(x))}")
  _checks.check_float(x, "x")
