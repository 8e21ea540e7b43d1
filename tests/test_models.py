"""Flax denoisers: shapes, the DDPM parameter count, labels, dropout, jit, gradients, input checks.

Tiny configurations (``ch=16``) keep every test fast. Networks are evaluated with random parameters of
realistic scale rather than their initialisation, because the output layers start at zero (Ho et al.
2020) and would map every input to the same (zero) output. Compilation dominates the run time, so each
network is compiled as few times as possible (module-scoped fixtures, one jitted signature per mode).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _params

from jdiff import models
from jdiff.models import embeddings, unet

TINY = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(14,), dropout=0.1, num_classes=3)


_random_params, _rel_diff = _params.random_params, _params.rel_diff


def _labels(*v):
  return jnp.array(v, jnp.int32)


@pytest.fixture(scope="module")
def tiny():
  """A 28x28x1 class-conditional U-Net with dropout: ``(module, params, run, x, t)``.

  ``run(params, x, t, cond, key, train) -> (out, grads of mean(out^2))`` is jitted; the module compiles
  it once for ``train=False`` and once for ``train=True``.
  """
  module = models.create("unet", **TINY)
  init, apply = models.functional(module)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 28, 28, 1))
  t = jnp.array([0.1, 0.4, 0.7, 1.0])
  params = _random_params(init, x[:1], t[:1])

  def run(p, x, t, c, k, train):
    f = lambda p: apply(p, x, t, c, rng=k, train=train)
    out, vjp = jax.vjp(f, p)
    return out, vjp(2.0 * out / out.size)[0]

  return module, params, jax.jit(run, static_argnums=5), x, t


@pytest.fixture(scope="module")
def mlp():
  """A 2-D class-conditional MLP: ``(module, init, params, jitted apply, x, t)``."""
  module = models.create("mlp", features=16, num_blocks=2, num_classes=2)
  init, apply = models.functional(module)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 2))
  t = jnp.array([0.0, 0.3, 1.0])
  params = _random_params(init, x, t)
  return module, init, params, jax.jit(apply, static_argnames="train"), x, t


def test_ddpm_cifar10_has_35_7m_parameters():
  module = models.create("unet", ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                         dropout=0.1, embedding="sinusoidal")
  init, _ = models.functional(module)
  shapes = jax.eval_shape(init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32),
                          jax.ShapeDtypeStruct((1,), jnp.float32))
  n = models.count_params(shapes)
  assert abs(n - 35.7e6) <= 0.01 * 35.7e6, n  # Ho et al. 2020, Sec. 4: 35.7M
  # The defaults are that model.
  assert models.count_params(jax.eval_shape(models.UNet().init, jax.random.PRNGKey(0),
                                            jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,)))) == n


def test_unet_28x28_output_and_gradients(tiny):
  _, params, run, x, t = tiny
  out, grads = run(params, x, t, _labels(0, 1, 2, 3), jax.random.PRNGKey(0), False)
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(out)))
  assert models.UNet.data_channels(params) == 1
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(grads))
  for path in (("conv_in", "kernel"), ("noise_embed", "dense0", "kernel"),
               ("noise_embed", "label_embed", "embedding"), ("conv_out", "kernel")):
    g = grads["params"]
    for k in path:
      g = g[k]
    assert float(jnp.abs(g).max()) > 0, path


@pytest.mark.parametrize("kw,out_c", [
    (dict(), 3),
    (dict(learned_variance=True), 6),
    (dict(out_channels=1, learned_variance=True), 2),
    (dict(ch_mult=(1, 2, 2, 2, 2, 2), attn_resolutions=(16, 1)), 3),  # 32 -> 1 in 5 halvings
])
def test_unet_output_shape_32x32(kw, out_c):
  cfg = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,))
  cfg.update(kw)
  init, apply = models.functional(models.create("unet", **cfg))
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  t = jax.ShapeDtypeStruct((2,), jnp.float32)
  params = jax.eval_shape(init, jax.random.PRNGKey(0), x, t)
  assert jax.eval_shape(apply, params, x, t).shape == (2, 32, 32, out_c)


def test_unet_ddpmpp_variants_run_in_bfloat16():
  """Fourier features, sqrt(2) skip rescaling, average-pool downsampling, 2 heads, learned variance."""
  module = models.create("unet", ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                         embedding="fourier", skip_rescale=True, downsample="avgpool", num_heads=2,
                         learned_variance=True, dtype=jnp.bfloat16)
  init, apply = models.functional(module)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  t = jnp.array([-1.0, 2.0])  # e.g. log sigma: any real noise level is accepted
  params = _random_params(init, x, t)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
  out = jax.jit(apply)(params, x, t)
  assert out.shape == (2, 16, 16, 6) and out.dtype == jnp.float32
  ref = jax.jit(models.functional(module.clone(dtype=jnp.float32))[1])(params, x, t)
  # bfloat16 keeps 8 significant bits through ~20 layers: a few percent of the output scale.
  assert _rel_diff(out, ref) < 0.1


def test_mlp_shapes():
  x, t = jax.ShapeDtypeStruct((5, 2), jnp.float32), jax.ShapeDtypeStruct((5,), jnp.float32)
  for kw, d in [(dict(), 2), (dict(learned_variance=True), 4), (dict(out_dim=3, embedding="fourier"), 3)]:
    init, apply = models.functional(models.create("mlp", features=32, num_blocks=2, **kw))
    params = jax.eval_shape(init, jax.random.PRNGKey(0), x, t)
    assert jax.eval_shape(apply, params, x, t).shape == (5, d)


def test_mlp_jit_matches_eager(mlp):
  _, _, params, apply, x, t = mlp
  out = apply(params, x, t)
  assert out.shape == (3, 2) and models.MLP.data_channels(params) == 2
  eager = models.functional(mlp[0])[1](params, x, t)
  np.testing.assert_allclose(out, eager, rtol=1e-5, atol=1e-6)  # float32, different fusion only


def test_init_is_deterministic_matches_linen_and_zeroes_the_output(mlp):
  module, init, _, apply, x, t = mlp
  a = init(jax.random.PRNGKey(7), x, t)
  b = module.init({"params": jax.random.PRNGKey(7)}, x, t)
  c = init(jax.random.PRNGKey(8), x, t)
  d = jax.jit(init)(jax.random.PRNGKey(7), x, t)  # nested: no compiler options allowed there
  e = jax.jit(lambda: init(jax.random.PRNGKey(7), x, t))()  # nested with concrete arguments
  for other in (b, d, e):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(other)):
      np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)  # same random bits; float32 rounding
  assert not np.allclose(a["params"]["in_x"]["kernel"], c["params"]["in_x"]["kernel"])
  np.testing.assert_array_equal(apply(a, x, t), 0.0)  # zero-initialised output layer


def test_unet_labels_and_noise_level_change_output(tiny):
  _, params, run, x, t = tiny
  key = jax.random.PRNGKey(0)
  out0 = run(params, x, t, _labels(0, 0, 0, 0), key, False)[0]
  out1 = run(params, x, t, _labels(1, 1, 1, 1), key, False)[0]
  null = run(params, x, t, _labels(3, 3, 3, 3), key, False)[0]
  later = run(params, x, t + 0.05, _labels(0, 0, 0, 0), key, False)[0]
  assert _rel_diff(out1, out0) > 1e-2 and _rel_diff(null, out0) > 1e-2 and _rel_diff(later, out0) > 1e-2
  # Per example: changing example 0's label leaves the others unchanged (no coupling across the batch).
  mixed = run(params, x, t, _labels(1, 0, 0, 0), key, False)[0]
  np.testing.assert_allclose(mixed[1:], out0[1:], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mixed[0], out1[0], rtol=1e-5, atol=1e-6)


def test_mlp_none_label_means_null_and_scalar_t_broadcasts(mlp):
  _, _, params, apply, x, t = mlp
  assert params["params"]["noise_embed"]["label_embed"]["embedding"].shape == (3, 16)
  np.testing.assert_allclose(apply(params, x, t), apply(params, x, t, _labels(2, 2, 2)), rtol=1e-6)
  assert _rel_diff(apply(params, x, t, _labels(0, 0, 0)), apply(params, x, t)) > 1e-2
  np.testing.assert_allclose(apply(params, x, 0.3), apply(params, x, jnp.full((3,), 0.3)), rtol=1e-6)


def test_dropout_only_in_train_mode(tiny):
  _, params, run, x, t = tiny
  c = _labels(0, 1, 2, 3)
  k1, k2 = jax.random.PRNGKey(11), jax.random.PRNGKey(12)
  ref = run(params, x, t, c, k1, False)[0]
  np.testing.assert_array_equal(run(params, x, t, c, k2, False)[0], ref)  # the key is unused
  (a, ga), (a2, _), (b, _) = (run(params, x, t, c, k, True) for k in (k1, k1, k2))
  np.testing.assert_array_equal(a, a2)
  assert _rel_diff(a, b) > 1e-2 and _rel_diff(a, ref) > 1e-2
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(ga))


def test_attention_impls_agree():
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  q, kk, v = (jax.random.normal(ki, (2, 64, 2, 8)) for ki in k)
  np.testing.assert_allclose(unet.attention(q, kk, v, "einsum"), unet.attention(q, kk, v, "xla"),
                             rtol=1e-5, atol=1e-5)
  # Against the definition softmax(q k^T / sqrt(d)) v, one head at a time.
  w = jax.nn.softmax(jnp.einsum("qd,kd->qk", q[0, :, 1], kk[0, :, 1]) / np.sqrt(8), axis=-1)
  np.testing.assert_allclose(unet.attention(q, kk, v)[0, :, 1], w @ v[0, :, 1], rtol=1e-5, atol=1e-5)


def test_embeddings_and_groups():
  e = embeddings.sinusoidal_embedding(jnp.array([0.0, 3.0]), 8)
  freqs = np.exp(-np.log(10000.0) * np.arange(4) / 3)  # Ho et al. 2020 get_timestep_embedding
  np.testing.assert_allclose(e[1], np.concatenate([np.sin(3 * freqs), np.cos(3 * freqs)]), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(e[0], [0, 0, 0, 0, 1, 1, 1, 1])
  f = embeddings.fourier_embedding(jnp.array([0.5]), 6, scale=16.0)
  np.testing.assert_allclose(jnp.sum(f[0, :3] ** 2 + f[0, 3:] ** 2), 3.0, rtol=1e-5)
  assert embeddings.sinusoidal_embedding(jnp.zeros(2), 7).shape == (2, 7)
  # 32 groups for DDPM widths; at least two channels per group for small widths.
  assert [models.num_groups(c) for c in (3, 16, 48, 64, 128, 256)] == [1, 8, 24, 32, 32, 32]


def _raises(match, fn, *args, **kw):
  with pytest.raises(ValueError, match=match):
    fn(*args, **kw)


def test_bad_configs_raise():
  _raises(r"unknown model 'transformer'; valid models are: classifier, dit, mlp, point_net, token_transformer, unet", models.create, "transformer")
  _raises(r"unknown argument\(s\) \['chanels'\] for model 'unet'; valid arguments are: ch, ",
          models.create, "unet", chanels=3)
  _raises("non-empty tuple", models.create, "unet", ch_mult=())
  _raises("ch_mult entry", models.create, "unet", ch_mult=(1, 0))
  _raises("dropout must be a float in", models.create, "unet", dropout=1.5)
  _raises("unknown embedding 'fourrier'", models.create, "unet", embedding="fourrier")
  _raises("unknown downsample", models.create, "unet", downsample="max")
  _raises("unknown attention_impl", models.create, "unet", attention_impl="flash")
  _raises("num_heads=3 must divide", models.create, "unet", ch=16, num_heads=3)
  _raises("ch must be >= 4", models.create, "unet", ch=2)
  _raises("num_classes must be an integer >= 0", models.create, "mlp", num_classes=-1)
  _raises("dtype must be a floating dtype", models.create, "mlp", dtype=jnp.int32)
  _raises("features must be an integer >= 1", models.create, "mlp", features=0)
  _raises("expects a jdiff model", models.functional, object())
  assert models.create("unet", ch_mult=[1, 2]).ch_mult == (1, 2)  # lists from configs become tuples


def test_bad_inputs_raise(tiny):
  module, params, _, x, t = tiny
  init, apply = models.functional(module)
  key = jax.random.PRNGKey(0)
  _raises(r"expects x of shape \[batch, H, W, C\]", apply, params, x[0, 0], t)  # rank 3 is 1-D data
  _raises("x has 3 channels .* initialised for 1", apply, params, jnp.zeros((4, 28, 28, 3)), t)
  _raises("must be divisible by 2; got 27x28", apply, params, jnp.zeros((4, 27, 28, 1)), t)
  _raises(r"t must be a scalar or have shape \[batch\]=\(4,\)", apply, params, x, t[:3])
  _raises(r"t must be a scalar or have shape \[batch\]", apply, params, x, t[:, None])
  _raises("t contains NaN", apply, params, x, t.at[0].set(jnp.nan))
  _raises(r"labels must lie in \[0, 3\]", apply, params, x, t, _labels(0, 1, 2, 4))
  _raises("integer class labels", apply, params, x, t, jnp.zeros((4,)))
  _raises(r"cond must have shape \[batch\]", apply, params, x, t, _labels(0, 0))
  _raises("train=True with dropout=0.1 needs a PRNG key", apply, params, x, t, train=True)
  _raises("train must be a Python bool", apply, params, x, t, train=jnp.array(True))
  _raises("x must be a floating-point array", apply, params, x.astype(jnp.int32), t)
  _raises("params must be the dict returned by init", apply, params["params"], x, t)
  _raises("expects x of shape", init, key, jnp.zeros((28, 1)), t[:1])
  # Fashion-MNIST sizes: 3 levels fit 28x28, 4 do not; attention must be at a reached height.
  deep = models.create("unet", ch=16, ch_mult=(1, 2, 2, 2), attn_resolutions=(14,))
  _raises("must be divisible by 8; got 28x28. Use at most 3 levels", models.functional(deep)[0], key,
          jnp.zeros((1, 28, 28, 1)), jnp.zeros((1,)))
  wrong_attn = models.create("unet", ch=16, ch_mult=(1, 2, 2), attn_resolutions=(16,))
  _raises(r"attn_resolutions \[16\] are never reached for 28x28 inputs \(feature-map heights are "
          r"\[28, 14, 7\]\)", models.functional(wrong_attn)[0], key, jnp.zeros((1, 28, 28, 1)),
          jnp.zeros((1,)))
  uncond = models.create("mlp", features=8, num_blocks=1)
  _raises(r"num_classes=0 \(unconditional\) but got labels", models.functional(uncond)[0], key,
          jnp.zeros((2, 2)), jnp.zeros((2,)), _labels(0, 0))
  _raises(r"MLP expects x of shape \[batch, D\]", models.functional(uncond)[0], key,
          jnp.zeros((2, 2, 1)), jnp.zeros((2,)))


def test_checks_also_run_under_jit_and_module_apply(tiny):
  """Shape checks are static, so a jitted apply (or plain ``module.apply``) still raises them."""
  _, params, run, x, t = tiny
  _raises(r"t must be a scalar or have shape \[batch\]", run, params, x, t[:3], None, None, False)
  _raises("num_classes=0", models.MLP(features=8).apply, {}, jnp.zeros((2, 2)), jnp.zeros((2,)),
          _labels(0, 0))
