"""The U-Net on 1-D signals ``[B, L, C]``: the same module as for images, checked against the 2-D one.

On a width-1 image ``[B, L, 1, C]`` only the middle column of each 3x3 kernel meets data (the others
meet the zero padding), so a one-level 2-D U-Net there computes the 1-D U-Net whose kernels are those
middle columns; every other parameter is shared as is. Parameters are random and of realistic scale
(the zero-initialised output layers would otherwise make every output 0).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _params

from jdiff import models
from jdiff.models import unet

ONE_LEVEL = dict(ch=16, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(12,), dropout=0.0,
                 num_classes=3, skip_rescale=True, num_heads=2, learned_variance=True)


def _perturb(params, seed):
  """``params`` plus N(0, 0.2^2) noise on every leaf (a distinct key per leaf)."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return tree.unflatten([v + 0.2 * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)])


def _raises(match, fn, *args, **kw):
  with pytest.raises(ValueError, match=match) as info:
    fn(*args, **kw)
  return info


@pytest.fixture(scope="module")
def one_level():
  """``(module, params_1d, params_2d, x_1d, t, labels)``: the 2-D parameters hold the 1-D kernels as
  the middle column of random 3x3 kernels."""
  module = models.create("unet", **ONE_LEVEL)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 12, 2))
  t, labels = jnp.array([0.1, 0.5, 0.9]), jnp.array([0, 2, 3], jnp.int32)  # 3 = the NULL label
  # Drawn with numpy in the shapes of init (no eager init: ~20 s of op-by-op dispatch on 2 cores).
  p1 = _params.random_params(models.functional(module)[0], x, t, labels, seed=1)
  outer = iter(jax.random.split(jax.random.PRNGKey(2), 100))

  def widen(k):  # a 1-D conv kernel [3, Cin, Cout] -> 2-D [3, 3, Cin, Cout]; Dense kernels stay
    if k.ndim != 3:
      return k
    return jax.random.normal(next(outer), (3, 3) + k.shape[1:]).at[:, 1].set(k)

  p2 = jax.tree_util.tree_map(widen, p1)
  return module, p1, p2, x, t, labels


def test_1d_unet_equals_2d_unet_on_width_one_images(one_level):
  module, p1, p2, x, t, labels = one_level
  assert p1["params"]["conv_in"]["kernel"].shape == (3, 2, 16)
  assert p2["params"]["conv_in"]["kernel"].shape == (3, 3, 2, 16)
  _, apply = models.functional(module)
  out1 = apply(p1, x, t, labels)
  out2 = apply(p2, x[:, :, None, :], t, labels)
  assert out1.shape == (3, 12, 4) and out2.shape == (3, 12, 1, 4)  # learned variance: 2 x 2 channels
  scale = float(jnp.abs(out1).max())
  assert scale > 0.1
  np.testing.assert_allclose(out2[:, :, 0], out1, atol=1e-5 * scale, rtol=1e-5)
  # The labels reach the output (through the broadcast embedding) in both.
  assert float(jnp.abs(apply(p1, x, t, jnp.array([1, 1, 1])) - out1).max()) > 1e-3 * scale


def test_params_of_one_dimension_refuse_the_other(one_level):
  module, p1, p2, x, t, labels = one_level
  _, apply = models.functional(module)
  _raises(r"initialised for 2-D inputs, so it expects x of shape \[batch, H, W, C\]; got shape "
          r"\(3, 12, 2\) \(1-D\)", apply, p2, x, t, labels)
  _raises(r"initialised for 1-D inputs, so it expects x of shape \[batch, L, C\]", apply, p1,
          x[:, :, None, :], t, labels)


@pytest.mark.slow  # ~60 s; default run: the signal run of test_beyond_images (two levels, attention at 20, labels)
def test_multi_level_1d_unet_with_attention_and_labels():
  """MNIST-1D sizes: length 40 -> 20 -> 10, attention at length 10, class labels, dropout."""
  module = models.create("unet", ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(10,),
                         dropout=0.1, num_classes=10)
  init, apply = models.functional(module)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 40, 1))
  t, labels = jnp.array([0.1, 0.4, 0.7, 1.0]), jnp.array([0, 3, 7, 10], jnp.int32)
  params = _perturb(init(jax.random.PRNGKey(0), x, t, labels), seed=3)
  p = params["params"]
  assert sum(name.startswith("AttnBlock") for name in p) == 4  # down, middle and 2 up at length 10
  assert p["conv_in"]["kernel"].shape == (3, 1, 16) and p["Conv_0"]["kernel"].shape == (3, 16, 16)
  assert models.UNet.data_channels(params) == 1
  run = jax.jit(apply, static_argnames="train")
  out = run(params, x, t, labels)
  assert out.shape == (4, 40, 1) and bool(jnp.isfinite(out).all())
  assert float(jnp.abs(run(params, x, t, jnp.array([1, 3, 7, 10])) - out)[0].max()) > 1e-3
  assert float(jnp.abs(run(params, x, t, jnp.array([1, 3, 7, 10])) - out)[1:].max()) == 0.0
  dropped = run(params, x, t, labels, rng=jax.random.PRNGKey(5), train=True)
  assert dropped.shape == out.shape and float(jnp.abs(dropped - out).max()) > 1e-3


def test_resampling_helpers_in_1d_and_2d():
  x1 = jnp.arange(2 * 6 * 3, dtype=jnp.float32).reshape(2, 6, 3)
  np.testing.assert_array_equal(unet.upsample_nearest(x1), np.repeat(x1, 2, axis=1))
  np.testing.assert_array_equal(unet.avgpool2(x1), (x1[:, 0::2] + x1[:, 1::2]) / 2)
  x2 = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
  np.testing.assert_array_equal(unet.upsample_nearest(x2), np.repeat(np.repeat(x2, 2, 1), 2, 2))
  np.testing.assert_allclose(unet.avgpool2(x2), (x2[:, 0::2, 0::2] + x2[:, 1::2, 0::2] +
                                                 x2[:, 0::2, 1::2] + x2[:, 1::2, 1::2]) / 4)


def test_bad_1d_inputs_raise_one_clear_error():
  key, t = jax.random.PRNGKey(0), jnp.zeros((2,))
  init, _ = models.functional(models.create("unet", ch=8, ch_mult=(1, 2, 2), attn_resolutions=()))
  _raises(r"halves L 2 times, so it must be divisible by 4; got length 42. Use at most 2 levels", init,
          key, jnp.zeros((2, 42, 1)), t)
  _raises(r"UNet expects x of shape \[batch, H, W, C\] \(images\) or \[batch, L, C\] \(1-D signals\), "
          r"channels-last, got shape \(2, 40\)", init, key, jnp.zeros((2, 40)), t)
  _raises(r"expects x of shape .* got shape \(2, 8, 8, 8, 1\)", init, key, jnp.zeros((2, 8, 8, 8, 1)), t)
  init, _ = models.functional(models.create("unet", ch=8, ch_mult=(1, 2, 2), attn_resolutions=(16,)))
  _raises(r"attn_resolutions \[16\] are never reached for length 40 inputs \(feature-map lengths are "
          r"\[40, 20, 10\]\)", init, key, jnp.zeros((2, 40, 1)), t)


@pytest.mark.slow  # ~17 s; default run: the 2-D classifier (test_conditional) and the 1-D U-Net it shares blocks with
def test_noisy_classifier_on_1d_signals():
  module = models.create("classifier", num_classes=10, ch=8, ch_mult=(1, 2), attn_resolutions=(20,))
  init, apply = models.functional(module)
  x, t = jax.random.normal(jax.random.PRNGKey(1), (3, 40, 1)), jnp.array([0.1, 0.5, 0.9])
  params = _perturb(init(jax.random.PRNGKey(0), x, t), seed=4)
  logits = apply(params, x, t)
  assert logits.shape == (3, 10) and bool(jnp.isfinite(logits).all())
  assert float(jnp.abs(logits[0] - logits[1]).max()) > 1e-3
  _raises("got length 41", init, jax.random.PRNGKey(0), jnp.zeros((3, 41, 1)), t)
