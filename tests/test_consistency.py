"""Consistency models (jdiff.consistency) against exact answers: the boundary condition, the curriculum
and noise-level distribution of iCT, each loss on hand-computed cases and on Gaussian data, whose exact
denoiser and exact consistency function are closed forms, and multistep consistency sampling."""
import json
import math
import os
import sys

import _gaussian
import _sample_models as sm
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import consistency as cm
from jdiff import keys, sampling, schedules
from jdiff.experiment import builder, config as config_lib
from jdiff.parametrization import make_denoiser

EDM = schedules.get_schedule("edm")
S = 1.0  # data standard deviation of the Gaussian cases: x0 ~ N(0, S^2 I)


def exact_f(params, x, t, cond):
  """The exact consistency function of N(0, S^2 I) data on the VE process: the probability-flow ODE is
  linear, x_{sigma_min} = x_sigma sqrt((S^2 + sigma_min^2) / (S^2 + sigma^2))."""
  del params, cond
  sig, s_min = EDM.sigma(t), cm.sigma_min(EDM)
  return x * jnp.sqrt((S * S + s_min * s_min) / (S * S + sig * sig))[:, None]


def exact_x0(schedule):
  return _gaussian.exact_x0(schedule, S)


def test_boundary_condition_is_exact_for_any_network():
  w = jax.random.normal(jax.random.PRNGKey(0), (3, 3))
  raw = lambda p, x, c_noise, cond: jnp.tanh(x @ p) * 7.0 + c_noise[:, None]
  f = cm.precondition(raw, EDM)
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 3)) * 3.0
  np.testing.assert_array_equal(np.asarray(f(w, x, jnp.zeros((5,)), None)), np.asarray(x))
  # Away from the boundary the network matters.
  assert float(jnp.max(jnp.abs(f(w, x, jnp.full((5,), 0.3), None) - x))) > 0.1


def test_over_a_base_denoiser_the_boundary_is_exact_and_the_base_is_read_on_the_ve_process():
  """f(x, sigma_min) = x bit for bit whatever the base; elsewhere f = c_skip x + (1 - c_skip) D with D
  the base's x0 read on the VE process: for a flow-matching x0 model of Gaussian data built through the
  builder, D(x, sigma) = x S^2 / (S^2 + sigma^2)."""
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 3)) * 3.0
  huge = cm.precondition_over(lambda p, x, sig, c: 1e6 * x + sig[:, None], EDM)
  np.testing.assert_array_equal(np.asarray(huge(None, x, jnp.zeros((4,)), None)), np.asarray(x))
  flow = schedules.get_schedule("flow")
  apply = lambda p, x, t, cond, rng=None, train=False: exact_x0(flow)(p, x, t, cond)
  factory, core = builder.make_model_fn(apply, EDM, "consistency", base=(flow, "x0"))
  assert core == "x0"
  t = jnp.array([0.0, 0.3, 0.6, 1.0])
  sig = EDM.sigma(t)
  c_skip = cm.coefficients(sig, cm.sigma_min(EDM))[0]
  want = x * (c_skip + (1 - c_skip) * S * S / (S * S + sig * sig))[:, None]
  got = factory(None, False)(None, x, t, None)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-3, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(x[0]))
  # An EDM-preconditioned base whose network outputs 0 is the denoiser x sigma_data^2 / (sigma^2 +
  # sigma_data^2) (Karras et al. 2022, Table 1: c_skip).
  zero = lambda p, x, t, cond, rng=None, train=False: jnp.zeros_like(x)
  f_edm = builder.make_model_fn(zero, EDM, "consistency", base=(EDM, "edm"))[0](None, False)
  want = x * (c_skip + (1 - c_skip) * 0.25 / (sig * sig + 0.25))[:, None]
  np.testing.assert_allclose(np.asarray(f_edm(None, x, t, None)), np.asarray(want), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="consistency parametrization only"):
    builder.make_model_fn(apply, EDM, "x0", base=(flow, "x0"))


def test_coefficients_hand_values():
  # sigma = sigma_min + sigma_data: c_skip = 1/2; c_out = sigma_data^2 / sqrt(sigma^2 + sigma_data^2).
  s_min, sd = 0.002, 0.5
  sig = s_min + sd
  c_skip, c_out, c_in, c_noise = cm.coefficients(jnp.float32(sig), s_min, sd)
  np.testing.assert_allclose(float(c_skip), 0.5, rtol=1e-6)
  np.testing.assert_allclose(float(c_out), sd * sd / math.sqrt(sig * sig + sd * sd), rtol=1e-6)
  np.testing.assert_allclose(float(c_in), 1 / math.sqrt(sig * sig + sd * sd), rtol=1e-6)
  np.testing.assert_allclose(float(c_noise), math.log(sig) / 4, rtol=1e-6)


def test_precondition_refuses_a_vp_schedule():
  with pytest.raises(ValueError, match="alpha = 1.*diffusion.schedule='edm'"):
    cm.precondition(lambda *a: a[1], schedules.get_schedule("cosine"))


def test_curriculum_hand_values():
  # K = 1000, s0 = 10, s1 = 1280: K' = floor(1000 / (log2(128) + 1)) = 125.
  got = [int(cm.num_scales(k, 1000)) for k in (0, 124, 125, 250, 874, 875, 999, 5000)]
  assert got == [11, 11, 21, 41, 641, 1281, 1281, 1281]


def test_lognormal_levels_follow_the_erf_differences():
  n, p_mean, p_std = 6, -1.1, 2.0
  ts = cm.grid_times(n, 9)
  sig = np.asarray(EDM.sigma(ts), np.float64)
  logits = np.asarray(cm.lognormal_level_logits(EDM.sigma(ts), n, p_mean, p_std))
  assert np.all(np.isneginf(logits[n - 1:]))
  erf = np.vectorize(math.erf)
  want = np.diff(erf((np.log(sig[:n]) - p_mean) / (math.sqrt(2) * p_std)))
  np.testing.assert_allclose(np.exp(logits[:n - 1]) / np.exp(logits[:n - 1]).sum(), want / want.sum(),
                             rtol=1e-4)


def test_pseudo_huber_hand_values():
  a = jnp.array([[3.0, 4.0], [0.0, 0.0]])
  b = jnp.zeros((2, 2))
  np.testing.assert_allclose(np.asarray(cm.distance(a, b, huber_c=0.0)), [5.0, 0.0])
  np.testing.assert_allclose(np.asarray(cm.distance(a, b, huber_c=1.0)), [math.sqrt(26) - 1, 0.0],
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(cm.distance(a, b, metric="l2")), [12.5, 0.0])
  assert cm.default_huber_c((32, 32, 3)) == pytest.approx(0.00054 * math.sqrt(3072))


def test_consistency_training_loss_hand_case():
  """With f(x, sigma) = x and c = 0, pred - target = (sigma_{n+1} - sigma_n) z, so the iCT-weighted
  loss is ||z|| whatever level was drawn, and the unweighted one is (sigma_{n+1} - sigma_n) ||z||, whose
  mean over levels is sum_n p_n (sigma_{n+1} - sigma_n)."""
  identity = lambda p, x, t, c: x
  x0 = jax.random.normal(jax.random.PRNGKey(2), (4096, 2))
  key = jax.random.PRNGKey(3)
  idx = jnp.arange(4096)
  loss = cm.consistency_training_loss(identity, None, EDM, x0, key, step=0, total_steps=100,
                                      huber_c=0.0)
  z = keys.example_normal(jax.random.split(key)[1], idx, (2,))  # the documented draw of the noise
  np.testing.assert_allclose(np.asarray(loss), np.asarray(jnp.linalg.norm(z, axis=1)), rtol=2e-4,
                             atol=1e-5)
  plain = cm.consistency_training_loss(identity, None, EDM, x0, key, step=0, total_steps=100,
                                       huber_c=0.0, weighting="uniform")
  n = int(cm.num_scales(0, 100))
  ts = cm.grid_times(n, 1281)
  sig = EDM.sigma(ts)
  p = jax.nn.softmax(cm.lognormal_level_logits(sig, n))
  want = float(jnp.sum(p[:n - 1] * (sig[1:n] - sig[:n - 1])))
  got = float(jnp.mean(plain / jnp.linalg.norm(z, axis=1)))
  assert got == pytest.approx(want, rel=0.08)  # 4096 draws of a level: a few % Monte-Carlo error


def test_consistency_training_gradient_flows_only_through_the_online_branch():
  f = lambda p, x, t, c: p * x
  x0 = jax.random.normal(jax.random.PRNGKey(4), (8, 3))
  loss = lambda p, tp: jnp.mean(cm.consistency_training_loss(
      f, p, EDM, x0, jax.random.PRNGKey(5), 0, 100, target_params=tp, metric="l2"))
  g_own = jax.grad(loss)(jnp.float32(0.7), None)
  g_target = jax.grad(loss, argnums=1)(jnp.float32(0.7), jnp.float32(0.7))
  assert float(g_own) != 0.0 and float(g_target) == 0.0


def test_heun_step_and_distillation_loss_on_gaussian_data():
  """The exact teacher's Heun step follows the exact (linear) ODE to third order, so with the exact
  consistency function the distillation loss is ~0; the identity has a loss of order one."""
  teacher = cm.ve_denoiser(make_denoiser(exact_x0(EDM), None, EDM, "x0"), EDM)
  x = jax.random.normal(jax.random.PRNGKey(6), (4, 2)) * 5.0
  s_hi, s_lo = jnp.full((4,), 2.0), jnp.full((4,), 1.8)
  exact = x * math.sqrt((S * S + 1.8 ** 2) / (S * S + 2.0 ** 2))
  np.testing.assert_allclose(np.asarray(cm.heun_step(teacher, x, s_hi, s_lo)), np.asarray(exact),
                             rtol=1e-4)
  x0 = jax.random.normal(jax.random.PRNGKey(7), (512, 2)) * S
  key = jax.random.PRNGKey(8)
  good = cm.consistency_distillation_loss(exact_f, None, None, teacher, EDM, x0, key, num_levels=40,
                                          metric="l2")
  bad = cm.consistency_distillation_loss(lambda p, x, t, c: x, None, None, teacher, EDM, x0, key,
                                         num_levels=40, metric="l2")
  assert float(jnp.mean(good)) < 1e-6 * float(jnp.mean(bad))
  assert float(jnp.mean(bad)) > 0.1


@pytest.mark.parametrize("name", ["flow", "cosine", "linear"])
def test_ve_denoiser_converts_any_schedule(name):
  """E[x0 | x0 + sigma z] of Gaussian data is x S^2 / (S^2 + sigma^2) whichever schedule the teacher
  was built on (its x_t = alpha x0 + sigma_t z is the VE point scaled by alpha)."""
  sched = schedules.get_schedule(name)
  d = cm.ve_denoiser(make_denoiser(exact_x0(sched), None, sched, "x0"), sched)
  x = jax.random.normal(jax.random.PRNGKey(9), (3, 2))
  sig = jnp.array([0.05, 0.7, 6.0])
  want = x * (S * S / (S * S + sig * sig))[:, None]
  np.testing.assert_allclose(np.asarray(d(x, sig)), np.asarray(want), rtol=2e-3, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_multistep_sampling_of_the_exact_consistency_function(steps):
  """Every step re-noises to the exact marginal, so 1, 2 or 4 steps all give N(0, S^2 + sigma_min^2);
  one network call per step (no final denoising call); sample i does not depend on the batch."""
  ts = cm.grid(EDM, steps)
  denoise = make_denoiser(exact_f, None, EDM, "x0")
  n = 4096
  x_init = sampling.initial_noise(jax.random.PRNGKey(10), jnp.arange(n), (2,), EDM)
  out = sampling.sample("consistency", denoise, EDM, x_init, ts, jax.random.PRNGKey(11))
  assert int(out.nfe) == steps
  std = float(jnp.std(out.x))
  assert std == pytest.approx(math.sqrt(S * S + 0.002 ** 2), rel=0.03)  # 8192 values: ~1% std error
  sub = sampling.sample("consistency", denoise, EDM, x_init[5:8], ts, jax.random.PRNGKey(11),
                        indices=jnp.arange(5, 8))
  np.testing.assert_allclose(np.asarray(sub.x), np.asarray(out.x[5:8]), rtol=1e-6, atol=1e-6)


def test_grid_levels():
  np.testing.assert_array_equal(np.asarray(cm.grid(EDM, 1)), [1.0, 0.0])
  two = np.asarray(cm.grid(EDM, 2))
  assert two[0] == 1.0 and two[-1] == 0.0
  np.testing.assert_allclose(float(EDM.sigma(two[1])), 0.821, rtol=1e-5)
  with pytest.raises(ValueError, match="3 consistency steps need 2 descending noise levels"):
    cm.grid(EDM, 3, levels=(0.5, 2.0))
  with pytest.raises(ValueError, match="strictly between sigma_min"):
    cm.grid(EDM, 2, levels=(100.0,))
  flow = schedules.get_schedule("flow")  # defined on any schedule, in noise levels sigma / alpha
  np.testing.assert_allclose(float(flow.sigma_tilde(cm.grid(flow, 2)[1])), 0.821, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Through the config, the train step and the CLIs
# ----------------------------------------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ICT_TOY = ["--config=configs/toy2d.py", "--config.diffusion.schedule=edm",
           "--config.diffusion.parametrization=consistency",
           "--config.training.objective=consistency_training", "--config.sampling.sampler=consistency",
           "--config.sampling.grid=consistency", "--config.sampling.steps=2",
           "--config.training.sample_every=0", "--config.training.log_every=1",
           "--config.training.ckpt_every=3"]


@pytest.mark.parametrize("overrides,message", [
    ({"training.objective": "consistency_training"}, "go together"),
    ({"diffusion.parametrization": "consistency"}, "go together"),
    ({"training.objective": "distill"}, "valid objectives are"),
    ({"training.objective": "consistency_training", "diffusion.parametrization": "consistency"},
     "alpha = 1"),
    ({"consistency.base_schedule": "flow"}, "network of a consistency model"),
])
def test_config_errors(overrides, message):
  sys.path.insert(0, REPO)
  from configs import fashion_mnist
  c = fashion_mnist.get_config()
  for k, v in overrides.items():
    section, key = k.split(".")
    c[section][key] = v
  with pytest.raises(ValueError, match=message):
    config_lib.validate(c)


@pytest.mark.slow  # ~40 s; default run: test_boundary_condition_is_exact_for_any_network
def test_the_unet_consistency_model_keeps_the_boundary_exactly():
  sys.path.insert(0, REPO)
  from configs import fashion_mnist_ict
  c = fashion_mnist_ict.get_config()
  config_lib.validate(c)
  c.model.attn_resolutions = (4,)
  model = builder.build_model(c, (8, 8, 1), 0)
  params = model.init_params()
  params = jax.tree_util.tree_map(lambda p: p + 0.1, params)  # no zero-initialised output layer
  fn, param = model.model_fn()
  assert param == "x0"
  x = jax.random.normal(jax.random.PRNGKey(12), (2, 8, 8, 1))
  np.testing.assert_array_equal(np.asarray(fn(params, x, jnp.zeros((2,)), None)), np.asarray(x))
  assert float(jnp.max(jnp.abs(fn(params, x, jnp.full((2,), 0.5), None) - x))) > 1e-3


def test_consistency_training_through_train_py_resumes_exactly_and_samples(tmp_path):
  """train.py trains a consistency model (iCT) and resumes bit-exactly (3 + 3 steps give the losses of 6
  straight); sample.py draws from it in 1 and 2 steps, one network call each, and refuses the
  consistency sampler for a diffusion model."""
  straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
  runs = _gaussian.train_cases(  # the three train.py runs in one worker process
      [(i, ICT_TOY + [f"--workdir={wd}", f"--config.training.num_steps={n}"])
       for i, (wd, n) in enumerate(((straight, 6), (split, 3), (split, 6)))], tmp_path)
  for r in runs.values():
    assert r.returncode == 0, r.stderr[-3000:]
  losses = lambda wd: [json.loads(l)["loss"] for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert losses(split) == losses(straight) and len(losses(straight)) == 6
  for steps in (1, 2):  # sample.py in this process
    out = str(tmp_path / f"s{steps}.npz")
    r = _gaussian.sample_in_process([f"--workdir={straight}", "--num=5", f"--steps={steps}", f"--out={out}"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.load(open(out[:-4] + ".json"))["nfe_per_batch"] == steps
    x = np.load(out)["samples"]
    assert x.shape == (5, 2) and np.all(np.isfinite(x))
  other = sm.write_workdir(str(tmp_path / "ddpm"), sm.mlp_config(), (2,), 0)
  r = _gaussian.sample_in_process([f"--workdir={other}", "--num=2", "--sampler=consistency"])
  assert r.returncode == 2 and "needs a consistency model" in r.stderr.strip().splitlines()[-1]
