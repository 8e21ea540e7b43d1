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
  else:
    np.testing.assert_allclose(a, 1.0)


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


def test_get_schedule_errors():
  with pytest.raises(ValueError, match="valid schedules are: cosine, edm, linear"):
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
