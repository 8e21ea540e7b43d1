"""The probability-flow ODE solver: exactness on a Gaussian, NFE accounting, grid semantics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff import grids, ode, toy
from jdiff.parametrization import make_denoiser

MU = np.array([0.5, -1.0])
COV = np.array([[0.6, 0.25], [0.25, 0.3]])


def _gaussian():
  return toy.GaussianMixture(jnp.ones(1), jnp.asarray(MU[None], jnp.float32),
                             jnp.asarray(COV[None], jnp.float32))


def _sqrtm(m, power):
  w, v = np.linalg.eigh(m)
  return (v * w ** power) @ v.T


def _exact_flow(y0, s0, s1):
  """Gaussian data: the PF-ODE dy/dsigma = (y - D)/sigma maps y0 at sigma_tilde=s0 to
  mu + (C + s1^2)^(1/2) (C + s0^2)^(-1/2) (y0 - mu), keeping the marginal N(mu, C + sigma^2)."""
  eye = np.eye(2)
  a = _sqrtm(COV + s1 ** 2 * eye, 0.5) @ _sqrtm(COV + s0 ** 2 * eye, -0.5)
  return MU + (np.asarray(y0, np.float64) - MU) @ a.T


@pytest.mark.parametrize("schedule, t1", [("linear", 0.05), ("cosine", 0.02), ("ve", 0.0),
                                          ("edm", 0.0)])
def test_solution_matches_closed_form_gaussian(schedule, t1):
  sch = jdiff.get_schedule(schedule)
  denoise = make_denoiser(_gaussian().model_fn(sch), None, sch, "x0")
  x0 = sch.prior_std() * jax.random.normal(jax.random.PRNGKey(0), (64, 2))
  x1, nfe = jax.jit(lambda x: ode.solve_pf_ode(denoise, sch, x, 1.0, t1, rtol=1e-6, atol=1e-6))(x0)
  s0, s1 = float(sch.sigma_tilde(1.0)), float(sch.sigma_tilde(t1))
  expected = _exact_flow(np.asarray(x0) / float(sch.alpha(1.0)), s0, s1) * float(sch.alpha(t1))
  # float32 and rtol 1e-6 over up to ~40 e-folds of sigma_tilde: agreement to ~1e-4.
  np.testing.assert_allclose(np.asarray(x1), expected, atol=2e-4, rtol=2e-4)
  assert 10 < int(nfe) < 2000


@pytest.mark.parametrize("solver", sorted(ode.SOLVERS))
def test_nfe_matches_counted_calls(solver):
  sch = jdiff.get_schedule("edm")
  calls = []
  inner = toy.default_mixture().model_fn(sch)

  def counting_model(params, x, t, cond):
    jax.debug.callback(lambda: calls.append(1))
    return inner(params, x, t, cond)

  denoise = make_denoiser(counting_model, None, sch, "x0")
  x = sch.prior_std() * jax.random.normal(jax.random.PRNGKey(1), (16, 2))
  x1, nfe = jax.jit(lambda x: ode.solve_pf_ode(denoise, sch, x, 1.0, 0.0, solver=solver))(x)
  jax.block_until_ready(x1)
  jax.effects_barrier()
  assert int(nfe) == len(calls) > 0
  assert ode.nfe_per_step(solver) == 6


def test_sample_ode_grid_semantics_vp():
  # VP: solve to the last positive time ts[-2], then x0_hat there (what every grid sampler's last
  # step does), so the result only depends on the grid's ends.
  sch = jdiff.get_schedule("linear")
  denoise = make_denoiser(toy.default_mixture().model_fn(sch), None, sch, "x0")
  x = jax.random.normal(jax.random.PRNGKey(2), (32, 2))
  ts = grids.uniform_logsnr(sch, 5)

  @jax.jit
  def run(x, ts):
    xe, n = ode.solve_pf_ode(denoise, sch, x, ts[0], ts[-2])
    return ode.sample_ode(denoise, sch, x, ts), denoise(xe, ts[-2]).x0, n

  out, expected, n = run(x, ts)
  np.testing.assert_allclose(out.x, expected, atol=1e-6)
  assert int(out.nfe) == int(n) + 1
  out2 = run(x, grids.karras(sch, 5))[0]  # same ends (1, t_min, 0), other interior points
  np.testing.assert_allclose(out2.x, out.x, atol=1e-6)


def test_sample_ode_final_denoise_ve():
  sch = jdiff.get_schedule("ve")
  denoise = make_denoiser(toy.default_mixture().model_fn(sch), None, sch, "x0")
  x = sch.prior_std() * jax.random.normal(jax.random.PRNGKey(3), (32, 2))
  ts = grids.uniform_t(4)
  with_d = ode.sample_ode(denoise, sch, x, ts)
  without = ode.sample_ode(denoise, sch, x, ts, final_denoise=False)
  assert int(with_d.nfe) == int(without.nfe) + 1
  np.testing.assert_allclose(with_d.x, denoise(without.x, 0.0).x0, atol=1e-6)
  # sigma(0) = 0.01: the un-denoised end is still noisy, but close.
  assert 1e-4 < float(jnp.max(jnp.abs(with_d.x - without.x))) < 0.1


@pytest.mark.parametrize("kwargs, match", [
    ({"solver": "euler"}, "valid ODE solvers are"),
    ({"rtol": 0.0}, r"rtol must be a number in \(0, 1\)"),
    ({"atol": 2.0}, r"atol must be a number in \(0, 1\)"),
    ({"max_steps": 0}, "max_steps must be an integer >= 1"),
])
def test_bad_options(kwargs, match):
  sch = jdiff.get_schedule("ve")
  denoise = make_denoiser(toy.default_mixture().model_fn(sch), None, sch, "x0")
  with pytest.raises(ValueError, match=match):
    ode.sample_ode(denoise, sch, jnp.zeros((2, 2)), grids.uniform_t(3), **kwargs)
