"""A permutation-equivariant set denoiser for point clouds ``[batch, N, 3]``: per-point residual MLPs
that see the whole shape through symmetric pooling (PointNet, Qi et al. 2017), conditioned on the noise
level and class by FiLM (Perez et al. 2018), as in DiT's adaLN (Peebles & Xie 2023).

::

  emb = MLP(embed(t)) [+ Embed(label)]                   # embeddings.NoiseEmbedding, width `features`
  h = Dense(x) [+ Dense(local_moments(x, r) for r in local_scales)]   # [B, N, features], per point
  num_blocks x
    shift, scale = Dense_zero(SiLU(emb))                 # FiLM from the noise level and class
    y = LN(h) * (1 + scale) + shift                      # LayerNorm without affine, per point
    [y = y + ISAB(y)]                                    # with num_latents > 0 (Set Transformer)
    g = Dense(concat[mean_n y, max_n y])                 # [B, hidden]: the shape's global context
    [l = Dense(K m - m), m = Dense(y)]                   # with mix_scale > 0: learned local features
    y = SiLU(Dense(y) + g [+ l])                         # [B, N, hidden]: each point plus the context
    h = h + Dense_zero(Dropout(y))                       # zero-init residual output
  out = Dense_zero(SiLU(LN(h)))                          # [B, N, 3] (6 with learned variance)

**Permutation equivariance**: every layer acts on each point alone except the pooling, and mean and
max over points are symmetric functions, so permuting the input points permutes the output points the
same way (Zaheer et al. 2017, "Deep Sets", Lemma 3: per-element maps plus pooled context are the
general equivariant layer). A point cloud is a set, so this is the right symmetry for its denoiser.

**Why not attention**: a layer costs O(N) per shape here against O(N^2) for self-attention over the
points. With 512 points and width 128 the attention matrix alone is 512 x 512 per head and shape, and
a transformer of the same width is ~10x slower on a 2-core CPU. Per-point MLPs with pooled shape
context are what the point-cloud diffusion models of Luo & Hu 2021 ("Diffusion Probabilistic Models
for 3D Point Cloud Generation", a per-point network conditioned on a shape code) and PointNet's
segmentation head (per-point features concatenated with the max-pooled global feature; Qi et al.
2017, Fig. 2) use. Mean pooling is added to max pooling because a mean carries density information
(where points concentrate), max only the extent.

Residual blocks are pre-norm (He et al. 2016) with the last layer zero-initialised, and the output
layer is zero-initialised too, so the network starts as the zero map (as ``MLP`` and ``DiT``).
Measured on a 2-core CPU at the defaults (features 128, hidden 256, 4 blocks; 0.69M parameters with
6 classes): forward + backward of a batch of 32 shapes x 512 points under ``jax.jit`` takes ~0.24 s,
almost all of it the per-point Dense layers (~60 ms a block; ``features=64`` takes ~0.14 s).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jdiff import _checks
from jdiff.models import embeddings as E
from jdiff.models.unet import attention


def kernel(x, scale: float):
  """Row-normalised Gaussian kernel ``w_ij / sum_j w_ij``, ``w_ij = exp(-|x_i - x_j|^2 / (2 scale^2))``,
  of a point set ``x [B, N, D]`` -> ``[B, N, N]`` (each point included in its own row; no gradient)."""
  d2 = jnp.sum(jnp.square(x[:, :, None, :] - x[:, None, :, :]), axis=-1)
  w = jax.nn.softmax(-d2 / (2.0 * scale * scale), axis=-1)
  return jax.lax.stop_gradient(w)


def local_moments(x, scale: float):
  """Gaussian-kernel local moments of a point set ``x [B, N, D]`` at kernel width ``scale``: for each
  point ``i``, with weights ``w_ij = exp(-|x_i - x_j|^2 / (2 scale^2))`` over all points ``j`` (itself
  included), the offset of the weighted mean from the point, ``m_i - x_i``, and the upper triangle of the
  weighted covariance, divided by ``scale`` and ``scale^2`` -> ``[B, N, D + D (D + 1) / 2]``.

  On a noisy surface these are the classic local estimates (the mean-shift step toward the surface and
  the covariance whose smallest eigenvector is the normal; Hoppe et al. 1992), at a cost of one
  ``N x N`` kernel matrix per scale (no learned weights, no gradient: they are inputs). Sums over all
  points make them equivariant to permutations."""
  w = kernel(x, scale)
  mean = jnp.einsum("bij,bjd->bid", w, x)
  second = jnp.einsum("bij,bjd,bje->bide", w, x, x)
  cov = second - mean[..., :, None] * mean[..., None, :]
  rows, cols = np.triu_indices(x.shape[-1])
  feats = jnp.concatenate([(mean - x) / scale, cov[..., rows, cols] / (scale * scale)], axis=-1)
  return jax.lax.stop_gradient(feats)


class PointNet(nn.Module):
  """Set denoiser ``(x [B, N, D], t [B], cond [B] | None) -> [B, N, D_out]``, equivariant to
  permutations of the ``N`` points (see the module docstring). ``D`` is 3 for point clouds; any
  per-point dimension works.

  Attributes:
    features: per-point width of the residual stream (also the embedding width).
    hidden: width of each block's per-point MLP (which also receives the pooled context).
    num_blocks: residual blocks.
    emb_dim: width of the sinusoidal / Fourier features fed to the embedding MLP.
    embedding, time_scale, fourier_scale, num_classes, learned_variance, dropout, dtype: as for
      ``UNet``.
    out_dim: outputs per point before doubling; ``None``: the input dimension ``D``.
    num_latents: ``> 0`` adds induced set attention with that many learned latents to every block
      (``_latent_context``); measured ~2.2x the step time at the defaults, so off by default.
    num_heads: attention heads of the latents (must divide the attention width).
    latent_dim: the attention width (``0``: ``features``); a narrow one keeps the per-point
      projections cheap.
    local_scales: kernel widths of :func:`local_moments`, fed as extra per-point inputs (``()``: none;
      ``configs/point_clouds.py`` uses three, for ~20% more step time).
    mix_scale: ``> 0``: every block also reads learned features of its neighbours, ``K m - m`` with
      ``K`` the row-normalised Gaussian kernel of the noisy input at this width (:func:`kernel`) and
      ``m`` a ``mix_dim``-wide projection of the block's input: a graph convolution on the kernel's
      soft neighbourhoods (Kipf & Welling 2017; the local aggregation of DGCNN, Wang et al. 2019, and
      PVD, Zhou et al. 2021, with fixed soft weights instead of a k-nearest-neighbour gather), so
      later blocks compare a point's features with its neighbours' rather than only with fixed input
      moments. ``0``: off.
    mix_dim: width of ``m`` (``0``: ``features // 2``).
  """
  features: int = 128
  hidden: int = 256
  num_blocks: int = 4
  emb_dim: int = 64
  embedding: str = "sinusoidal"
  time_scale: float = 1000.0
  fourier_scale: float = 16.0
  num_classes: int = 0
  out_dim: Optional[int] = None
  learned_variance: bool = False
  dropout: float = 0.0
  num_latents: int = 0
  num_heads: int = 4
  latent_dim: int = 0
  local_scales: Sequence[float] = ()
  mix_scale: float = 0.0
  mix_dim: int = 0
  dtype: Any = jnp.float32

  def __post_init__(self):
    _checks.positive_int(self.features, "features")
    _checks.positive_int(self.hidden, "hidden")
    _checks.positive_int(self.num_blocks, "num_blocks")
    _checks.positive_int(self.emb_dim, "emb_dim")
    if self.emb_dim < 4:
      raise ValueError(f"emb_dim must be >= 4, got {self.emb_dim}")
    if self.out_dim is not None:
      _checks.positive_int(self.out_dim, "out_dim")
    if not isinstance(self.local_scales, (tuple, list)) or not all(
        isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 for r in self.local_scales):
      raise ValueError(f"local_scales must be a tuple of positive kernel widths, got "
                       f"{self.local_scales!r}")
    if isinstance(self.mix_scale, bool) or not isinstance(self.mix_scale, (int, float)) or not (
        self.mix_scale >= 0 and np.isfinite(self.mix_scale)):
      raise ValueError(f"mix_scale must be a kernel width >= 0 (0: off), got {self.mix_scale!r}")
    _checks.int_at_least(self.mix_dim, "mix_dim", 0)
    _checks.int_at_least(self.num_latents, "num_latents", 0)
    _checks.positive_int(self.num_heads, "num_heads")
    _checks.int_at_least(self.latent_dim, "latent_dim", 0)
    width = self.latent_dim or self.features
    if self.num_latents and width % self.num_heads:
      raise ValueError(f"num_heads={self.num_heads} must divide the attention width {width} "
                       f"(latent_dim, or features when 0)")
    E.check_common_config(self)
    super().__post_init__()

  def check_input(self, x) -> None:
    E.check_x(x, 3, "[batch, N, 3] (a set of N points per example)", "PointNet")
    if x.shape[1] < 1:
      raise ValueError(f"PointNet needs at least one point per set, got shape {tuple(x.shape)}")

  @nn.compact
  def __call__(self, x, t, cond=None, train: bool = False):
    self.check_input(x)
    b = x.shape[0]
    t = E.prepare_t(t, b, "PointNet")
    labels = E.prepare_labels(cond, b, self.num_classes, "PointNet")
    dt, f = self.dtype, self.features
    out_dim = (self.out_dim or x.shape[-1]) * (2 if self.learned_variance else 1)
    dense = lambda n, name, zero=False: nn.Dense(
        n, dtype=dt, kernel_init=E.zeros_init if zero else E.default_init, name=name)
    norm = lambda name: nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=dt, name=name)

    emb = E.NoiseEmbedding(self.emb_dim, f, self.embedding, self.time_scale, self.fourier_scale,
                           self.num_classes, dt, name="noise_embed")(t, labels)
    h = dense(f, "in_x")(x.astype(dt))
    if self.local_scales:
      local = [local_moments(x.astype(jnp.float32), r) for r in self.local_scales]
      h = h + dense(f, "in_local")(jnp.concatenate(local, axis=-1).astype(dt))
    mix = kernel(x.astype(jnp.float32), self.mix_scale).astype(dt) if self.mix_scale else None
    for i in range(self.num_blocks):
      shift, scale = jnp.split(dense(2 * f, f"block{i}_film", zero=True)(nn.silu(emb)), 2, axis=-1)
      y = norm(f"block{i}_norm")(h) * (1 + scale[:, None, :]) + shift[:, None, :]
      if self.num_latents:
        y = y + self._latent_context(y, i, dense)
      pooled = jnp.concatenate([jnp.mean(y, axis=1), jnp.max(y, axis=1)], axis=-1)
      g = dense(self.hidden, f"block{i}_global")(pooled)
      pre = dense(self.hidden, f"block{i}_dense0")(y) + g[:, None, :]
      if mix is not None:
        m = dense(self.mix_dim or max(f // 2, 1), f"block{i}_mix_in")(y)
        pre = pre + nn.Dense(self.hidden, use_bias=False, dtype=dt, kernel_init=E.default_init,
                             name=f"block{i}_mix")(jnp.einsum("bij,bjc->bic", mix, m) - m)
      y = nn.silu(pre)
      y = nn.Dropout(self.dropout, deterministic=not train)(y)
      h = h + dense(f, f"block{i}_dense1", zero=True)(y)
    h = nn.silu(nn.LayerNorm(dtype=dt, name="norm_out")(h))
    return dense(out_dim, "out", zero=True)(h).astype(jnp.float32)

  def _latent_context(self, y, i: int, dense):
    """Induced set attention (Lee et al. 2019, "Set Transformer", ISAB): ``num_latents`` learned
    queries read all points, then every point reads the latents; ``O(N m)`` instead of ``O(N^2)``, and
    permutation-equivariant (the points enter only as keys/values of a softmax over them, then as
    queries one by one). Returns the zero-initialised update ``[B, N, features]``."""
    b, n, f = y.shape
    m, heads, d = self.num_latents, self.num_heads, self.latent_dim or y.shape[-1]
    split = lambda a: a.reshape(a.shape[0], a.shape[1], heads, d // heads)
    latents = self.param(f"block{i}_latents", nn.initializers.normal(1.0), (m, d), jnp.float32)
    kv = dense(2 * d, f"block{i}_kv")(y)
    q = jnp.broadcast_to(dense(d, f"block{i}_q")(latents.astype(self.dtype))[None], (b, m, d))
    z = attention(split(q), split(kv[..., :d]), split(kv[..., d:])).reshape(b, m, d)
    kv2 = dense(2 * d, f"block{i}_kv2")(z)
    out = attention(split(dense(d, f"block{i}_q2")(y)), split(kv2[..., :d]), split(kv2[..., d:]))
    return dense(f, f"block{i}_ctx_out", zero=True)(out.reshape(b, n, d))

  @staticmethod
  def data_channels(variables) -> int:
    """Per-point dimension ``D`` the parameters were initialised for."""
    return int(variables["params"]["in_x"]["kernel"].shape[0])
