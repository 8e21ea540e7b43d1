"""The text encoder of text-to-image denoisers: GLIDE's transformer, trained jointly with the denoiser
(Nichol et al. 2022, "GLIDE", Sec. 2.3 and App.: "we encode it into a sequence of K tokens and feed
these tokens into a Transformer model"), or the adapter in front of precomputed embeddings of a frozen
encoder (Saharia et al. 2022, "Imagen", Sec. 2.1: T5-XXL embeddings computed once, outside the model).

Layout::

  ids [B, L] (0 = padding)  -> Embed(vocab_size, width) + pos[:L]          # pos: learned [max_length, width]
  or emb [B, L, D_in], mask -> Dense(width)(LayerNorm(emb))                 # precomputed embeddings
  layers x pre-LN block:  h += Attn(LN(h), key mask);  h += MLP(LN(h))     # MLP: Dense(4 width), GELU, Dense
  tokens = LN(h) * mask;  pooled = masked mean of tokens over real positions

* Padding: a KEY padding mask in every self-attention block (``attention.attention``) gives padded
  keys weight exactly 0, so the real tokens' outputs do not depend on the padding (its ids, its count,
  or the embedding values at masked positions); padded positions' outputs are then zeroed. A caption
  ``[B, L1]`` and the same caption zero-padded to ``[B, L2]`` give the same real-token outputs.
* Pooling: GLIDE projects the last token's output (``xf_out[:, -1]``, the last of a fixed number of
  positions) as its class-embedding replacement. Here the pooled vector is the mean over the real tokens
  instead: with the key mask it is invariant to the padded length, and it needs no end-of-text token
  that the tokenizer would have to append. An all-padding row (the null caption of classifier-free
  guidance, Ho & Salimans 2022) pools to exactly 0.
* Initialisation: token table ``N(0, 0.02^2)``, position table ``N(0, 0.01^2)`` (CLIP's reference
  code, Radford et al. 2021, whose text transformer GLIDE's follows); other kernels Xavier-uniform
  (``embeddings.default_init``), biases zero.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jdiff import _checks
from jdiff.models import attention as A
from jdiff.models import embeddings as E

_NAME = "TextEncoder"


class TextBlock(nn.Module):
  """A pre-LayerNorm transformer block (bidirectional self-attention with a key padding mask, MLP)."""
  width: int
  heads: int
  mlp_ratio: int = 4
  impl: str = "einsum"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask):
    b, n, d = x.shape
    dense = lambda f, name: nn.Dense(f, dtype=self.dtype, kernel_init=E.default_init, name=name)
    ln = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)
    qkv = dense(3 * d, "qkv")(ln("norm1")(x)).reshape(b, n, 3, self.heads, d // self.heads)
    h = A.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], self.impl, key_mask=mask).reshape(b, n, d)
    x = x + dense(d, "proj")(h)
    h = nn.gelu(dense(self.mlp_ratio * d, "fc1")(ln("norm2")(x)), approximate=True)
    return x + dense(d, "fc2")(h)


class TextEncoder(nn.Module):
  """``(ids int [B, L]) -> (tokens [B, L, width], pooled [B, width], mask bool [B, L])``, or with
  ``embed_dim > 0`` ``(emb float [B, L, embed_dim], mask [B, L]) ->`` the same (see the module docstring).

  Attributes:
    vocab_size: ``> 0``: token ids in ``[0, vocab_size)``, 0 the padding id (its row exists but never
      reaches a real token's output).
    max_length: rows of the learned position table: the longest caption (required with a vocabulary).
    embed_dim: ``> 0``: the precomputed-embedding path (width of the given embeddings); exclusive with
      ``vocab_size``.
    width: token width of the transformer and of the outputs.
    layers: transformer blocks (0 allowed: the outputs are then the normalised input projection).
    heads: attention heads (must divide ``width``).
    mlp_ratio: MLP width / ``width`` (4).
    attention_impl: ``"einsum"`` or ``"xla"`` (``attention.attention``).
    dtype: computation dtype; parameters stay float32.
  """
  vocab_size: int = 0
  max_length: int = 0
  embed_dim: int = 0
  width: int = 128
  layers: int = 2
  heads: int = 4
  mlp_ratio: int = 4
  attention_impl: str = "einsum"
  dtype: Any = jnp.float32

  def __post_init__(self):
    for name in ("vocab_size", "max_length", "embed_dim", "layers"):
      _checks.int_at_least(getattr(self, name), name, 0)
    for name in ("width", "heads", "mlp_ratio"):
      _checks.positive_int(getattr(self, name), name)
    if (self.vocab_size > 0) == (self.embed_dim > 0):
      raise ValueError(f"{_NAME} needs exactly one of vocab_size > 0 (token ids) or embed_dim > 0 "
                       f"(precomputed embeddings), got vocab_size={self.vocab_size}, "
                       f"embed_dim={self.embed_dim}")
    if self.vocab_size > 0 and self.max_length < 1:
      raise ValueError(f"{_NAME} with a vocabulary needs max_length >= 1 (rows of the learned position "
                       f"table), got {self.max_length}")
    if self.width % self.heads:
      raise ValueError(f"{_NAME}: heads={self.heads} must divide width={self.width}")
    _checks.choice("attention_impl", self.attention_impl, A.ATTENTION_IMPLS)
    super().__post_init__()

  @nn.compact
  def __call__(self, inputs, mask=None):
    dt = self.dtype
    if self.vocab_size > 0:
      if inputs.ndim != 2 or not jnp.issubdtype(inputs.dtype, jnp.integer):
        raise ValueError(f"{_NAME} takes int token ids [batch, length], got {inputs.dtype} of shape "
                         f"{tuple(inputs.shape)}")
      length = inputs.shape[1]
      if length > self.max_length:
        raise ValueError(f"{_NAME}: {length} tokens exceed max_length={self.max_length}; truncate the "
                         f"captions or raise max_length")
      ids = jnp.asarray(inputs, jnp.int32)
      mask = ids != 0
      h = nn.Embed(self.vocab_size, self.width, dtype=dt, embedding_init=nn.initializers.normal(0.02),
                   name="token_embed")(ids)
      pos = self.param("pos_embed", nn.initializers.normal(0.01), (self.max_length, self.width))
      h = h + jnp.asarray(pos[:length], dt)[None]
    else:
      if inputs.ndim != 3 or inputs.shape[-1] != self.embed_dim or mask is None \
          or tuple(np.shape(mask)) != inputs.shape[:2]:
        raise ValueError(f"{_NAME} takes embeddings [batch, length, {self.embed_dim}] and a mask "
                         f"[batch, length], got {tuple(inputs.shape)} and "
                         f"{None if mask is None else tuple(np.shape(mask))}")
      mask = jnp.asarray(mask).astype(bool)
      h = nn.LayerNorm(epsilon=1e-5, dtype=dt, name="in_norm")(inputs.astype(dt))
      h = nn.Dense(self.width, dtype=dt, kernel_init=E.default_init, name="in_proj")(h)
    for i in range(self.layers):
      h = TextBlock(self.width, self.heads, self.mlp_ratio, self.attention_impl, dt, name=f"block{i}")(
          h, mask)
    h = nn.LayerNorm(epsilon=1e-5, dtype=dt, name="norm_out")(h)
    keep = mask[..., None].astype(h.dtype)
    tokens = h * keep
    count = jnp.maximum(keep.sum(axis=1), 1.0)                      # [B, 1]; 1 for an all-padding row
    pooled = tokens.sum(axis=1) / count
    return tokens, pooled, mask


def text_condition(m: nn.Module, c: dict, emb_width: int, impl: str, dtype):
  """GLIDE-style text conditioning for a denoiser ``m`` with the ``text_*`` fields (``UNet``, ``DiT``),
  called inside its compact ``__call__`` with the normalised condition ``c`` (``prepare_cond``).

  Returns ``(pooled_emb, context)``: the pooled text projected to ``emb_width`` (a Dense named
  ``text_pool_proj``), to be ADDED to the noise (+ label) embedding every block reads, as GLIDE uses its
  pooled text in place of a class embedding (Nichol et al. 2022, Sec. 2.3); and ``(tokens, mask)`` for
  the joint attention of every attention layer (``attention.append_context``). ``(None, None)`` when
  ``m`` takes no text, so a text-free model gets no new parameter (its checkpoints still restore).
  """
  if not (m.text_vocab_size or m.text_embed_dim):
    return None, None
  enc = TextEncoder(vocab_size=m.text_vocab_size, max_length=m.text_length, embed_dim=m.text_embed_dim,
                    width=m.text_width, layers=m.text_layers, heads=m.text_heads, attention_impl=impl,
                    dtype=dtype, name="text_encoder")
  if m.text_vocab_size:
    tokens, pooled, mask = enc(c["caption"])
  else:
    tokens, pooled, mask = enc(c["text_emb"], c["text_mask"])
  pooled = nn.Dense(emb_width, dtype=dtype, kernel_init=E.default_init, name="text_pool_proj")(pooled)
  return pooled, (tokens, mask)


__all__ = ["TextBlock", "TextEncoder", "text_condition"]
