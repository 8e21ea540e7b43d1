"""Classifier-free and classifier guidance, x0 clipping and dynamic thresholding.

The exact Gaussian-mixture denoiser gives ground truth: its component label is the class, the null label
``K`` gives the unconditional model, and ``p(k | x_t)`` is the exact noisy-data classifier, so classifier
guidance at scale 1 must reproduce the conditional model exactly.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import guidance, parametrization, schedules, toy
from jdiff.parametrization import Prediction, make_denoiser

MIX = toy.default_mixture()
K = MIX.num_components
SCHEDULE = schedules.CosineSchedule()
B = 64
X = jax.random.normal(jax.random.PRNGKey(0), (B, 2)) * 1.5
T = jax.random.uniform(jax.random.PRNGKey(1), (B,), minval=0.05, maxval=0.95)
LABELS = jax.random.randint(jax.random.PRNGKey(2), (B,), 0, K)
EXACT = MIX.model_fn(SCHEDULE)  # x0 parametrization; cond = labels, K = null


def in_parametrization(fn_x0, param):
  def fn(params, x, t, cond):
    x0 = fn_x0(params, x, t, cond)
    alpha, sigma = SCHEDULE.alpha_sigma(parametrization.broadcast_t(t, x))
    eps = parametrization.to_x0_eps("x0", x0, x, alpha, sigma)[1]
    return parametrization.from_x0_eps(param, x0, eps, x, alpha, sigma)
  return fn


def test_scale_zero_is_the_conditional_model_and_minus_one_the_unconditional():
  guided = guidance.classifier_free(EXACT, null_cond=K)
  cond_out = EXACT(None, X, T, LABELS)
  uncond_out = EXACT(None, X, T, jnp.full((B,), K))
  np.testing.assert_allclose(guided(None, X, T, LABELS, 0.0), cond_out, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(guided(None, X, T, LABELS, -1.0), uncond_out, rtol=1e-5, atol=1e-5)
  w = jnp.linspace(0.0, 4.0, B)  # one scale per example
  np.testing.assert_allclose(guided(None, X, T, LABELS, w),
                             (1 + w[:, None]) * cond_out - w[:, None] * uncond_out,
                             rtol=1e-5, atol=1e-5)


def test_both_branches_run_in_one_batched_call():
  calls = []

  def counting(params, x, t, cond):
    calls.append((x.shape, t.shape, np.asarray(cond)))
    return EXACT(params, x, t, cond)

  guidance.classifier_free(counting, K)(None, X, 0.5, LABELS, 2.0)
  assert len(calls) == 1
  (xs, ts, cond), = calls
  assert xs == (2 * B, 2) and ts == (2 * B,)
  np.testing.assert_array_equal(cond, np.concatenate([LABELS, np.full(B, K)]))


def test_changing_the_scale_does_not_retrace():
  traces = []

  def model(params, x, t, cond):
    traces.append(1)
    return EXACT(params, x, t, cond)

  guided = guidance.classifier_free(model, K)
  f = jax.jit(lambda x, t, w: guided(None, x, t, LABELS, w))
  outs = [f(X, T, w) for w in (0.0, 1.5, 7.0)]
  assert len(traces) == 1
  assert not np.allclose(outs[1], outs[2])

  den = make_denoiser(EXACT, None, SCHEDULE, "x0", jnp.full((B,), K))
  log_prob = lambda x, t, y: jnp.log(MIX.posterior_probs(x, *SCHEDULE.alpha_sigma(t))[jnp.arange(B), y])

  @jax.jit
  def cg(x, t, s, p):
    traces.append(2)
    return guidance.dynamic_threshold(guidance.classifier_guidance(den, SCHEDULE, log_prob, LABELS, s),
                                      SCHEDULE, p)(x, t).x0

  cg(X, T, 1.0, 0.99), cg(X, T, 2.0, 0.9)
  assert traces.count(2) == 1


@pytest.mark.parametrize("param", ["eps", "v", "score"])
def test_guiding_the_raw_output_equals_guiding_x0(param):
  """The combination is affine, so it commutes with every parametrization's output -> x0 map."""
  w = 3.0
  ref = guidance.classifier_free_denoiser(EXACT, None, SCHEDULE, "x0", LABELS, K, w)(X, T)
  got = guidance.classifier_free_denoiser(in_parametrization(EXACT, param), None, SCHEDULE, param,
                                          LABELS, K, w)(X, T)
  np.testing.assert_allclose(got.x0, ref.x0, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got.eps, ref.eps, rtol=1e-4, atol=1e-4)


def exact_log_prob(x, t, y):
  alpha, sigma = SCHEDULE.alpha_sigma(t)
  return jnp.log(MIX.posterior_probs(x, alpha, sigma)[jnp.arange(x.shape[0]), y])


def test_classifier_guidance_with_the_exact_classifier():
  uncond = make_denoiser(EXACT, None, SCHEDULE, "x0", jnp.full((B,), K))
  cond = make_denoiser(EXACT, None, SCHEDULE, "x0", LABELS)(X, T)
  # grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t): scale 1 is the conditional model.
  got = guidance.classifier_guidance(uncond, SCHEDULE, exact_log_prob, LABELS, 1.0)(X, T)
  np.testing.assert_allclose(got.x0, cond.x0, rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(got.eps, cond.eps, rtol=1e-3, atol=1e-4)
  # Classifier guidance at scale 1 + w on the unconditional model equals classifier-free guidance w.
  w = 2.5
  cg = guidance.classifier_guidance(uncond, SCHEDULE, exact_log_prob, LABELS, 1.0 + w)(X, T)
  cfg = guidance.classifier_free_denoiser(EXACT, None, SCHEDULE, "x0", LABELS, K, w)(X, T)
  np.testing.assert_allclose(cg.x0, cfg.x0, rtol=1e-3, atol=2e-4)
  np.testing.assert_allclose(cg.eps, cfg.eps, rtol=1e-3, atol=2e-4)


def test_pytree_condition_and_learned_variance():
  emb = jax.random.normal(jax.random.PRNGKey(3), (B, 5))

  def model(params, x, t, cond):
    scale = 1.0 + jnp.sum(cond["emb"], -1, keepdims=True) + cond["label"][:, None]
    return jnp.concatenate([x * scale, jnp.tanh(x * scale)], -1)  # mean | variance channels

  cond = {"emb": emb, "label": jnp.ones((B,))}
  null = {"emb": jnp.zeros(5), "label": 0.0}  # per-example null, broadcast over the batch
  guided = guidance.classifier_free(model, null, learned_variance=True)
  out = guided(None, X, T, cond, 2.0)
  c = model(None, X, T, cond)
  u = model(None, X, T, {"emb": jnp.zeros((B, 5)), "label": jnp.zeros(B)})
  np.testing.assert_allclose(out[:, :2], 3.0 * c[:, :2] - 2.0 * u[:, :2], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out[:, 2:], c[:, 2:])  # variance from the conditional branch


def _raw_denoiser(scale, var_frac=None):
  """An x0 model returning ``scale * x`` (out of [-1, 1] for large inputs)."""
  def den(x, t):
    alpha, sigma = SCHEDULE.alpha_sigma(parametrization.broadcast_t(t, x))
    x0 = scale * x
    eps = (x - alpha[:, None] * x0) / sigma[:, None]
    return Prediction(x0, eps, var_frac)
  return den


def _consistent(pred, x, t):
  alpha, sigma = SCHEDULE.alpha_sigma(parametrization.broadcast_t(t, x))
  np.testing.assert_allclose(alpha[:, None] * pred.x0 + sigma[:, None] * pred.eps, x, rtol=1e-5,
                             atol=1e-5)


def test_clip_x0_clips_and_keeps_eps_consistent():
  frac = jnp.full((B, 2), 0.25)
  raw = _raw_denoiser(1.0, frac)
  got = guidance.clip_x0(raw, SCHEDULE)(X, T)
  assert float(jnp.max(jnp.abs(got.x0))) <= 1.0
  inside = np.abs(np.asarray(X)) <= 1.0
  np.testing.assert_allclose(np.asarray(got.x0)[inside], np.asarray(X)[inside], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(got.x0)[~inside], np.sign(np.asarray(X))[~inside])
  _consistent(got, X, T)
  assert got.var_frac is frac
  narrow = guidance.clip_x0(raw, SCHEDULE, -0.5, 2.0)(X, T)
  assert float(narrow.x0.min()) >= -0.5 and float(narrow.x0.max()) <= 2.0


def test_dynamic_thresholding_matches_imagen():
  x = jnp.concatenate([jax.random.uniform(jax.random.PRNGKey(4), (8, 16), minval=-0.9, maxval=0.9),
                       jax.random.normal(jax.random.PRNGKey(5), (8, 16)) * 3.0])
  t = jnp.full((16,), 0.3)
  got = guidance.dynamic_threshold(_raw_denoiser(1.0), SCHEDULE, 0.9)(x, t)
  xn = np.asarray(x, np.float64)
  s = np.maximum(np.quantile(np.abs(xn), 0.9, axis=1), 1.0)[:, None]
  np.testing.assert_allclose(got.x0, np.clip(xn, -s, s) / s, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got.x0[:8], x[:8], rtol=1e-6)  # inside [-1, 1]: unchanged
  assert float(jnp.max(jnp.abs(got.x0))) <= 1.0 + 1e-6
  assert np.all(np.max(np.abs(np.asarray(got.x0[8:])), axis=1) > 0.999)  # saturated ones reach 1
  _consistent(got, x, t)


def test_sigma_zero_keeps_eps():
  sched = schedules.LinearSchedule()  # sigma(0) = 0
  den = lambda x, t: Prediction(2.0 * x, jnp.ones_like(x))
  got = guidance.clip_x0(den, sched)(X, 0.0)
  np.testing.assert_array_equal(got.eps, jnp.ones_like(X))


@pytest.mark.parametrize("call, match", [
    (lambda: guidance.classifier_free(EXACT, K)(None, X, T, LABELS, float("nan")),
     "guidance_scale must be finite"),
    (lambda: guidance.classifier_free(EXACT, K)(None, X, T, LABELS, jnp.array([1.0, jnp.inf])),
     r"guidance_scale must be a scalar or have shape \[batch\]=\(64,\)"),
    (lambda: guidance.classifier_free(EXACT, K)(None, X, T, LABELS, jnp.ones((B, 1))),
     "guidance_scale must be a scalar or have shape"),
    (lambda: guidance.classifier_free(EXACT, K)(None, X, T, None, 1.0), "needs a condition"),
    (lambda: guidance.classifier_free(EXACT, K)(None, X, T, LABELS[:10], 1.0),
     "cond has leading dimension 10 but the batch has 64"),
    (lambda: guidance.classifier_free(EXACT, K)(None, X, T, jnp.int32(1), 1.0), "scalar leaf"),
    (lambda: guidance.classifier_free(EXACT, {"a": K})(None, X, T, LABELS, 1.0),
     "null_cond must have the structure of cond"),
    (lambda: guidance.classifier_free(EXACT, jnp.zeros(3))(None, X, T, LABELS, 1.0),
     r"null_cond leaf of shape \(3,\) does not broadcast"),
    (lambda: guidance.classifier_free(EXACT, K)(None, X, 1.5, LABELS, 1.0), r"t must lie in \[0, 1\]"),
    (lambda: guidance.classifier_free(EXACT, K)(None, X, T[:3], LABELS, 1.0),
     r"t must be a scalar or have shape \[batch\]"),
    (lambda: guidance.dynamic_threshold(_raw_denoiser(1.0), SCHEDULE, 99.5), "not 99.5"),
    (lambda: guidance.clip_x0(_raw_denoiser(1.0), SCHEDULE, 1.0, -1.0), "finite lo < hi"),
    (lambda: guidance.classifier_guidance(_raw_denoiser(1.0), SCHEDULE, exact_log_prob, LABELS,
                                          jnp.inf)(X, T), "scale must be finite"),
    (lambda: guidance.classifier_guidance(_raw_denoiser(1.0), SCHEDULE,
                                          lambda x, t, y: jnp.sum(x), LABELS, 1.0)(X, T),
     r"one log-probability per example, shape \(64,\), got \(\)"),
])
def test_bad_inputs_raise_clear_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()
