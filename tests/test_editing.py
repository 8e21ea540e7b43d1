"""Editing (jdiff.editing) against the exact Gaussian-mixture denoiser, where the answers are known.

* Inpainting dim 1 of the 2-D mixture given dim 0: the exact conditional p(x1 | x0) is a mixture of 1-D
  Gaussians (weights w_k N(x0; mu_k0, S_k00), means mu_k1 + S_k10 / S_k00 (x0 - mu_k0), variances
  S_k11 - S_k10^2 / S_k00). Replacement-based inpainting is known to be approximate (the generated
  coordinate chooses its mode from its own marginal at high noise); RePaint resampling must reduce the
  error. Measured (2000 samples per x0, cosine schedule, DDPM 50 steps, jump length 1; 1-D
  Wasserstein-1 to the exact conditional; Monte-Carlo floor, exact draws of the same size: 0.017):
    x0 = -0.75 (exact weights 0.60 / 0.40): replacement 0.34, RePaint r=10 0.22;
    x0 =  0.00 (exact: 0.998 on the mode at x1 = -1.5): replacement 1.56, RePaint r=10 1.01.
  (With 4000 samples: r=1 / 4 / 10 give 0.32 / 0.27 / 0.24 and 1.58 / 1.27 / 1.00; jump length 5
  with r=10 gives 0.28 and 1.04.)
  When the coordinates are independent the replacement method is exact up to discretization, which
  checks the mechanics (noise levels, keys, schedule coefficients) on their own.
* SDEdit from x_in at strength s: the exact answer draws x_s ~ q(x_s | x_in) and then x0 from the exact
  posterior p(x0 | x_s) (a Gaussian mixture in closed form); DDPM from t = s approximates it.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff import editing, grids, sampling, toy
from jdiff.parametrization import make_denoiser

MIX = toy.default_mixture()
SCH = jdiff.get_schedule("cosine")


def _denoiser(mix=MIX, schedule=SCH):
  return make_denoiser(mix.model_fn(schedule), None, schedule, "x0")


def _exact_conditional(mix, x0):
  """Weights, means and stds of p(x1 | x0) for a 2-D mixture."""
  w, mu, s = (np.asarray(a, np.float64) for a in (mix.weights, mix.means, mix.covs))
  logw = np.log(w) - 0.5 * np.log(2 * np.pi * s[:, 0, 0]) - 0.5 * (x0 - mu[:, 0]) ** 2 / s[:, 0, 0]
  pk = np.exp(logw - logw.max())
  pk /= pk.sum()
  m = mu[:, 1] + s[:, 1, 0] / s[:, 0, 0] * (x0 - mu[:, 0])
  sd = np.sqrt(s[:, 1, 1] - s[:, 1, 0] ** 2 / s[:, 0, 0])
  return pk, m, sd


def _w1_to_mixture(samples, pk, m, sd):
  """1-D Wasserstein-1 distance int |F_n - F| dx between samples and a 1-D Gaussian mixture."""
  grid = np.linspace(-5.0, 5.0, 5001)
  fn = np.searchsorted(np.sort(samples), grid, side="right") / len(samples)
  erf = np.vectorize(math.erf)
  f = (pk[None] * 0.5 * (1 + erf((grid[:, None] - m[None]) / (sd[None] * math.sqrt(2))))).sum(1)
  return float(np.sum(np.abs(fn - f)[:-1] * np.diff(grid)))


def _exact_draws(n, pk, m, sd, seed):
  rng = np.random.default_rng(seed)
  k = rng.choice(len(pk), n, p=pk)
  return m[k] + sd[k] * rng.standard_normal(n)


N = 2000
X0S = (-0.75, 0.0)


def _inpaint(resample, mix=MIX, steps=50, sampler="ddpm"):
  xk = jnp.concatenate([jnp.tile(jnp.array([[v, 0.0]]), (N, 1)) for v in X0S])
  mask = jnp.array([[1.0, 0.0]])
  fn = jax.jit(lambda key, ts: editing.edit(sampler, _denoiser(mix), SCH, xk, ts, key, mask=mask,
                                            resample=resample))
  out = fn(jax.random.PRNGKey(0), grids.uniform_t(steps))
  return np.asarray(out.x), int(out.nfe)


@pytest.fixture(scope="module")
def inpainted():
  return {r: _inpaint(r) for r in (1, 10)}


def test_inpainting_keeps_known_and_repaint_reduces_error(inpainted):
  errors = {}
  for r, (x, nfe) in inpainted.items():
    assert nfe == 50 * r
    for j, v in enumerate(X0S):
      part = x[j * N:(j + 1) * N]
      np.testing.assert_array_equal(part[:, 0], np.float32(v))  # the known coordinate, exactly
      pk, m, sd = _exact_conditional(MIX, v)
      errors[r, v] = _w1_to_mixture(part[:, 1], pk, m, sd)
  floor = max(_w1_to_mixture(_exact_draws(N, *_exact_conditional(MIX, v), seed=s),
                             *_exact_conditional(MIX, v)) for v in X0S for s in (0, 1))
  print("W1 to the exact conditional:", {k: round(e, 3) for k, e in errors.items()},
        "Monte-Carlo floor", round(floor, 3))
  for v in X0S:
    # Replacement alone is far from exact (documented failure mode; measured 0.34 and 1.56) ...
    assert errors[1, v] > 5 * floor
    # ... and RePaint resampling reduces the error (measured by 36% and 35%).
    assert errors[10, v] < 0.85 * errors[1, v]


def test_inpainting_exact_when_coordinates_are_independent():
  """A product of two 1-D mixtures (4 components, diagonal covariances): the exact denoiser factorizes,
  so inpainting dim 1 gives its marginal whatever x0; only discretization and sampling errors remain."""
  wa, ma, va = np.array([0.6, 0.4]), np.array([-1.0, 1.0]), np.array([0.1, 0.2])
  wb, mb, vb = np.array([0.7, 0.3]), np.array([-1.2, 1.0]), np.array([0.05, 0.15])
  comps = [(i, j) for i in range(2) for j in range(2)]
  mix = toy.GaussianMixture(
      jnp.array([wa[i] * wb[j] for i, j in comps], jnp.float32),
      jnp.array([[ma[i], mb[j]] for i, j in comps], jnp.float32),
      jnp.array([np.diag([va[i], vb[j]]) for i, j in comps], jnp.float32))
  x, _ = _inpaint(1, mix=mix, steps=100)
  for j in range(len(X0S)):
    err = _w1_to_mixture(x[j * N:(j + 1) * N, 1], wb, mb, np.sqrt(vb))
    floor = _w1_to_mixture(_exact_draws(N, wb, mb, np.sqrt(vb), seed=j), wb, mb, np.sqrt(vb))
    print(f"independent coordinates, x0={X0S[j]}: W1 {err:.4f} (floor {floor:.4f})")
    assert err < 0.06  # 2000 samples: exact draws give 0.01-0.03


def _exact_posterior_draws(mix, x_s, alpha, sigma, key):
  """x0 ~ p(x0 | x_s) exactly: component from p(k | x_s), then the Gaussian
  N(mu_k + a S_k C_k^-1 (x_s - a mu_k), S_k - a^2 S_k C_k^-1 S_k), C_k = a^2 S_k + s^2 I."""
  kk, kz = jax.random.split(key)
  probs = mix.posterior_probs(x_s, alpha, sigma)
  k = jax.random.categorical(kk, jnp.log(probs))
  # Per component (K tiny matrices, then gathered): no batched LAPACK call over the N examples.
  s = mix.covs
  c = alpha ** 2 * s + sigma ** 2 * jnp.eye(mix.dim)
  gain = alpha * jnp.linalg.solve(c, s).transpose(0, 2, 1)  # a S C^-1 (S, C symmetric)
  cov = s - jnp.einsum("kij,kjl->kil", gain, alpha * s)
  chol = jnp.linalg.cholesky(cov + 1e-7 * jnp.eye(mix.dim))[k]
  gain = gain[k]
  mean = mix.means[k] + jnp.einsum("nij,nj->ni", gain, x_s - alpha * mix.means[k])
  return mean + jnp.einsum("nij,nj->ni", chol, jax.random.normal(kz, mean.shape))


def test_sdedit_matches_exact_posterior():
  strength, n = 0.5, 3000
  x_in = jnp.tile(jnp.array([[0.0, 0.0]]), (n, 1))  # between the modes
  ts = grids.uniform_t(50, t_max=strength)
  out = jax.jit(lambda key: editing.edit("ddpm", _denoiser(), SCH, x_in, ts, key))(
      jax.random.PRNGKey(3))
  a, s = (float(v) for v in SCH.alpha_sigma(jnp.float32(strength)))
  refs = []
  for seed in (10, 11):
    kx, kp = jax.random.split(jax.random.PRNGKey(seed))
    x_s = a * x_in + s * jax.random.normal(kx, x_in.shape)
    refs.append(_exact_posterior_draws(MIX, x_s, a, s, kp))
  key = jax.random.PRNGKey(99)
  err = float(toy.sliced_wasserstein(out.x, refs[0], key))
  floor = float(toy.sliced_wasserstein(refs[1], refs[0], key))
  print(f"SDEdit strength {strength}: sliced W1 to the exact answer {err:.4f} (floor {floor:.4f})")
  assert err < 2 * floor + 0.01
  # The mode weights, the sharpest feature of an input between the modes (3000 samples: s.e. < 0.01).
  frac = lambda x: np.bincount(np.asarray(toy.assign_components(MIX, x)), minlength=3) / n
  print("component fractions: SDEdit", frac(out.x).round(3), "exact", frac(refs[0]).round(3))
  np.testing.assert_allclose(frac(out.x), frac(refs[0]), atol=0.04)
  # Far from the plain unconditional distribution (the input matters).
  uncond = MIX.sample(jax.random.PRNGKey(5), n)[0]
  assert float(toy.sliced_wasserstein(out.x, uncond, key)) > 3 * err


def test_sdedit_small_strength_stays_near_input():
  x_in = MIX.sample(jax.random.PRNGKey(1), 64)[0]
  t = 0.01
  out = jax.jit(lambda k: editing.edit("dpmpp_2m", _denoiser(), SCH, x_in, grids.uniform_t(5, t_max=t),
                                       k))(jax.random.PRNGKey(0))
  # x_t is within a few sigma_t (0.016) of the input; the denoiser removes little of that noise.
  assert float(jnp.max(jnp.abs(out.x - x_in))) < 5 * float(SCH.sigma(jnp.float32(t)))


def test_zero_mask_is_the_plain_sampler_from_the_noised_input():
  """With nothing known, inpainting is exactly the sampler run from SDEdit's start (same keys)."""
  x_in = MIX.sample(jax.random.PRNGKey(1), 16)[0]
  ts = grids.uniform_t(8)
  key = jax.random.PRNGKey(4)
  idx = jnp.arange(5, 21)
  for name in ("ddpm", "dpmpp_2m"):
    got, sdedit, want = jax.jit(lambda key: (
        editing.edit(name, _denoiser(), SCH, x_in, ts, key, mask=jnp.zeros((1, 2)), indices=idx),
        editing.edit(name, _denoiser(), SCH, x_in, ts, key, indices=idx),  # no mask: SDEdit
        sampling.sample(name, _denoiser(), SCH, editing.noised_input(key, idx, x_in, SCH, ts[0]), ts,
                        key, indices=idx)))(key)
    np.testing.assert_array_equal(got.x, want.x)
    np.testing.assert_array_equal(sdedit.x, want.x)
    assert int(got.nfe) == int(want.nfe) == int(sdedit.nfe)


def test_noised_input_uses_the_prior_noise_of_each_index():
  x_in = jnp.zeros((4, 3))
  key = jax.random.PRNGKey(7)
  idx = jnp.array([3, 9, 1, 0])
  got = editing.noised_input(key, idx, x_in, SCH, jnp.float32(1.0))
  eps = sampling.initial_noise(key, idx, (3,), SCH) / SCH.prior_std()
  np.testing.assert_allclose(got, float(SCH.sigma(jnp.float32(1.0))) * eps, rtol=1e-6)


@pytest.mark.parametrize("name, schedule", [("dpmpp_2m", "linear"), ("heun", "edm"), ("pc", "ve")])
def test_known_region_exact_and_repaint_runs_for_every_kind_of_sampler(name, schedule):
  sch = jdiff.get_schedule(schedule)
  x_in = MIX.sample(jax.random.PRNGKey(2), 32)[0]
  mask = jnp.array([[1.0, 0.0]])
  ts = grids.get_grid("karras", sch, 6)
  out = jax.jit(lambda k: editing.edit(name, _denoiser(schedule=sch), sch, x_in, ts, k, mask=mask,
                                       resample=3, jump_length=2))(jax.random.PRNGKey(0))
  np.testing.assert_array_equal(out.x[:, 0], x_in[:, 0])
  assert bool(jnp.all(jnp.isfinite(out.x)))
  assert float(jnp.std(out.x[:, 1])) > 0.3  # the unknown coordinate is generated, not collapsed


def test_repaint_transitions():
  np.testing.assert_array_equal(editing.repaint_transitions(3), [[0, 1], [1, 2], [2, 3]])
  rows = editing.repaint_transitions(4, resample=2, jump_length=2)
  np.testing.assert_array_equal(rows, [[0, 1], [1, 2], [2, 0], [0, 1], [1, 2], [2, 3], [3, 4], [4, 2],
                                       [2, 3], [3, 4]])
  for steps, r, j in ((10, 3, 1), (20, 10, 10), (12, 4, 5)):
    rows = editing.repaint_transitions(steps, r, j)
    down = rows[rows[:, 1] > rows[:, 0]]
    up = rows[rows[:, 1] < rows[:, 0]]
    assert np.all(down[:, 1] - down[:, 0] == 1) and np.all(up[:, 0] - up[:, 1] == j)
    assert rows[0, 0] == 0 and rows[-1, 1] == steps
    np.testing.assert_array_equal(rows[1:, 0], rows[:-1, 1])  # a connected walk
    assert len(up) == (r - 1) * len(range(0, steps - j + 1, j))
    assert len(down) == steps + j * len(up)


def test_bad_editing_inputs():
  x = jnp.zeros((4, 2))
  ts = grids.uniform_t(4)
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="mask shape"):
    editing.edit("ddpm", _denoiser(), SCH, x, ts, key, mask=jnp.ones((3,)))
  with pytest.raises(ValueError, match=r"mask values must lie in \[0, 1\]"):
    editing.edit("ddpm", _denoiser(), SCH, x, ts, key, mask=jnp.full((1, 2), 2.0))
  with pytest.raises(ValueError, match="needs a mask"):
    editing.edit("ddpm", _denoiser(), SCH, x, ts, key, resample=2)
  with pytest.raises(ValueError, match="jump_length=9 is longer"):
    editing.edit("ddpm", _denoiser(), SCH, x, ts, key, mask=jnp.ones((1, 2)), resample=2,
                 jump_length=9)
  with pytest.raises(ValueError, match="strength must be in"):
    editing.check_strength(1.5)
  with pytest.raises(ValueError, match="unknown sampler"):
    editing.edit("no_such_sampler", _denoiser(), SCH, x, ts, key)
