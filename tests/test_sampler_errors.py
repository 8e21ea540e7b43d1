"""Exact checks that catch subtle sampler errors which distribution tests and convergence tests on uniform
grids miss: a wrong coefficient or step ratio in a multistep update on a non-uniform grid, DDIM's ``eta``
-> noise-variance map at ``0 < eta < 1``, DDPM's learned-variance interpolation at ``0 < var_frac < 1``,
churn in Euler/Heun, and any sampler on the schedules other than linear/cosine.

Data: one Gaussian ``N(M, diag(S^2))`` in 3-D. Its optimal denoiser ``x0_hat(x_t) = M + alpha S^2 /
(alpha^2 S^2 + sigma^2) (x_t - alpha M)`` is linear in ``x_t``, and its probability-flow ODE solution is
known in closed form (``(x_t - alpha_t M) / sqrt(alpha_t^2 S^2 + sigma_t^2)`` is constant along a
trajectory). So

* one step of DDIM, DDPM and Euler/Heun with churn is a closed-form Gaussian transition, checked in
  float64 NumPy with the step's own noise draw reproduced (``normal_like(keys, x, 0)``);
* a whole run of DPM-Solver++(2M)/(3M) and UniPC on random non-uniform grids is compared, step by step,
  with float64 NumPy implementations written from the papers' formulas (not from jdiff's code);
* every deterministic sampler converges to the exact ODE solution at its order on karras grids
  (non-uniform in ``lambda``), on the linear, sigmoid, vp_sde, ve and edm schedules.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff import grids, sampling
from jdiff.keys import normal_like, per_example_keys
from jdiff.parametrization import Prediction

M = np.array([0.4, -1.0, 0.8])
S = np.array([0.5, 1.3, 0.15])
BATCH = 16


def _ab(schedule, t):
  """``alpha, sigma`` in float64 from the schedule's float32 values (``sigma(0) = 0`` for VP)."""
  if t == 0.0 and schedule.variance_preserving:
    return 1.0, 0.0
  a, s = schedule.alpha_sigma(jnp.float32(t))
  return float(a), float(s)


def _x0_np(x, a, s):
  return M + a * S ** 2 / (a * a * S ** 2 + s * s) * (x - a * M)


def _denoiser(schedule, var_frac=None):
  m, s2 = jnp.asarray(M, jnp.float32), jnp.asarray(S ** 2, jnp.float32)

  def denoise(x, t):
    a, s = schedule.alpha_sigma(jnp.asarray(t, jnp.float32))
    x0 = m + a * s2 / (a * a * s2 + s * s) * (x - a * m)
    return Prediction(x0, (x - a * x0) / s, var_frac)

  return denoise


@functools.lru_cache(maxsize=None)
def _stepper(name, schedule, opts=(), learned=False):
  """One compiled step of a sampler (hyperparameters, times and ``var_frac`` are traced)."""
  sch = jdiff.get_schedule(schedule)
  smp = sampling.get_sampler(name, **dict(opts))

  @jax.jit
  def step(state, t, t_next, keys, hp, var_frac):
    return smp.step(_denoiser(sch, var_frac if learned else None), sch, state, t, t_next, keys, hp)

  return sch, smp, step


def _keys(n=BATCH, seed=3):
  return per_example_keys(jax.random.PRNGKey(seed), jnp.arange(n))


def _x(n=BATCH, scale=1.0, seed=0):
  return (scale * np.random.default_rng(seed).standard_normal((n, 3))).astype(np.float32)


def _run(name, schedule, x, ts, opts=(), hp=None):
  """The sampler's ``x`` after every step of ``ts`` (float64)."""
  sch, smp, step = _stepper(name, schedule, tuple(sorted(opts.items())) if isinstance(opts, dict)
                            else opts)
  hp = sampling.resolve_hparams(smp, hp or {})
  state, keys, out = smp.init(jnp.asarray(x), len(ts) - 1), _keys(len(x)), []
  ts = jnp.asarray(ts, jnp.float32)
  for k in range(len(ts) - 1):
    state, _ = step(state, ts[k], ts[k + 1], keys, hp, None)
    out.append(np.asarray(state.x, np.float64))
  return out


# ----------------------------------------------------------------------------------------------------
# Multistep updates on random non-uniform grids against float64 references written from the papers
# ----------------------------------------------------------------------------------------------------

_GL_U, _GL_W = np.polynomial.legendre.leggauss(20)


def _dpmpp_reference(order, lam, alpha, sigma, x):
  """DPM-Solver++ (Lu et al. 2022b) in float64: ``x_s = (sigma_s/sigma_t) x_t + alpha_s int_0^h e^{u-h}
  P(u) du`` with ``P`` the data prediction at ``t`` (1st order: first step), ``(1 + 1/(2r)) x0_t -
  1/(2r) x0_prev`` with ``r = h_prev / h`` (Alg. 2, 2M; second step of 3M), or the quadratic through the
  last three predictions (3M), integrated by 20-point Gauss-Legendre quadrature. A step to ``sigma = 0``
  returns ``x0_hat``."""
  fs, out = [], []
  for k in range(len(lam) - 1):
    f = _x0_np(x, alpha[k], sigma[k])
    fs.append(f)
    if sigma[k + 1] == 0.0:
      x = f
    else:
      h = lam[k + 1] - lam[k]
      q = min(order, k + 1)
      if q == 1:
        p_of_u = lambda u: f
      elif q == 2:
        r = (lam[k] - lam[k - 1]) / h
        p_of_u = lambda u: (1.0 + 0.5 / r) * f - 0.5 / r * fs[-2]
      else:
        nodes = [lam[k - j] - lam[k] for j in range(3)]

        def p_of_u(u, nodes=nodes):
          total = 0.0
          for j in range(3):
            basis = np.prod([(u - nodes[l]) / (nodes[j] - nodes[l]) for l in range(3) if l != j])
            total = total + basis * fs[-1 - j]
          return total
      us, ws = 0.5 * h * (_GL_U + 1.0), 0.5 * h * _GL_W
      integral = sum(w * math.exp(u - h) * p_of_u(u) for u, w in zip(us, ws))
      x = sigma[k + 1] / sigma[k] * x + alpha[k + 1] * integral
    out.append(x)
  return out


def _unipc_reference(order, variant, lam, alpha, sigma, x, lower_order_final=True, zero_noise=False):
  """UniPC-p with data prediction and B(h) (Zhao et al. 2023) in float64, in the form of the paper:
  UniP-p ``x_t = (sigma_t/sigma_s) x^c_s - alpha_t (e^{-h} - 1) m_s - alpha_t B(h) sum_m a_m D_m / r_m``
  and, after the next evaluation ``m_t`` at that ``x_t``, UniC-p with one more term (``D = m_t - m_s``,
  ``r = 1``) from the same ``x^c_s``; ``a`` from ``np.linalg.solve(R, b)``, ``R_{km} = r_m^(k-1)``,
  ``b_k = -h phi_{k+1}(-h) k! / B(h)`` (``a_1 = 1/2`` for UniP-2 and UniC-1). Orders: ``min(p, k + 1)``,
  and ``min(., N - k)`` with ``lower_order_final`` on every grid of a schedule that reaches zero noise
  (``zero_noise``) and when ``N < 15`` otherwise."""
  n = len(lam) - 1

  def b_vec(h, q):
    # -h phi_{k+1}(-h), by its Taylor series (float64 is exact enough either way)
    def phi(k):
      return sum((-h) ** j / math.factorial(j + k) for j in range(60)) if h < 2 else None
    phis, rec = [], -math.expm1(-h) / h
    for k in range(1, q + 2):
      phis.append(phi(k) if h < 2 else rec)
      rec = (1.0 / math.factorial(k) - rec) / h
    big_b = -h if variant == "bh1" else math.expm1(-h)
    return big_b, np.array([-h * phis[k] * math.factorial(k) / big_b for k in range(1, q + 1)])

  def update(x_s, k_s, k_t, q, ms, m_t=None):
    """From grid index ``k_s`` to ``k_t``, history ``ms`` (newest last, ``ms[-1]`` at ``k_s``)."""
    h = lam[k_t] - lam[k_s]
    big_b, b = b_vec(h, q)
    rs = [(lam[k_s - i] - lam[k_s]) / h for i in range(1, q)]
    ds = [(ms[-1 - i] - ms[-1]) / rs[i - 1] for i in range(1, q)]
    if m_t is None:  # UniP-q: q - 1 terms
      a = ([] if q == 1 else [0.5] if q == 2 else
           np.linalg.solve(np.array([[r ** j for r in rs] for j in range(q - 1)]), b[:q - 1]))
      res = sum(ai * di for ai, di in zip(a, ds)) if q > 1 else 0.0
    else:  # UniC-q: q terms, the last one the new evaluation at r = 1
      nodes = rs + [1.0]
      a = [0.5] if q == 1 else np.linalg.solve(np.array([[r ** j for r in nodes] for j in range(q)]), b)
      res = sum(ai * di for ai, di in zip(a, ds + [m_t - ms[-1]]))
    return (sigma[k_t] / sigma[k_s] * x_s - alpha[k_t] * math.expm1(-h) * ms[-1]
            - alpha[k_t] * big_b * res)

  def order_at(k):
    q = min(order, k + 1)
    return min(q, n - k) if lower_order_final and (zero_noise or n < 15) else q

  ms, out, x_c = [], [], x
  for k in range(n):
    m = _x0_np(x, alpha[k], sigma[k])
    if k >= 1:
      x_c = update(x_c, k - 1, k, order_at(k - 1), ms, m_t=m)  # UniC (x_c: corrected x at k - 1)
    else:
      x_c = x
    ms.append(m)
    x = m if sigma[k + 1] == 0.0 else update(x_c, k, k + 1, order_at(k), ms)
    out.append(x)
  return out


def _random_grid(schedule, steps, seed):
  """``ts`` with random steps in ``lambda`` (ratios between neighbours up to ~5x), from ``t = 1`` to
  ``t_min`` (then 0) on VP, to 0 on VE/EDM."""
  sch = jdiff.get_schedule(schedule)
  vp = sch.variance_preserving
  t_min = grids.DEFAULT_VP_T_MIN if vp else 0.0
  n = steps if vp else steps + 1
  lo, hi = float(sch.logsnr(jnp.float32(1.0))), float(sch.logsnr(jnp.float32(t_min)))
  gaps = np.random.default_rng(seed).uniform(0.2, 1.0, n - 1)
  lams = lo + (hi - lo) * np.concatenate([[0.0], np.cumsum(gaps) / np.sum(gaps)])
  inner = np.asarray(sch.t_of_logsnr(jnp.asarray(lams, jnp.float32)), np.float64)
  ts = np.zeros(steps + 1)
  ts[:n] = inner
  ts[0], ts[n - 1], ts[steps] = 1.0, t_min, 0.0
  ts = np.asarray(ts, np.float32).astype(np.float64)
  assert np.all(np.diff(ts) < 0)
  return ts


# On VP (linear: the last step lands on x0_hat) every variant; on EDM (the last step is a regular one,
# lowered to order 1 and 2 by lower_order_final on the last two steps) 2M, 3M and UniPC-3.
MULTISTEP = [(s, n, o) for s in ("linear", "edm")
             for n, o in [("dpmpp_2m", {}), ("dpmpp_3m", {})]
             + [("unipc", {"order": p, "variant": v}) for p in (1, 2, 3) for v in ("bh1", "bh2")]
             if s == "linear" or o.get("order", 3) == 3]


@pytest.mark.parametrize("schedule, name, opts", MULTISTEP,
                         ids=[f"{n}{''.join(f'-{v}' for v in o.values())}-{s}" for s, n, o in MULTISTEP])
def test_multistep_matches_float64_reference_on_random_grids(schedule, name, opts):
  sch = jdiff.get_schedule(schedule)
  scale = sch.prior_std()
  # 9 steps: warm-up, full order and (UniPC) lower_order_final; 16 steps: lower_order_final only on VP.
  for steps, seed in ((9, 1), (16, 2)):
    ts = _random_grid(schedule, steps, seed)
    alpha, sigma = zip(*[_ab(sch, t) for t in ts])
    lam = [math.log(a / s) if s > 0 else math.inf for a, s in zip(alpha, sigma)]
    x = _x(scale=scale, seed=seed)
    got = _run(name, schedule, x, ts, opts)
    if name == "unipc":
      want = _unipc_reference(opts["order"], opts["variant"], lam, alpha, sigma, x.astype(np.float64),
                              zero_noise=sch.reaches_zero_noise)
    else:
      want = _dpmpp_reference(int(name[-2]), lam, alpha, sigma, x.astype(np.float64))
    for k, (g, w) in enumerate(zip(got, want)):
      np.testing.assert_allclose(g, w, rtol=0, atol=2e-5 * (1.0 + np.max(np.abs(w))),
                                 err_msg=f"{steps} steps, after step {k}")


def test_unipc_without_lower_order_final_matches_reference():
  sch = jdiff.get_schedule("edm")
  ts = _random_grid("edm", 9, 1)
  alpha, sigma = zip(*[_ab(sch, t) for t in ts])
  lam = [math.log(a / s) for a, s in zip(alpha, sigma)]
  x = _x(scale=sch.prior_std(), seed=1)
  got = _run("unipc", "edm", x, ts, {"order": 3, "variant": "bh2", "lower_order_final": False})
  want = _unipc_reference(3, "bh2", lam, alpha, sigma, x.astype(np.float64), lower_order_final=False)
  np.testing.assert_allclose(got[-1], want[-1], rtol=0, atol=2e-5 * (1.0 + np.max(np.abs(want[-1]))))


# ----------------------------------------------------------------------------------------------------
# Convergence to the exact ODE solution at each sampler's order: karras grids, every schedule
# ----------------------------------------------------------------------------------------------------


def _exact_end(schedule, x, ts):
  """The exact probability-flow ODE solution at the end of ``ts``: ``x0_hat`` at ``t_min`` on VP (what
  the last step to 0 returns), ``x`` at ``t = 0`` (``sigma_min``) on VE/EDM."""
  a0, s0 = _ab(schedule, ts[0])
  z = (x - a0 * M) / np.sqrt(a0 ** 2 * S ** 2 + s0 ** 2)
  a, s = _ab(schedule, ts[-2] if schedule.variance_preserving else ts[-1])
  x_end = a * M + np.sqrt(a * a * S ** 2 + s * s) * z
  return _x0_np(x_end, a, s) if schedule.variance_preserving else x_end


ORDER = {("heun", ()): 2, ("dpmpp_2m", ()): 2, ("dpmpp_3m", ()): 3,
         ("unipc", (("order", 1), ("variant", "bh1"))): 2,
         ("unipc", (("order", 2), ("variant", "bh2"))): 3,
         ("unipc", (("order", 3), ("variant", "bh1"))): 4,
         ("unipc", (("order", 3), ("variant", "bh2"))): 4}
# Every multistep variant on the linear schedule (the steps are compiled already by the test above); on
# the other schedules one sampler of each kind of update: Karras's ODE in sigma_tilde (Heun) and the
# exponential integrators in lambda (3M, UniPC). DDIM's steps are checked one by one above and below.
CONVERGENCE = ([("linear", name, opts) for name, opts in list(ORDER)[1:]]
               + [(sch, name, opts) for sch in ("sigmoid", "vp_sde", "ve", "edm")
                  for name, opts in [list(ORDER)[0], list(ORDER)[2], list(ORDER)[-1]]])


@pytest.mark.parametrize("schedule, name, opts", CONVERGENCE,
                         ids=[f"{n}{''.join(f'-{v}' for _, v in o)}-{s}" for s, n, o in CONVERGENCE])
def test_converges_to_exact_ode_solution_at_order(schedule, name, opts):
  sch = jdiff.get_schedule(schedule)
  # The sigmoid schedule is too steep near t = 1 for float32 grids of 64 karras steps from t_max = 1.
  kw = {"t_max": 0.99} if schedule == "sigmoid" else {}
  x = _x(n=32, scale=sch.prior_std(), seed=5)
  steps, errs = (16, 32, 64), []
  for n in steps:
    ts = np.asarray(grids.karras(sch, n, **kw), np.float64)
    out = _run(name, schedule, x, ts, opts)[-1]
    errs.append(np.max(np.abs(out - _exact_end(sch, x.astype(np.float64), ts))))
  slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
  order = ORDER[(name, opts)]
  assert errs[0] > errs[1] > errs[2] and slope >= order - 0.35, (slope, errs)


# ----------------------------------------------------------------------------------------------------
# One stochastic step against its closed form, with the step's noise draw reproduced
# ----------------------------------------------------------------------------------------------------


def _one_step(name, schedule, x, t, t_next, hp, opts=(), var_frac=None, num_steps=10):
  sch, smp, step = _stepper(name, schedule, opts, learned=var_frac is not None)
  keys = _keys(len(x))
  state = smp.init(jnp.asarray(x), num_steps)
  vf = None if var_frac is None else jnp.asarray(var_frac, jnp.float32)
  new, nfe = step(state, jnp.float32(t), jnp.float32(t_next), keys, sampling.resolve_hparams(smp, hp),
                  vf)
  z = np.asarray(normal_like(keys, jnp.asarray(x), 0), np.float64)
  return np.asarray(new.x, np.float64), z, int(nfe)


@pytest.mark.parametrize("schedule, t, t_next", [("linear", 0.8, 0.45), ("linear", 0.3, 0.05),
                                                  ("linear", 0.2, 0.0), ("cosine", 0.6, 0.5),
                                                  ("ve", 0.7, 0.3), ("edm", 0.5, 0.2)])
def test_ddim_eta_noise_variance_closed_form(schedule, t, t_next):
  """DDIM (Song et al. 2021a, eqs. 12 and 16): ``x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - s_eta^2)
  eps + s_eta z`` with ``s_eta = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)``
  (VP, ``abar = alpha^2``); on VE, ``s_eta^2 = eta^2`` times the posterior variance ``sigma_s^2
  (sigma_t^2 - sigma_s^2) / sigma_t^2``."""
  sch = jdiff.get_schedule(schedule)
  (a_t, s_t), (a_s, s_s) = _ab(sch, t), _ab(sch, t_next)
  x = _x(scale=math.sqrt(a_t ** 2 + s_t ** 2), seed=7)
  x64 = x.astype(np.float64)
  x0 = _x0_np(x64, a_t, s_t)
  eps = (x64 - a_t * x0) / s_t
  for eta in (0.0, 0.35, 0.8, 1.0):
    got, z, _ = _one_step("ddim", schedule, x, t, t_next, {"eta": eta})
    if sch.variance_preserving:
      ab_t, ab_s = a_t ** 2, a_s ** 2
      s_eta = eta * math.sqrt((1.0 - ab_s) / (1.0 - ab_t)) * math.sqrt(1.0 - ab_t / ab_s)
      want = math.sqrt(ab_s) * x0 + math.sqrt(max(1.0 - ab_s - s_eta ** 2, 0.0)) * eps + s_eta * z
    else:
      s_eta = eta * s_s * math.sqrt((s_t ** 2 - s_s ** 2) / s_t ** 2)
      want = x0 + math.sqrt(s_s ** 2 - s_eta ** 2) * eps + s_eta * z
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * (1.0 + np.max(np.abs(want))),
                               err_msg=f"eta={eta}")


@pytest.mark.parametrize("t, t_next", [(0.7, 0.4), (0.25, 0.2), (0.1, 0.0)])
def test_ddpm_learned_variance_closed_form(t, t_next):
  """Nichol & Dhariwal 2021, eq. 15, for the (skip-)step ``t -> s``: ``log var = v log beta + (1 - v)
  log beta_tilde`` with ``beta = 1 - abar_t / abar_s`` and ``beta_tilde = (1 - abar_s) / (1 - abar_t)
  beta``; mean ``sqrt(abar_s) beta / (1 - abar_t) x0 + sqrt(abar_t / abar_s) (1 - abar_s) / (1 - abar_t)
  x_t`` (Ho et al. 2020, eqs. 6-7). ``v`` per element, strictly between 0 and 1."""
  sch = jdiff.get_schedule("linear")
  (a_t, s_t), (a_s, _) = _ab(sch, t), _ab(sch, t_next)
  ab_t, ab_s = a_t ** 2, a_s ** 2
  x = _x(seed=8)
  x0 = _x0_np(x.astype(np.float64), a_t, s_t)
  beta = 1.0 - ab_t / ab_s
  beta_tilde = (1.0 - ab_s) / (1.0 - ab_t) * beta
  mean = math.sqrt(ab_s) * beta / (1.0 - ab_t) * x0 + math.sqrt(ab_t / ab_s) * (1.0 - ab_s) / (
      1.0 - ab_t) * x
  v = np.random.default_rng(9).uniform(0.05, 0.95, x.shape)
  for frac in (v, np.full(x.shape, 0.3)):
    got, z, _ = _one_step("ddpm", "linear", x, t, t_next, {}, opts=(("variance", "learned"),),
                          var_frac=frac.astype(np.float32))
    std = 0.0 if t_next == 0.0 else np.exp(0.5 * (frac * math.log(beta) + (1 - frac) * math.log(
        beta_tilde)))
    want = mean + std * z
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * (1.0 + np.max(np.abs(want))))
  for variance, var in (("small", beta_tilde), ("large", beta)):
    got, z, _ = _one_step("ddpm", "linear", x, t, t_next, {}, opts=(("variance", variance),))
    want = mean + (0.0 if t_next == 0.0 else math.sqrt(var)) * z
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * (1.0 + np.max(np.abs(want))))


CHURN = [  # (hyperparameters, the churn gamma they give at sigma_tilde(t) with N = 10 steps)
    ({"S_churn": 3.0, "S_noise": 1.007}, 0.3),
    ({"S_churn": 30.0}, math.sqrt(2.0) - 1.0),  # capped
    ({"S_churn": 3.0, "S_tmin": 0.5, "S_tmax": 50.0, "S_noise": 0.9}, 0.3),  # sigma_tilde inside
    ({"S_churn": 3.0, "S_tmax": 0.5}, 0.0),  # sigma_tilde above S_tmax
    ({"S_churn": 3.0, "S_tmin": 50.0}, 0.0),  # below S_tmin
]


@pytest.mark.parametrize("name", ["euler", "heun"])
@pytest.mark.parametrize("schedule, t, t_next", [("edm", 0.6, 0.45), ("edm", 0.4, 0.0),
                                                  ("cosine", 0.55, 0.4), ("cosine", 0.3, 0.0)])
def test_churn_step_matches_karras_algorithm_2(name, schedule, t, t_next):
  """Karras et al. 2022, Alg. 2 in ``y = x / alpha`` and ``sigma = sigma_tilde`` (eq. 4): ``gamma =
  min(S_churn / N, sqrt(2) - 1)`` if ``S_tmin <= sigma <= S_tmax`` else 0, ``sigma_hat = (1 + gamma)
  sigma``, ``y_hat = y + sqrt(sigma_hat^2 - sigma^2) S_noise z``, ``d = (y_hat - D(y_hat; sigma_hat)) /
  sigma_hat``, ``y' = y_hat + (sigma' - sigma_hat) d`` and, for Heun when ``sigma' > 0``, ``y' = y_hat +
  (sigma' - sigma_hat) (d + d') / 2``, ``d' = (y' - D(y'; sigma')) / sigma'``. (On EDM, ``t' = 0`` is
  ``sigma' = sigma_min > 0``: Heun corrects that step too.)"""
  sch = jdiff.get_schedule(schedule)
  (a_t, s_t), (a_n, s_n) = _ab(sch, t), _ab(sch, t_next)
  sig, sig_next = s_t / a_t, s_n / a_n
  assert 0.5 < sig < 50.0 and sig * math.sqrt(2.0) < float(sch.sigma_tilde(jnp.float32(1.0)))
  x = _x(scale=math.sqrt(a_t ** 2 + s_t ** 2), seed=11)

  def d_of(y, sg):  # the denoiser in the scaled variable: x0_hat = M + S^2 / (S^2 + sg^2) (y - M)
    return M + S ** 2 / (S ** 2 + sg ** 2) * (y - M)

  for hp, gamma in CHURN:
    got, z, nfe = _one_step(name, schedule, x, t, t_next, hp, num_steps=10)
    sig_hat = sig * (1.0 + gamma)
    y_hat = x / a_t + math.sqrt(sig_hat ** 2 - sig ** 2) * hp.get("S_noise", 1.0) * z
    d = (y_hat - d_of(y_hat, sig_hat)) / sig_hat
    y = y_hat + (sig_next - sig_hat) * d
    if name == "heun" and sig_next > 0:
      d2 = (y - d_of(y, sig_next)) / sig_next
      y = y_hat + (sig_next - sig_hat) * 0.5 * (d + d2)
    want = a_n * y
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-5 * (1.0 + np.max(np.abs(want))),
                               err_msg=str(hp))
    assert nfe == (2 if name == "heun" and sig_next > 0 else 1)
