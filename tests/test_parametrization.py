"""Every parametrization round trip, and EDM preconditioning."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff import parametrization as P


@pytest.mark.parametrize("name", ["linear", "cosine", "ve", "edm"])
@pytest.mark.parametrize("param", P.PARAMETRIZATIONS)
def test_round_trip(name, param):
  sch = jdiff.get_schedule(name)
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  x0 = jax.random.normal(k1, (6, 4, 4, 2))
  eps = jax.random.normal(k2, x0.shape)
  t = jnp.linspace(0.05, 0.95, 6)
  a, s = sch.alpha_sigma(t)
  xt = jdiff.add_noise(sch, x0, t, eps)
  out = P.from_x0_eps(param, x0, eps, xt, a, s)
  x0_hat, eps_hat = P.to_x0_eps(param, out, xt, a, s)
  # Tolerances relative to the scale of x_t (up to 80 for EDM; 1/alpha amplifies at high noise).
  scale = np.asarray(jnp.maximum(1.0, s / a)).reshape(-1, 1, 1, 1)
  np.testing.assert_allclose(np.asarray(x0_hat) / scale, np.asarray(x0) / scale, atol=3e-5)
  np.testing.assert_allclose(eps_hat, eps, atol=3e-5, rtol=1e-4)


def test_endpoints_no_nan():
  sch = jdiff.LinearSchedule()
  x = jnp.ones((2, 3))
  for param in P.PARAMETRIZATIONS:
    for t in (0.0, 1.0):
      a, s = sch.alpha_sigma(jnp.full((2,), t))
      x0, eps = P.to_x0_eps(param, jnp.zeros_like(x), x, a, s)
      assert np.all(np.isfinite(np.asarray(x0))) and np.all(np.isfinite(np.asarray(eps)))


def test_unknown_parametrization():
  with pytest.raises(ValueError, match="valid parametrizations are: eps, flow, score, v, x0"):
    P.make_denoiser(lambda p, x, t, c: x, None, jdiff.CosineSchedule(), "epsilon")


def test_make_denoiser_learned_variance_split():
  sch = jdiff.CosineSchedule()
  fn = lambda p, x, t, c: jnp.concatenate([jnp.zeros_like(x), jnp.full_like(x, 0.5)], -1)
  d = P.make_denoiser(fn, None, sch, "eps", learned_variance=True)
  pred = d(jnp.ones((3, 2)), 0.5)
  assert pred.eps.shape == (3, 2) and pred.var_frac.shape == (3, 2)
  np.testing.assert_allclose(pred.var_frac, 0.75)


def test_edm_coefficients_table1():
  sd = 0.5
  sigma = jnp.array([0.002, 0.5, 80.0])
  c_skip, c_out, c_in, c_noise = P.edm_coefficients(sigma, sd)
  np.testing.assert_allclose(c_skip, sd**2 / (sigma**2 + sd**2), rtol=1e-6)
  np.testing.assert_allclose(c_out, sigma * sd / np.sqrt(sigma**2 + sd**2), rtol=1e-6)
  np.testing.assert_allclose(c_in, 1 / np.sqrt(sigma**2 + sd**2), rtol=1e-6)
  np.testing.assert_allclose(c_noise, np.log(sigma) / 4, rtol=1e-6)
  # Unit variance of the network's input and training target for data of std sigma_data (eq. 7 design).
  np.testing.assert_allclose(c_in**2 * (sigma**2 + sd**2), 1.0, rtol=1e-6)


@pytest.mark.parametrize("name", ["edm", "cosine"])
def test_edm_precondition_wraps_raw_network(name):
  sch = jdiff.get_schedule(name)
  seen = {}

  def raw(params, x, c_noise, cond):
    seen["x"], seen["c"] = x, c_noise
    return params * jnp.ones_like(x)

  fn = P.edm_precondition(raw, sch, sigma_data=0.5)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 2)) * 2
  t = jnp.array([0.2, 0.5, 0.8])
  out = fn(2.0, x, t, None)
  a, st = sch.alpha(t)[:, None], sch.sigma_tilde(t)[:, None]
  c_skip, c_out, c_in, c_noise = P.edm_coefficients(st, 0.5)
  np.testing.assert_allclose(out, c_skip * x / a + c_out * 2.0, rtol=1e-5)
  np.testing.assert_allclose(seen["x"], c_in * x / a, rtol=1e-5)
  np.testing.assert_allclose(seen["c"], c_noise[:, 0], rtol=1e-5)
