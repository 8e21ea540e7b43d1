"""DiT: the Diffusion Transformer of Peebles & Xie 2023, "Scalable Diffusion Models with Transformers"
(arXiv:2212.09748), with adaLN-Zero blocks, channels-last.

Layout (Peebles & Xie 2023, Sec. 3.2 and Fig. 3)::

  tokens = Dense(patchify_p(x)) + pos2d          # [B, H/p * W/p, hidden]; pos2d: fixed 2-D sin-cos
  c = MLP(embed(t)) + Embed(label)                # embeddings.NoiseEmbedding, width hidden
  depth x DiTBlock(c):                            # adaLN-Zero
    shift1, scale1, gate1, shift2, scale2, gate2 = Dense_zero(SiLU(c))
    h = h + gate1 * Attention(LN(h) * (1 + scale1) + shift1)
    h = h + gate2 * MLP(LN(h) * (1 + scale2) + shift2)          # Dense(4 hidden), GELU(tanh), Dense
  shift, scale = Dense_zero(SiLU(c))
  out = unpatchify(Dense_zero(LN(h) * (1 + scale) + shift))    # p*p*C_out per token

* Patchify (Sec. 3.2, "Patchify"): non-overlapping ``p x p`` patches, each a linear map of its
  ``p*p*C`` values to ``hidden`` (the paper's stride-``p`` convolution, written as one ``DenseGeneral``
  over the patch axes: one matmul on CPU, and the kernel keeps the convolution's ``(p, p, C, hidden)``
  shape, from which ``data_channels`` reads ``C``). The position embedding is the fixed 2-D sine-cosine
  one of MAE (He et al. 2022; "frequency-based positional embeddings (the sine-cosine version)",
  Peebles & Xie 2023, Sec. 3.2): a constant of the program, not a parameter.
* Timestep (Sec. 3.2, "Embedding"): 256 sinusoidal frequencies of ``time_scale * t`` (``t`` in [0, 1];
  1000: the paper's integer step) through a 2-layer SiLU MLP; class labels through an embedding table
  with ``num_classes + 1`` rows, the last the NULL label of classifier-free guidance; ``c`` is their sum.
* adaLN-Zero (Sec. 3.2, "DiT block design"): LayerNorms without affine parameters; shift, scale and a
  residual gate per branch regressed from ``c`` by a zero-initialised linear layer, so every block is the
  identity at initialisation; the final adaLN layer and the output projection are zero-initialised too,
  so the whole network outputs exactly zero at initialisation (the paper zero-initialises the final
  linear layer; its reference code also the final adaLN modulation).
* Other weights: Xavier-uniform (``embeddings.default_init``), biases zero (the paper's reference code).
* Sizes (Table 1): S: hidden 384, depth 12, 6 heads; B: 768/12/12; L: 1024/24/16; XL: 1152/28/16; the
  ``/p`` suffix is the patch size. With 32x32x4 latents, patch 2, 1000 classes and learned variance
  (8 output channels) DiT-S/2, B/2, L/2 and XL/2 have 32.97M, 130.5M, 458.1M and 675.1M parameters
  in the paper's count, which includes the frozen position embedding (``hidden * tokens``, e.g. 0.29M
  for XL/2); here it is a constant, so the counts are that much lower (674.8M for XL/2).

Text conditioning (fields ``text_*``; off by default, and then no parameter is added), GLIDE-style
(Nichol et al. 2022, Sec. 2.3)::

  tokens, pooled = TextEncoder(caption | text_emb)            # text_encoder.TextEncoder
  c += Dense(pooled)                                           # read by every adaLN modulation
  every block's self-attention: joint attention over [image tokens; Dense(text tokens)], padding masked

The joint attention is GLIDE's encoder_kv (``attention.append_context``): each block projects the text
encoder's tokens to extra keys and values concatenated to the image tokens' own. (DiT itself conditions
only through adaLN; PixArt-alpha, Chen et al. 2023, adds cross-attention layers instead. The joint form
adds one Dense per block and no new sublayer, and every block attends, so the tokens always reach the
network.)

Attention is ``jax.nn.dot_product_attention`` over ``[batch, tokens, heads, head_dim]``
(``attention.attention`` with ``impl="xla"``).
``remat=True`` rematerialises every block in the backward pass (``nn.remat``): activation memory of
one block instead of ``depth``, for one extra forward.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jdiff import _checks
from jdiff.models import attention as A
from jdiff.models import embeddings as E
from jdiff.models.text_encoder import text_condition

# Peebles & Xie 2023, Table 1: size -> (hidden_size, depth, num_heads).
SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}
PATCH_SIZES = (2, 4, 8)


def modulate(x, shift, scale):
  """adaLN: ``x * (1 + scale) + shift`` with per-example ``shift, scale`` ``[B, D]`` over tokens."""
  return x * (1 + scale[:, None, :]) + shift[:, None, :]


def _layer_norm(dtype, name=None) -> nn.LayerNorm:
  # No affine parameters: adaLN supplies the scale and shift (elementwise_affine=False in the paper's code).
  return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=dtype, name=name)


def rotary(x, base: float = 10000.0):
  """Rotary position embedding (Su et al. 2021, RoFormer, eq. 34) of queries or keys ``[B, N, heads,
  head_dim]`` at positions ``0 .. N-1``: each pair of features ``(x_i, x_{i + d/2})`` is rotated by the
  angle ``pos * base^(-2i / d)``, so that ``q . k`` depends on the positions only through their
  difference."""
  n, hd = x.shape[1], x.shape[-1]
  half = hd // 2
  freq = 1.0 / base ** (np.arange(half, dtype=np.float64) / half)
  angle = np.arange(n, dtype=np.float64)[:, None] * freq[None, :]  # [N, half]
  cos = jnp.asarray(np.cos(angle), x.dtype)[None, :, None, :]
  sin = jnp.asarray(np.sin(angle), x.dtype)[None, :, None, :]
  a, b = x[..., :half], x[..., half:2 * half]
  return jnp.concatenate([a * cos - b * sin, a * sin + b * cos, x[..., 2 * half:]], axis=-1)


class DiTBlock(nn.Module):
  """One adaLN-Zero transformer block (Peebles & Xie 2023, Fig. 3, right); ``rope``: rotary position
  embedding of the queries and keys (``rotary``; off for DiT, whose positions are added to the
  tokens). ``context``: ``(text tokens [B, L, D_text], mask [B, L])`` for joint attention (GLIDE's
  encoder_kv): a Dense ``context_kv`` per block gives extra keys and values (no rotary: the text
  encoder has its own positions); without it the block has exactly its former parameters."""
  hidden_size: int
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  deterministic: bool = True
  dtype: Any = jnp.float32
  rope: bool = False

  @nn.compact
  def __call__(self, x, c, context=None):
    b, n, d = x.shape
    dt, hd = self.dtype, d // self.num_heads
    dense = lambda f, name: nn.Dense(f, dtype=dt, kernel_init=E.default_init, name=name)
    mod = nn.Dense(6 * d, dtype=dt, kernel_init=E.zeros_init, name="adaLN_modulation")(nn.silu(c))
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)

    h = modulate(_layer_norm(dt, "norm1")(x), shift1, scale1)
    qkv = dense(3 * d, "qkv")(h).reshape(b, n, 3, self.num_heads, hd)
    q, k, v, mask = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], None
    if self.rope:
      q, k = rotary(q), rotary(k)
    if context is not None:
      tokens, tmask = context
      kv = dense(2 * d, "context_kv")(tokens).reshape(b, -1, 2, self.num_heads, hd)
      k, v, mask = A.append_context(k, v, kv, tmask)
    h = A.attention(q, k, v, "xla", key_mask=mask).reshape(b, n, d)
    h = dense(d, "proj")(h)
    h = nn.Dropout(self.dropout, deterministic=self.deterministic)(h)
    x = x + gate1[:, None, :] * h

    h = modulate(_layer_norm(dt, "norm2")(x), shift2, scale2)
    h = nn.gelu(dense(self.mlp_dim, "fc1")(h), approximate=True)
    h = dense(d, "fc2")(h)
    h = nn.Dropout(self.dropout, deterministic=self.deterministic)(h)
    return x + gate2[:, None, :] * h


class DiT(nn.Module):
  """Diffusion Transformer denoiser ``(x [B,H,W,C], t [B], cond) -> [B,H,W,C_out]``
  (Peebles & Xie 2023; see the module docstring).

  Attributes:
    size: ``"S"``, ``"B"``, ``"L"`` or ``"XL"``: the paper's hidden size, depth and heads (Table 1);
      ``""``: give ``hidden_size``, ``depth`` and ``num_heads``. With a size, any of those three set
      to a positive value overrides the size's value (e.g. ``size="B", depth=6``).
    hidden_size, depth, num_heads: token width, number of blocks, attention heads (0: from ``size``);
      ``num_heads`` must divide ``hidden_size``, which must be divisible by 4 (2-D position embedding).
    patch_size: 2, 4 or 8; H and W must be divisible by it (``H/p * W/p`` tokens).
    mlp_ratio: MLP width / hidden size (4 in the paper).
    freq_dim: sinusoidal (or Fourier) features of the noise level fed to the timestep MLP (256).
    embedding, time_scale, fourier_scale: the noise-level embedding, as for ``UNet``
      (``"sinusoidal"`` of ``time_scale * t``; ``"fourier"`` for EDM's ``c_noise``).
    num_classes: ``> 0`` adds a label embedding with ``num_classes + 1`` rows (the last is NULL).
    out_channels: output channels before doubling; ``None``: the input's channels.
    learned_variance: doubles the output channels (mean output, then variance interpolation).
    dropout: dropout on the attention and MLP branch outputs with ``train=True`` (0 in the paper).
    remat: rematerialise each block in the backward pass (``nn.remat``), trading compute for memory.
    text_vocab_size, text_length, text_embed_dim, text_width, text_layers, text_heads: text
      conditioning, as for ``UNet``: ``cond["caption"]`` int ids ``[B, L]`` (0 = padding) with
      ``text_vocab_size > 0`` and ``text_length`` position rows, or ``cond["text_emb"]``
      ``[B, L, text_embed_dim]`` with ``cond["text_mask"]``; a missing caption is the null caption.
    dtype: computation dtype (e.g. ``"bfloat16"``); parameters stay float32, output is float32.
  """
  size: str = ""
  hidden_size: int = 0
  depth: int = 0
  num_heads: int = 0
  patch_size: int = 2
  mlp_ratio: float = 4.0
  freq_dim: int = 256
  embedding: str = "sinusoidal"
  time_scale: float = 1000.0
  fourier_scale: float = 16.0
  num_classes: int = 0
  out_channels: Optional[int] = None
  learned_variance: bool = False
  dropout: float = 0.0
  remat: bool = False
  text_vocab_size: int = 0
  text_length: int = 0
  text_embed_dim: int = 0
  text_width: int = 128
  text_layers: int = 2
  text_heads: int = 4
  dtype: Any = jnp.float32

  def __post_init__(self):
    if not isinstance(self.size, str) or (self.size and self.size not in SIZES):
      raise ValueError(f"unknown DiT size {self.size!r}; valid sizes are: {', '.join(SIZES)} "
                       f"(or '' with hidden_size, depth and num_heads)")
    for name in ("hidden_size", "depth", "num_heads"):
      _checks.int_at_least(getattr(self, name), name, 0)
    if not self.size:
      missing = [n for n in ("hidden_size", "depth", "num_heads") if not getattr(self, n)]
      if missing:
        raise ValueError(f"DiT without a size needs {', '.join(missing)} > 0; or pick size= one of "
                         f"{', '.join(SIZES)}")
    hidden, _, heads = self.dims
    if (isinstance(self.patch_size, bool) or not isinstance(self.patch_size, (int, np.integer))
        or self.patch_size not in PATCH_SIZES):
      raise ValueError(f"patch_size must be one of {', '.join(map(str, PATCH_SIZES))}, got "
                       f"{self.patch_size!r}")
    if hidden % heads:
      raise ValueError(f"num_heads={heads} must divide hidden_size={hidden}")
    if hidden % 4:
      raise ValueError(f"hidden_size must be divisible by 4 (2-D sin-cos position embedding), got {hidden}")
    if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float)) \
        or not self.mlp_ratio > 0:
      raise ValueError(f"mlp_ratio must be a number > 0, got {self.mlp_ratio!r}")
    _checks.int_at_least(self.freq_dim, "freq_dim", 4)
    if self.out_channels is not None:
      _checks.positive_int(self.out_channels, "out_channels")
    if self.remat not in (True, False):
      raise ValueError(f"remat must be a bool, got {self.remat!r}")
    E.check_common_config(self)
    E.check_text_config(self)
    super().__post_init__()

  @property
  def dims(self) -> tuple:
    """``(hidden_size, depth, num_heads)`` after applying ``size``."""
    base = SIZES[self.size] if self.size else (0, 0, 0)
    return tuple(v or b for v, b in zip((self.hidden_size, self.depth, self.num_heads), base))

  def check_input(self, x) -> None:
    """Static checks of ``x``: rank 4, float, H and W divisible by ``patch_size``."""
    E.check_x(x, 4, "[batch, H, W, C] (channels-last)", "DiT")
    _, h, w, _ = x.shape
    p = self.patch_size
    if h % p or w % p:
      fits = [q for q in PATCH_SIZES if h % q == 0 and w % q == 0]
      size = f"{-(-h // p) * p}x{-(-w // p) * p}"
      fix = (f"use patch_size={fits[-1]}, or pad or resize the input to {size}" if fits
             else f"pad or resize the input to {size}")
      raise ValueError(f"DiT with patch_size={p} needs H and W divisible by {p}, got {h}x{w}; {fix}")

  @nn.compact
  def __call__(self, x, t, cond=None, train: bool = False):
    self.check_input(x)
    b, hh, ww, ch = x.shape
    t = E.prepare_t(t, b, "DiT")
    cn = E.prepare_cond(cond, b, self, "DiT")
    dt = jnp.dtype(self.dtype)
    hidden, depth, heads = self.dims
    p = self.patch_size
    gh, gw = hh // p, ww // p
    out_ch = (self.out_channels or ch) * (2 if self.learned_variance else 1)

    # Patchify: [B, gh, p, gw, p, C] -> one linear map per patch over its (p, p, C) values.
    patches = x.astype(dt).reshape(b, gh, p, gw, p, ch)
    h = nn.DenseGeneral(hidden, axis=(2, 4, 5), dtype=dt, kernel_init=E.default_init,
                        name="patch_embed")(patches)                      # [B, gh, gw, hidden]
    h = h.reshape(b, gh * gw, hidden) + jnp.asarray(E.sincos_pos_embed_2d(hidden, gh, gw), dt)[None]

    c = E.NoiseEmbedding(self.freq_dim, hidden, self.embedding, self.time_scale, self.fourier_scale,
                         self.num_classes, dt, name="noise_embed")(t, cn.get("label"))
    pooled, context = text_condition(self, cn, hidden, "einsum", dt)
    if pooled is not None:
      c = c + pooled

    block = nn.remat(DiTBlock) if self.remat else DiTBlock
    for i in range(depth):
      h = block(hidden, heads, int(hidden * self.mlp_ratio), self.dropout, not train, dt,
                name=f"block{i}")(h, c, context)

    shift, scale = jnp.split(nn.Dense(2 * hidden, dtype=dt, kernel_init=E.zeros_init,
                                      name="final_adaLN_modulation")(nn.silu(c)), 2, axis=-1)
    h = modulate(_layer_norm(dt, "norm_out")(h), shift, scale)
    h = nn.DenseGeneral((p, p, out_ch), dtype=dt, kernel_init=E.zeros_init, name="final")(h)
    # Unpatchify: [B, gh*gw, p, p, C_out] -> [B, gh, p, gw, p, C_out] -> [B, H, W, C_out].
    h = h.reshape(b, gh, gw, p, p, out_ch).transpose(0, 1, 3, 2, 4, 5).reshape(b, hh, ww, out_ch)
    return h.astype(jnp.float32)

  @staticmethod
  def data_channels(variables) -> int:
    """Input channel count the parameters were initialised for (the patch kernel is ``(p, p, C, D)``)."""
    return int(variables["params"]["patch_embed"]["kernel"].shape[2])
