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
* The condition pytree (``prepare_cond``): ``cond`` is ``None`` or a dict of named kinds, ``label``,
  ``caption`` (token ids, 0 = padding), ``text_emb`` + ``text_mask`` (precomputed embeddings),
  ``low_res`` + ``low_res_t`` (super-resolution input and its noise-augmentation level); the kinds a model
  takes follow from its fields (``cond_keys``), and a missing text kind is the null (empty) caption.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
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


def sincos_pos_embed_1d(dim: int, pos) -> np.ndarray:
  """Fixed 1-D sine-cosine embedding ``[len(pos), dim]`` (float32) of the positions ``pos``.

  MAE's ``get_1d_sincos_pos_embed_from_grid`` (He et al. 2022): ``[sin(pos w_k), cos(pos w_k)]`` with
  ``w_k = 10000^(-k / (dim / 2))``, ``k = 0 .. dim/2 - 1`` (Vaswani et al. 2017, Sec. 3.5). ``dim``
  must be even.
  """
  if dim % 2:
    raise ValueError(f"the sin-cos position embedding needs an even width, got {dim}")
  omega = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim // 2))
  a = np.asarray(pos, np.float64).reshape(-1)[:, None] * omega[None, :]
  return np.concatenate([np.sin(a), np.cos(a)], axis=1).astype(np.float32)


def sincos_pos_embed_2d(dim: int, h: int, w: int) -> np.ndarray:
  """Fixed 2-D sine-cosine position embedding ``[h * w, dim]`` (float32; tokens in row-major order).

  MAE's ``get_2d_sincos_pos_embed`` (He et al. 2022), as used by DiT's reference code: the first
  ``dim / 2`` features encode the column index, the last ``dim / 2`` the row index, each the 1-D
  embedding ``sincos_pos_embed_1d(dim / 2, .)``: ``[sin(pos w_k), cos(pos w_k)]`` with
  ``w_k = 10000^(-k / (dim / 4))``, ``k = 0 .. dim/4 - 1`` (Vaswani et al. 2017, Sec. 3.5). ``dim`` must
  be divisible by 4.
  """
  if dim % 4:
    raise ValueError(f"the 2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
  rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
  return np.concatenate([sincos_pos_embed_1d(dim // 2, cols), sincos_pos_embed_1d(dim // 2, rows)], axis=1)


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


# The condition kinds a denoiser can read (``cond`` keys), each with the model field that enables it.
COND_KEYS = ("label", "caption", "text_emb", "text_mask", "low_res", "low_res_t")
_ENABLED_BY = {"label": "num_classes=K", "caption": "text_vocab_size=V and text_length=L",
               "text_emb": "text_embed_dim=D", "text_mask": "text_embed_dim=D",
               "low_res": "low_res_channels=C", "low_res_t": "low_res_channels=C"}
_FIELD = {"label": "num_classes", "caption": "text_vocab_size", "text_emb": "text_embed_dim",
          "text_mask": "text_embed_dim", "low_res": "low_res_channels", "low_res_t": "low_res_channels"}


def cond_keys(module) -> tuple:
  """The ``cond`` keys a model instance takes, fixed by its fields (absent fields count as 0)."""
  on = lambda field: getattr(module, field, 0) > 0
  keys = ["label"] if on("num_classes") and getattr(module, "takes_labels", True) else []
  keys += ["caption"] if on("text_vocab_size") else []
  keys += ["text_emb", "text_mask"] if on("text_embed_dim") else []
  keys += ["low_res", "low_res_t"] if on("low_res_channels") else []
  return tuple(keys)


def check_text_config(m) -> None:
  """The text-conditioning fields shared by ``UNet`` and ``DiT`` (``text_*``)."""
  for name in ("text_vocab_size", "text_length", "text_embed_dim", "text_layers"):
    _checks.int_at_least(getattr(m, name), name, 0)
  for name in ("text_width", "text_heads"):
    _checks.positive_int(getattr(m, name), name)
  if m.text_vocab_size > 0 and m.text_embed_dim > 0:
    raise ValueError(f"text_vocab_size={m.text_vocab_size} (token ids) and text_embed_dim={m.text_embed_dim} "
                     f"(precomputed embeddings) are exclusive; set one of them to 0")
  if m.text_vocab_size == 1:
    raise ValueError("text_vocab_size must be >= 2 (id 0 is padding), or 0 for no caption input")
  if m.text_vocab_size > 0 and m.text_length < 1:
    raise ValueError(f"text_vocab_size={m.text_vocab_size} needs text_length >= 1 (the longest caption: "
                     f"rows of the learned position table)")
  if m.text_length > 0 and not (m.text_vocab_size or m.text_embed_dim):
    raise ValueError(f"text_length={m.text_length} is set but the model takes no text; also set "
                     f"text_vocab_size=V (captions) or text_embed_dim=D (embeddings), or text_length=0")
  if (m.text_vocab_size or m.text_embed_dim) and m.text_width % m.text_heads:
    raise ValueError(f"text_heads={m.text_heads} must divide text_width={m.text_width}")


def _array(v):
  return v if hasattr(v, "shape") and hasattr(v, "dtype") else np.asarray(v)


def _is_int(dt) -> bool:
  return jnp.issubdtype(dt, jnp.integer) and dt != jnp.bool_


def _prepare_label_values(labels, batch: int, num_classes: int, model: str):
  if labels is None:
    return jnp.full((batch,), num_classes, jnp.int32)
  labels = _array(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"{model}: cond must be integer class labels of shape [batch], got dtype "
                     f"{labels.dtype}; cast with .astype(jnp.int32)")
  if labels.shape != (batch,):
    raise ValueError(f"{model}: cond must have shape [batch]=({batch},), got shape {tuple(labels.shape)}")
  if _checks.is_concrete(labels):
    a = np.asarray(labels)
    if a.size and (a.min() < 0 or a.max() > num_classes):
      raise ValueError(f"{model}: labels must lie in [0, {num_classes}] ({num_classes} is the NULL label "
                       f"for classifier-free guidance), got values in [{a.min()}, {a.max()}]")
  return jnp.asarray(labels, jnp.int32)


def _prepare_caption(ids, batch: int, vocab: int, length: int, model: str):
  if ids is None:  # the null caption: one padding token (padding changes nothing, so any length would do)
    return jnp.zeros((batch, 1), jnp.int32)
  ids = _array(ids)
  if not _is_int(ids.dtype):
    raise ValueError(f"{model}: cond['caption'] must be int token ids [batch, length], got dtype "
                     f"{ids.dtype}; cast with .astype(jnp.int32)")
  if ids.ndim != 2 or ids.shape[0] != batch or ids.shape[1] < 1:
    raise ValueError(f"{model}: cond['caption'] must have shape [batch, length]=({batch}, L) with "
                     f"L >= 1, got {tuple(ids.shape)}")
  if ids.shape[1] > length:
    raise ValueError(f"{model}: cond['caption'] has {ids.shape[1]} tokens but text_length={length}; "
                     f"truncate the captions or create the model with text_length={ids.shape[1]}")
  if _checks.is_concrete(ids):
    a = np.asarray(ids)
    if a.min() < 0 or a.max() >= vocab:
      raise ValueError(f"{model}: cond['caption'] ids must lie in [0, {vocab}) (text_vocab_size, 0 = "
                       f"padding), got values in [{a.min()}, {a.max()}]")
  return jnp.asarray(ids, jnp.int32)


def _prepare_text_emb(emb, mask, batch: int, dim: int, length: int, model: str):
  if emb is None and mask is not None:
    raise ValueError(f"{model}: cond has 'text_mask' but no 'text_emb'; pass both (or neither for the "
                     f"null caption)")
  if emb is None:  # the null caption: one masked position
    return jnp.zeros((batch, 1, dim), jnp.float32), jnp.zeros((batch, 1), bool)
  emb = _array(emb)
  if not jnp.issubdtype(emb.dtype, jnp.floating):
    raise ValueError(f"{model}: cond['text_emb'] must be float embeddings [batch, length, {dim}], got "
                     f"dtype {emb.dtype}; cast with .astype(jnp.float32)")
  if emb.ndim != 3 or emb.shape[0] != batch or emb.shape[1] < 1:
    raise ValueError(f"{model}: cond['text_emb'] must have shape [batch, length, text_embed_dim]=({batch}, "
                     f"L, {dim}) with L >= 1, got {tuple(emb.shape)}")
  if emb.shape[2] != dim:
    raise ValueError(f"{model}: cond['text_emb'] has width {emb.shape[2]} but text_embed_dim={dim}; pass "
                     f"embeddings of that width or create the model with text_embed_dim={emb.shape[2]}")
  if length and emb.shape[1] > length:
    raise ValueError(f"{model}: cond['text_emb'] has {emb.shape[1]} positions but text_length={length}; "
                     f"truncate them or raise text_length")
  _checks.check_finite(emb, "cond['text_emb']")
  if mask is None:
    raise ValueError(f"{model}: cond['text_emb'] needs cond['text_mask'] [batch, length] (1 = real "
                     f"token, 0 = padding)")
  mask = _array(mask)
  if not (_is_int(mask.dtype) or mask.dtype == jnp.bool_):
    raise ValueError(f"{model}: cond['text_mask'] must be int or bool [batch, length] (1 = real token), "
                     f"got dtype {mask.dtype}")
  if tuple(mask.shape) != tuple(emb.shape[:2]):
    raise ValueError(f"{model}: cond['text_mask'] must have the shape [batch, length]="
                     f"{tuple(emb.shape[:2])} of cond['text_emb'], got {tuple(mask.shape)}")
  if _checks.is_concrete(mask):
    a = np.asarray(mask)
    if not np.all((a == 0) | (a == 1)):
      raise ValueError(f"{model}: cond['text_mask'] must hold 0 (padding) or 1 (real token), got values "
                       f"in [{a.min()}, {a.max()}]")
  return jnp.asarray(emb, jnp.float32), jnp.asarray(mask).astype(bool)


def _prepare_low_res(lr, lr_t, batch: int, channels: int, spatial, model: str):
  nd = len(spatial) if spatial is not None else None
  layout = "[batch, h, w, C]" if nd in (None, 2) else "[batch, l, C]"
  if lr is None:
    raise ValueError(f"{model} was created with low_res_channels={channels} (super-resolution) and needs "
                     f"cond['low_res'] {layout} with C={channels}, and cond['low_res_t']")
  lr = _array(lr)
  if not jnp.issubdtype(lr.dtype, jnp.floating):
    raise ValueError(f"{model}: cond['low_res'] must be a float image {layout}, got dtype {lr.dtype}; "
                     f"cast with .astype(jnp.float32)")
  if lr.ndim < 3 or (nd is not None and lr.ndim != nd + 2) or lr.shape[0] != batch:
    raise ValueError(f"{model}: cond['low_res'] must have shape {layout} with batch {batch} and as many "
                     f"spatial axes as x, got {tuple(lr.shape)}")
  if lr.shape[-1] != channels:
    raise ValueError(f"{model}: cond['low_res'] has {lr.shape[-1]} channels but low_res_channels="
                     f"{channels}; pass {channels} channels or create the model with low_res_channels="
                     f"{lr.shape[-1]}")
  if spatial is not None and any(s % r for s, r in zip(spatial, lr.shape[1:-1])):
    raise ValueError(f"{model}: cond['low_res'] spatial size {tuple(lr.shape[1:-1])} must divide x's "
                     f"{tuple(spatial)} (an integer upsampling factor per axis)")
  _checks.check_finite(lr, "cond['low_res']")
  if lr_t is None:
    raise ValueError(f"{model}: cond['low_res'] needs cond['low_res_t'], the noise-augmentation level "
                     f"[batch] in [0, 1] that was applied to it (0: none)")
  lr_t = _array(lr_t)
  if not (jnp.issubdtype(lr_t.dtype, jnp.floating) or _is_int(lr_t.dtype)):
    raise ValueError(f"{model}: cond['low_res_t'] must be a float array [batch] (or a scalar), got dtype "
                     f"{lr_t.dtype}")
  if lr_t.ndim > 1 or (lr_t.ndim == 1 and lr_t.shape[0] != batch):
    raise ValueError(f"{model}: cond['low_res_t'] must be a scalar or have shape [batch]=({batch},), got "
                     f"{tuple(lr_t.shape)}")
  if _checks.is_concrete(lr_t):
    a = np.asarray(lr_t, np.float64)
    if not (np.all(np.isfinite(a)) and a.min() >= 0.0 and a.max() <= 1.0):
      raise ValueError(f"{model}: cond['low_res_t'] (noise-augmentation level) must lie in [0, 1], got "
                       f"values in [{np.nanmin(a):.4g}, {np.nanmax(a):.4g}]")
  lr_t = jnp.asarray(lr_t, jnp.float32)
  return jnp.asarray(lr, jnp.float32), jnp.broadcast_to(lr_t, (batch,)) if lr_t.ndim == 0 else lr_t


def prepare_cond(cond, batch: int, module, model: str, spatial=None) -> dict:
  """Checks the condition pytree for ``module`` and returns it normalised, one clear ``ValueError``
  otherwise (static shapes always; values when concrete, so it also runs while tracing).

  ``cond``: ``None``, bare int labels ``[batch]``, or a dict with keys among ``COND_KEYS``; the keys a
  model takes are fixed by its fields (``cond_keys``). ``spatial``: x's spatial sizes (checks
  ``low_res`` against them). Returns a dict with exactly the model's keys: ``label`` int32 ``[batch]``
  (``num_classes`` = NULL where missing); ``caption`` int32 ``[batch, L]`` (missing: the null caption,
  one padding token); ``text_emb`` float32 ``[batch, L, D]`` with ``text_mask`` bool ``[batch, L]``
  (missing: one masked position); ``low_res`` float32 and ``low_res_t`` float32 ``[batch]`` (required).
  A key whose value is ``None`` counts as missing.
  """
  if cond is None:
    cond = {}
  elif not isinstance(cond, Mapping):
    cond = {"label": cond}  # bare labels, as before the condition pytree
  cond = {k: v for k, v in cond.items() if v is not None}
  takes = cond_keys(module)
  for key in sorted(cond, key=str):
    if key in takes:
      continue
    if key == "label" and getattr(module, "num_classes", 0) == 0:
      raise ValueError(f"{model} was created with num_classes=0 (unconditional) but got labels; pass "
                       f"cond=None or create the model with num_classes=K")
    what = f"{model} takes the conditions {sorted(takes)}" if takes else f"{model} takes no conditions"
    if key in _ENABLED_BY and hasattr(module, _FIELD[key]):
      raise ValueError(f"{what}, got {key!r}; drop it or create the model with {_ENABLED_BY[key]}")
    raise ValueError(f"{what}, got {key!r}; drop it (known condition keys: {', '.join(COND_KEYS)})")
  out = {}
  if "label" in takes:
    out["label"] = _prepare_label_values(cond.get("label"), batch, module.num_classes, model)
  if "caption" in takes:
    out["caption"] = _prepare_caption(cond.get("caption"), batch, module.text_vocab_size, module.text_length,
                                      model)
  if "text_emb" in takes:
    out["text_emb"], out["text_mask"] = _prepare_text_emb(
        cond.get("text_emb"), cond.get("text_mask"), batch, module.text_embed_dim,
        getattr(module, "text_length", 0), model)
  if "low_res" in takes:
    out["low_res"], out["low_res_t"] = _prepare_low_res(cond.get("low_res"), cond.get("low_res_t"), batch,
                                                        module.low_res_channels, spatial, model)
  return out


def prepare_labels(cond, batch: int, num_classes: int, model: str):
  """``cond``: the condition pytree ``{"label": int [batch]}`` (``jdiff.conditions``), bare int labels
  ``[batch]``, or ``None``; labels lie in ``[0, num_classes]`` (``num_classes`` = NULL). Returns int32
  ``[batch]``, or ``None`` for ``num_classes=0``. The label-only case of ``prepare_cond``."""
  return prepare_cond(cond, batch, _LabelsOnly(num_classes), model).get("label")


class _LabelsOnly:
  """A stand-in model for ``prepare_labels``: takes labels only."""

  def __init__(self, num_classes: int):
    self.num_classes = num_classes


def check_x(x, rank, layout: str, model: str) -> None:
  """``x`` is a float array whose rank is ``rank`` (an int, or a tuple of the accepted ranks)."""
  ranks = (rank,) if isinstance(rank, int) else tuple(rank)
  if not hasattr(x, "shape") or x.ndim not in ranks:
    raise ValueError(f"{model} expects x of shape {layout}, got shape {tuple(np.shape(x))}")
  _checks.check_float(x, "x")
