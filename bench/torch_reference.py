"""The PyTorch reference for ``bench/train_throughput.py``: diffusers' ``UNet2DModel`` configured like a
jdiff ``UNet`` and trained with the same step (DDPM eps-prediction, Ho et al. 2020, Alg. 1).

Bench-only: needs ``torch`` and ``diffusers`` (install a CPU torch build first, then diffusers), which
jdiff itself never imports. Nothing here touches the network: the model is built from a configuration,
never downloaded.

Configuration mapping (jdiff ``UNet`` field -> diffusers ``UNet2DModel`` argument):

  ch * ch_mult          -> block_out_channels
  num_res_blocks        -> layers_per_block (both use num_res_blocks + 1 ResBlocks per level going up)
  attn_resolutions      -> AttnDownBlock2D / AttnUpBlock2D at the levels whose feature-map height is
                           listed; the middle block always has attention (as in DDPM and jdiff)
  num_heads=1           -> attention_head_dim=None (one head of the full channel width per level)
  GroupNorm(32, eps=1e-6) -> norm_num_groups=32, norm_eps=1e-6 (jdiff: min(32, C) groups, equal here)
  dropout               -> dropout (inside every ResBlock, before the second conv)
  conv downsample       -> downsample_type="conv", downsample_padding=1 (3x3 stride 2)
  nearest + conv up     -> upsample_type="conv"
  sinusoidal embedding  -> time_embedding_type="positional", embedding width 4 ch

One difference that does not change the cost measurably: diffusers applies ``dropout`` also to the
output projection of the middle block's attention (at the lowest resolution); jdiff does not.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel


def unet2d_kwargs(*, image_size: int, channels: int, ch: int, ch_mult: Sequence[int],
                  num_res_blocks: int, attn_resolutions: Sequence[int], dropout: float) -> dict:
  """``UNet2DModel`` keyword arguments for the jdiff ``UNet`` with the same fields."""
  heights = [image_size // 2 ** i for i in range(len(ch_mult))]
  down = tuple("AttnDownBlock2D" if h in attn_resolutions else "DownBlock2D" for h in heights)
  up = tuple("AttnUpBlock2D" if h in attn_resolutions else "UpBlock2D" for h in reversed(heights))
  return dict(
      sample_size=image_size, in_channels=channels, out_channels=channels,
      block_out_channels=tuple(ch * m for m in ch_mult), layers_per_block=num_res_blocks,
      down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2D", add_attention=True,
      attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6, dropout=dropout,
      downsample_type="conv", downsample_padding=1, upsample_type="conv",
      time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=1, act_fn="silu")


def linear_alphas_cumprod(num_steps: int = 1000, beta_start: float = 1e-4,
                          beta_end: float = 0.02) -> torch.Tensor:
  """DDPM's linear-beta ``alpha_bar_i`` table (Ho et al. 2020, Sec. 4 and eq. 4)."""
  betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
  return torch.tensor(np.cumprod(1.0 - betas), dtype=torch.float32)


class TorchTrainer:
  """One diffusers ``UNet2DModel`` and its train step, mirroring ``jdiff.training.step``.

  The step: draw ``t ~ U{0..999}`` and ``eps ~ N(0, I)``, form
  ``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps``, loss = MSE(model(x_t, t), eps)
  (Ho et al. 2020, Alg. 1, the "simple" loss), backward, global-norm gradient clipping, AdamW, and an
  EMA of the parameters (jdiff's step always keeps one).
  """

  def __init__(self, model_kwargs: dict, *, lr: float = 2e-4, grad_clip: float = 1.0,
               ema_decay: float = 0.9999, weight_decay: float = 0.0, seed: int = 0,
               channels_last: bool = False, foreach: bool | None = None):
    torch.manual_seed(seed)
    self.model = UNet2DModel(**model_kwargs)
    self.model.train()
    self.channels_last = channels_last
    if channels_last:
      self.model = self.model.to(memory_format=torch.channels_last)
    self.params = [p for p in self.model.parameters() if p.requires_grad]
    self.opt = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=weight_decay, foreach=foreach)
    self.ema = [p.detach().clone() for p in self.params]
    self.grad_clip = grad_clip
    self.ema_decay = ema_decay
    self.alphas_cumprod = linear_alphas_cumprod()
    self.num_params = sum(p.numel() for p in self.params)

  def step(self, x0: torch.Tensor) -> float:
    """One training step on ``x0`` (``[B, C, H, W]`` float32); returns the loss."""
    b = x0.shape[0]
    t = torch.randint(0, self.alphas_cumprod.shape[0], (b,))
    eps = torch.randn_like(x0)
    abar = self.alphas_cumprod[t].view(b, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1.0 - abar).sqrt() * eps
    if self.channels_last:
      x_t = x_t.contiguous(memory_format=torch.channels_last)
    pred = self.model(x_t, t).sample
    loss = F.mse_loss(pred, eps)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    if self.grad_clip and self.grad_clip > 0:
      torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
    self.opt.step()
    with torch.no_grad():
      torch._foreach_lerp_(self.ema, self.params, 1.0 - self.ema_decay)
    return float(loss.detach())


def set_threads(n: int | None = None) -> int:
  """Use ``n`` intra-op threads (default: every CPU core); returns the count in use."""
  n = n or os.cpu_count() or 1
  torch.set_num_threads(n)
  return torch.get_num_threads()


def make_trainer(*, image_size: int, channels: int, ch: int, ch_mult: Sequence[int],
                 num_res_blocks: int, attn_resolutions: Sequence[int], dropout: float,
                 **trainer_kwargs) -> TorchTrainer:
  return TorchTrainer(unet2d_kwargs(image_size=image_size, channels=channels, ch=ch, ch_mult=ch_mult,
                                    num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions,
                                    dropout=dropout), **trainer_kwargs)


def random_batch(batch: int, channels: int, image_size: int, seed: int = 0,
                 channels_last: bool = False) -> torch.Tensor:
  g = torch.Generator().manual_seed(seed)
  x = torch.rand(batch, channels, image_size, image_size, generator=g) * 2.0 - 1.0
  return x.contiguous(memory_format=torch.channels_last) if channels_last else x
