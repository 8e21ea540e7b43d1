"""Schedule identities, the discrete DDPM table, forward noising and the Gaussian posterior."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff

NAMES = sorted(jdiff.SCHEDULES)


@pytest.mark.parametrize("name", NAMES)
def test_logsnr_monotone_and_inverse(name):
  s = jdiff.get_schedule(name)
  t = jnp.linspace(0.0, 1.0, 2001)[1:]
  ls = s.logsnr(t)
  if s.pure_noise_at_one:  # flow matching: alpha(1) = 0, logsnr(1) = -inf exactly
    assert float(ls[-1]) == -np.inf and float(s.t_of_logsnr(ls[-1])) == 1.0
    ls, t = ls[:-1], t[:-1]
  assert np.all(np.isfinite(np.asarray(ls)))
  # Strictly decreasing (clamped schedules may flatten only at their very end).
  d = np.diff(np.asarray(ls))
  assert np.all(d <= 0) and np.mean(d < 0) > 0.99
  # t(logsnr(t)) = t. The cosine inverse goes through arccos near t=1, which loses ~3e-5 in float32.
  tol = 1e-4 if name == "cosine" else 2e-6
  np.testing.assert_allclose(s.t_of_logsnr(ls[:-2]), t[:-2], atol=tol)


@pytest.mark.parametrize("name", NAMES)
def test_alpha_sigma_consistent_with_logsnr(name):
  s = jdiff.get_schedule(name)
  t = jnp.linspace(0.02, 0.98, 49)
  a, sg = s.alpha_sigma(t)
  np.testing.assert_allclose(2 * jnp.log(a / sg), s.logsnr(t), atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(s.sigma_tilde(t), sg / a, rtol=1e-5)
  np.testing.assert_allclose(s.t_of_sigma_tilde(s.sigma_tilde(t)), t, atol=1e-4)
  if s.variance_preserving:
    np.testing.assert_allclose(a * a + sg * sg, 1.0, atol=1e-6)
  elif s.alpha_is_one:
    np.testing.assert_allclose(a, 1.0)
  else:  # flow matching: the linear interpolant
    np.testing.assert_allclose(a, 1.0 - t, atol=1e-7)
    np.testing.assert_allclose(sg, t, atol=1e-7)


@pytest.mark.parametrize("name", ["linear", "vp_sde", "cosine", "sigmoid"])
def test_vp_endpoints(name):
  s = jdiff.get_schedule(name)
  a0, s0 = s.alpha_sigma(0.0)
  assert float(a0) == pytest.approx(1.0) and float(s0) == pytest.approx(0.0, abs=1e-6)
  assert float(s.logsnr(0.0)) > 15  # +inf or clamped at logsnr_max
  a1, s1 = s.alpha_sigma(1.0)
  assert float(a1) < 0.01 and float(s1) == pytest.approx(1.0, abs=1e-4)


def test_ve_edm_endpoints():
  ve = jdiff.VESchedule(sigma_min=0.01, sigma_max=50.0)
  assert float(ve.sigma(0.0)) == pytest.approx(0.01, rel=1e-5)
  assert float(ve.sigma(1.0)) == pytest.approx(50.0, rel=1e-5)
  edm = jdiff.EDMSchedule()
  assert float(edm.sigma(0.0)) == pytest.approx(0.002, rel=1e-4)
  assert float(edm.sigma(1.0)) == pytest.approx(80.0, rel=1e-5)
  assert edm.prior_std() == pytest.approx(np.sqrt(80.0**2 + 1), rel=1e-5)


def test_discrete_ddpm_table_equals_continuous_schedule():
  s = jdiff.LinearSchedule(beta_start=1e-4, beta_end=0.02, num_steps=1000)
  abar = s.discrete_alphas_cumprod()
  betas = np.linspace(1e-4, 0.02, 1000)
  np.testing.assert_allclose(abar, np.cumprod(1 - betas))
  t = jnp.arange(1, 1001, dtype=jnp.float32) / 1000
  # float32 tolerance on alpha_bar in [4e-5, 1].
  np.testing.assert_allclose(np.asarray(s.alpha(t)) ** 2, abar, rtol=3e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(jax.nn.sigmoid(s.logsnr(t))), abar, rtol=5e-6, atol=1e-7)


@pytest.mark.parametrize("kw", [{}, {"start": 0.0, "end": 3.0, "tau": 0.3}, {"start": -1.0, "end": 5.0,
                                                                           "tau": 1.1}])
def test_sigmoid_accurate_at_every_float32_t(kw):
  """Near t = 1 alpha_bar ~ (1 - t): the direct formula (v_end - sigmoid(.)) cancels in float32 and gave
  a staircase (the clamp -20 at the largest float32 below 1, where the true logsnr is -17.8). Every
  float32 t, the 64 largest below 1 and the smallest above 0 included, must give the float64 value, and
  t_of_logsnr must invert it there."""
  s = jdiff.SigmoidSchedule(**kw)
  below_one = 1.0 - np.arange(1, 65) * 2.0 ** -24  # consecutive float32 values below 1
  t32 = np.concatenate([below_one, np.linspace(1e-3, 0.999, 999), np.arange(1, 65) * 2.0 ** -30])
  t32 = np.sort(t32.astype(np.float32))[::-1]
  t = t32.astype(np.float64)
  sig = lambda z: 1.0 / (1.0 + np.exp(-z))
  v_start, v_end = sig(s.start / s.tau), sig(s.end / s.tau)
  z = (t * (s.end - s.start) + s.start) / s.tau
  abar = (v_end - sig(z)) / (v_end - v_start)
  want = np.maximum(np.log(abar) - np.log1p(-abar), s.logsnr_min)
  got = np.asarray(s.logsnr(jnp.asarray(t32)), np.float64)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
  free = want > s.logsnr_min  # not clamped
  assert np.all(np.diff(got[free]) > 0)  # strictly increasing towards t = 0: no float32 staircase
  assert float(s.logsnr(1.0)) == s.logsnr_min and float(s.logsnr(0.0)) == np.inf
  back = np.asarray(s.t_of_logsnr(jnp.asarray(got[free], jnp.float32)), np.float64)
  np.testing.assert_allclose(back, t[free], rtol=2e-6, atol=1.2e-7)  # within 2 float32 ulps near 1
  assert float(s.t_of_logsnr(jnp.inf)) == 0.0 and float(s.t_of_logsnr(-jnp.inf)) == 1.0


def test_get_schedule_errors():
  with pytest.raises(ValueError, match="valid schedules are: cosine, edm, flow, linear"):
    jdiff.get_schedule("cosin")
  with pytest.raises(ValueError, match="has no parameter"):
    jdiff.get_schedule("ve", sigma_mx=3.0)


@pytest.mark.parametrize("shape", [(4, 2), (4, 8, 8, 3), (4, 5, 3)])
def test_add_noise_broadcasts_per_example_t(shape):
  s = jdiff.CosineSchedule()
  x0 = jax.random.normal(jax.random.PRNGKey(0), shape)
  eps = jax.random.normal(jax.random.PRNGKey(1), shape)
  t = jnp.array([0.1, 0.4, 0.7, 0.95])
  xt = jdiff.add_noise(s, x0, t, eps)
  for i in range(4):
    a, sg = s.alpha_sigma(t[i])
    np.testing.assert_allclose(xt[i], a * x0[i] + sg * eps[i], rtol=1e-6, atol=1e-6)


def test_add_noise_bad_input():
  s = jdiff.CosineSchedule()
  x = jnp.zeros((4, 2))
  with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
    jdiff.add_noise(s, x, jnp.array([0.1, 0.2, 1.5, 0.3]), x)
  with pytest.raises(ValueError, match="shape \\[batch\\]"):
    jdiff.add_noise(s, x, jnp.zeros((3,)), x)
  with pytest.raises(ValueError, match="eps must have the shape"):
    jdiff.add_noise(s, x, 0.5, jnp.zeros((4, 3)))


@pytest.mark.parametrize("name", ["linear", "cosine", "ve"])
def test_posterior_matches_bayes(name):
  """q(x_s | x_t, x0) from Bayes' rule on the joint Gaussian (x_s, x_t) given x0, computed directly."""
  sch = jdiff.get_schedule(name)
  t, s = 0.6, 0.3
  a_t, s_t = (float(v) for v in sch.alpha_sigma(t))
  a_s, s_s = (float(v) for v in sch.alpha_sigma(s))
  # x_s = a_s x0 + s_s e1 ; x_t = a_t x0 + s_t e, Cov(x_s, x_t) = (a_t/a_s) s_s^2.
  cov_st = (a_t / a_s) * s_s**2
  x0, xt = 0.7, -0.4
  mean_ref = a_s * x0 + cov_st / s_t**2 * (xt - a_t * x0)
  var_ref = s_s**2 - cov_st**2 / s_t**2
  g = jdiff.posterior(sch, jnp.array([[xt]]), jnp.array([[x0]]), t, s)
  np.testing.assert_allclose(g.mean, [[mean_ref]], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g.var, var_ref, rtol=1e-4, atol=1e-7)


def test_posterior_to_zero_is_x0():
  sch = jdiff.LinearSchedule()
  x0 = jnp.array([[0.3, -0.2]])
  g = jdiff.posterior(sch, jnp.array([[1.0, 2.0]]), x0, 0.001, 0.0)
  np.testing.assert_allclose(g.mean, x0, atol=1e-6)
  assert float(jnp.max(g.var)) == 0.0
