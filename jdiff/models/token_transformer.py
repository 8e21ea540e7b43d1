"""TokenTransformer: a bidirectional transformer denoiser over token sequences, for discrete (categorical)
diffusion of text: D3PM (Austin et al. 2021, arXiv:2107.03006) and MDLM (Sahoo et al. 2024,
arXiv:2406.07524) both denoise with such a transformer, conditioned on the noise level. It is DiT's
network (``jdiff.models.dit``; Peebles & Xie 2023) without patches: every token is one position.

Layout::

  h = Embed(vocab_size, hidden)(x) + pos1d           # [B, L, hidden]; pos1d: fixed 1-D sin-cos
  c = MLP(embed(t)) + Embed(label)                    # embeddings.NoiseEmbedding, width hidden
  depth x dit.DiTBlock(c)                             # adaLN-Zero, full (non-causal) self-attention
  shift, scale = Dense_zero(SiLU(c))
  logits = Dense_zero(LN(h) * (1 + scale) + shift)    # [B, L, num_outputs], float32

* Vocabularies: the input holds ids in ``[0, vocab_size)``; the output gives logits over the
  ``num_outputs`` data tokens. An absorbing (masking) process has one more input id than outputs (the
  mask token, which the clean data never holds); a uniform process has as many. Both are filled in by
  the experiment builder from the data's vocabulary and the process.
* Attention is bidirectional: every position attends to every position (no causal mask), as in D3PM's
  and MDLM's denoisers: ``p(x0 | x_t)`` may use the whole noisy sequence.
* Position embedding: the fixed 1-D sine-cosine one (Vaswani et al. 2017, Sec. 3.5; MAE's 1-D form,
  ``E.sincos_pos_embed_1d``), a constant of the program as DiT's 2-D one is, not a ``[max_length,
  hidden]`` table. Why: a learned table has ``max_length * hidden`` parameters (0.26M at 1024 x 256,
  as much as a block's attention) of which the rows past the training length are never trained yet
  sit in every checkpoint and optimiser state; the fixed embedding costs nothing, gives the same model
  whatever ``max_length`` is (``max_length`` only bounds the input length, with a clear error), and is
  defined for every position a shorter or longer run might use. (MDLM uses rotary embeddings, also
  parameter-free; the additive sin-cos keeps ``dit.DiTBlock`` reusable unchanged.)
* Token embedding: ``N(0, 1)`` entries (Vaswani et al. 2017 scale their ``1/sqrt(hidden)`` table by
  ``sqrt(hidden)``: the same thing), so the token and position signals have comparable norms
  (``sqrt(hidden)`` and ``sqrt(hidden / 2)``); Flax's default ``N(0, 1/hidden)`` would leave the token
  identity a small fraction of the sum at initialisation.
* Zero initialisation (adaLN-Zero, as DiT and MDLM's ``DDiTFinalLayer``): every block's modulation, the
  final adaLN modulation and the output projection start at zero, so every block is the identity and
  the logits are exactly zero: a uniform ``p(x0 | x_t)`` over the ``num_outputs`` tokens, a cross-entropy
  of ``log(num_outputs)``, a sound start for a classifier. The first gradient step reaches only the
  output layer (its bias learns the token frequencies at once); from the second on, all weights move.
* Other weights: Xavier-uniform, biases zero (``embeddings.default_init``), as DiT.

``remat=True`` rematerialises every block in the backward pass (``nn.remat``), as DiT's.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jdiff import _checks
from jdiff.models import dit
from jdiff.models import embeddings as E

_NAME = "TokenTransformer"


class TokenTransformer(nn.Module):
  """Bidirectional transformer denoiser of tokens ``(x int [B, L], t [B], cond [B] | None) ->
  logits float32 [B, L, num_outputs]`` (see the module docstring).

  Attributes:
    vocab_size: number of input token ids (the data's tokens, plus the mask token of an absorbing
      process); required (> 0): the experiment builder fills it from the data and the process.
    num_outputs: number of data tokens, the logits' last axis (``<= vocab_size``); required (> 0), filled
      by the builder as ``vocab_size`` is.
    hidden_size, depth, num_heads: token width, number of ``dit.DiTBlock``\\ s, attention heads
      (``num_heads`` must divide ``hidden_size``, which must be even for the sin-cos embedding).
    mlp_ratio: MLP width / hidden size.
    freq_dim, embedding, time_scale, fourier_scale: the noise-level embedding, as for ``DiT``.
    num_classes: ``> 0`` adds a label embedding with ``num_classes + 1`` rows (the last is NULL).
    max_length: the longest sequence accepted (the position embedding is fixed: no parameter depends
      on it).
    dropout: dropout on the attention and MLP branch outputs with ``train=True``.
    remat: rematerialise each block in the backward pass.
    rope: rotary position embedding of the queries and keys in every block (Su et al. 2021; MDLM's
      transformer uses it too), on top of the fixed sine-cosine embedding added to the tokens. Measured
      here: without it a masked position (whose own token is the mask) found its neighbours only after
      a long plateau: on fortunes a 2-block model predicted masked characters at the unigram rate (4.5
      bits) for 700 steps; with it, it left that plateau after ~250 steps.
    dtype: computation dtype (e.g. ``"bfloat16"``); parameters stay float32, the logits are float32.
  """
  vocab_size: int = 0
  num_outputs: int = 0
  hidden_size: int = 256
  depth: int = 4
  num_heads: int = 4
  mlp_ratio: float = 4.0
  freq_dim: int = 256
  embedding: str = "sinusoidal"
  time_scale: float = 1000.0
  fourier_scale: float = 16.0
  num_classes: int = 0
  max_length: int = 1024
  dropout: float = 0.0
  remat: bool = False
  rope: bool = True
  dtype: Any = jnp.float32

  # Not a field: the logits have no variance channels (read by the shared configuration checks).
  learned_variance = False

  def __post_init__(self):
    for name in ("vocab_size", "num_outputs"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(
            f"{_NAME} needs {name} > 0, got {v!r}: the experiment builder fills vocab_size and "
            f"num_outputs from the data's vocabulary and the process; when creating the model by hand "
            f"pass vocab_size= (input ids, a mask token included) and num_outputs= (data tokens)")
    if self.num_outputs > self.vocab_size:
      raise ValueError(f"{_NAME}: num_outputs={self.num_outputs} (data tokens) cannot exceed "
                       f"vocab_size={self.vocab_size} (input ids: the data tokens, plus a mask token "
                       f"for an absorbing process)")
    for name in ("hidden_size", "depth", "num_heads", "max_length"):
      _checks.positive_int(getattr(self, name), name)
    if self.hidden_size % self.num_heads:
      raise ValueError(f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size}")
    if self.hidden_size % 2:
      raise ValueError(f"hidden_size must be even (1-D sin-cos position embedding), got "
                       f"{self.hidden_size}")
    if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float)) \
        or not self.mlp_ratio > 0:
      raise ValueError(f"mlp_ratio must be a number > 0, got {self.mlp_ratio!r}")
    _checks.int_at_least(self.freq_dim, "freq_dim", 4)
    if self.remat not in (True, False):
      raise ValueError(f"remat must be a bool, got {self.remat!r}")
    E.check_common_config(self)
    super().__post_init__()

  def check_input(self, x) -> None:
    """Checks of ``x``: integer ids ``[batch, length]``, ``1 <= length <= max_length``; when ``x`` is
    concrete (not traced), every id in ``[0, vocab_size)``."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
      x = np.asarray(x)
    if not (jnp.issubdtype(x.dtype, jnp.integer) and x.dtype != jnp.bool_):
      raise ValueError(f"{_NAME} takes integer token ids [batch, length], got {x.dtype} of shape "
                       f"{tuple(x.shape)}; pass ids in [0, {self.vocab_size}) as int32")
    if x.ndim != 2:
      raise ValueError(f"{_NAME} expects x of shape [batch, length] (integer token ids), got shape "
                       f"{tuple(x.shape)}")
    if not 1 <= x.shape[1] <= self.max_length:
      raise ValueError(f"{_NAME}: sequence length {x.shape[1]} is outside [1, max_length="
                       f"{self.max_length}]; raise max_length (it adds no parameter) or shorten the "
                       f"sequences")
    if _checks.is_concrete(x):
      a = np.asarray(x)
      if a.size and (a.min() < 0 or a.max() >= self.vocab_size):
        raise ValueError(f"{_NAME}: token ids must lie in [0, {self.vocab_size}) (vocab_size), got "
                         f"values in [{a.min()}, {a.max()}]")

  @nn.compact
  def __call__(self, x, t, cond=None, train: bool = False):
    self.check_input(x)
    b, length = x.shape
    t = E.prepare_t(t, b, _NAME)
    labels = E.prepare_labels(cond, b, self.num_classes, _NAME)
    dt = jnp.dtype(self.dtype)
    hidden = self.hidden_size

    h = nn.Embed(self.vocab_size, hidden, dtype=dt, embedding_init=nn.initializers.normal(1.0),
                 name="token_embed")(jnp.asarray(x, jnp.int32))            # [B, L, hidden]
    h = h + jnp.asarray(E.sincos_pos_embed_1d(hidden, np.arange(length)), dt)[None]

    c = E.NoiseEmbedding(self.freq_dim, hidden, self.embedding, self.time_scale, self.fourier_scale,
                         self.num_classes, dt, name="noise_embed")(t, labels)

    block = nn.remat(dit.DiTBlock) if self.remat else dit.DiTBlock
    for i in range(self.depth):
      h = block(hidden, self.num_heads, int(hidden * self.mlp_ratio), self.dropout, not train, dt,
                self.rope, name=f"block{i}")(h, c)

    shift, scale = jnp.split(nn.Dense(2 * hidden, dtype=dt, kernel_init=E.zeros_init,
                                      name="final_adaLN_modulation")(nn.silu(c)), 2, axis=-1)
    h = dit.modulate(dit._layer_norm(dt, "norm_out")(h), shift, scale)
    h = nn.Dense(self.num_outputs, dtype=dt, kernel_init=E.zeros_init, name="final")(h)
    return h.astype(jnp.float32)

  @staticmethod
  def data_channels(variables) -> None:
    """``None``: token ids have no channel axis (``functional`` checks ``input_vocab`` instead)."""
    return None

  @staticmethod
  def input_vocab(variables) -> int:
    """Number of input token ids the parameters were initialised for (rows of the token table)."""
    return int(variables["params"]["token_embed"]["embedding"].shape[0])
