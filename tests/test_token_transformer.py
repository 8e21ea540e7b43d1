"""TokenTransformer (a bidirectional DiT over token sequences, for discrete diffusion): logits' shape and
dtype, positions matter, attention is bidirectional (not causal), time and labels are used and
``cond=None`` is the NULL label, dropout, functional init and the zero initialisation (uniform logits;
the first gradient step reaches only the output layer), input and configuration errors and the
parameter count.

Tiny configurations keep the tests fast; XLA compilation dominates their time on CPU, so every forward
runs through one jitted functional apply (one compilation per train flag and condition structure).
Networks are evaluated with random parameters of realistic scale (drawn with numpy, no init
compilation): at initialisation the adaLN-Zero gates and the output layer are zero, so every input maps
to zero logits. Remat and bfloat16 run the same ``dit.DiTBlock`` code that tests/test_dit.py checks.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _params

from jdiff import models
from jdiff.models import embeddings as E

V, O, L = 12, 11, 10  # input ids (11 data tokens + a mask token), outputs, sequence length
TINY = dict(vocab_size=V, num_outputs=O, hidden_size=32, depth=2, num_heads=2, max_length=16)
# XLA's CPU backend optimisation roughly doubles these tiny programs' compile time, which is the tests'
# whole cost: compile without it (the same computation; functional's init does the same).
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


_random_params, _rel_diff = _params.random_params, _params.rel_diff


def _tokens(shape=(4, L), seed=0, high=V):
  return jnp.asarray(np.random.default_rng(seed).integers(0, high, shape), jnp.int32)


@pytest.fixture(scope="module")
def cond_model():
  """A tiny class-conditional TokenTransformer with dropout, random parameters and the functional apply,
  jitted (``run``; one compilation per ``train`` value and condition structure)."""
  m = models.create("token_transformer", **TINY, num_classes=3, dropout=0.3)
  init, apply = models.functional(m)
  x = _tokens()
  t = jnp.array([0.1, 0.4, 0.7, 1.0])
  params = _random_params(init, x, t, jnp.zeros((4,), jnp.int32))
  run = _jit(apply, static_argnames="train")
  return m, apply, run, params, x, t


def _lab(*v):
  return jnp.array(v, jnp.int32)


def test_output_shape_dtype_and_mask_token_input(cond_model):
  m, _, run, params, x, t = cond_model
  out = run(params, x, t, _lab(0, 1, 2, 3))
  assert out.shape == (4, L, O) and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out)))
  masked = x.at[:, ::2].set(V - 1)  # the mask token (id V - 1) is a valid input, not an output
  assert bool(jnp.all(jnp.isfinite(run(params, masked, t, _lab(0, 1, 2, 3)))))
  assert m.data_channels(params) is None and m.input_vocab(params) == V
  assert isinstance(models.create("token_transformer", vocab_size=5, num_outputs=5),
                    models.TokenTransformer)
  assert models.MODELS["token_transformer"] is models.TokenTransformer


def test_positions_matter_and_attention_is_bidirectional(cond_model):
  _, _, run, params, x, t = cond_model
  y = _lab(0, 1, 2, 3)
  out = run(params, x, t, y)
  # Not permutation-equivariant: reversing the sequence does not reverse the logits.
  rev = run(params, x[:, ::-1], t, y)
  assert _rel_diff(rev[:, ::-1], out) > 1e-2
  # Bidirectional: changing the last token changes the logits at every earlier position (a causal
  # mask would leave positions 0 .. L-2 exactly unchanged).
  x2 = x.at[:, -1].set((x[:, -1] + 1) % V)
  out2 = run(params, x2, t, y)
  earlier = jnp.abs(out2[:, :-1] - out[:, :-1]).max(axis=(0, 2))
  assert bool(jnp.all(earlier > 1e-4)), earlier
  # And changing the first token changes the last position's logits.
  x3 = x.at[:, 0].set((x[:, 0] + 1) % V)
  assert float(jnp.abs(run(params, x3, t, y)[:, -1] - out[:, -1]).max()) > 1e-4


def test_time_labels_and_null_label(cond_model):
  _, apply, run, params, x, t = cond_model
  a = run(params, x, t, _lab(0, 0, 0, 0))
  assert _rel_diff(run(params, x, t * 0.5, _lab(0, 0, 0, 0)), a) > 1e-2  # the noise level is used
  b = run(params, x, t, _lab(1, 1, 1, 1))
  assert _rel_diff(a, b) > 1e-2  # the label embedding is used
  null = run(params, x, t, None)  # cond=None: the NULL label (row num_classes) for every example
  np.testing.assert_allclose(null, run(params, x, t, _lab(3, 3, 3, 3)), rtol=1e-5, atol=1e-5)
  assert _rel_diff(null, a) > 1e-2
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
    apply(params, x, t, _lab(0, 1, 2, 4))


def test_dropout_needs_an_rng_with_train(cond_model):
  _, apply, run, params, x, t = cond_model
  y = _lab(0, 1, 2, 3)
  det = run(params, x, t, y)
  np.testing.assert_array_equal(det, run(params, x, t, y, rng=jax.random.PRNGKey(1)))  # train=False
  with pytest.raises(ValueError, match="train=True with dropout=0.3 needs a PRNG key"):
    apply(params, x, t, y, train=True)
  k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
  d1 = run(params, x, t, y, rng=k1, train=True)
  assert _rel_diff(d1, det) > 1e-3
  np.testing.assert_array_equal(d1, run(params, x, t, y, rng=k1, train=True))
  assert _rel_diff(run(params, x, t, y, rng=k2, train=True), d1) > 1e-3


def test_init_zero_logits_and_first_gradient_steps():
  """functional init gives ``{"params": ...}`` with zero logits (a uniform p(x0 | x_t)); the
  cross-entropy's first gradient reaches only the output layer, the second the blocks' modulation
  (the noise embedding, read only through the modulations, from the third on). With ``remat=True``:
  the rematerialised backward pass (the same ``nn.remat`` of ``dit.DiTBlock`` that tests/test_dit.py
  shows changes nothing) runs under jit."""
  m = models.create("token_transformer", **dict(TINY, depth=1), remat=True)
  init, apply = models.functional(m)
  x, t = _tokens((4, L)), jnp.array([0.0, 0.3, 0.6, 1.0])
  target = _tokens((4, L), seed=1, high=O)
  params = init(jax.random.PRNGKey(1), x, t)
  assert set(params) == {"params"}
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      jax.eval_shape(init, jax.random.PRNGKey(0), x, t))
  p = params["params"]
  assert not np.any(np.asarray(p["final"]["kernel"])) and not np.any(np.asarray(p["final"]["bias"]))
  assert float(np.asarray(p["token_embed"]["embedding"]).std()) > 0.5  # N(0, 1) token table

  def loss(params):
    logits = apply(params, x, t)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, target[..., None], axis=-1)), logits

  grad_fn = _jit(jax.value_and_grad(loss, has_aux=True))
  (l0, logits), g = grad_fn(params)
  assert logits.shape == (4, L, O)
  np.testing.assert_array_equal(np.asarray(logits), 0.0)
  np.testing.assert_allclose(l0, np.log(O), rtol=1e-6)  # uniform over the O tokens
  nonzero = {jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(g)
             if float(jnp.abs(v).max()) > 0}
  assert nonzero == {"['params']['final']['bias']", "['params']['final']['kernel']"}, nonzero
  params = jax.tree_util.tree_map(lambda a, b: a - 0.1 * b, params, g)
  (l1, _), g = grad_fn(params)
  assert float(l1) < float(l0)
  assert float(jnp.abs(g["params"]["block0"]["adaLN_modulation"]["kernel"]).max()) > 0


def test_input_errors(cond_model):
  m, apply, _, params, x, t = cond_model
  with pytest.raises(ValueError, match=r"^TokenTransformer takes integer token ids \[batch, length\], "
                                       r"got float32"):
    apply(params, x.astype(jnp.float32), t)
  with pytest.raises(ValueError, match="takes integer token ids"):
    apply(params, x > 3, t)  # bool is not a token id
  with pytest.raises(ValueError, match=r"expects x of shape \[batch, length\]"):
    apply(params, x[..., None], t)
  with pytest.raises(ValueError, match=r"expects x of shape \[batch, length\]"):
    apply(params, x[0], t[0])
  with pytest.raises(ValueError, match=r"sequence length 17 is outside \[1, max_length=16\]"):
    apply(params, _tokens((4, 17)), t)
  m.check_input(_tokens((4, 16)))  # max_length itself is fine
  with pytest.raises(ValueError, match=r"token ids must lie in \[0, 12\)"):
    apply(params, x.at[0, 0].set(V), t)
  with pytest.raises(ValueError, match=r"token ids must lie in \[0, 12\)"):
    apply(params, x.at[0, 0].set(-1), t)
  with pytest.raises(ValueError, match=r"t must be a scalar or have shape \[batch\]"):
    apply(params, x, t[:2])
  with pytest.raises(ValueError, match="initialised for vocab_size=12 but the model has vocab_size=13"):
    models.functional(m.clone(vocab_size=13))[1](params, x, t)


@pytest.mark.parametrize("kw,match", [
    (dict(num_outputs=O), "needs vocab_size > 0, got 0: the experiment builder fills"),
    (dict(vocab_size=V), "needs num_outputs > 0, got 0: the experiment builder fills"),
    (dict(vocab_size=3, num_outputs=4), "num_outputs=4 .* cannot exceed vocab_size=3"),
    (dict(TINY, num_heads=3), "num_heads=3 must divide hidden_size=32"),
    (dict(TINY, hidden_size=9, num_heads=3), "hidden_size must be even"),
    (dict(TINY, max_length=0), "max_length"),
    (dict(TINY, embedding="learned"), "unknown embedding"),
    (dict(TINY, dropout=1.5), "dropout must be"),
    (dict(TINY, dtype="int32"), "dtype must be a floating dtype"),
    (dict(TINY, ch=3), "unknown argument"),
])
def test_configuration_errors(kw, match):
  with pytest.raises(ValueError, match=match):
    models.create("token_transformer", **kw)


def _expected_count(vocab, outputs, hidden, depth, num_classes=0, freq=256, mlp_ratio=4):
  """The architecture's parameter count, written out (biases included; LayerNorms have none; the
  position embedding is a constant)."""
  t_embed = freq * hidden + hidden + hidden * hidden + hidden
  y_embed = (num_classes + 1) * hidden if num_classes else 0
  m = int(mlp_ratio * hidden)
  block = (hidden * 6 * hidden + 6 * hidden                                    # adaLN modulation
           + hidden * 3 * hidden + 3 * hidden + hidden * hidden + hidden       # qkv, proj
           + hidden * m + m + m * hidden + hidden)                             # MLP
  final = hidden * 2 * hidden + 2 * hidden + hidden * outputs + outputs
  return vocab * hidden + t_embed + y_embed + depth * block + final


@pytest.mark.parametrize("kw", [
    dict(vocab_size=98, num_outputs=97, hidden_size=256, depth=4, num_heads=4),
    dict(vocab_size=28, num_outputs=28, hidden_size=192, depth=6, num_heads=6, num_classes=5,
         mlp_ratio=2.0, freq_dim=64, max_length=64),
])
def test_parameter_count(kw):
  m = models.create("token_transformer", **kw)
  x = jax.ShapeDtypeStruct((1, 32), jnp.int32)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  y = jax.ShapeDtypeStruct((1,), jnp.int32) if kw.get("num_classes") else None
  n = models.count_params(jax.eval_shape(lambda x, t, y: m.init(jax.random.PRNGKey(0), x, t, y), x, t, y))
  assert n == _expected_count(kw["vocab_size"], kw["num_outputs"], kw["hidden_size"], kw["depth"],
                              kw.get("num_classes", 0), kw.get("freq_dim", 256), kw.get("mlp_ratio", 4))
  assert n == models.count_params(jax.eval_shape(
      lambda x, t, y: m.clone(max_length=4096).init(jax.random.PRNGKey(0), x, t, y), x, t, y))


def test_position_embedding_1d():
  """The fixed 1-D sin-cos embedding: [sin, cos] halves, distinct rows; DiT's 2-D one is built from it."""
  e = E.sincos_pos_embed_1d(8, np.arange(5))
  assert e.shape == (5, 8) and e.dtype == np.float32
  np.testing.assert_allclose(e[0], [0, 0, 0, 0, 1, 1, 1, 1], atol=1e-7)
  np.testing.assert_allclose(e[1, 0], np.sin(1.0), rtol=1e-6)
  np.testing.assert_allclose(e[3, 1], np.sin(3 * 10000.0 ** -0.25), rtol=1e-6)
  assert len({tuple(np.round(r, 5)) for r in e}) == 5
  e2 = E.sincos_pos_embed_2d(16, 3, 5)
  np.testing.assert_array_equal(e2[:, :8], np.tile(E.sincos_pos_embed_1d(8, np.arange(5)), (3, 1)))


def test_rotary_scores_depend_on_relative_position_only():
  """RoPE (Su et al. 2021): rotating queries and keys keeps their norms, and the score of a query at
  position i with a key at j depends on j - i only (the same vectors placed elsewhere score the same)."""
  from jdiff.models import dit
  rng = np.random.default_rng(0)
  q, k = rng.normal(size=(2, 8)).astype(np.float32)
  x = np.zeros((1, 12, 1, 8), np.float32)
  qs = np.asarray(dit.rotary(jnp.asarray(np.broadcast_to(q, x.shape).copy())))[0, :, 0]
  ks = np.asarray(dit.rotary(jnp.asarray(np.broadcast_to(k, x.shape).copy())))[0, :, 0]
  np.testing.assert_allclose(np.linalg.norm(qs, axis=-1), np.linalg.norm(q), rtol=1e-5)
  scores = qs @ ks.T  # [i, j]
  for d in (-3, 0, 2, 5):
    diag = np.diagonal(scores, offset=d)
    np.testing.assert_allclose(diag, diag[0], rtol=1e-4, atol=1e-4)
  assert np.ptp([np.diagonal(scores, offset=d)[0] for d in range(6)]) > 1e-2  # and it does depend on it
