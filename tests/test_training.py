"""Train step: loss goes down, EMA and clipping as configured, non-finite updates skipped; exact resume."""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import jdiff
from jdiff import models
from jdiff.experiment import builder
from jdiff.training import loop
from jdiff.experiment.state import create_state, make_optimizer
from jdiff.training.step import make_train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _optim(**kw):
  o = ml_collections.ConfigDict(dict(optimizer="adam", lr=1e-3, warmup_steps=0, decay="constant",
                                     grad_clip=1.0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0))
  o.update(kw)
  return o


def _mlp_setup(ema_decay=0.9, grad_clip=1.0, lr=1e-3, ema_warmup=False):
  module = models.create("mlp", features=64, num_blocks=2)
  init, apply = models.functional(module)
  params = init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
  opt = make_optimizer(_optim(grad_clip=grad_clip, lr=lr), 1000)
  state = create_state(params, opt, 1)
  step = make_train_step(apply, jdiff.CosineSchedule(), opt, ema_decay=ema_decay, axis_name=None,
                         global_batch_size=128, ema_warmup=ema_warmup)
  return state, jax.jit(step), opt


def _batch(i, n=128):
  mix = jdiff.toy.default_mixture()
  x, _ = mix.sample(jax.random.PRNGKey(100 + i), n)
  return {"image": x, "index": jnp.arange(n, dtype=jnp.int32)}


def test_train_step_lowers_loss():
  state, step, _ = _mlp_setup()
  losses = []
  for i in range(300):
    state, m = step(state, _batch(i % 50))
    losses.append(float(m["loss"]))
  first, last = np.mean(losses[:30]), np.mean(losses[-30:])
  assert last < 0.7 * first, (first, last)
  assert int(state.step) == 300 and int(state.skipped) == 0


def test_ema_follows_configured_decay():
  state, step, _ = _mlp_setup(ema_decay=0.9)
  new, _ = step(state, _batch(0))
  expect = jax.tree_util.tree_map(lambda e, p: 0.9 * e + 0.1 * p, state.ema_params, new.params)
  for a, b in zip(jax.tree_util.tree_leaves(new.ema_params), jax.tree_util.tree_leaves(expect)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_ema_warmup():
  state, step, _ = _mlp_setup(ema_decay=0.999, ema_warmup=True)
  for n in range(3):
    new, _ = step(state, _batch(n))
    d = min(0.999, (1 + n) / (10 + n))
    expect = jax.tree_util.tree_map(lambda e, p: d * e + (1 - d) * p, state.ema_params, new.params)
    for a, b in zip(jax.tree_util.tree_leaves(new.ema_params), jax.tree_util.tree_leaves(expect)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    state = new


@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_power_ema_closed_forms(gamma):
  """Parameters theta_n = n after the n-th update (SGD with a constant gradient): the power-function EMA
  with gamma = 0 is their plain mean (T + 1) / 2; with gamma = 1 the weight of update n is
  (2n - 1) / T^2 exactly (the decays (1 - 1/m)^2 telescope)."""
  from jdiff.experiment.state import TrainState
  from jdiff.training.step import make_update
  update = jax.jit(make_update(optax.sgd(-1.0), ema_power=gamma if gamma else 1e-12))
  p = {"w": jnp.zeros(())}
  state = TrainState(step=jnp.int32(0), params=p, ema_params=p, opt_state=optax.sgd(-1.0).init(p),
                     rng=jax.random.PRNGKey(0), skipped=jnp.int32(0))
  T = 40
  for _ in range(T):
    state, _ = update(state, jnp.float32(0.0), {"w": jnp.ones(())})
  assert float(state.params["w"]) == T
  n = np.arange(1, T + 1)
  want = np.mean(n) if gamma == 0 else np.sum((2 * n - 1) * n) / T ** 2
  np.testing.assert_allclose(float(state.ema_params["w"]), want, rtol=1e-5)
  with pytest.raises(ValueError, match="ema_power"):
    make_update(optax.sgd(1.0), ema_power=-1.0)


def test_gradient_clipping_applies_to_optimizer_input():
  state, step, _ = _mlp_setup(grad_clip=1e-3)
  new, m = step(state, _batch(0))
  assert float(m["grad_norm"]) > 1e-3  # raw norm is reported
  # Adam's first moment after one step is (1 - b1) * (clipped gradient): its norm is 0.1 * clip.
  mu = new.opt_state[1][0].mu
  np.testing.assert_allclose(float(optax.tree.norm(mu)), 0.1 * 1e-3, rtol=1e-4)


def test_non_finite_gradient_is_skipped_and_counted():
  state, step, _ = _mlp_setup()
  state, _ = step(state, _batch(0))
  bad = _batch(1)
  bad["image"] = bad["image"].at[3, 0].set(jnp.nan)
  new, m = step(state, bad)
  assert float(m["finite"]) == 0.0 and int(new.skipped) == 1 and int(new.step) == int(state.step) + 1
  for a, b in zip(jax.tree_util.tree_leaves((new.params, new.ema_params, new.opt_state)),
                  jax.tree_util.tree_leaves((state.params, state.ema_params, state.opt_state))):
    np.testing.assert_array_equal(a, b)
  assert all(np.all(np.isfinite(np.asarray(p))) for p in jax.tree_util.tree_leaves(new.params))
  new2, m2 = step(new, _batch(2))  # training goes on
  assert float(m2["finite"]) == 1.0 and int(new2.skipped) == 1


def _toy_config(num_steps, **over):
  import sys
  sys.path.insert(0, REPO)
  from configs import toy2d
  c = toy2d.get_config()
  c.training.num_steps = num_steps
  c.training.ckpt_every = 2
  c.training.log_every = 1
  c.training.sample_every = 0
  c.data.batch_size = 32
  c.model.features = 32
  c.model.num_blocks = 1
  for k, v in over.items():
    section, key = k.split(".")
    c[section][key] = v
  return c


def test_resume_is_bit_exact(tmp_path):
  """N steps straight == N/2 steps, restart from the checkpoint, N/2 more (data position included)."""
  straight = loop.train(_toy_config(6), str(tmp_path / "a"), log=lambda *a: None)
  loop.train(_toy_config(3), str(tmp_path / "b"), log=lambda *a: None)
  msgs = []
  resumed = loop.train(_toy_config(6), str(tmp_path / "b"), log=msgs.append)
  assert any("resumed from checkpoint step 3" in m for m in msgs)
  assert int(resumed.step) == 6
  for a, b in zip(jax.tree_util.tree_leaves(straight), jax.tree_util.tree_leaves(resumed)):
    np.testing.assert_array_equal(a, b)


def test_incompatible_checkpoint_is_refused(tmp_path):
  loop.train(_toy_config(2), str(tmp_path), log=lambda *a: None)
  with pytest.raises(ValueError, match="written by a different model"):
    loop.train(_toy_config(4, **{"model.features": 48}), str(tmp_path), log=lambda *a: None)


def test_bad_config_values(tmp_path):
  with pytest.raises(ValueError, match="divisible by"):
    loop.Experiment(_toy_config(2, **{"data.batch_size": 30}), num_local_devices=4)
  with pytest.raises(ValueError, match="unknown dataset"):
    loop.Experiment(_toy_config(2, **{"data.name": "no_such_dataset_xyz"}))
  with pytest.raises(ValueError, match="valid parametrizations"):
    loop.Experiment(_toy_config(2, **{"diffusion.parametrization": "epsilon"}))
  with pytest.raises(ValueError, match="config.training.num_steps must be an integer >= 1"):
    loop.Experiment(_toy_config(0))
  ro = tmp_path / "ro"
  ro.mkdir()
  os.chmod(ro, 0o500)
  if os.access(ro, os.W_OK):  # root ignores permission bits: use a path under a regular file instead
    bad = tmp_path / "file"
    bad.write_text("x")
    target = str(bad / "sub")
  else:
    target = str(ro / "sub")
  with pytest.raises(ValueError, match="is not writable"):
    loop.check_workdir(target)


def test_non_finite_step_in_the_loop_is_skipped_logged_and_counted(tmp_path, monkeypatch):
  """train(): a batch that makes the loss and gradients NaN (step 2) never reaches the parameters; the
  skip is logged and counted in metrics.jsonl (``skipped``, ``finite``) and in the state."""
  import json
  from jdiff import data as jdata
  real_batch_at = jdata.Pipeline.batch_at

  def batch_at(self, step):
    b = real_batch_at(self, step)
    if step == 1:
      b["image"] = np.full_like(b["image"], np.nan)
    return b

  monkeypatch.setattr(jdata.Pipeline, "batch_at", batch_at)
  msgs = []
  state = loop.train(_toy_config(3), str(tmp_path), log=msgs.append)
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [l["skipped"] for l in lines] == [0, 1, 1] and [l["finite"] for l in lines] == [1, 0, 1]
  assert not np.isfinite(lines[1]["loss"]) and np.isfinite(lines[2]["loss"])
  assert any("step 2: non-finite loss or gradient, update skipped (1 skipped so far)" in m
             for m in msgs), msgs
  assert int(state.step) == 3 and int(state.skipped) == 1
  assert all(np.all(np.isfinite(np.asarray(p)))
             for p in jax.tree_util.tree_leaves((state.params, state.ema_params, state.opt_state)))


@pytest.mark.slow  # ~16 s; default run: test_train_step_lowers_loss and the exact-mixture sampler tests
def test_trained_toy_model_samples_the_mixture(tmp_path):
  """End to end: train the toy2d config briefly, sample from the EMA parameters with the config's
  sampler and compare with the true mixture (N=2000: the two-sample sliced-W1 floor is ~0.03)."""
  c = _toy_config(600)
  c.model.features = 128
  c.model.num_blocks = 2
  c.data.batch_size = 128
  c.training.ckpt_every = 600
  c.training.ema_decay = 0.99
  state = loop.train(c, str(tmp_path), log=lambda *a: None)
  exp = loop.Experiment(c, num_local_devices=1)
  x = loop.sample_grid(exp, state.ema_params, 2000, 0, None)
  mix = jdiff.toy.default_mixture()
  ref = np.asarray(mix.sample(jax.random.PRNGKey(5), 2000)[0])
  sw = float(jdiff.toy.sliced_wasserstein(x, ref, jax.random.PRNGKey(0)))
  assert sw < 0.12, sw
  assert jdiff.toy.component_weight_error(mix, x) < 0.05


@pytest.mark.slow  # ~11 s; default run: the bfloat16 model tests of test_models
def test_bfloat16_compute_from_the_config_trains_with_float32_state():
  """``model.dtype = "bfloat16"`` (e.g. ``--config.model.dtype=bfloat16``) computes the network in
  bfloat16 while parameters, optimizer state, EMA and loss stay float32, and it learns as float32 does."""
  from configs import toy2d
  curves = {}
  for dtype in ("float32", "bfloat16"):
    c = toy2d.get_config()
    c.model.dtype = dtype
    model = builder.build_model(c, (2,), 0)
    assert jnp.dtype(model.module.dtype) == jnp.dtype(dtype)
    opt = make_optimizer(_optim(), 1000)
    state = create_state(model.init_params(), opt, 1)
    step = jax.jit(make_train_step(model.apply_fn, jdiff.CosineSchedule(), opt, axis_name=None,
                                   global_batch_size=128, ema_warmup=False))
    losses = []
    for i in range(200):
      state, m = step(state, _batch(i % 50))
      losses.append(float(m["loss"]))
    assert m["loss"].dtype == jnp.float32 and int(state.skipped) == 0
    for tree in (state.params, state.ema_params, state.opt_state):
      assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(tree)
                 if jnp.issubdtype(a.dtype, jnp.floating))
    curves[dtype] = (np.mean(losses[:30]), np.mean(losses[-50:]))
  (f32_first, f32_last), (bf_first, bf_last) = curves["float32"], curves["bfloat16"]
  assert bf_last < 0.8 * bf_first, curves
  # Same data, noise and initial parameters: the bfloat16 run's late loss (a 50-step mean of noisy
  # minibatch losses) stays within 10% of float32's.
  assert abs(bf_last - f32_last) < 0.1 * f32_last, curves
