"""The DDPM / DDPM++ U-Net (Ho et al. 2020, App. B; Song et al. 2021, App. H "DDPM++"), channels-last,
for images ``[B, H, W, C]`` and 1-D signals ``[B, L, C]``.

Layout (Ho et al. 2020 code ``diffusion_utils/models/unet.py``, rewritten for Flax Linen)::

  emb = MLP(embed(t)) [+ Embed(label)]                          # embeddings.NoiseEmbedding, width 4 ch
  h = conv3x3(x) -> ch
  for level i (channels ch * ch_mult[i]):                         # down path, every output kept as skip
    num_res_blocks x [ResBlock(emb), Attention if H in attn_resolutions]
    downsample (3x3 stride-2 conv, or 2x2 average pool) unless last level
  ResBlock, Attention, ResBlock                                    # middle, lowest resolution
  for level i reversed:                                            # up path
    (num_res_blocks + 1) x [concat(skip), ResBlock(emb), Attention if H in attn_resolutions]
    upsample (nearest x2 + conv3x3) unless level 0
  out = conv3x3(SiLU(GroupNorm(h)))                                # zero-initialised

Dimensions: the same module runs on ``d = x.ndim - 2`` spatial axes, fixed by the input it is
initialised with. Every convolution has kernel ``(3,) * d`` (3x3 on images, 3 taps on signals),
down/upsampling acts on all spatial axes, the embedding is broadcast over them and attention runs over
all positions (``H * W`` or ``L``): a 1-D-convolution U-Net like the temporal U-Net of Janner et al.
2022 (Diffuser). On ``[B, L, 1, C]`` inputs only the middle column of each 3x3 kernel meets data, so a
one-level 2-D U-Net there computes the 1-D U-Net with those columns as kernels (``tests/test_unet1d.py``).
2-D parameter names and shapes are those of the image-only module that came before (checkpoints restore).

ResBlock (Ho et al. 2020, App. B; a wide-ResNet block, Zagoruyko & Komodakis 2016)::

  h = conv3x3(SiLU(GN(x))); h += Dense(SiLU(emb)); h = conv3x3_zero(Dropout(SiLU(GN(h))))
  out = skip(x) + h            # skip = 1x1 conv when channels change; DDPM++: out / sqrt(2)

Group normalisation (Wu & He 2018) uses 32 groups, or for small ``C`` the largest divisor of C that is
at most ``C / 2`` (see ``num_groups``: one channel per group would cancel the embedding shift).
``skip_rescale=True`` divides every residual sum (ResBlock and attention) by ``sqrt(2)`` (Song et al.
2021, App. H, DDPM++).

Spatial sizes: each of the ``len(ch_mult) - 1`` downsamplings halves H and W (or L) exactly, so they
must be divisible by ``2 ** (len(ch_mult) - 1)``: 32x32 works with up to 6 levels, 28x28 (Fashion-MNIST)
with at most 3 (28 -> 14 -> 7), length 40 (MNIST-1D) with at most 4 (40 -> 20 -> 10 -> 5); a bad size
raises a ``ValueError`` naming the largest level count that fits. ``attn_resolutions`` are feature-map
heights for images (DDPM CIFAR-10: ``(16,)``; for 28x28 inputs use ``(14,)``) and feature-map lengths
for signals (e.g. ``(10,)`` for length 40 with 3 levels); a value that no level reaches is an error
rather than silently no attention.

Text and super-resolution conditioning (fields ``text_*``, ``low_res_channels``; off by default, and
then no parameter is added, so text-free checkpoints restore)::

  tokens, pooled = TextEncoder(caption | text_emb)              # text_encoder.TextEncoder (GLIDE)
  emb += Dense(pooled) [+ MLP(embed(low_res_t))]                  # every ResBlock reads emb
  every AttnBlock (the middle one too): joint attention over [image positions; Dense(tokens)]
  h = conv3x3(x) [+ conv3x3_nobias(resize_bilinear(low_res))]     # = one conv over concat([x, low_res])

* Text (Nichol et al. 2022, "GLIDE", Sec. 2.3): the pooled text is projected and added to the noise
  (+ label) embedding, and each attention layer projects the encoder's tokens to extra keys and values
  concatenated to its own: joint attention (GLIDE's encoder_kv), the padded tokens masked out. Every
  U-Net has attention in its middle block, so the token path always reaches the network even with
  ``attn_resolutions=()``.
* Super-resolution (Ho et al. 2021, "Cascaded diffusion models"; Saharia et al. 2022, "Imagen"): the
  low-resolution image is upsampled to x's size and concatenated to x channel-wise. Here it enters
  through its own 3x3 convolution (no bias) added to ``conv_in(x)``: what one convolution over the
  concatenation computes (its kernel split in two), but ``conv_in`` keeps x's input channels, so
  ``UNet.data_channels`` is still x's channel count. Upsampling is bilinear (``jax.image.resize``, half-pixel centres): CDM upsample
  with bilinear or bicubic interpolation; bilinear is a convex combination of pixels, so it never
  leaves the data range as bicubic's overshoot can, and a ``low_res`` already at x's size is used as is.
  The noise-augmentation level ``low_res_t`` (the caller augments; CDM's conditioning augmentation) is
  embedded like ``t`` by its own ``NoiseEmbedding`` and added to the embedding.

Performance notes (XLA CPU): everything is channels-last (NHWC / NLC), the native layout; 1x1
convolutions are ``Dense`` on the channel axis (a single matmul); q, k and v come from one fused
``Dense(3C)``; nearest upsampling and average pooling are a broadcast/reshape. Attention is a plain
einsum (``attention_impl="einsum"``) or ``jax.nn.dot_product_attention`` (``"xla"``); see
``attention.attention`` for which is faster here.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jdiff import _checks
from jdiff.models import attention as A
from jdiff.models import embeddings as E
from jdiff.models.attention import ATTENTION_IMPLS, attention  # noqa: F401 (re-exported: unet.attention)
from jdiff.models.text_encoder import text_condition

DOWNSAMPLES = ("conv", "avgpool")


def num_groups(channels: int, max_groups: int = 32) -> int:
  """GroupNorm groups: the largest divisor of ``channels`` at most ``min(max_groups, channels // 2)``.

  32 for every DDPM width (``C >= 64``). Groups keep at least two channels each: with one channel per
  group, GroupNorm over H, W removes any per-channel constant, which would erase the noise and label
  embedding that ResBlocks add as a per-channel shift just before it (small test models, ``C <= 32``).
  """
  for g in range(max(1, min(max_groups, channels // 2)), 0, -1):
    if channels % g == 0:
      return g
  return 1


def group_norm(c: int, dtype, name: Optional[str] = None) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=num_groups(c), epsilon=1e-6, dtype=dtype, name=name)


def conv3x3(c: int, dtype, stride: int = 1, zero: bool = False, name: Optional[str] = None,
            ndim: int = 2) -> nn.Conv:
  """A convolution with 3 taps per spatial axis (3x3 for ``ndim=2``, 3 for ``ndim=1``), 'same' padding
  of 1, ``stride`` on every spatial axis; ``zero``: zero-initialised kernel."""
  return nn.Conv(c, (3,) * ndim, strides=(stride,) * ndim, padding=((1, 1),) * ndim, dtype=dtype,
                 kernel_init=E.zeros_init if zero else E.default_init, name=name)


def spatial_ndim(x) -> int:
  """Number of spatial axes of a channels-last batch: 2 for ``[B, H, W, C]``, 1 for ``[B, L, C]``."""
  return x.ndim - 2


class ResBlock(nn.Module):
  """DDPM residual block with the noise embedding added after the first conv (Ho et al. 2020, App. B)."""
  out_ch: int
  dropout: float = 0.0
  skip_rescale: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, emb, train: bool):
    nd = spatial_ndim(x)
    h = conv3x3(self.out_ch, self.dtype, name="conv0", ndim=nd)(
        nn.silu(group_norm(x.shape[-1], self.dtype)(x)))
    e = nn.Dense(self.out_ch, dtype=self.dtype, kernel_init=E.default_init, name="emb_proj")(nn.silu(emb))
    h = h + e.reshape((e.shape[0],) + (1,) * nd + (self.out_ch,))  # broadcast over the spatial axes
    h = nn.silu(group_norm(self.out_ch, self.dtype)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = conv3x3(self.out_ch, self.dtype, zero=True, name="conv1", ndim=nd)(h)
    if x.shape[-1] != self.out_ch:  # "nin_shortcut": a 1x1 conv is a Dense on the channel axis
      x = nn.Dense(self.out_ch, dtype=self.dtype, kernel_init=E.default_init, name="skip")(x)
    out = x + h
    return out * (1.0 / math.sqrt(2.0)) if self.skip_rescale else out


class AttnBlock(nn.Module):
  """Self-attention over all positions (H*W, or L), residual (Ho et al. 2020, App. B; Wang et al. 2018).

  With ``context`` (text tokens ``[B, L, D]`` and their mask ``[B, L]``): joint attention (GLIDE's
  encoder_kv, Nichol et al. 2022, Sec. 2.3): a Dense ``context_kv`` projects the tokens to extra keys and
  values, concatenated to the image's own, with the padding mask on the text keys
  (``attention.append_context``). Without it the block has exactly its former parameters.

  ``positions``: add a fixed sine-cosine embedding of each position (``position_embedding``) to the
  normalised features that make the queries, keys and values, as the DiT adds one to its tokens. The
  convolutions are translation-equivariant, so otherwise nothing but the zero padding seen through the
  receptive field tells a query where it is, and a caption that names places ("a bag to the left of a
  sneaker") cannot be bound to them. No parameters are added.
  """
  num_heads: int = 1
  skip_rescale: bool = False
  impl: str = "einsum"
  dtype: Any = jnp.float32
  positions: bool = False

  @nn.compact
  def __call__(self, x, context=None):
    b, c = x.shape[0], x.shape[-1]
    heads, hd = self.num_heads, c // self.num_heads
    h = group_norm(c, self.dtype)(x)
    if self.positions:  # fixed sin-cos of each position, added to the normalised features (no parameters)
      h = h + jnp.asarray(position_embedding(c, x.shape[1:-1]), self.dtype).reshape(x.shape[1:])[None]
    qkv = nn.Dense(3 * c, dtype=self.dtype, kernel_init=E.default_init, name="qkv")(h)
    qkv = qkv.reshape(b, -1, 3, heads, hd)  # [batch, positions, 3, heads, d]
    q, k, v, mask = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], None
    if context is not None:
      tokens, tmask = context
      kv = nn.Dense(2 * c, dtype=self.dtype, kernel_init=E.default_init, name="context_kv")(tokens)
      k, v, mask = A.append_context(k, v, kv.reshape(b, -1, 2, heads, hd), tmask)
    out = attention(q, k, v, self.impl, key_mask=mask).reshape(x.shape)
    out = nn.Dense(c, dtype=self.dtype, kernel_init=E.zeros_init, name="proj_out")(out)
    out = x + out
    return out * (1.0 / math.sqrt(2.0)) if self.skip_rescale else out


def position_embedding(channels: int, spatial) -> np.ndarray:
  """The fixed sin-cos embedding ``[prod(spatial), channels]`` of a channels-last feature map's positions
  in row-major order: 2-D (``embeddings.sincos_pos_embed_2d``: half the channels encode the column,
  half the row; He et al. 2022) for ``(H, W)``, 1-D (``embeddings.sincos_pos_embed_1d``; Vaswani et al.
  2017, Sec. 3.5) for ``(L,)``."""
  if len(spatial) == 2:
    return E.sincos_pos_embed_2d(channels, *spatial)
  return E.sincos_pos_embed_1d(channels, np.arange(spatial[0]))


def _split(x, factor: int) -> tuple:
  """``[b, s1, .., sd, c]`` -> the shape ``(b, s1, factor, .., sd, factor, c)`` interleaving factors."""
  return (x.shape[0],) + sum(((s, factor) for s in x.shape[1:-1]), ()) + (x.shape[-1],)


def check_params_match(module: nn.Module, x) -> None:
  """Inside ``apply``: ``module``'s ``conv_in`` was initialised for ``x``'s number of spatial axes."""
  kernel = module.variables.get("params", {}).get("conv_in", {}).get("kernel")
  if kernel is not None and kernel.ndim != x.ndim:
    layout = {4: "[batch, H, W, C]", 3: "[batch, L, C]"}.get(kernel.ndim, f"rank {kernel.ndim}")
    raise ValueError(f"{type(module).__name__}: these parameters were initialised for "
                     f"{kernel.ndim - 2}-D inputs, so it expects x of shape {layout}; got shape "
                     f"{tuple(x.shape)} ({x.ndim - 2}-D). Initialise separate parameters on "
                     f"{x.ndim - 2}-D data")


def upsample_nearest(x):
  """Nearest-neighbour x2 upsampling of every spatial axis (a broadcast and a reshape)."""
  b, *spatial, c = x.shape
  up = jnp.broadcast_to(x.reshape(_split(x, 1)), _split(x, 2))
  return up.reshape((b,) + tuple(2 * s for s in spatial) + (c,))


def avgpool2(x):
  """2x average pooling of every spatial axis (2x2 on images, 2 on signals); sizes must be even."""
  b, *spatial, c = x.shape
  pooled = x.reshape((b,) + sum(((s // 2, 2) for s in spatial), ()) + (c,))
  return pooled.mean(axis=tuple(range(2, 2 * len(spatial) + 1, 2)))


class UNet(nn.Module):
  """DDPM / DDPM++ U-Net denoiser ``(x [B,H,W,C], t [B], cond) -> [B,H,W,C_out]``; 1-D
  signals ``[B,L,C] -> [B,L,C_out]`` likewise (parameters are for the dimension they were initialised on).

  Defaults are the DDPM CIFAR-10 model (Ho et al. 2020, App. B; 35.7M parameters): ``ch=128``,
  ``ch_mult=(1, 2, 2, 2)``, 2 res blocks per level, attention at 16x16, dropout 0.1, sinusoidal
  embedding of ``1000 t``. DDPM++ (Song et al. 2021): ``skip_rescale=True``, ``embedding="fourier"`` for
  VE models fed ``log sigma``.

  Attributes:
    ch: base channel count; level ``i`` has ``ch * ch_mult[i]`` channels; embedding width ``4 ch``.
    ch_mult: channel multiplier per resolution level (``len(ch_mult) - 1`` downsamplings).
    num_res_blocks: ResBlocks per level on the way down (``+1`` on the way up).
    attn_resolutions: feature-map heights (images) or lengths (signals) with self-attention after each
      ResBlock.
    dropout: dropout rate inside ResBlocks (active only with ``train=True``).
    embedding: ``"sinusoidal"`` (of ``time_scale * t``) or ``"fourier"`` (of ``t``, ``fourier_scale``).
    time_scale: multiplies ``t`` before the sinusoidal embedding (1000: DDPM's step index).
    fourier_scale: standard deviation of the random Fourier frequencies (16 in Song et al. 2021).
    num_classes: ``> 0`` adds a class embedding with ``num_classes + 1`` rows (the last is NULL).
    out_channels: output channels before doubling; ``None``: the input's channels.
    learned_variance: doubles the output channels (mean output, then variance interpolation).
    skip_rescale: divide residual sums by ``sqrt(2)`` (DDPM++).
    downsample: ``"conv"`` (3x3, stride 2; DDPM) or ``"avgpool"`` (2x2 average pool); 3 and 2 in 1-D.
    num_heads: attention heads (DDPM: 1); must divide every level's channel count.
    attention_impl: ``"einsum"`` or ``"xla"`` (``jax.nn.dot_product_attention``).
    attn_positions: every attention block adds a fixed sin-cos embedding of the feature map's positions
      to its normalised input (``AttnBlock.positions``; no parameters): queries then know their place,
      which captions naming places need. Every level's channel count must be divisible by 4.
    text_vocab_size: ``> 0``: takes ``cond["caption"]``, int ids ``[B, L]`` in ``[0, text_vocab_size)``
      (0 = padding; a missing caption is the null, all-padding caption).
    text_length: the longest caption (learned position rows); required with ``text_vocab_size``.
    text_embed_dim: ``> 0``: takes ``cond["text_emb"]`` ``[B, L, text_embed_dim]`` and
      ``cond["text_mask"]`` ``[B, L]`` (precomputed embeddings); exclusive with ``text_vocab_size``.
    text_width, text_layers, text_heads: the text encoder's width, blocks and heads.
    low_res_channels: ``> 0``: a super-resolution model; takes (and needs) ``cond["low_res"]``
      ``[B, h, w, low_res_channels]`` (h, w dividing H, W) and ``cond["low_res_t"]`` ``[B]`` in [0, 1].
    dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay float32, output is float32.
  """
  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  embedding: str = "sinusoidal"
  time_scale: float = 1000.0
  fourier_scale: float = 16.0
  num_classes: int = 0
  out_channels: Optional[int] = None
  learned_variance: bool = False
  skip_rescale: bool = False
  downsample: str = "conv"
  num_heads: int = 1
  attention_impl: str = "einsum"
  attn_positions: bool = False
  text_vocab_size: int = 0
  text_length: int = 0
  text_embed_dim: int = 0
  text_width: int = 128
  text_layers: int = 2
  text_heads: int = 4
  low_res_channels: int = 0
  dtype: Any = jnp.float32

  def __post_init__(self):
    _checks.positive_int(self.ch, "ch")
    if self.ch < 4:
      raise ValueError(f"ch must be >= 4 (the noise embedding has ch features), got {self.ch}")
    if not isinstance(self.ch_mult, (tuple, list)) or not self.ch_mult:
      raise ValueError(f"ch_mult must be a non-empty tuple of integers >= 1, got {self.ch_mult!r}")
    for m in self.ch_mult:
      _checks.positive_int(m, "each ch_mult entry")
    _checks.positive_int(self.num_res_blocks, "num_res_blocks")
    if not isinstance(self.attn_resolutions, (tuple, list)):
      raise ValueError(f"attn_resolutions must be a tuple of feature-map heights (lengths in 1-D), got "
                       f"{self.attn_resolutions!r}")
    for r in self.attn_resolutions:
      _checks.positive_int(r, "each attn_resolutions entry")
    if self.out_channels is not None:
      _checks.positive_int(self.out_channels, "out_channels")
    _checks.choice("downsample", self.downsample, DOWNSAMPLES)
    _checks.choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
    _checks.positive_int(self.num_heads, "num_heads")
    bad = sorted({self.ch * m for m in self.ch_mult if (self.ch * m) % self.num_heads})
    if bad:
      raise ValueError(f"num_heads={self.num_heads} must divide every level's channel count; it does not "
                       f"divide {bad}")
    if not isinstance(self.attn_positions, bool):
      raise ValueError(f"attn_positions must be True or False, got {self.attn_positions!r}")
    bad = sorted({self.ch * m for m in self.ch_mult if (self.ch * m) % 4})
    if self.attn_positions and bad:
      raise ValueError(f"attn_positions=True needs every level's channel count divisible by 4 (the 2-D "
                       f"sin-cos embedding); {bad} are not: change ch or ch_mult")
    E.check_common_config(self)
    E.check_text_config(self)
    _checks.int_at_least(self.low_res_channels, "low_res_channels", 0)
    super().__post_init__()

  def check_input(self, x) -> None:
    """Static checks of ``x`` (rank 4 or 3, float dtype, spatial sizes vs. levels and attention)."""
    E.check_x(x, (4, 3), "[batch, H, W, C] (images) or [batch, L, C] (1-D signals), channels-last",
              "UNet")
    spatial = x.shape[1:-1]
    image = len(spatial) == 2
    axes, size = ("H and W", "x".join(map(str, spatial))) if image else ("L", f"length {spatial[0]}")
    levels = len(self.ch_mult)
    f = 2 ** (levels - 1)
    if any(s % f for s in spatial):
      fit = 1
      while all(s % (2 ** fit) == 0 for s in spatial):
        fit += 1
      raise ValueError(f"UNet with {levels} levels (len(ch_mult)) halves {axes} {levels - 1} times, so "
                       f"{'they' if image else 'it'} must be divisible by {f}; got {size}. Use at most "
                       f"{fit} levels for this size, or pad the input")
    reached = [spatial[0] // 2 ** i for i in range(levels)]
    missing = sorted(set(self.attn_resolutions) - set(reached))
    if missing:
      raise ValueError(f"attn_resolutions {missing} are never reached for {size} inputs (feature-map "
                       f"{'heights' if image else 'lengths'} are {reached}); choose attn_resolutions "
                       f"among those")

  @nn.compact
  def __call__(self, x, t, cond=None, train: bool = False):
    self.check_input(x)
    check_params_match(self, x)
    b, nd = x.shape[0], spatial_ndim(x)
    t = E.prepare_t(t, b, "UNet")
    c = E.prepare_cond(cond, b, self, "UNet", spatial=x.shape[1:-1])
    dt = self.dtype
    out_ch = (self.out_channels or x.shape[-1]) * (2 if self.learned_variance else 1)
    res = lambda n: ResBlock(n, self.dropout, self.skip_rescale, dt)

    emb = E.NoiseEmbedding(self.ch, 4 * self.ch, self.embedding, self.time_scale, self.fourier_scale,
                           self.num_classes, dt, name="noise_embed")(t, c.get("label"))
    pooled, context = text_condition(self, c, 4 * self.ch, self.attention_impl, dt)
    if pooled is not None:
      emb = emb + pooled
    attn = lambda h: AttnBlock(self.num_heads, self.skip_rescale, self.attention_impl, dt,
                               positions=self.attn_positions)(h, context)

    h = conv3x3(self.ch, dt, name="conv_in", ndim=nd)(x.astype(dt))
    if self.low_res_channels:
      emb = emb + E.NoiseEmbedding(self.ch, 4 * self.ch, self.embedding, self.time_scale, self.fourier_scale,
                                   0, dt, name="low_res_embed")(c["low_res_t"])
      lr = c["low_res"]
      if lr.shape[1:-1] != x.shape[1:-1]:
        lr = jax.image.resize(lr, x.shape[:-1] + lr.shape[-1:], method="bilinear")
      h = h + nn.Conv(self.ch, (3,) * nd, padding=((1, 1),) * nd, use_bias=False, dtype=dt,
                      kernel_init=E.default_init, name="low_res_in")(lr.astype(dt))
    skips = [h]
    for i, mult in enumerate(self.ch_mult):
      for _ in range(self.num_res_blocks):
        h = res(self.ch * mult)(h, emb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn(h)
        skips.append(h)
      if i != len(self.ch_mult) - 1:
        if self.downsample == "conv":
          h = conv3x3(h.shape[-1], dt, stride=2, ndim=nd)(h)
        else:
          h = avgpool2(h)
        skips.append(h)

    h = res(h.shape[-1])(h, emb, train)
    h = attn(h)
    h = res(h.shape[-1])(h, emb, train)

    for i, mult in reversed(list(enumerate(self.ch_mult))):
      for _ in range(self.num_res_blocks + 1):
        h = res(self.ch * mult)(jnp.concatenate([h, skips.pop()], axis=-1), emb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn(h)
      if i != 0:
        h = conv3x3(h.shape[-1], dt, ndim=nd)(upsample_nearest(h))
    assert not skips

    h = nn.silu(group_norm(h.shape[-1], dt, name="norm_out")(h))
    h = conv3x3(out_ch, dt, zero=True, name="conv_out", ndim=nd)(h)
    return h.astype(jnp.float32)

  @staticmethod
  def data_channels(variables) -> int:
    """Input channel count the parameters were initialised for."""
    return int(variables["params"]["conv_in"]["kernel"].shape[-2])
