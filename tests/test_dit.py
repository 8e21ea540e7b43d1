"""DiT (Peebles & Xie 2023): the paper's parameter counts, shapes, adaLN-Zero's zero output at
initialisation, labels and the NULL label, input checks, bfloat16, remat, and a few training steps
through the training loop from configs/fashion_mnist_dit.py; with torch and diffusers installed, the
same output as diffusers' DiTTransformer2DModel given the same weights.

Tiny configurations keep every test fast (the paper-sized models are only traced, with
``jax.eval_shape``: no parameter is allocated). Networks are evaluated with random parameters of
realistic scale: at initialisation the adaLN-Zero gates and the output layer are zero, so every input
maps to zero.
"""
import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _params

from jdiff import models
from jdiff.experiment import builder
from jdiff.experiment import config as config_lib
from jdiff.models import dit as dit_lib
from jdiff.models import embeddings as E

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(hidden_size=32, depth=2, num_heads=2, patch_size=2)


_random_params, _rel_diff = _params.random_params, _params.rel_diff


def _count(size, patch=2, num_classes=1000, channels=4, image=32, learned_variance=True):
  m = models.create("dit", size=size, patch_size=patch, num_classes=num_classes,
                    learned_variance=learned_variance)
  x = jax.ShapeDtypeStruct((1, image, image, channels), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  y = jax.ShapeDtypeStruct((1,), jnp.int32) if num_classes else None
  shapes = jax.eval_shape(lambda x, t, y: m.init(jax.random.PRNGKey(0), x, t, y), x, t, y)
  return models.count_params(shapes)


def _expected_count(hidden, depth, patch, channels, out_channels, num_classes, freq=256, mlp_ratio=4):
  """The architecture's parameter count, written out (biases included; LayerNorms have none)."""
  patch_embed = patch * patch * channels * hidden + hidden
  t_embed = freq * hidden + hidden + hidden * hidden + hidden
  y_embed = (num_classes + 1) * hidden if num_classes else 0
  m = mlp_ratio * hidden
  block = (hidden * 6 * hidden + 6 * hidden                      # adaLN modulation
           + hidden * 3 * hidden + 3 * hidden + hidden * hidden + hidden   # qkv, proj
           + hidden * m + m + m * hidden + hidden)                # MLP
  final = hidden * 2 * hidden + 2 * hidden + hidden * patch * patch * out_channels \
      + patch * patch * out_channels
  return patch_embed + t_embed + y_embed + depth * block + final


@pytest.mark.parametrize("size,paper", [("S", 32.97e6), ("B", 130.5e6), ("L", 458.1e6), ("XL", 675.1e6)])
def test_parameter_counts_match_the_paper(size, paper):
  """32x32x4 latents, patch 2, 1000 classes, learned variance (8 output channels): Peebles & Xie 2023,
  Table 1 / Table 4, within 1% (the paper also counts the frozen position embedding, hidden x 256)."""
  n = _count(size)
  hidden, depth, _ = dit_lib.SIZES[size]
  assert n == _expected_count(hidden, depth, 2, 4, 8, 1000)
  assert abs(n - paper) / paper < 0.01, (size, n, paper)
  assert abs(n + 256 * hidden - paper) / paper < 0.002  # with the position embedding as the paper


def test_size_and_explicit_fields():
  """A size sets hidden_size, depth and num_heads; explicit positive values override it."""
  assert models.create("dit", size="B").dims == (768, 12, 12)
  assert models.create("dit", size="B", depth=6).dims == (768, 6, 12)
  assert models.create("dit", hidden_size=64, depth=3, num_heads=4).dims == (64, 3, 4)
  assert _count("S", patch=4, num_classes=0, channels=3, learned_variance=False) == \
      _expected_count(384, 12, 4, 3, 3, 0)


@pytest.mark.parametrize("shape,patch,kw", [
    ((2, 28, 28, 1), 4, {}),
    ((2, 32, 32, 3), 2, {"learned_variance": True}),
    ((2, 16, 24, 2), 8, {"out_channels": 5}),
    ((2, 8, 12, 5), 2, {"num_classes": 4}),
])
def test_output_shapes(shape, patch, kw):
  m = models.create("dit", **dict(TINY, patch_size=patch, **kw))
  init, apply = models.functional(m)
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  t = jnp.linspace(0.1, 0.9, shape[0])
  params = _random_params(init, x, t)
  out = apply(params, x, t)
  c_out = kw.get("out_channels", shape[-1]) * (2 if kw.get("learned_variance") else 1)
  assert out.shape == shape[:3] + (c_out,) and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out)))
  assert m.data_channels(params) == shape[-1]


def test_zero_initialisation_gives_exactly_zero_output():
  """adaLN-Zero: every block starts as the identity and the final adaLN layer and projection are zero."""
  m = models.create("dit", **TINY, num_classes=3, learned_variance=True)
  init, apply = models.functional(m)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 2))
  t = jnp.array([0.0, 0.5, 1.0])
  params = init(jax.random.PRNGKey(1), x, t, jnp.array([0, 1, 3]))
  out = apply(params, x, t, jnp.array([0, 2, 3]))
  assert out.shape == (3, 8, 8, 4)
  np.testing.assert_array_equal(np.asarray(out), 0.0)
  p = params["params"]
  for i in range(2):
    assert not np.any(np.asarray(p[f"block{i}"]["adaLN_modulation"]["kernel"]))
  assert np.any(np.asarray(p["block0"]["qkv"]["kernel"]))  # the rest is not zero
  assert np.any(np.asarray(p["noise_embed"]["label_embed"]["embedding"]))


@pytest.fixture(scope="module")
def cond_model():
  """A tiny class-conditional DiT with random (not initial) parameters and its jitted apply."""
  m = models.create("dit", **TINY, num_classes=3)
  init, apply = models.functional(m)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
  t = jnp.array([0.1, 0.4, 0.7, 1.0])
  params = _random_params(init, x, t, jnp.zeros((4,), jnp.int32))
  return m, apply, params, x, t


def test_labels_and_null_label(cond_model):
  _, apply, params, x, t = cond_model
  lab = lambda *v: jnp.array(v, jnp.int32)
  a = apply(params, x, t, lab(0, 0, 0, 0))
  b = apply(params, x, t, lab(1, 1, 1, 1))
  assert _rel_diff(a, b) > 1e-2  # the label embedding is used
  null = apply(params, x, t, None)  # cond=None: the NULL label (row num_classes) for every example
  np.testing.assert_allclose(null, apply(params, x, t, lab(3, 3, 3, 3)), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(a, apply(params, x, t, {"label": lab(0, 0, 0, 0)}), rtol=1e-6, atol=1e-6)
  assert _rel_diff(null, a) > 1e-2
  assert _rel_diff(apply(params, x, t * 0.5, lab(0, 0, 0, 0)), a) > 1e-2  # and the time
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
    apply(params, x, t, lab(0, 1, 2, 4))


def test_bad_configuration_and_inputs(cond_model):
  m, apply, params, x, t = cond_model
  with pytest.raises(ValueError, match=r"patch_size=4 needs H and W divisible by 4, got 8x10; use "
                                       r"patch_size=2, or pad or resize the input to 8x12"):
    m.clone(patch_size=4).check_input(jnp.zeros((1, 8, 10, 1)))
  with pytest.raises(ValueError, match=r"got 28x28; use patch_size=4, or pad or resize the input to 32x32"):
    models.create("dit", **dict(TINY, patch_size=8)).check_input(jnp.zeros((1, 28, 28, 1)))
  with pytest.raises(ValueError, match="got 9x9; pad or resize the input to 10x10"):
    m.check_input(jnp.zeros((1, 9, 9, 1)))
  with pytest.raises(ValueError, match=r"unknown DiT size 'XXL'; valid sizes are: S, B, L, XL"):
    models.create("dit", size="XXL")
  with pytest.raises(ValueError, match="patch_size must be one of 2, 4, 8, got 3"):
    models.create("dit", **dict(TINY, patch_size=3))
  with pytest.raises(ValueError, match="DiT without a size needs depth, num_heads > 0"):
    models.create("dit", hidden_size=64)
  with pytest.raises(ValueError, match="num_heads=3 must divide hidden_size=32"):
    models.create("dit", **dict(TINY, num_heads=3))
  with pytest.raises(ValueError, match="hidden_size must be divisible by 4"):
    models.create("dit", hidden_size=18, depth=1, num_heads=2)
  with pytest.raises(ValueError, match="expects x of shape"):
    apply(params, x[..., 0], t)
  with pytest.raises(ValueError, match="initialised for 1"):
    apply(params, jnp.zeros((4, 8, 8, 2)), t)
  with pytest.raises(ValueError, match="unknown argument"):
    models.create("dit", size="S", ch=32)


def test_bfloat16_compute_is_close_to_float32(cond_model):
  m, _, params, x, t = cond_model
  _, apply16 = models.functional(m.clone(dtype="bfloat16"))
  f32 = m.apply(params, x, t, jnp.array([0, 1, 2, 3]))
  bf16 = apply16(params, x, t, jnp.array([0, 1, 2, 3]))
  assert bf16.dtype == jnp.float32
  assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(params))
  assert 0 < _rel_diff(bf16, f32) < 0.05


def test_remat_gives_the_same_outputs_and_gradients():
  """``remat=True`` only changes what the backward pass recomputes (dropout masks included)."""
  kw = dict(TINY, num_classes=3, dropout=0.2)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
  t, y = jnp.array([0.3, 0.8]), jnp.array([0, 3])
  results = []
  for remat in (False, True):
    init, apply = models.functional(models.create("dit", remat=remat, **kw))
    params = _random_params(init, x, t, y)

    def loss(p, apply=apply):
      out = apply(p, x, t, y, rng=jax.random.PRNGKey(5), train=True)
      return jnp.mean(out ** 2), out

    results.append(jax.jit(jax.value_and_grad(loss, has_aux=True))(params))
  (l0, o0), g0 = results[0]
  (l1, o1), g1 = results[1]
  np.testing.assert_allclose(o0, o1, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert any(float(jnp.abs(a).max()) > 0 for a in jax.tree_util.tree_leaves(g0))


@pytest.mark.slow  # ~7 s; default run: the DiT training-loop test
def test_learned_variance_trains_with_the_hybrid_loss():
  """With ``learned_variance`` the DiT's 2C outputs go through the train step's hybrid loss (Nichol &
  Dhariwal 2021), as the U-Net's do."""
  import ml_collections
  import jdiff
  from jdiff.experiment.state import create_state, make_optimizer
  from jdiff.training.step import make_train_step
  init, apply = models.functional(models.create("dit", **TINY, num_classes=3, learned_variance=True))
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 2))
  params = init(jax.random.PRNGKey(1), x[:1], jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
  opt = make_optimizer(ml_collections.ConfigDict(dict(
      optimizer="adamw", lr=1e-3, warmup_steps=0, decay="constant", grad_clip=1.0, b1=0.9, b2=0.999,
      eps=1e-8, weight_decay=0.0)), 10)
  step = jax.jit(make_train_step(apply, jdiff.LinearSchedule(), opt, axis_name=None, global_batch_size=4,
                                 num_classes=3, cond_drop_prob=0.5, learned_variance=True))
  batch = {"image": x, "index": jnp.arange(4, dtype=jnp.int32), "label": jnp.array([0, 1, 2, 0])}
  state = create_state(params, opt, 0)
  for _ in range(2):
    state, m = step(state, batch)
    assert np.isfinite(float(m["loss"])) and float(m["finite"]) == 1.0
  assert float(jnp.abs(state.params["params"]["final"]["kernel"]).max()) > 0


def test_position_embedding():
  """MAE's 2-D sin-cos embedding: column index in the first half, row index in the second."""
  e = E.sincos_pos_embed_2d(16, 3, 5)
  assert e.shape == (15, 16) and e.dtype == np.float32
  np.testing.assert_allclose(e[0], [0, 0, 0, 0, 1, 1, 1, 1] * 2, atol=1e-7)
  np.testing.assert_allclose(e[1, 8:], e[0, 8:])          # same row
  np.testing.assert_allclose(e[5, :8], e[0, :8])          # same column (token 5 = row 1, column 0)
  np.testing.assert_allclose(e[1, 0], np.sin(1.0), rtol=1e-6)
  assert len({tuple(np.round(r, 5)) for r in e}) == 15    # every position distinct


def _dit_config(name):
  sys.path.insert(0, REPO)
  return __import__(f"configs.{name}", fromlist=["get_config"]).get_config()


@pytest.mark.parametrize("name,shape,num_classes,params_m", [
    ("fashion_mnist_dit", (28, 28, 1), 10, 4.17), ("cifar10_dit", (32, 32, 3), 10, 129.5),
    ("imagenet64_dit", (64, 64, 3), 1000, 674.8)])
def test_configs_validate_and_build(name, shape, num_classes, params_m):
  """The DiT configs pass the config checks and build their model (traced only: nothing allocated)."""
  c = _dit_config(name)
  config_lib.validate(c)
  model = builder.build_model(c, shape, num_classes)
  assert isinstance(model.module, models.DiT)
  n = models.count_params(jax.eval_shape(model.init_params))
  assert abs(n / 1e6 - params_m) < 0.05, n


def test_tiny_dit_trains_through_the_training_loop(tmp_path):
  """configs/fashion_mnist_dit.py with a tiny network: a few class-conditional flow-matching steps
  through jdiff.training.loop (data pipeline, label dropout, checkpoint), finite and changing loss."""
  import json
  from jdiff.training import loop
  c = _dit_config("fashion_mnist_dit")
  c.model.hidden_size, c.model.depth, c.model.num_heads, c.model.patch_size = 32, 1, 2, 4
  c.data.batch_size = 8
  c.training.num_steps = 4
  c.training.log_every = 1
  c.training.ckpt_every = 4
  c.training.sample_every = 0
  c.optim.warmup_steps = 0
  state = loop.train(c, str(tmp_path), log=lambda *a: None)
  assert int(state.step) == 4 and int(state.skipped) == 0
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  losses = [l["loss"] for l in lines]
  assert len(losses) == 4 and all(np.isfinite(losses)) and len(set(losses)) > 1
  p0 = state.params["params"]["final"]["kernel"]
  assert float(jnp.abs(p0).max()) > 0  # the zero-initialised output layer has moved


HAVE_DIFFUSERS = all(importlib.util.find_spec(m) is not None for m in ("torch", "diffusers"))


@pytest.mark.skipif(not HAVE_DIFFUSERS, reason="needs torch and diffusers (pip install torch, then "
                                               "pip install diffusers)")
def test_matches_diffusers_dit_with_the_same_weights():
  """diffusers' ``DiTTransformer2DModel`` (a port of the paper's code) with random weights, copied into
  jdiff's DiT, gives the same output: patchify, position embedding, timestep and label embedding, the
  adaLN-Zero blocks, the final layer and unpatchify all agree. diffusers keeps an embedder per block;
  the test gives every block block 0's, which is jdiff's single embedder."""
  import torch
  from diffusers import DiTTransformer2DModel
  torch.manual_seed(0)
  hidden, heads, depth, ch, p, size, k = 64, 4, 2, 3, 2, 16, 10
  tm = DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=hidden // heads, in_channels=ch,
                             out_channels=2 * ch, num_layers=depth, sample_size=size, patch_size=p,
                             num_embeds_ada_norm=k, norm_eps=1e-6).eval()
  with torch.no_grad():
    for prm in tm.parameters():
      prm.copy_(torch.randn_like(prm) * 0.1)
    e0 = tm.transformer_blocks[0].norm1.emb
    for b in tm.transformer_blocks[1:]:
      b.norm1.emb.load_state_dict(e0.state_dict())
  n = lambda a: a.detach().numpy()
  lin = lambda l: {"kernel": n(l.weight).T, "bias": n(l.bias)}
  w1 = n(e0.timestep_embedder.linear_1.weight).T
  half = w1.shape[0] // 2  # diffusers' features are [cos, sin] (flip_sin_to_cos), jdiff's [sin, cos]
  params = {
      "patch_embed": {"kernel": n(tm.pos_embed.proj.weight).transpose(2, 3, 1, 0),
                      "bias": n(tm.pos_embed.proj.bias)},
      "noise_embed": {"dense0": {"kernel": np.concatenate([w1[half:], w1[:half]]),
                                 "bias": n(e0.timestep_embedder.linear_1.bias)},
                      "dense1": lin(e0.timestep_embedder.linear_2),
                      "label_embed": {"embedding": n(e0.class_embedder.embedding_table.weight)}},
      "final_adaLN_modulation": lin(tm.proj_out_1),
      "final": {"kernel": n(tm.proj_out_2.weight).T.reshape(hidden, p, p, 2 * ch),
                "bias": n(tm.proj_out_2.bias).reshape(p, p, 2 * ch)}}
  for i, b in enumerate(tm.transformer_blocks):
    a = b.attn1
    params[f"block{i}"] = {
        "adaLN_modulation": lin(b.norm1.linear),
        "qkv": {"kernel": np.concatenate([n(a.to_q.weight).T, n(a.to_k.weight).T, n(a.to_v.weight).T], 1),
                "bias": np.concatenate([n(a.to_q.bias), n(a.to_k.bias), n(a.to_v.bias)])},
        "proj": lin(a.to_out[0]), "fc1": lin(b.ff.net[0].proj), "fc2": lin(b.ff.net[2])}
  params = {"params": params}
  m = models.create("dit", hidden_size=hidden, depth=depth, num_heads=heads, patch_size=p, num_classes=k,
                    learned_variance=True)
  init, apply = models.functional(m)
  x = np.random.default_rng(0).standard_normal((3, size, size, ch)).astype(np.float32)
  shapes = jax.eval_shape(init, jax.random.PRNGKey(0), x, jnp.zeros((3,)))
  assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(params)
  assert all(a.shape == b.shape for a, b in zip(jax.tree_util.tree_leaves(shapes),
                                                 jax.tree_util.tree_leaves(params)))
  steps, labels = np.array([10, 500, 999]), np.array([0, 7, k])  # k: the NULL label
  out = np.asarray(apply(params, jnp.asarray(x), jnp.asarray(steps / 1000.0, jnp.float32),
                         jnp.asarray(labels)))
  with torch.no_grad():
    ref = tm(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(steps),
             torch.from_numpy(labels)).sample.permute(0, 2, 3, 1).numpy()
  assert np.abs(ref).max() > 1.0
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
