"""Text-to-image and super-resolution conditioning of the U-Net and DiT (GLIDE, Nichol et al. 2022,
Sec. 2.3; Imagen, Saharia et al. 2022; cascaded diffusion, Ho et al. 2021): the text encoder's padding
invariance and pooling, joint attention (GLIDE's encoder_kv) and the pooled-text embedding both live,
the null caption, the precomputed-embedding path and its mask, the low-resolution input, the input
checks, unchanged parameter trees of text-free models, and jit + grad.

Networks run with random parameters of realistic scale (``_params.random_params``): their output layers
start at zero (DDPM's ``conv_out``, DiT's adaLN-Zero), so at initialisation every condition would give
the same (zero) output and no "the condition changes the output" test could fail. Each network is
compiled once per input shape (module fixtures, jitted ``apply``); models are tiny (8x8 images).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _params

from jdiff import models
from jdiff.models import attention as attn_lib
from jdiff.models import embeddings

_rel_diff = _params.rel_diff
TEXT = dict(text_vocab_size=12, text_length=8, text_width=16, text_layers=1, text_heads=2)
UNET = dict(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0)
DIT = dict(hidden_size=32, depth=2, num_heads=2, patch_size=4)
X = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
T = jnp.array([0.3, 0.8])
CAPTION = jnp.array([[3, 7, 1, 0], [5, 2, 0, 0]], jnp.int32)   # zero-padded at the end
DELTA = jnp.linspace(-1.0, 1.0, 6)  # a change of an embedding vector that a LayerNorm does not remove


def _pad(ids, length):
  return jnp.pad(ids, ((0, 0), (0, length - ids.shape[1])))


def _setup(name, x, cond, **kw):
  """``(module, random params, jitted apply)`` for ``models.create(name, **kw)``."""
  module = models.create(name, **kw)
  init, apply = models.functional(module)
  return module, _params.random_params(init, x, T, cond), jax.jit(apply)


def _zero(params, *names):
  """``params`` with every subtree named in ``names`` (at any depth) set to zero."""
  def z(path, leaf):
    keys = [getattr(p, "key", None) for p in path]
    return jnp.zeros_like(leaf) if any(n in keys for n in names) else leaf
  return jax.tree_util.tree_map_with_path(z, params)


def _names(params) -> set:
  return {str(getattr(p, "key", p)) for path, _ in jax.tree_util.tree_leaves_with_path(params) for p in path}


@pytest.fixture(scope="module")
def unet_text():
  return _setup("unet", X, {"caption": CAPTION}, **UNET, **TEXT)


@pytest.fixture(scope="module")
def dit_text():
  return _setup("dit", X, {"caption": CAPTION}, **DIT, **TEXT)


# ----------------------------------------------------------------------------------------------------
# The text encoder and the masked attention it is built on.
# ----------------------------------------------------------------------------------------------------


def test_key_mask_gives_padded_keys_zero_weight():
  q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, 3, 2, 4)) for i in range(3))
  mask = jnp.array([[True, True, False], [True, False, False]])
  junk = jnp.where(mask[:, :, None, None], 0.0, 100.0)  # only masked keys / values change
  attend = jax.jit(attn_lib.attention, static_argnums=3)
  for impl in ("einsum", "xla"):
    ref = attend(q, k, v, impl, mask)
    np.testing.assert_allclose(attend(q, k + junk, v - junk, impl, mask), ref, atol=1e-5)
    np.testing.assert_allclose(attend(q[:1], k[:1, :2], v[:1, :2], impl, None), ref[:1], atol=1e-5)
    assert _rel_diff(attend(q, k, v, impl, None), ref) > 1e-2  # the mask does something


def test_text_encoder_ignores_padding_and_pools_real_tokens():
  enc = models.TextEncoder(vocab_size=12, max_length=8, width=16, layers=2, heads=2)
  params = _params.random_params(lambda k, ids: enc.init(k, ids), CAPTION)
  run = jax.jit(enc.apply)
  tok, pooled, mask = run(params, CAPTION)
  tok8, pooled8, mask8 = run(params, _pad(CAPTION, 8))
  assert tok.shape == (2, 4, 16) and pooled.shape == (2, 16) and mask.dtype == jnp.bool_
  np.testing.assert_array_equal(mask, CAPTION != 0)
  np.testing.assert_allclose(tok8[:, :4], tok, atol=1e-5)   # the padded length changes nothing
  np.testing.assert_allclose(pooled8, pooled, atol=1e-5)
  assert float(jnp.abs(tok8 * ~mask8[..., None]).max()) == 0.0  # padded outputs are zero
  np.testing.assert_allclose(pooled[1], tok[1, :2].mean(0), atol=1e-5)  # mean over the real tokens
  # Padding never reaches a real token: changing a later real token changes the earlier ones (the
  # attention is bidirectional), so the invariance above is the mask's doing, not locality.
  assert _rel_diff(run(params, CAPTION.at[1, 1].set(9))[0][1, 0], tok[1, 0]) > 1e-3
  null_tok, null_pooled, _ = run(params, jnp.zeros((2, 4), jnp.int32))
  assert float(jnp.abs(null_pooled).max()) == 0.0 and float(jnp.abs(null_tok).max()) == 0.0


@pytest.mark.parametrize("layers", [0, 1])
def test_text_encoder_embedding_path_ignores_masked_values(layers):
  enc = models.TextEncoder(embed_dim=6, width=16, layers=layers, heads=2)
  emb = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 6))
  mask = jnp.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
  params = _params.random_params(lambda k, e, m: enc.init(k, e, m), emb, mask)
  run = jax.jit(enc.apply)
  tok, pooled, _ = run(params, emb, mask)
  tok2, pooled2, _ = run(params, emb + 10.0 * (1 - mask)[..., None], mask)
  np.testing.assert_allclose(tok2, tok, atol=1e-5)
  np.testing.assert_allclose(pooled2, pooled, atol=1e-5)
  assert _rel_diff(run(params, emb.at[0, 0].add(DELTA), mask)[1][0], pooled[0]) > 1e-3


# ----------------------------------------------------------------------------------------------------
# Text-conditioned U-Net and DiT.
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("net", ["unet_text", "dit_text"])
def test_caption_padding_null_and_liveness(net, request):
  """Two caption lengths only (1 and 4: one compilation each); the text encoder's own test covers
  longer real parts."""
  module, params, apply = request.getfixturevalue(net)
  out = apply(params, X, T, {"caption": CAPTION})
  assert out.shape == X.shape and np.all(np.isfinite(np.asarray(out)))
  # Zero padding changes nothing: a one-token caption, and the same caption padded to 4 tokens.
  short = CAPTION[:, :1]
  np.testing.assert_allclose(apply(params, X, T, {"caption": _pad(short, 4)}),
                             apply(params, X, T, {"caption": short}), atol=1e-5)
  # cond=None, {} and a missing caption all mean the null caption: the all-zero caption.
  null = apply(params, X, T, {"caption": jnp.zeros_like(CAPTION)})
  np.testing.assert_allclose(apply(params, X, T, None), null, atol=1e-5)
  np.testing.assert_allclose(apply(params, X, T, {}), null, atol=1e-5)
  assert _rel_diff(out, null) > 1e-3
  # Per example: changing example 0's caption leaves example 1 alone.
  other = apply(params, X, T, {"caption": CAPTION.at[0, 0].set(9)})
  assert _rel_diff(other[0], out[0]) > 1e-3
  np.testing.assert_allclose(other[1], out[1], atol=1e-5)
  # Both routes are live on their own: joint attention (pooled projection zeroed) and the pooled
  # embedding (every context_kv zeroed: text keys and values are then 0 whatever the tokens; the two
  # captions compared have the same padding, so the count of valid text keys is the same too).
  for cut in ("text_pool_proj", "context_kv"):
    p = _zero(params, cut)
    changed = apply(p, X, T, {"caption": CAPTION.at[0, 0].set(9)})[0]
    assert _rel_diff(changed, apply(p, X, T, {"caption": CAPTION})[0]) > 1e-3, cut


def test_text_embedding_path_with_mask_in_a_super_resolution_unet():
  """An Imagen-style stage: precomputed text embeddings + mask, and a low-resolution input."""
  x = X[..., :2]  # x's channels differ from low_res's, so data_channels is seen to read x's
  emb = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 6))
  mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], jnp.int32)
  low = jax.random.normal(jax.random.PRNGKey(3), (2, 4, 4, 3))
  cond = {"text_emb": emb, "text_mask": mask, "low_res": low, "low_res_t": jnp.array([0.0, 0.5])}
  module = models.create("unet", **UNET, text_embed_dim=6, text_width=16, text_layers=1, text_heads=2,
                         low_res_channels=3)
  init, apply = models.functional(module)
  params = _params.random_params(init, x, T, cond)
  apply = jax.jit(apply)
  out = apply(params, x, T, cond)
  assert out.shape == x.shape and models.UNet.data_channels(params) == 2
  assert params["params"]["conv_in"]["kernel"].shape == (3, 3, 2, 8)
  # Values at masked positions change nothing; at real ones they do.
  np.testing.assert_allclose(apply(params, x, T, {**cond, "text_emb": emb + 5.0 * (1 - mask)[..., None]}),
                             out, atol=1e-5)
  assert _rel_diff(apply(params, x, T, {**cond, "text_emb": emb.at[:, 0].add(DELTA)}), out) > 1e-3
  # The low-resolution image and its augmentation level both reach the output.
  assert _rel_diff(apply(params, x, T, {**cond, "low_res": low.at[:, 0, 0].add(1.0)}), out) > 1e-3
  assert _rel_diff(apply(params, x, T, {**cond, "low_res_t": jnp.array([0.2, 0.5])})[0], out[0]) > 1e-3
  # A low_res already at x's size is used as is: the bilinear upsampling of the 4x4 one gives `out`.
  full = jax.image.resize(low, (2, 8, 8, 3), "bilinear")
  np.testing.assert_allclose(apply(params, x, T, {**cond, "low_res": full}), out, atol=1e-5)


def test_dit_embedding_path_ignores_masked_values_and_null_is_all_masked():
  emb = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 6))
  mask = jnp.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], bool)
  _, params, apply = _setup("dit", X, {"text_emb": emb, "text_mask": mask}, **DIT, text_embed_dim=6,
                            text_width=16, text_layers=0, text_heads=2)
  out = apply(params, X, T, {"text_emb": emb, "text_mask": mask})
  np.testing.assert_allclose(apply(params, X, T, {"text_emb": emb * mask[..., None], "text_mask": mask}),
                             out, atol=1e-5)
  assert _rel_diff(apply(params, X, T, {"text_emb": emb + DELTA, "text_mask": mask})[0], out[0]) > 1e-3
  # A missing text_emb is the null caption: an all-zero mask (example 1's), whatever the values.
  np.testing.assert_allclose(apply(params, X, T, None)[1], out[1], atol=1e-5)
  np.testing.assert_allclose(apply(params, X, T, {})[0], apply(params, X, T, {
      "text_emb": emb, "text_mask": jnp.zeros_like(mask)})[0], atol=1e-5)


def test_jit_and_grad_through_a_text_unet_without_attention_resolutions():
  """One level and no attn_resolutions: the middle block's attention still carries the tokens. The
  gradient reaches the text encoder and the joint-attention projections, and stays finite for the null
  caption (every text key masked)."""
  module = models.create("unet", ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
                         **TEXT)
  init, apply = models.functional(module)
  x = X[:, :4, :4]
  params = _params.random_params(init, x, T, {"caption": CAPTION})

  @jax.jit
  def grads(p, caption):
    return jax.grad(lambda p: jnp.mean(apply(p, x, T, {"caption": caption}) ** 2))(p)["params"]

  g = grads(params, CAPTION)
  for path in (("text_encoder", "token_embed", "embedding"), ("text_encoder", "block0", "qkv", "kernel"),
               ("AttnBlock_0", "context_kv", "kernel"), ("text_pool_proj", "kernel")):
    leaf = g
    for k in path:
      leaf = leaf[k]
    assert np.all(np.isfinite(np.asarray(leaf))) and float(jnp.abs(leaf).max()) > 0, path
  g_null = grads(params, jnp.zeros_like(CAPTION))
  assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree_util.tree_leaves(g_null))
  assert float(jnp.abs(g_null["text_encoder"]["token_embed"]["embedding"]).max()) == 0.0


# ----------------------------------------------------------------------------------------------------
# Parameter trees and input checks.
# ----------------------------------------------------------------------------------------------------

_ADDED = {"text_encoder", "text_pool_proj", "context_kv", "low_res_in", "low_res_embed"}


@pytest.mark.parametrize("name,kw", [("unet", UNET), ("dit", DIT)])
def test_text_free_parameter_trees_are_unchanged(name, kw):
  """A text-free model has none of the new parameters, and a text model is the text-free one plus
  only those (so existing checkpoints restore)."""
  shapes = lambda m, c: jax.eval_shape(models.functional(m)[0], jax.random.PRNGKey(0), X, T, c)
  plain = shapes(models.create(name, **kw), None)
  assert not _names(plain) & _ADDED
  extra = dict(low_res_channels=3) if name == "unet" else {}
  cond = {"caption": CAPTION, **({"low_res": X[:, ::2, ::2], "low_res_t": T} if extra else {})}
  text = shapes(models.create(name, **kw, **TEXT, **extra), cond)
  strip = lambda d: {k: strip(v) for k, v in d.items() if k not in _ADDED} if isinstance(d, dict) else d
  assert jax.tree_util.tree_structure(strip(text)) == jax.tree_util.tree_structure(plain)
  assert _names(text) >= ({"text_encoder", "text_pool_proj", "context_kv"} | (
      {"low_res_in", "low_res_embed"} if extra else set()))
  # init with cond=None creates every text parameter (the null caption runs the same path).
  assert jax.tree_util.tree_structure(shapes(models.create(name, **kw, **TEXT), None)) == \
      jax.tree_util.tree_structure(shapes(models.create(name, **kw, **TEXT), {"caption": CAPTION}))


def _raises(match, fn, *args, **kw):
  with pytest.raises(ValueError, match=match):
    fn(*args, **kw)


def test_bad_text_configs_raise():
  _raises("text_vocab_size=12 .* and text_embed_dim=4 .* are exclusive", models.create, "unet",
          text_vocab_size=12, text_length=4, text_embed_dim=4)
  _raises("text_vocab_size=12 needs text_length >= 1", models.create, "dit", **DIT, text_vocab_size=12)
  _raises("text_heads=3 must divide text_width=16", models.create, "unet", text_embed_dim=4, text_width=16,
          text_heads=3)
  _raises("text_length=8 is set but the model takes no text", models.create, "unet", text_length=8)
  _raises("low_res_channels must be an integer >= 0", models.create, "unet", low_res_channels=-1)
  _raises("unknown argument.*low_res_channels", models.create, "dit", **DIT, low_res_channels=3)


def test_bad_conditions_raise_before_tracing(unet_text, dit_text):
  module, params, jitted = unet_text
  apply = models.functional(module)[1]
  for f in (apply, jitted):  # the shape checks are static: they also run under jit
    _raises(r"UNet takes the conditions \['caption'\], got 'foo'; drop it", f, params, X, T,
            {"caption": CAPTION, "foo": T})
    _raises(r"caption'\] has 9 tokens but text_length=8", f, params, X, T,
            {"caption": jnp.ones((2, 9), jnp.int32)})
    _raises(r"caption'\] must have shape \[batch, length\]", f, params, X, T, {"caption": CAPTION[:1]})
  _raises(r"caption'\] ids must lie in \[0, 12\)", apply, params, X, T, {"caption": CAPTION.at[0, 0].set(12)})
  _raises(r"caption'\] must be int token ids", apply, params, X, T, {"caption": CAPTION.astype(jnp.float32)})
  _raises("got 'text_emb'; drop it or create the model with text_embed_dim=D", apply, params, X, T,
          {"text_emb": jnp.zeros((2, 3, 4)), "text_mask": jnp.ones((2, 3))})
  _raises("got 'low_res'; drop it or create the model with low_res_channels=C", apply, params, X, T,
          {"low_res": X})
  _raises(r"num_classes=0 \(unconditional\) but got labels", apply, params, X, T, {"label": T.astype(int)})
  dit_module, dit_params, _ = dit_text
  _raises(r"DiT takes the conditions \['caption'\], got 'low_res'; drop it \(known",
          models.functional(dit_module)[1], dit_params, X, T, {"low_res": X})

  emb_model = models.create("dit", **DIT, text_embed_dim=6, text_width=16, text_layers=0, text_heads=2)
  init = models.functional(emb_model)[0]
  key, emb, mask = jax.random.PRNGKey(0), jnp.zeros((2, 5, 6)), jnp.ones((2, 5), jnp.int32)
  _raises(r"text_emb'\] has width 4 but text_embed_dim=6", init, key, X, T,
          {"text_emb": jnp.zeros((2, 5, 4)), "text_mask": mask})
  _raises(r"text_mask'\] must have the shape \[batch, length\]=\(2, 5\)", init, key, X, T,
          {"text_emb": emb, "text_mask": mask[:, :4]})
  _raises(r"text_emb'\] needs cond\['text_mask'\]", init, key, X, T, {"text_emb": emb})
  _raises("has 'text_mask' but no 'text_emb'", init, key, X, T, {"text_mask": mask})
  _raises(r"text_mask'\] must hold 0 \(padding\) or 1", init, key, X, T,
          {"text_emb": emb, "text_mask": 2 * mask})


def test_bad_low_res_raises():
  module = models.create("unet", **UNET, low_res_channels=3)
  init = models.functional(module)[0]
  key, lr_t = jax.random.PRNGKey(0), jnp.zeros((2,))
  _raises(r"low_res_channels=3 \(super-resolution\) and needs cond\['low_res'\]", init, key, X, T, None)
  _raises(r"low_res'\] has 1 channels but low_res_channels=3", init, key, X, T,
          {"low_res": X[..., :1], "low_res_t": lr_t})
  _raises(r"spatial size \(3, 3\) must divide x's \(8, 8\)", init, key, X, T,
          {"low_res": jnp.zeros((2, 3, 3, 3)), "low_res_t": lr_t})
  _raises(r"low_res'\] must have shape", init, key, X, T, {"low_res": X[0], "low_res_t": lr_t})
  _raises(r"low_res'\] needs cond\['low_res_t'\]", init, key, X, T, {"low_res": X})
  _raises(r"low_res_t'\] \(noise-augmentation level\) must lie in \[0, 1\]", init, key, X, T,
          {"low_res": X, "low_res_t": jnp.array([0.0, 1.5])})
  assert embeddings.cond_keys(module) == ("low_res", "low_res_t")


# ----------------------------------------------------------------------------------------------------
# Positions in the U-Net's attention (captions that name places)


@pytest.mark.parametrize("shape", [(2, 4, 6, 8), (2, 6, 8)], ids=["image", "signal"])
def test_attention_positions_break_the_permutation_symmetry_without_parameters(shape):
  """Self-attention alone is permutation-equivariant over positions: mirroring the input mirrors the
  output, so it cannot tell left from right. ``positions=True`` adds the fixed sin-cos embedding of each
  place (2-D on images, 1-D on signals) and breaks that symmetry, with the same parameters."""
  from jdiff.models import unet as unet_lib
  x = jax.random.normal(jax.random.PRNGKey(3), shape)
  plain, placed = unet_lib.AttnBlock(num_heads=2), unet_lib.AttnBlock(num_heads=2, positions=True)
  params = _params.random_params(plain.init, x)
  assert jax.tree_util.tree_structure(jax.eval_shape(placed.init, jax.random.PRNGKey(0), x)) == \
      jax.tree_util.tree_structure(params)
  mirror = lambda a: jnp.flip(a, axis=-2)  # along W (images) or L (signals)
  np.testing.assert_allclose(plain.apply(params, mirror(x)), mirror(plain.apply(params, x)), atol=1e-5)
  assert _rel_diff(placed.apply(params, mirror(x)), mirror(placed.apply(params, x))) > 0.05
  # The embedding: row-major places, the first half of the channels encoding the column.
  e = unet_lib.position_embedding(8, shape[1:-1])
  assert e.shape == (int(np.prod(shape[1:-1])), 8)
  if len(shape) == 4:
    np.testing.assert_array_equal(e.reshape(4, 6, 8)[:, :, :4], np.broadcast_to(
        embeddings.sincos_pos_embed_1d(4, np.arange(6)), (4, 6, 4)))


def test_unet_attn_positions_adds_no_parameters_and_changes_the_output(unet_text):
  module, params, jitted = unet_text
  placed = models.create("unet", **UNET, **TEXT, attn_positions=True)
  init, apply = models.functional(placed)
  cond = {"caption": CAPTION}
  assert jax.tree_util.tree_structure(jax.eval_shape(init, jax.random.PRNGKey(0), X, T, cond)) == \
      jax.tree_util.tree_structure(params)
  assert _rel_diff(jax.jit(apply)(params, X, T, cond), jitted(params, X, T, cond)) > 1e-3
  _raises("attn_positions=True needs every level's channel count divisible by 4.*: change ch", models.create,
          "unet", ch=6, ch_mult=(1,), attn_positions=True)
  _raises("attn_positions must be True or False, got 'yes'", models.create, "unet", attn_positions="yes")
