"""Conditional generation: label dropout in training, classifier-free guidance (Ho & Salimans 2022) and
classifier guidance (Dhariwal & Nichol 2021), checked against closed forms of a Gaussian mixture (class =
component), then end to end through train.py / sample.py with tiny models, and the bad inputs.

Closed form used below (1-D mixture ``sum_k w_k N(mu_k, v)``, ``y = x_t / alpha``, ``s = sigma / alpha``):
``y | k ~ N(mu_k, v + s^2)``, ``E[x0 | y, k] = mu_k + v / (v + s^2) (y - mu_k)``,
``p(k | y) ∝ w_k N(y; mu_k, v + s^2)``, ``E[x0 | y] = sum_k p(k | y) E[x0 | y, k]``; classifier-free
guidance with the exact denoisers is ``D_w = (1 + w) E[x0 | y, k] - w E[x0 | y]``. Its samples follow the
probability-flow ODE ``dy / d ln s = y - D_w(y, s)``; in 1-D that flow keeps the order of points, so the
fraction of samples beyond the decision boundary is the prior mass beyond the one starting point
whose trajectory ends on the boundary: integrating that single trajectory backwards (RK4, fine steps)
predicts the sampled fraction for every ``w``.
"""
import dataclasses
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _sample_models as sm

import jdiff
from jdiff import grids, guidance, sampling
from jdiff.parametrization import make_denoiser

REPO = sm.REPO


# ----------------------------------------------------------------------------------------------------
# Training: label dropout
# ----------------------------------------------------------------------------------------------------


def _train_step_labels(p, n=8192, num_classes=5):
  """``labels_seen(step, index)``: the labels the model receives in one real train step
  (``make_train_step``, label dropout ``p``) for a batch of global example indices ``index``."""
  from jdiff.experiment.state import create_state
  from jdiff.training.step import make_train_step
  seen = []

  def apply(params, x, t, cond, *, rng=None, train=False):
    jax.debug.callback(lambda c: seen.append(np.asarray(c)), cond["label"])
    return params["w"] * x

  opt = optax.sgd(0.1)
  step_fn = jax.jit(make_train_step(apply, jdiff.CosineSchedule(), opt, num_classes=num_classes,
                                    cond_drop_prob=p, axis_name=None, global_batch_size=n))
  state = create_state({"w": jnp.zeros(())}, opt, 0)

  def labels_seen(step, index):
    index = np.asarray(index, np.int32)
    batch = {"image": np.zeros((n, 2), np.float32), "label": index % num_classes, "index": index}
    seen.clear()
    jax.block_until_ready(step_fn(state.replace(step=jnp.int32(step)), batch))
    return seen[0]

  return labels_seen


def test_label_dropout_rate_is_honoured():
  from jdiff import conditions
  n, k, p = 8192, 5, 0.1
  labels_seen = _train_step_labels(p, n, k)
  index = np.arange(n)
  cond = labels_seen(0, index)
  dropped = cond == k
  np.testing.assert_array_equal(cond[~dropped], (index % k)[~dropped])  # kept labels are unchanged
  assert abs(dropped.mean() - p) < 4 * math.sqrt(p * (1 - p) / n), dropped.mean()
  # Decided per global example index, so any split of the batch over devices (here: another order)
  # drops the same examples; the next step drops others.
  perm = np.random.default_rng(0).permutation(n)
  np.testing.assert_array_equal(labels_seen(0, perm) == k, dropped[perm])
  assert not np.array_equal(labels_seen(1, index) == k, dropped)
  key, lab = jax.random.PRNGKey(0), {"label": jnp.arange(256) % k}
  drop = lambda prob: np.asarray(conditions.for_model(k).drop(lab, key, jnp.arange(256), prob)["label"])
  assert not np.any(drop(0.0) == k)
  assert np.all(drop(1.0) == k)


def test_conditional_configs():
  from configs import cifar10_cond, fashion_mnist, fashion_mnist_classifier
  from jdiff import models
  from jdiff.experiment import config as config_check
  for mod, shape in ((fashion_mnist, (28, 28, 1)), (cifar10_cond, (32, 32, 3))):
    c = mod.get_config()
    config_check.validate(c)
    assert c.training.conditional and c.training.cond_drop_prob == 0.1
    m = models.create(c.model.name, num_classes=10, **{k: v for k, v in c.model.items() if k != "name"})
    m.check_input(jnp.zeros((1,) + shape))
  c = fashion_mnist_classifier.get_config()
  config_check.validate(c)
  assert c.task == "classifier" and c.model.name == "classifier"
  c.training.conditional = True
  with pytest.raises(ValueError, match="a classifier always reads the labels"):
    config_check.validate(c)


# ----------------------------------------------------------------------------------------------------
# Classifier-free guidance on the exact Gaussian-mixture denoiser
# ----------------------------------------------------------------------------------------------------

W1D = np.array([0.5, 0.5])
MU1D = np.array([-1.0, 1.0])
V1D = 1.0
MIX1D = jdiff.toy.GaussianMixture(jnp.asarray(W1D, jnp.float32), jnp.asarray(MU1D[:, None], jnp.float32),
                                  jnp.full((2, 1, 1), V1D, jnp.float32))
LIN = jdiff.LinearSchedule()


def _closed_form(y, s, k, w):
  """``E[x0 | y, k]``, ``E[x0 | y]`` and ``D_w`` of the 1-D mixture (float64 numpy; see the module
  docstring)."""
  y = np.asarray(y, np.float64)[..., None]
  var = V1D + s ** 2
  logp = np.log(W1D) - 0.5 * (y - MU1D) ** 2 / var
  post = np.exp(logp - logp.max(-1, keepdims=True))
  post /= post.sum(-1, keepdims=True)
  e_k = MU1D + V1D / var * (y - MU1D)
  cond, uncond = e_k[..., k], np.sum(post * e_k, -1)
  return cond, uncond, (1 + w) * cond - w * uncond


def _alpha_s(t):
  a, s = LIN.alpha_sigma(jnp.asarray(t, jnp.float32))
  return float(a), float(s) / float(a)


def test_cfg_denoiser_is_the_closed_form():
  model = MIX1D.model_fn(LIN)
  x = np.tile(np.linspace(-3, 3, 13, dtype=np.float32), 3)[:, None]
  t = np.repeat(np.float32([0.05, 0.3, 0.7]), 13)
  guided = jax.jit(lambda w: guidance.classifier_free_denoiser(
      model, None, LIN, "x0", jnp.ones((39,), jnp.int32), 2, w)(jnp.asarray(x), jnp.asarray(t)).x0)
  a, s = (np.asarray(v, np.float64) for v in LIN.alpha_sigma(jnp.asarray(t)))
  for w in (0.0, 1.0, 4.0):  # one compiled function: the scale is traced
    want = np.array([_closed_form(x[i, 0] / a[i], s[i] / a[i], 1, w)[2] for i in range(39)])
    np.testing.assert_allclose(np.asarray(guided(w))[:, 0], want, rtol=1e-4, atol=1e-4)


def _predicted_fraction(w, ts, k=1, num=4000):
  """Fraction of guided samples that land on component ``k``'s side of the decision boundary (x = 0):
  the prior mass beyond the point whose probability-flow trajectory ends on the boundary."""
  a_max, s_max = _alpha_s(ts[0])
  _, s_min = _alpha_s(ts[-2])  # the last step (to t = 0) lands on D_w(x at ts[-2])
  lo, hi = -5.0, 5.0
  for _ in range(60):  # D_w(y*, s_min) = 0 by bisection (D_w increases in y)
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if _closed_form(mid, s_min, k, w)[2] < 0 else (lo, mid)
  y = 0.5 * (lo + hi)
  f = lambda y, ln_s: y - _closed_form(y, math.exp(ln_s), k, w)[2]
  grid = np.linspace(math.log(s_min), math.log(s_max), num + 1)
  for u, v in zip(grid[:-1], grid[1:]):  # RK4 on dy / d ln s = y - D_w
    h = v - u
    k1 = f(y, u)
    k2 = f(y + 0.5 * h * k1, u + 0.5 * h)
    k3 = f(y + 0.5 * h * k2, u + 0.5 * h)
    k4 = f(y + h * k3, v)
    y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
  # x_T = prior_std eps with prior_std = 1 (VP): y_T = x_T / alpha_T > y  <=>  eps > alpha_T y.
  return 0.5 * math.erfc(a_max * float(y) / math.sqrt(2.0))


def test_cfg_moves_samples_toward_the_component_as_predicted():
  n, steps = 20000, 50
  ts = grids.get_grid("uniform_logsnr", LIN, steps)
  model = MIX1D.model_fn(LIN)
  cfg = guidance.classifier_free(model, 2)
  # The guidance scale rides in ``params``: a traced value, one compiled sampler for every w.
  sample_fn = sampling.make_sample_fn(lambda w, x, t, c: cfg(None, x, t, c, w), LIN, "x0", "dpmpp_2m",
                                      steps)
  labels = jnp.ones((n,), jnp.int32)
  fractions, predicted, samples = [], [], []
  for w in (0.0, 0.25, 1.0):
    x = np.asarray(sample_fn(jnp.float32(w), (n, 1), ts, jax.random.PRNGKey(0), labels).x)[:, 0]
    samples.append(x)
    fractions.append(float(np.mean(x > 0)))
    predicted.append(_predicted_fraction(w, np.asarray(ts, np.float64)))
  # Guidance scale 0 samples the conditional model (same noise, same samples).
  cond_fn = sampling.make_sample_fn(model, LIN, "x0", "dpmpp_2m", steps)
  x_cond = np.asarray(cond_fn(None, (n, 1), ts, jax.random.PRNGKey(0), labels).x)[:, 0]
  np.testing.assert_allclose(samples[0], x_cond, atol=1e-5)
  # w = 0 is the conditional model: N(1, 1) has mass Phi(1) = 0.8413 on its side of x = 0 (up to the
  # prior N(0, 1) at t = 1 ignoring the class mean alpha(1) mu_k: about 1.5e-3 here).
  assert abs(predicted[0] - 0.5 * math.erfc(-1 / math.sqrt(2))) < 3e-3
  assert predicted[0] + 0.05 < predicted[1] < predicted[2] - 0.05  # 0.840, 0.902, 0.990
  se = math.sqrt(0.25 / n)
  for w, got, want in zip((0, 0.25, 1), fractions, predicted):
    assert abs(got - want) < 4 * se + 5e-3, (w, got, want)
  assert fractions[0] < fractions[1] < fractions[2]


# ----------------------------------------------------------------------------------------------------
# Classifier guidance with the exact noisy classifier p(k | x_t)
# ----------------------------------------------------------------------------------------------------


def test_classifier_guidance_with_the_exact_posterior_samples_the_component():
  mix, sched, k, n = jdiff.toy.default_mixture(), jdiff.CosineSchedule(), 2, 3000
  model = mix.model_fn(sched)
  ts = grids.get_grid("uniform_logsnr", sched, 30)
  log_prob = lambda x, t, y: jnp.log(
      mix.posterior_probs(x, *sched.alpha_sigma(t))[jnp.arange(x.shape[0]), y])
  labels = jnp.full((n,), k, jnp.int32)

  @jax.jit
  def run(scale, key):
    x_init = sampling.initial_noise(key, jnp.arange(n), (2,), sched)
    uncond = make_denoiser(model, None, sched, "x0", jnp.full((n,), mix.num_components))
    guided = guidance.classifier_guidance(uncond, sched, log_prob, labels, scale)
    cond = make_denoiser(model, None, sched, "x0", labels)
    return (sampling.sample("dpmpp_2m", guided, sched, x_init, ts, key).x,
            sampling.sample("dpmpp_2m", cond, sched, x_init, ts, key).x)

  x_cg, x_cond = map(np.asarray, run(1.0, jax.random.PRNGKey(1)))
  # Pointwise the guided denoiser is the conditional one, so the same noise gives the same samples.
  assert np.mean(np.abs(x_cg - x_cond)) < 2e-3
  ref = mix.sample_component(jax.random.PRNGKey(2), k, n)
  ref2 = mix.sample_component(jax.random.PRNGKey(3), k, n)
  kw = jax.random.PRNGKey(4)
  w1 = float(jdiff.toy.sliced_wasserstein(x_cg, ref, kw))
  floor = float(jdiff.toy.sliced_wasserstein(ref2, ref, kw))
  assert w1 < 1.5 * floor + 0.01, (w1, floor)
  frac = float(np.mean(np.asarray(jdiff.toy.assign_components(mix, x_cg)) == k))
  frac_ref = float(np.mean(np.asarray(jdiff.toy.assign_components(mix, ref)) == k))
  assert abs(frac - frac_ref) < 0.01, (frac, frac_ref)
  # Scale 0 is the unconditional mixture (component 2 has weight 0.2); larger scales sharpen further.
  x0s, _ = map(np.asarray, run(0.0, jax.random.PRNGKey(1)))
  assert abs(np.mean(np.asarray(jdiff.toy.assign_components(mix, x0s)) == k) - 0.2) < 0.03


def test_a_classifier_of_another_schedule_is_queried_at_equal_logsnr():
  """The exact posterior written as a classifier trained on the cosine schedule's x_t, queried by a
  sampler on the linear schedule, is the exact posterior of the linear schedule's x_t."""
  mix, cos = jdiff.toy.default_mixture(), jdiff.CosineSchedule()
  logits_fn = lambda params, x, t: jnp.log(mix.posterior_probs(x, *cos.alpha_sigma(t)))
  log_prob = guidance.classifier_log_prob(logits_fn, None, LIN, cos)
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 2)) * 1.5
  t = jnp.array([0.05, 0.2, 0.4, 0.6, 0.8, 0.95])
  y = jnp.array([0, 1, 2, 0, 1, 2])
  want = jnp.log(mix.posterior_probs(x, *LIN.alpha_sigma(t)))[jnp.arange(6), y]
  np.testing.assert_allclose(log_prob(x, t, y), want, rtol=1e-3, atol=1e-4)
  same = guidance.classifier_log_prob(logits_fn, None, cos, cos)(x, t, y)
  np.testing.assert_allclose(same, jnp.log(mix.posterior_probs(x, *cos.alpha_sigma(t)))[jnp.arange(6), y],
                             rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# End to end: train.py trains a tiny classifier, sample.py guides with it; generate() with guidance
# ----------------------------------------------------------------------------------------------------

TINY_CLF = ["--config.model.ch=8", "--config.model.ch_mult=(1,)", "--config.data.batch_size=8",
            "--config.training.num_steps=2", "--config.training.ckpt_every=2",
            "--config.training.log_every=1", "--config.optim.warmup_steps=0"]


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu")


@pytest.fixture(scope="module")
def clf_wd(tmp_path_factory):
  """A tiny noise-conditional classifier trained for 2 steps by train.py itself (a subprocess)."""
  wd = str(tmp_path_factory.mktemp("clf") / "clf")
  r = subprocess.run(["timeout", "-k", "5", "300", sys.executable, "train.py",
                      "--config=configs/fashion_mnist_classifier.py", f"--workdir={wd}", *TINY_CLF],
                     capture_output=True, text=True, cwd=REPO, env=_env())
  assert r.returncode == 0, r.stderr[-2000:]
  return wd


@pytest.fixture(scope="module")
def uncond_wd(tmp_path_factory):
  """An unconditional one-level UNet (untrained: sampling does not care; see _sample_models)."""
  c = sm.unet_config(conditional=False)
  c.model.ch_mult, c.model.attn_resolutions = (1,), ()
  return sm.write_workdir(str(tmp_path_factory.mktemp("unc") / "unet"), c, (28, 28, 1), 0)


def _main(args):
  import sample  # sample.py at the repository root (train.py runs in subprocesses: same flag names)
  from jdiff.utils import cli
  sample.FLAGS.unparse_flags()
  sample.FLAGS(["sample.py", "--noprogress", *args])
  return cli.run_main(sample._main, ["sample.py"], False)


def test_train_py_trains_a_classifier_and_sample_py_guides_with_it(clf_wd, uncond_wd, tmp_path):
  rows = [json.loads(l) for l in open(os.path.join(clf_wd, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [1, 2] and all("accuracy" in r for r in rows)
  with open(os.path.join(clf_wd, "config.json")) as f:
    assert json.load(f)["task"] == "classifier"
  out = tmp_path / "cg.png"
  assert _main([f"--workdir={uncond_wd}", f"--classifier={clf_wd}", "--classifier_scale=3",
                "--labels=2,5", "--num=4", "--steps=2", f"--out={out}"]) == 0
  with np.load(tmp_path / "cg.npz", allow_pickle=False) as z:
    np.testing.assert_array_equal(z["labels"], [2, 5, 2, 5])
    assert z["samples"].shape == (4, 28, 28, 1) and np.all(np.isfinite(z["samples"]))
  info = json.load(open(tmp_path / "cg.json"))
  assert info["classifier"]["scale"] == 3.0 and info["classifier"]["step"] == 2
  assert "--classifier=" in info["command"] and "--classifier_scale=3.0" in info["command"]


def test_classifier_scale_is_traced_and_guides(clf_wd, uncond_wd):
  from jdiff import generation as gen
  from jdiff.generation import restore
  model = restore.restore(uncond_wd)
  clf = restore.restore(clf_wd, task="classifier")
  # A classifier that has seen 2 steps barely varies with x; perturb its logits layer so that the
  # guidance gradient is clearly non-zero (the test is about the plumbing, not the classifier).
  rng = np.random.default_rng(0)
  p = clf.params["params"]["logits"]
  p["kernel"] = (rng.standard_normal(p["kernel"].shape) * 0.5).astype(np.float32)
  s = gen.Settings(num=4, steps=2, sampler="ddim", labels=(1, 7))
  out0 = gen.generate(model, s, classifier=clf, progress=False)
  out3 = gen.generate(model, dataclasses.replace(s, classifier_scale=3.0), classifier=clf,
                      progress=False)
  assert out3.compile_seconds == 0.0  # same program: the scale is an argument
  assert out0.settings.classifier_scale == 1.0  # the default with a classifier
  assert np.max(np.abs(out0.samples - out3.samples)) > 1e-3


# ----------------------------------------------------------------------------------------------------
# Bad input: one line, exit status 2
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rgb_clf_wd(tmp_path_factory):
  """A (fake, untrained) classifier checkpoint for 32x32x3 data."""
  from configs import fashion_mnist_classifier
  c = fashion_mnist_classifier.get_config()
  c.model.ch, c.model.ch_mult = 8, (1,)
  return sm.write_workdir(str(tmp_path_factory.mktemp("rgb") / "clf"), c, (32, 32, 3), 10)


BAD = [
    ("labels_out_of_range_classifier", ["--workdir={unc}", "--classifier={clf}", "--labels=3,10"],
     "label 10 is out of range: the classifier has 10 classes, labels must be in [0, 9]"),
    ("guidance_unconditional", ["--workdir={unc}", "--guidance=2", "--classifier={clf}"],
     "guidance needs a conditional model (labels or captions) but this one has no condition"),
    ("labels_unconditional_no_classifier", ["--workdir={unc}", "--labels=1"],
     "the model is unconditional (trained with training.conditional=False) and there is no classifier"),
    ("classifier_shape", ["--workdir={unc}", "--classifier={rgb}"],
     "was trained on data of shape (32, 32, 3) but the diffusion model makes data of shape (28, 28, 1)"),
    ("not_a_classifier", ["--workdir={unc}", "--classifier={unc}"],
     "is a diffusion model, not a classifier"),
    ("classifier_as_model", ["--workdir={clf}"], "is a noise-conditional classifier, not a diffusion model"),
    ("scale_without_classifier", ["--workdir={unc}", "--classifier_scale=2"],
     "--classifier_scale needs --classifier"),
    ("classifier_missing", ["--workdir={unc}", "--classifier={unc}/nope"], "--classifier: workdir"),
    ("scale_nonfinite", ["--workdir={unc}", "--classifier={clf}", "--classifier_scale=nan"],
     "classifier_scale must be a finite number"),
]


@pytest.mark.parametrize("name,args,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input(name, args, message, clf_wd, uncond_wd, rgb_clf_wd, tmp_path, capsys):
  wds = {"unc": uncond_wd, "clf": clf_wd, "rgb": rgb_clf_wd}
  args = [a.format(**wds) for a in args] + [f"--out={tmp_path}/x.png"]
  assert _main(args) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and message in err, err
  assert not os.listdir(tmp_path)


def test_bad_classifier_flags_exit_status_from_the_command_line(uncond_wd, tmp_path):
  r = subprocess.run(["timeout", "-k", "5", "120", sys.executable, "sample.py",
                      f"--workdir={uncond_wd}", "--classifier_scale=2", f"--out={tmp_path}/x.png"],
                     capture_output=True, text=True, cwd=REPO, env=_env())
  assert r.returncode == 2
  assert len(r.stderr.strip().splitlines()) == 1 and "--classifier_scale needs --classifier" in r.stderr
  assert not os.listdir(tmp_path)
