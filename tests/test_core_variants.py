"""The functional core's pure functions under ``chex.variants``: eager, ``jax.jit`` and ``jax.pmap``.

Each test builds one function of arrays only (schedules, parametrization names and denoisers are closed
over), runs it through ``self.variant`` and checks

* an exact identity or closed form, computed independently in float64 NumPy (``alpha^2 + sigma^2 = 1``,
  ``t_of_logsnr(logsnr(t)) = t``, ``add_noise = alpha x0 + sigma eps``, the posterior of Kingma et al.
  2021 eqs. 30-33, every parametrization's output and its exact inversion, the loss weights' closed
  forms, the thresholded ``x0`` and its re-derived ``eps``, the Gaussian KL and bits per dim), with
  output shapes checked by ``chex.assert_shape``;
* that the variant's result equals the eager (un-jitted, un-pmapped) call to float32 tolerances
  (``chex.assert_trees_all_close``).

``with_pmap`` runs on the one existing CPU device. The suite runs in one process, so ``chex.set_n_cpu_devices`` (which must
run before JAX initialises its backends) is not used here, and a CPU machine has one device. chex skips
``with_pmap`` tests on a single device by default (its flag ``chex_skip_pmap_variant_if_single_device``);
this module clears that flag for its own tests only (restored in ``tearDownClass``) and calls every
variant with ``n_devices=1``: chex's default ``broadcast_args_to_devices=True`` adds a leading device axis
of size 1 to each argument, ``jax.pmap`` maps over it, and the ``first_device_output`` reduction strips
it again, so the pmapped function sees exactly the shapes the eager one does. With more devices (an
accelerator, or ``XLA_FLAGS`` set before JAX starts) the same tests still use one of them.
"""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from absl.testing import parameterized

from jdiff import guidance, likelihood, losses, noising, parametrization, schedules

ALL_VARIANTS = dict(with_jit=True, without_jit=True, with_pmap=True)
NAMES = sorted(schedules.SCHEDULES)
_SKIP_FLAG = "chex_skip_pmap_variant_if_single_device"

# One per-example time per batch row, on the LinearSchedule's table grid t = i / 1000 (where its closed
# form is the discrete DDPM table), from 0.01 to 0.99. Every test uses these B times and [B, ...] data:
# eager (op-by-op) execution compiles each primitive once per shape, so shared shapes keep the file fast.
T_GRID = np.array([10, 200, 400, 600, 800, 990])
T = (T_GRID / 1000.0).astype(np.float32)
B = T.shape[0]
DATA_SHAPE = (B, 4, 4, 2)


def _f64(x):
  return np.asarray(x, np.float64)


def _bc(a, ndim):
  """A per-example [B] array reshaped to broadcast against [B, ...] of rank ``ndim``."""
  a = np.asarray(a)
  return a.reshape(a.shape + (1,) * (ndim - a.ndim))


def _assert_same_as_eager(got, eager):
  """Variant output equals the eager call up to float32 reassociation by XLA."""
  chex.assert_trees_all_close(got, eager, rtol=2e-5, atol=2e-6)


def _alpha_bar_closed_form(name, sch, t):
  """``alpha(t)^2`` (VP) from each schedule's defining formula in float64, for ``t`` on T's grid."""
  t = _f64(t)
  if name == "linear":
    return sch.discrete_alphas_cumprod()[T_GRID - 1]  # Ho et al. 2020, eq. 4, at t_i = i / N
  if name == "vp_sde":
    return np.exp(-(sch.beta_min * t + 0.5 * (sch.beta_max - sch.beta_min) * t * t))
  if name == "cosine":
    f = lambda u: np.cos(0.5 * np.pi * (u + sch.s) / (1.0 + sch.s)) ** 2
    abar = f(t) / f(0.0)
  elif name == "sigmoid":
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))
    v_start, v_end = sig(sch.start / sch.tau), sig(sch.end / sch.tau)
    abar = (v_end - sig((t * (sch.end - sch.start) + sch.start) / sch.tau)) / (v_end - v_start)
  else:
    raise AssertionError(name)
  # Both clamp logsnr below at logsnr_min.
  return 1.0 / (1.0 + np.exp(-np.maximum(np.log(abar / (1.0 - abar)), sch.logsnr_min)))


def _sigma_closed_form(name, sch, t):
  """``sigma(t)`` of the alpha = 1 schedules from their defining formulas, float64."""
  t = _f64(t)
  if name == "ve":  # Song et al. 2021, eq. 9
    return sch.sigma_min * (sch.sigma_max / sch.sigma_min) ** t
  if name == "edm":  # Karras et al. 2022, eq. 5
    a, b = sch.sigma_min ** (1.0 / sch.rho), sch.sigma_max ** (1.0 / sch.rho)
    return (a + t * (b - a)) ** sch.rho
  raise AssertionError(name)


def _data(seed=0, shape=DATA_SHAPE):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return jax.random.normal(k1, shape), jax.random.normal(k2, shape)


class CoreVariantsTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._saved_skip = flags.FLAGS[_SKIP_FLAG].value
    flags.FLAGS[_SKIP_FLAG].value = False  # run with_pmap on the one CPU device (module docstring)

  @classmethod
  def tearDownClass(cls):
    flags.FLAGS[_SKIP_FLAG].value = cls._saved_skip
    super().tearDownClass()

  def run_variant(self, fn, *args):
    return self.variant(fn, n_devices=1)(*args)

  # --------------------------------------------------------------------------------------------------
  # Schedules
  # --------------------------------------------------------------------------------------------------

  @chex.variants(**ALL_VARIANTS)
  @parameterized.named_parameters(*[(n, n) for n in NAMES])
  def test_schedule_identities(self, name):
    sch = schedules.get_schedule(name)
    self.assertIs(type(sch), schedules.SCHEDULES[name])

    def fn(t):
      a, s = sch.alpha_sigma(t)
      ls = sch.logsnr(t)
      return dict(alpha=a, sigma=s, logsnr=ls, t_back=sch.t_of_logsnr(ls),
                  sigma_tilde=sch.sigma_tilde(t), t_back_st=sch.t_of_sigma_tilde(sch.sigma_tilde(t)))

    t = jnp.asarray(T)
    out = self.run_variant(fn, t)
    for v in out.values():
      chex.assert_shape(v, (B,))
    chex.assert_tree_all_finite(out)
    _assert_same_as_eager(out, fn(t))

    a, s, ls = _f64(out["alpha"]), _f64(out["sigma"]), _f64(out["logsnr"])
    if sch.variance_preserving:
      np.testing.assert_allclose(a * a + s * s, 1.0, atol=1e-6)
      abar = _alpha_bar_closed_form(name, sch, T)
      np.testing.assert_allclose(a * a, abar, rtol=2e-5)
      np.testing.assert_allclose(s * s, 1.0 - abar, rtol=2e-5)
      np.testing.assert_allclose(ls, np.log(abar / (1.0 - abar)), rtol=1e-5, atol=2e-5)
    elif sch.pure_noise_at_one:  # flow matching: x_t = (1 - t) x0 + t eps (Lipman et al. 2023)
      np.testing.assert_allclose(a, 1.0 - np.asarray(T, np.float64), atol=1e-7)
      np.testing.assert_allclose(s, np.asarray(T, np.float64), atol=1e-7)
      np.testing.assert_allclose(ls, 2.0 * np.log((1.0 - T) / T), rtol=1e-5, atol=2e-5)
    else:
      np.testing.assert_array_equal(a, 1.0)
      np.testing.assert_allclose(s, _sigma_closed_form(name, sch, T), rtol=1e-5)
      np.testing.assert_allclose(ls, -2.0 * np.log(_sigma_closed_form(name, sch, T)), atol=3e-5)
    # logsnr = 2 log(alpha / sigma) (Kingma et al. 2021, eq. 3), sigma_tilde = sigma / alpha.
    np.testing.assert_allclose(2.0 * np.log(a / s), ls, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(_f64(out["sigma_tilde"]), s / a, rtol=1e-5)
    # The inverses: t_of_logsnr(logsnr(t)) = t. The cosine inverse loses ~3e-5 in float32 near t=1.
    tol = 1e-4 if name == "cosine" else 2e-6
    np.testing.assert_allclose(_f64(out["t_back"]), T, atol=tol)
    np.testing.assert_allclose(_f64(out["t_back_st"]), T, atol=max(tol, 1e-5))

  # --------------------------------------------------------------------------------------------------
  # Noising
  # --------------------------------------------------------------------------------------------------

  @chex.variants(**ALL_VARIANTS)
  @parameterized.named_parameters(*[(n, n) for n in NAMES])
  def test_add_noise_and_posterior(self, name):
    sch = schedules.get_schedule(name)
    x0, eps = _data(1)
    t = jnp.asarray(T)
    # s < t; for VP schedules the first example has s = 0.
    s = jnp.asarray(t) * jnp.asarray([0.0 if sch.variance_preserving else 0.2] + [0.5] * (B - 1))

    def fn(x0, eps, t, s):
      x_t = noising.add_noise(sch, x0, t, eps)
      post = noising.posterior(sch, x_t, x0, t, s)
      return x_t, post.mean, post.var

    x_t, mean, var = self.run_variant(fn, x0, eps, t, s)
    chex.assert_shape([x_t, mean], DATA_SHAPE)
    chex.assert_shape(var, (B, 1, 1, 1))
    chex.assert_tree_all_finite((x_t, mean, var))
    _assert_same_as_eager((x_t, mean, var), fn(x0, eps, t, s))

    # x_t = alpha(t) x0 + sigma(t) eps (Ho et al. 2020, eq. 4).
    a_t, s_t = (_f64(v) for v in sch.alpha_sigma(t))
    a_s, s_s = (_f64(v) for v in sch.alpha_sigma(s))
    x0_, eps_ = _f64(x0), _f64(eps)
    want_xt = _bc(a_t, 4) * x0_ + _bc(s_t, 4) * eps_
    np.testing.assert_allclose(_f64(x_t), want_xt, rtol=1e-5, atol=1e-5 * max(1.0, s_t.max()))
    # q(x_s | x_t, x0) (Kingma et al. 2021, eqs. 30-33): alpha_{t|s} = a_t / a_s,
    # sigma_{t|s}^2 = s_t^2 - alpha_{t|s}^2 s_s^2.
    a_ts = a_t / a_s
    s2_ts = s_t ** 2 - a_ts ** 2 * s_s ** 2
    c_xt, c_x0, want_var = a_ts * s_s ** 2 / s_t ** 2, a_s * s2_ts / s_t ** 2, s2_ts * s_s ** 2 / s_t ** 2
    want_mean = _bc(c_xt, 4) * _f64(x_t) + _bc(c_x0, 4) * x0_
    np.testing.assert_allclose(_f64(mean), want_mean, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(_f64(var)[:, 0, 0, 0], want_var, rtol=2e-4, atol=1e-7)
    if name in ("linear", "vp_sde", "sigmoid"):
      # sigma(0) = 0 (logsnr(0) = +inf): at s = 0 the posterior is the point mass at x0, exactly. (The
      # cosine schedule's float32 logsnr(0) is finite, ~24.5, so its sigma(0) is ~5e-6, not 0.)
      self.assertEqual(s_s[0], 0.0)
      np.testing.assert_array_equal(np.asarray(mean)[0], np.asarray(x0)[0])
      np.testing.assert_array_equal(np.asarray(var)[0], 0.0)

  # --------------------------------------------------------------------------------------------------
  # Parametrizations
  # --------------------------------------------------------------------------------------------------

  @chex.variants(**ALL_VARIANTS)
  @parameterized.named_parameters(*[(p, p) for p in parametrization.PARAMETRIZATIONS])
  def test_parametrization_round_trip(self, param):
    # to_x0_eps / from_x0_eps take alpha, sigma (not a schedule): every schedule's (alpha, sigma) at
    # t = 0.01 .. 0.99 stacked into one batch of 6 x B examples, one program per parametrization.
    t = jnp.asarray(T)
    pairs = [schedules.get_schedule(n).alpha_sigma(t) for n in NAMES]
    alpha = jnp.concatenate([p[0] for p in pairs])
    sigma = jnp.concatenate([p[1] for p in pairs])
    nb = len(NAMES) * B
    shape = (nb,) + DATA_SHAPE[1:]
    x0, eps = _data(2, shape)
    junk = _data(3, shape)[0]  # an arbitrary model output

    def fn(x0, eps, junk, a, s):
      x_t = noising.bcast(a, x0) * x0 + noising.bcast(s, x0) * eps
      out = parametrization.from_x0_eps(param, x0, eps, x_t, a, s)
      x0_hat, eps_hat = parametrization.to_x0_eps(param, out, x_t, a, s)
      jx0, jeps = parametrization.to_x0_eps(param, junk, x_t, a, s)
      return dict(x_t=x_t, out=out, x0_hat=x0_hat, eps_hat=eps_hat, jx0=jx0, jeps=jeps,
                  junk_back=parametrization.from_x0_eps(param, jx0, jeps, x_t, a, s))

    args = (x0, eps, junk, alpha, sigma)
    res = self.run_variant(fn, *args)
    chex.assert_shape(list(res.values()), shape)
    chex.assert_tree_all_finite(res)
    a, s = _bc(_f64(alpha), 4), _bc(_f64(sigma), 4)
    # Errors scale with |x_t| / alpha (up to ~80 for EDM; 1 / alpha grows at high noise).
    scale = np.maximum(1.0, s / a)
    rescale = lambda tree: jax.tree_util.tree_map(lambda v: _f64(v) / scale, tree)
    _assert_same_as_eager(rescale(res), rescale(fn(*args)))
    r = {k: _f64(v) for k, v in res.items()}
    x0_, eps_, junk_ = _f64(x0), _f64(eps), _f64(junk)
    # The perfect model's output in closed form (Ho et al. 2020; Salimans & Ho 2022; score = -eps/sigma).
    want_out = {"eps": eps_, "x0": x0_, "v": a * eps_ - s * x0_, "score": -eps_ / s,
                "flow": eps_ - x0_}[param]
    np.testing.assert_allclose(r["out"] / scale, want_out / scale, rtol=1e-5, atol=1e-5)
    # ... and x0, eps recovered from it.
    np.testing.assert_allclose(r["x0_hat"] / scale, x0_ / scale, atol=3e-5)
    np.testing.assert_allclose(r["eps_hat"], eps_, rtol=1e-4, atol=3e-5)
    # Any output gives a prediction consistent with x_t (alpha x0_hat + sigma eps_hat = x_t), and
    # from_x0_eps inverts to_x0_eps.
    np.testing.assert_allclose((a * r["jx0"] + s * r["jeps"]) / scale, r["x_t"] / scale, atol=3e-5)
    jscale = scale * np.maximum(1.0, a / s) if param == "score" else scale
    np.testing.assert_allclose(r["junk_back"] / jscale, junk_ / jscale, atol=5e-5)

  # --------------------------------------------------------------------------------------------------
  # Loss weights
  # --------------------------------------------------------------------------------------------------

  @chex.variants(**ALL_VARIANTS)
  @parameterized.named_parameters(("cosine", "cosine"), ("edm", "edm"), ("flow", "flow"))
  def test_loss_weight_closed_forms(self, name):
    gamma, sigma_data = 5.0, 0.5
    sch = schedules.get_schedule(name)
    t = jnp.asarray(T)

    def fn(t):
      return {w: {p: losses.loss_weight(sch, t, p, w, min_snr_gamma=gamma, sigma_data=sigma_data)
                  for p in parametrization.PARAMETRIZATIONS}
              for w in losses.WEIGHTINGS}

    res = self.run_variant(fn, t)
    chex.assert_shape(jax.tree_util.tree_leaves(res), (B,))
    chex.assert_tree_all_finite(res)
    _assert_same_as_eager(res, fn(t))
    a, s = (_f64(v) for v in sch.alpha_sigma(t))
    snr = a * a / (s * s)
    # The weight on the x0 MSE (module docstring of jdiff.losses) ...
    w_x0 = {"snr": snr, "min_snr": np.minimum(snr, gamma),
            "edm": snr + 1.0 / sigma_data ** 2}  # Karras et al. 2022, eq. 8
    # ... over the squared factor between each target's error and the x0 error.
    factor = {"x0": np.ones_like(snr), "eps": snr, "v": (a * a + s * s) ** 2 / (s * s),
              "score": a * a / s ** 4, "flow": (a + s) ** 2 / (s * s)}
    for w in losses.WEIGHTINGS:
      for p in parametrization.PARAMETRIZATIONS:
        got = _f64(res[w][p])
        if w == "simple":
          np.testing.assert_array_equal(got, 1.0, err_msg=f"{w}, {p}")
        else:
          np.testing.assert_allclose(got, w_x0[w] / factor[p], rtol=5e-5, err_msg=f"{w}, {p}")
    # snr weighting is the eps MSE whatever the parametrization: weight 1 on the eps target.
    np.testing.assert_allclose(_f64(res["snr"]["eps"]), 1.0, rtol=1e-5)
    if sch.variance_preserving:  # Min-SNR-gamma (Hang et al. 2023) on the eps and v targets
      np.testing.assert_allclose(_f64(res["min_snr"]["eps"]), np.minimum(snr, gamma) / snr,
                                 rtol=5e-5)
      np.testing.assert_allclose(_f64(res["min_snr"]["v"]), np.minimum(snr, gamma) / (snr + 1.0),
                                 rtol=5e-5)

  # --------------------------------------------------------------------------------------------------
  # Guidance: static and dynamic thresholding of x0
  # --------------------------------------------------------------------------------------------------

  @chex.variants(**ALL_VARIANTS)
  def test_clip_and_dynamic_threshold(self):
    sch = schedules.CosineSchedule()
    # Per-sample scales: sample 0 stays inside [-1, 1] (dynamic thresholding leaves it unchanged).
    x = _data(4)[0] * _bc(jnp.asarray([0.1, 0.6, 1.0, 1.5, 2.0, 3.0]), 4)
    x = x.at[0].set(jnp.clip(x[0], -0.35, 0.35))
    t = jnp.asarray(T)
    gain = 2.5  # an x0 "model": x0_hat = gain * x_t
    denoise = parametrization.make_denoiser(lambda p, xx, tt, c: p * xx, gain, sch, "x0")
    clip = guidance.clip_x0(denoise, sch, -1.0, 1.0)

    def fn(x, t, percentile):  # percentile is traced
      dyn = guidance.dynamic_threshold(denoise, sch, percentile)(x, t)
      cl = clip(x, t)
      return dict(dyn_x0=dyn.x0, dyn_eps=dyn.eps, clip_x0=cl.x0, clip_eps=cl.eps)

    pct = jnp.float32(0.9)
    res = self.run_variant(fn, x, t, pct)
    chex.assert_shape(list(res.values()), DATA_SHAPE)
    chex.assert_tree_all_finite(res)
    _assert_same_as_eager(res, fn(x, t, pct))

    x_ = _f64(x)
    x0_raw = gain * x_
    a, s = (_bc(_f64(v), 4) for v in sch.alpha_sigma(t))
    # Saharia et al. 2022, Sec. 2.3: s = max(quantile_p |x0|, 1), x0 <- clip(x0, -s, s) / s.
    q = np.maximum(np.quantile(np.abs(x0_raw).reshape(B, -1), 0.9, axis=1), 1.0)
    self.assertEqual(q[0], 1.0)
    self.assertTrue(np.all(q[1:] > 1.0))
    q = _bc(q, 4)
    np.testing.assert_allclose(_f64(res["dyn_x0"]), np.clip(x0_raw, -q, q) / q, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(res["dyn_x0"])[0], np.float32(gain) * np.asarray(x)[0])
    self.assertLessEqual(float(jnp.max(jnp.abs(res["dyn_x0"]))), 1.0)
    np.testing.assert_allclose(_f64(res["clip_x0"]), np.clip(x0_raw, -1.0, 1.0), rtol=1e-6, atol=1e-6)
    # eps is re-derived from x_t, eps = (x - alpha x0) / sigma, so that alpha x0 + sigma eps = x.
    for k in ("dyn", "clip"):
      want_eps = (x_ - a * _f64(res[f"{k}_x0"])) / s
      np.testing.assert_allclose(_f64(res[f"{k}_eps"]), want_eps, rtol=1e-5, atol=2e-5)

  # --------------------------------------------------------------------------------------------------
  # Likelihood pieces
  # --------------------------------------------------------------------------------------------------

  @chex.variants(**ALL_VARIANTS)
  def test_gaussian_kl_and_bits_per_dim(self):
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(5), 4)
    m1, m2 = jax.random.normal(k1, (B,)), jax.random.normal(k2, (B,))
    lv1 = jax.random.uniform(k3, (B,), minval=-3.0, maxval=2.0)
    lv2 = jax.random.uniform(k4, (B,), minval=-3.0, maxval=2.0)
    lv1 = lv1.at[0].set(lv2[0] + 1e-4)  # nearly equal variances: no cancellation
    nats = jnp.asarray([1.0, 100.0, 1234.5, 0.0, 7.0, 42.0], jnp.float32)
    x0 = jnp.zeros(DATA_SHAPE)

    def fn(m1, lv1, m2, lv2, nats, x0):
      return dict(kl=likelihood.gaussian_kl(m1, lv1, m2, lv2),
                  kl_self=likelihood.gaussian_kl(m1, lv1, m1, lv1),
                  bpd=likelihood.bits_per_dim(nats, x0))

    args = (m1, lv1, m2, lv2, nats, x0)
    res = self.run_variant(fn, *args)
    chex.assert_shape(list(res.values()), (B,))
    chex.assert_tree_all_finite(res)
    _assert_same_as_eager(res, fn(*args))
    # KL(N(m1, v1) || N(m2, v2)) = 1/2 (v1/v2 - 1 - log(v1/v2) + (m1 - m2)^2 / v2).
    d = _f64(lv1) - _f64(lv2)
    want_kl = 0.5 * (np.expm1(d) - d + (_f64(m1) - _f64(m2)) ** 2 * np.exp(-_f64(lv2)))
    np.testing.assert_allclose(_f64(res["kl"]), want_kl, rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(res["kl_self"], 0.0)
    # Bits per dim: nats / (D ln 2), D = 4 * 4 * 2.
    np.testing.assert_allclose(_f64(res["bpd"]), _f64(nats) / (32 * math.log(2.0)), rtol=1e-6)
