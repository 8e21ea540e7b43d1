"""A noise-conditional image classifier for classifier guidance: the U-Net's downsampling half, pooled.

Classifier guidance (Dhariwal & Nichol 2021, Sec. 4) needs ``log p(y | x_t)`` for *noisy* inputs at every
noise level, so the classifier is trained on ``x_t`` at random ``t`` and receives ``t`` like the
denoiser does. Their classifier is "the downsampling trunk of the UNet model with an attention pool at
the 8x8 layer" (Sec. 4.1); this one is the same trunk as ``jdiff.models.UNet``::

  emb = MLP(embed(t))                                     # embeddings.NoiseEmbedding, no label
  h = conv3x3(x) -> ch
  for level i: num_res_blocks x [ResBlock(emb), Attention if H in attn_resolutions]; downsample
  ResBlock, Attention, ResBlock                           # middle, lowest resolution
  logits = Dense(mean_HW(SiLU(GroupNorm(h))))             # global average pooling, num_classes logits

(average pooling instead of their attention pooling: at 7x7 or 8x8 the difference is small and it
keeps the module one screen long). The output layer is zero-initialised, so an untrained classifier
is uniform and its guidance gradient is zero.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jdiff.models import embeddings as E
from jdiff.models.unet import (AttnBlock, ResBlock, UNet, avgpool2, check_params_match, conv3x3,
                              group_norm, spatial_ndim)


class NoisyClassifier(nn.Module):
  """``(x [B,H,W,C], t [B], cond=None) -> logits [B, num_classes]`` (float32), for noisy ``x``; 1-D
  signals ``[B,L,C]`` likewise (the U-Net's trunk in 1-D, average pooling over L).

  Attributes:
    num_classes: number of classes (logits), ``>= 2``.
    ch, ch_mult, num_res_blocks, attn_resolutions, dropout, embedding, time_scale, fourier_scale,
      skip_rescale, downsample, num_heads, attention_impl, dtype: as for ``UNet`` (its down path and
      middle block).
  """
  num_classes: int = 10
  ch: int = 32
  ch_mult: Sequence[int] = (1, 2, 2)
  num_res_blocks: int = 1
  attn_resolutions: Sequence[int] = ()
  dropout: float = 0.0
  embedding: str = "sinusoidal"
  time_scale: float = 1000.0
  fourier_scale: float = 16.0
  skip_rescale: bool = False
  downsample: str = "conv"
  num_heads: int = 1
  attention_impl: str = "einsum"
  dtype: Any = jnp.float32

  # A classifier is not conditioned on a label: it predicts one. ``functional`` reads this.
  takes_labels = False
  learned_variance = False

  def __post_init__(self):
    if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or \
        self.num_classes < 2:
      raise ValueError(f"a classifier needs num_classes >= 2 (a dataset with labels), got "
                       f"{self.num_classes!r}")
    # The trunk's configuration is checked exactly as the U-Net's (same fields, same messages).
    UNet(ch=self.ch, ch_mult=tuple(self.ch_mult), num_res_blocks=self.num_res_blocks,
         attn_resolutions=tuple(self.attn_resolutions), dropout=self.dropout,
         embedding=self.embedding, downsample=self.downsample, num_heads=self.num_heads,
         attention_impl=self.attention_impl, dtype=self.dtype, parent=None)
    super().__post_init__()

  def check_input(self, x) -> None:
    """Static checks of ``x``: the U-Net's (rank, dtype, sizes divisible by the levels)."""
    UNet(ch=self.ch, ch_mult=tuple(self.ch_mult), num_res_blocks=self.num_res_blocks,
         attn_resolutions=tuple(self.attn_resolutions), parent=None).check_input(x)

  @nn.compact
  def __call__(self, x, t, cond=None, train: bool = False):
    if cond is not None:
      raise ValueError("NoisyClassifier takes no label input (it predicts the label); pass cond=None")
    self.check_input(x)
    check_params_match(self, x)
    b, nd = x.shape[0], spatial_ndim(x)
    t = E.prepare_t(t, b, "NoisyClassifier")
    dt = self.dtype
    attn = lambda: AttnBlock(self.num_heads, self.skip_rescale, self.attention_impl, dt)
    res = lambda c: ResBlock(c, self.dropout, self.skip_rescale, dt)
    emb = E.NoiseEmbedding(self.ch, 4 * self.ch, self.embedding, self.time_scale, self.fourier_scale,
                           0, dt, name="noise_embed")(t)
    h = conv3x3(self.ch, dt, name="conv_in", ndim=nd)(x.astype(dt))
    for i, mult in enumerate(self.ch_mult):
      for _ in range(self.num_res_blocks):
        h = res(self.ch * mult)(h, emb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn()(h)
      if i != len(self.ch_mult) - 1:
        h = conv3x3(h.shape[-1], dt, stride=2, ndim=nd)(h) if self.downsample == "conv" else avgpool2(h)
    h = res(h.shape[-1])(h, emb, train)
    h = attn()(h)
    h = res(h.shape[-1])(h, emb, train)
    h = nn.silu(group_norm(h.shape[-1], dt, name="norm_out")(h))
    h = jnp.mean(h, axis=tuple(range(1, 1 + nd)))  # global average pooling over the spatial axes
    logits = nn.Dense(self.num_classes, dtype=dt, kernel_init=E.zeros_init, name="logits")(h)
    return logits.astype(jnp.float32)

  @staticmethod
  def data_channels(variables) -> int:
    """Input channel count the parameters were initialised for."""
    return int(variables["params"]["conv_in"]["kernel"].shape[-2])


__all__ = ["NoisyClassifier"]
