"""Residual MLP denoiser for low-dimensional data ``[batch, D]`` (toy 2-D mixtures, tabular vectors).

::

  emb = MLP(embed(t)) [+ Embed(label)]                      # embeddings.NoiseEmbedding, width `features`
  h = Dense(concat[x, emb])                                  # written as Dense(x) + Dense(emb): same map
  num_blocks x  h = h + Dense_zero(Dropout(SiLU(Dense(SiLU(LayerNorm(h))) + Dense(SiLU(emb)))))
  out = Dense_zero(SiLU(LayerNorm(h)))                       # D outputs, 2 D with learned variance

A pre-norm residual MLP (He et al. 2016, "identity mappings"; Ba et al. 2016 LayerNorm) whose blocks
also receive the noise embedding, like the U-Net's ResBlocks (Ho et al. 2020, App. B). The last layer of
every residual branch and the output layer are zero-initialised, so the network starts as the zero map.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from jdiff import _checks
from jdiff.models import embeddings as E


class MLP(nn.Module):
  """Residual MLP denoiser ``(x [B, D], t [B], cond [B] | None) -> [B, D_out]``.

  Attributes:
    features: hidden width (also the embedding width).
    num_blocks: residual blocks.
    emb_dim: width of the sinusoidal / Fourier features fed to the embedding MLP.
    embedding, time_scale, fourier_scale, num_classes, learned_variance, dropout, dtype: as for
      ``UNet``.
    out_dim: outputs before doubling; ``None``: the input dimension ``D``.
  """
  features: int = 256
  num_blocks: int = 3
  emb_dim: int = 64
  embedding: str = "sinusoidal"
  time_scale: float = 1000.0
  fourier_scale: float = 16.0
  num_classes: int = 0
  out_dim: Optional[int] = None
  learned_variance: bool = False
  dropout: float = 0.0
  dtype: Any = jnp.float32

  def __post_init__(self):
    _checks.positive_int(self.features, "features")
    _checks.positive_int(self.num_blocks, "num_blocks")
    _checks.positive_int(self.emb_dim, "emb_dim")
    if self.emb_dim < 4:
      raise ValueError(f"emb_dim must be >= 4, got {self.emb_dim}")
    if self.out_dim is not None:
      _checks.positive_int(self.out_dim, "out_dim")
    E.check_common_config(self)
    super().__post_init__()

  def check_input(self, x) -> None:
    E.check_x(x, 2, "[batch, D]", "MLP")

  @nn.compact
  def __call__(self, x, t, cond=None, train: bool = False):
    self.check_input(x)
    b = x.shape[0]
    t = E.prepare_t(t, b, "MLP")
    labels = E.prepare_labels(cond, b, self.num_classes, "MLP")
    dt, f = self.dtype, self.features
    out_dim = (self.out_dim or x.shape[-1]) * (2 if self.learned_variance else 1)
    dense = lambda n, name, zero=False: nn.Dense(
        n, dtype=dt, kernel_init=E.zeros_init if zero else E.default_init, name=name)

    emb = E.NoiseEmbedding(self.emb_dim, f, self.embedding, self.time_scale, self.fourier_scale,
                           self.num_classes, dt, name="noise_embed")(t, labels)
    h = dense(f, "in_x")(x.astype(dt)) + dense(f, "in_emb")(emb)
    for i in range(self.num_blocks):
      y = dense(f, f"block{i}_dense0")(nn.silu(nn.LayerNorm(dtype=dt, name=f"block{i}_norm")(h)))
      y = y + dense(f, f"block{i}_emb")(nn.silu(emb))
      y = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(y))
      h = h + dense(f, f"block{i}_dense1", zero=True)(y)
    h = nn.silu(nn.LayerNorm(dtype=dt, name="norm_out")(h))
    return dense(out_dim, "out", zero=True)(h).astype(jnp.float32)

  @staticmethod
  def data_channels(variables) -> int:
    """Input dimension ``D`` the parameters were initialised for."""
    return int(variables["params"]["in_x"]["kernel"].shape[0])
