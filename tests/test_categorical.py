"""Categorical diffusion (``jdiff.categorical``, ``jdiff.categorical_sampling``): exact answers on a tiny
vocabulary, built here in float64 NumPy with explicit ``V x V`` transition matrices from the definitions
(Austin et al. 2021), never from the module's code:

* the marginals ``q(x_t | x0)`` are products of one-step matrices, the posterior is Bayes' rule;
* the D3PM bound (``vlb_term`` summed over steps, ``x_t`` enumerated) equals the negative ELBO
  ``E_q[log q(x_{1:T} | x0) - log p(x_{0:T})]`` computed by enumerating every trajectory, for an
  arbitrary network (a random logits table indexed by ``x_t`` and the step); ``vlb_loss`` and
  ``vlb_exact`` are unbiased estimates of it;
* the masked-diffusion ELBO of a product model integrates to ``int_0^1 sum_l -log p_l(x0^l; t) dt``,
  and the D3PM bound at ``T = 1000`` approaches it;
* sampling with the exact model of a product of categoricals reproduces it (chi-square on counts).

With ``p~ = p_l`` (the data's per-position marginal), Austin et al.'s eq. 4 is the exact reverse
``q(x_s | x_t)`` of a product distribution for both kinds (``test_reverse_of_product_is_exact``), so
that is the exact model given to every sampler.
"""
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import categorical as cat
from jdiff import categorical_sampling as cs

K, L, T = 3, 2, 3
CASES = [(k, s) for k in cat.KINDS for s in cat.SCHEDULES]
# Jitted once per process and shape (eager calls would compile every operation separately).
q_probs = jax.jit(cat.q_probs, static_argnums=0)
posterior_probs = jax.jit(cat.posterior_probs, static_argnums=0)


# ----------------------------------------------------------------------------------------------------
# Float64 references from the definitions
# ----------------------------------------------------------------------------------------------------


def alpha_np(schedule, t):
  return 1.0 - t if schedule == "linear" else (0.0 if t == 1.0 else math.cos(math.pi * t / 2))


def pi_np(kind):
  return np.eye(K + 1)[K] if kind == "absorbing" else np.full(K, 1.0 / K)


def qmat(kind, a):
  """``a I + (1 - a) 1 pi^T``: rows are the state at the earlier time, columns the later one."""
  pi = pi_np(kind)
  return a * np.eye(len(pi)) + (1.0 - a) * np.outer(np.ones(len(pi)), pi)


def qbar(kind, schedule, t):
  return qmat(kind, alpha_np(schedule, t))


def qstep(kind, schedule, s, t):
  return qmat(kind, alpha_np(schedule, t) / alpha_np(schedule, s))


def softmax_np(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def states(kind, length=L):
  v = K + 1 if kind == "absorbing" else K
  return np.array(list(itertools.product(range(v), repeat=length)), np.int32)


# ----------------------------------------------------------------------------------------------------
# Process, forward marginals, posterior
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, schedule", CASES)
def test_process_and_marginals(kind, schedule):
  p = cat.get_process(kind, K, schedule)
  assert p.input_vocab == K + (kind == "absorbing") and p.mask_id == (K if kind == "absorbing" else None)
  ts = jnp.linspace(0.05, 0.95, 10)  # inside (0, 1): alpha is clipped into [0, 1]
  assert float(p.alpha(0.0)) == 1.0 and float(p.alpha(1.0)) == 0.0
  np.testing.assert_allclose(p.dalpha(ts), jax.vmap(jax.grad(p.alpha))(ts), atol=1e-5)
  np.testing.assert_allclose(p.alpha(ts) + p.one_minus_alpha(ts), 1.0, atol=1e-6)
  mats, mat = [], np.eye(p.input_vocab)
  for i in range(1, 5):
    mat = mat @ qstep(kind, schedule, (i - 1) / 4, i / 4)
    mats.append(mat[:K])
  x0 = np.tile(np.arange(K, dtype=np.int32), 4)[:, None]
  got = q_probs(p, x0, np.repeat(np.arange(1, 5) / 4, K).astype(np.float32))[:, 0]
  np.testing.assert_allclose(got, np.concatenate(mats), atol=1e-6)


@pytest.mark.parametrize("kind, schedule", CASES)
def test_posterior_is_bayes_rule(kind, schedule):
  p = cat.get_process(kind, K, schedule)
  rows = []  # (x0, x_t, s, t, want)
  for s, t in [(0.0, 0.25), (0.0, 1.0), (0.25, 0.75), (0.5, 1.0), (0.3, 0.31)]:
    a, b, c = qstep(kind, schedule, s, t), qbar(kind, schedule, s), qbar(kind, schedule, t)
    rows += [(x0, xt, s, t, a[:, xt] * b[x0, :] / c[x0, xt])
             for x0 in range(K) for xt in range(p.input_vocab) if c[x0, xt] > 0]
  x0s, xts, ss, ts, want = (np.array(u) for u in zip(*rows))
  got = posterior_probs(p, xts[:, None].astype(np.int32), jax.nn.one_hot(x0s[:, None], K),
                        ss.astype(np.float32), ts.astype(np.float32))[:, 0]
  np.testing.assert_allclose(got, want, atol=1e-6)
  if kind == "absorbing":  # an unmasked token carries over, even one clamped at t = 1 (unreachable)
    x_t = np.arange(K, dtype=np.int32)[:, None]
    got = posterior_probs(p, x_t, np.full((K, 1, K), 1.0 / K, np.float32), 0.5, 1.0)[:, 0]
    np.testing.assert_allclose(got, np.eye(K + 1)[:K], atol=1e-6)


@pytest.mark.parametrize("kind", cat.KINDS)
def test_reverse_of_product_is_exact(kind):
  """Eq. 4 with ``p~ = p`` (one position's data distribution) is the marginal reverse
  ``q(x_s | x_t) = q(x_t | x_s) q_s(x_s) / q_t(x_t)``, whatever ``x_t``."""
  p = cat.get_process(kind, K, "cosine")
  data = np.array([0.6, 0.3, 0.1])
  s, t = 0.4, 0.7
  ext = np.concatenate([data, np.zeros(p.input_vocab - K)])
  q_s, q_t = ext @ qbar(kind, "cosine", s), ext @ qbar(kind, "cosine", t)
  xts = np.arange(p.input_vocab, dtype=np.int32)[:, None]
  want = np.stack([qstep(kind, "cosine", s, t)[:, xt] * q_s / q_t[xt] for xt in xts[:, 0]])
  got = posterior_probs(p, xts, jnp.broadcast_to(data, (len(xts), 1, K)), s, t)[:, 0]
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_q_sample_frequencies_and_batch_independence():
  p = cat.get_process("uniform", K, "linear")
  n = 20000
  x0 = np.tile(np.array([[0, 2]], np.int32), (n, 1))
  draw = jax.jit(lambda x, i: cat.q_sample(p, jax.random.PRNGKey(0), x, 0.6, indices=i))
  xt = np.asarray(draw(x0, np.arange(n)))
  probs = np.asarray(cat.q_probs(p, x0[:1], 0.6))[0]
  for l in range(2):
    freq = np.bincount(xt[:, l], minlength=K) / n
    np.testing.assert_allclose(freq, probs[l], atol=5 * np.sqrt(0.25 / n))
  shifted = np.asarray(draw(x0, np.arange(n) + 123))
  np.testing.assert_array_equal(shifted[:-123], xt[123:])


# ----------------------------------------------------------------------------------------------------
# D3PM's bound: exact against trajectory enumeration
# ----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def table_model(kind, steps, seed=0):
  """An arbitrary network: a random logits table indexed by the step ``round(t T)`` and the state."""
  v = K + 1 if kind == "absorbing" else K
  table = 2.0 * np.random.default_rng(seed).normal(size=(steps + 1, v ** L, L, K))
  table = jnp.asarray(table, jnp.float32)

  def fn(params, x_t, t, cond):
    del cond
    idx = sum(x_t[:, l] * v ** (L - 1 - l) for l in range(L))
    return params[jnp.round(t * steps).astype(jnp.int32), idx]

  return fn, table


def neg_elbo_by_trajectories(kind, schedule, table, x0):
  """``sum_{x_{1:T}} q(x_{1:T} | x0) [log q(x_{1:T} | x0) - log p(x_{0:T})]`` with ``p(x_T) = pi``."""
  table = np.asarray(table, np.float64)
  sts = states(kind)
  nst = len(sts)
  ts = [i / T for i in range(T + 1)]
  # Per-step transition between whole states, and the model's reverse p(x_{i-1} | x_i) between states.
  fwd, rev = [None], [None]
  for i in range(1, T + 1):
    step, bar = qstep(kind, schedule, ts[i - 1], ts[i]), qbar(kind, schedule, ts[i - 1])
    fwd.append(np.prod([step[sts[:, None, l], sts[None, :, l]] for l in range(L)], axis=0))
    r = np.ones((nst, nst))  # [x_i, x_{i-1}]
    for l in range(L):
      ptil = softmax_np(table[i, :, l])  # [x_i state, x0']
      ext = np.concatenate([ptil, np.zeros((nst, bar.shape[0] - K))], axis=1)
      unnorm = step[:, sts[:, l]].T * (ext @ bar)  # [x_i, a] = q(x_i^l | a) sum_x0' q(a | x0') p~(x0')
      with np.errstate(divide="ignore", invalid="ignore"):  # rows of unreachable x_i: never weighted
        unnorm /= unnorm.sum(1, keepdims=True)
      r *= unnorm[:, sts[:, l]]
    rev.append(r)
  start = int(np.flatnonzero((sts == np.asarray(x0)).all(1))[0])
  prior = np.prod([pi_np(kind)[sts[:, l]] for l in range(L)], axis=0)
  paths = np.array([(start,) + tr for tr in itertools.product(range(nst), repeat=T)])  # all x_{0:T}
  q = np.prod([fwd[i][paths[:, i - 1], paths[:, i]] for i in range(1, T + 1)], axis=0)
  p = prior[paths[:, T]] * np.prod([rev[i][paths[:, i], paths[:, i - 1]] for i in range(1, T + 1)],
                                   axis=0)
  on = q > 0
  assert np.all(p[on] > 0)
  return float(np.sum(q[on] * (np.log(q[on]) - np.log(p[on]))))


@functools.lru_cache(maxsize=None)
def _terms_fn(process, fn):
  return jax.jit(lambda params, x_t, x0, s, t: cat.vlb_term(process, fn(params, x_t, t, None), x_t, x0,
                                                            s, t))


def vlb_by_enumerating_x_t(process, fn, params, x0, steps):
  """``sum_i E_{x_{t_i} ~ q} vlb_term + prior_kl``, the expectation over ``x_t`` by enumeration."""
  sts = states(process.kind)
  i = np.repeat(np.arange(1, steps + 1), len(sts))
  x_t = np.tile(sts, (steps, 1))
  t, s = (i / steps).astype(np.float32), ((i - 1) / steps).astype(np.float32)
  w = np.prod([np.stack([qbar(process.kind, process.schedule, tt)[x0[l]] for tt in t])[
      np.arange(len(t)), x_t[:, l]] for l in range(L)], axis=0)
  x0b = np.tile(np.asarray(x0, np.int32)[None], (len(t), 1))
  terms = _terms_fn(process, fn)(params, x_t, x0b, s, t)
  return float(np.sum(w * np.asarray(terms, np.float64))) + float(cat.prior_kl(process, x0b[:1])[0])


@pytest.mark.parametrize("kind, schedule", CASES)
def test_vlb_equals_negative_elbo_by_trajectories(kind, schedule):
  process = cat.get_process(kind, K, schedule)
  fn, table = table_model(kind, T)
  x0 = np.array([0, 2], np.int32)
  want = neg_elbo_by_trajectories(kind, schedule, table, x0)
  got = vlb_by_enumerating_x_t(process, fn, table, x0, T)
  assert got == pytest.approx(want, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("kind", cat.KINDS)
def test_vlb_loss_and_vlb_exact_are_unbiased(kind):
  process = cat.get_process(kind, K, "cosine")
  fn, table = table_model(kind, T)
  x0 = np.array([0, 2], np.int32)
  want = vlb_by_enumerating_x_t(process, fn, table, x0, T)
  n = 8192
  xb = jnp.tile(x0[None], (n, 1))  # a concrete jax array closed over by the jitted function
  mask = np.full((1, L), K, np.int32)
  # The absorbing case draws the step itself (t_index), uniformly: the expectation is the same.
  t_index = np.random.default_rng(0).integers(1, T + 1, n) if kind == "absorbing" else None

  def losses(key):
    out = (cat.vlb_loss(fn, table, process, xb, key, T, t_index=t_index),)
    if kind == "absorbing":  # (vlb_exact: the same code path for both kinds, one compilation is enough)
      out += (cat.vlb_exact(fn, table, process, xb, key, T),
              # at t_index = T, x_1 is all mask: that loss is deterministic
              T * cat.vlb_term(process, fn(table, mask, jnp.ones(1), None), mask, xb[:1], 1 - 1 / T, 1))
    return out

  one, *rest = jax.jit(losses)(jax.random.PRNGKey(1))
  for out in [one] + rest[:1]:
    v = np.asarray(out.vlb, np.float64)
    assert abs(v.mean() - want) < 4 * v.std() / np.sqrt(n) + 1e-5, (v.mean(), want)
    assert np.all(np.isfinite(np.asarray(out.ce))) and np.all(np.asarray(out.ce) > 0)
  if kind == "absorbing":
    np.testing.assert_allclose(one.vlb[t_index == T], rest[1][0], rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Masked diffusion's continuous ELBO
# ----------------------------------------------------------------------------------------------------

A = np.array([[1.0, -0.5, 0.2], [-1.0, 0.3, 0.8]], np.float32)  # product model: logits A + t B
B = np.array([[-2.0, 1.0, 0.5], [1.5, 0.0, -1.0]], np.float32)


def product_model(params, x_t, t, cond):
  del params, cond
  return jnp.broadcast_to(A + t[:, None, None] * B, x_t.shape + (K,))


def continuous_elbo_np(schedule, x0):
  """``int_0^1 -alpha'(t) sum_l -log p_l(x0^l; t) dt`` by Gauss-Legendre (smooth integrand)."""
  u, w = np.polynomial.legendre.leggauss(64)
  t, w = (u + 1) / 2, w / 2
  da = np.ones_like(t) if schedule == "linear" else np.pi / 2 * np.sin(np.pi * t / 2)
  nll = [-np.log(softmax_np(A[None] + tt * B[None])[0, np.arange(L), x0]).sum() for tt in t]
  return float(np.sum(w * da * np.array(nll)))


@pytest.mark.parametrize("schedule", cat.SCHEDULES)
def test_masked_elbo_integrates_to_the_product_nll(schedule):
  process = cat.get_process("absorbing", K, schedule)
  x0 = np.array([2, 0], np.int32)
  want = continuous_elbo_np(schedule, x0)
  # Exact: Gauss-Legendre over t of the integrand's expectation over x_t (enumerated masks).
  u, w = np.polynomial.legendre.leggauss(32)
  tq, wq = (u + 1) / 2, w / 2
  sts = states("absorbing")
  tt = np.repeat(tq, len(sts)).astype(np.float32)
  x_t = np.tile(sts, (len(tq), 1))
  prob = np.prod([np.stack([qbar("absorbing", schedule, float(a))[x0[l]] for a in tt])[
      np.arange(len(tt)), x_t[:, l]] for l in range(L)], axis=0)
  x0b = np.tile(x0[None], (len(tt), 1))
  term = jax.jit(lambda x_t, x0b, t: cat.masked_elbo_term(process, product_model(None, x_t, t, None),
                                                          x_t, x0b, t))(x_t, x0b, tt)
  got = float(np.sum(np.repeat(wq, len(sts)) * prob * np.asarray(term, np.float64)))
  assert got == pytest.approx(want, rel=2e-5)
  if schedule == "linear":  # the rest does not depend on the schedule: one compilation
    return
  # The loss is that integrand at its own draw x_t = q_sample(k_x), k_t, k_x = split(key) (see its
  # docstring), and with low-discrepancy times over the batch an unbiased estimate of the integral.
  tb = np.linspace(0.05, 1.0, 16).astype(np.float32)
  n = 8192
  xb = np.tile(x0[None], (n, 1))

  def losses(key):
    x_t = cat.q_sample(process, jax.random.split(key)[1], xb[:16], tb)
    return (cat.masked_elbo(product_model, None, process, xb[:16], key, t=tb),
            cat.masked_elbo_term(process, product_model(None, x_t, tb, None), x_t, xb[:16], tb),
            cat.masked_elbo(product_model, None, process, xb, key))

  at_t, ref, v = jax.jit(losses)(jax.random.PRNGKey(0))
  np.testing.assert_allclose(at_t, ref, rtol=1e-6)
  v = np.asarray(v, np.float64)
  assert abs(v.mean() - want) < 4 * v.std() / np.sqrt(n)


def test_d3pm_bound_approaches_the_continuous_elbo():
  process = cat.get_process("absorbing", K, "linear")
  x0 = np.array([2, 0], np.int32)
  want = continuous_elbo_np("linear", x0)
  gaps = [abs(vlb_by_enumerating_x_t(process, product_model, None, x0, steps) - want)
          for steps in (10, 1000)]
  assert gaps[1] < 2e-3 and gaps[1] < gaps[0] / 20, gaps


# ----------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------

PROD = np.array([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.34, 0.33, 0.33], [0.05, 0.9, 0.05]])


def exact_denoise(x_t, t):
  """The exact model of the product ``PROD`` for eq. 4 (``test_reverse_of_product_is_exact``)."""
  del t
  return jnp.broadcast_to(jnp.log(jnp.asarray(PROD, jnp.float32)), x_t.shape + (K,))


N = 4000
KNOWN = np.tile(np.array([[2, 0, 1, 1]], np.int32), (N, 1))
KNOWN_MASK = np.tile(np.array([[True, False, False, True]]), (N, 1))
TRACES = []


@functools.lru_cache(maxsize=None)
def _sampler(process, sampler):
  """One jitted program per (process, sampler, shapes): the grid, key, indices, temperature and known
  tokens are arguments (all-False ``known_mask`` when unused), so these runs share compilations."""

  def run(ts, key, idx, known, mask, temperature):
    TRACES.append((process, sampler))
    x = cs.initial_tokens(process, jax.random.PRNGKey(100), idx, PROD.shape[0])
    return cs.sample(process, exact_denoise, x, ts, key, idx, sampler=sampler, known=known,
                     known_mask=mask, temperature=temperature)

  return jax.jit(run)


def _run(process, sampler, ts, indices=None, with_known=False, key=0, temperature=1.0):
  indices = np.arange(N) if indices is None else np.asarray(indices)
  n = len(indices)
  known = KNOWN[:n] if with_known else np.zeros((n, 4), np.int32)
  mask = KNOWN_MASK[:n] if with_known else np.zeros((n, 4), bool)
  out = _sampler(process, sampler)(jnp.asarray(ts, jnp.float32), jax.random.PRNGKey(key), indices,
                                   known, mask, temperature)
  return np.asarray(out.x), int(out.nfe)


@functools.lru_cache(maxsize=None)
def _product_run(kind, schedule, sampler, steps):
  return _run(cat.get_process(kind, K, schedule), sampler, cs.time_grid(steps))


def _chi2(x, probs):
  counts = np.stack([np.bincount(x[:, l], minlength=K) for l in range(x.shape[1])])
  return float(np.sum((counts - len(x) * probs) ** 2 / (len(x) * probs)))


SAMPLE_CASES = [("absorbing", "linear", "ancestral", 8), ("absorbing", "linear", "unmask", 2),
                ("absorbing", "cosine", "unmask", 10), ("uniform", "cosine", "ancestral", 3)]


@pytest.mark.parametrize("kind, schedule, sampler, steps", SAMPLE_CASES)
def test_sampling_reproduces_the_product(kind, schedule, sampler, steps):
  """Ancestral sampling, unmasking with fewer steps (2) and more steps (10) than tokens (4)."""
  x, nfe = _product_run(kind, schedule, sampler, steps)
  assert nfe == steps and x.shape == (N, 4) and x.min() >= 0 and x.max() < K
  chi2 = _chi2(x, PROD)
  assert chi2 < 30.0, chi2  # chi-square with 8 dof: P(> 30) ~ 2e-4


@pytest.mark.parametrize("kind, schedule, sampler, steps", SAMPLE_CASES)
def test_sample_depends_on_its_index_only_and_clamps_known(kind, schedule, sampler, steps):
  process = cat.get_process(kind, K, schedule)
  full, _ = _product_run(kind, schedule, sampler, steps)
  shifted, _ = _run(process, sampler, cs.time_grid(steps), indices=np.arange(N) + 7)
  np.testing.assert_array_equal(shifted[:-7], full[7:])
  if sampler == "ancestral" and kind == "uniform":  # batch size 1 (its own compilation: one case)
    one, _ = _run(process, sampler, cs.time_grid(steps), indices=[5])
    np.testing.assert_array_equal(one[0], full[5])
  x, _ = _run(process, sampler, cs.time_grid(steps), with_known=True)
  np.testing.assert_array_equal(x[KNOWN_MASK], KNOWN[KNOWN_MASK])
  assert _chi2(x[:, 1:3], PROD[1:3]) < 25.0  # the free positions still follow the product (4 dof)


@pytest.mark.parametrize("schedule, steps, ts, masked", [
    ("linear", 2, [1.0, 0.75, 0.5], 2), ("linear", 2, [1.0, 0.7, 0.4], 2),
    ("cosine", 10, np.linspace(1.0, 0.5, 11), 1)])  # round(4 (1 - alpha(ts[-1]))): 2, 1.6, 1.17
def test_unmask_leaves_an_exact_count_at_random_positions(schedule, steps, ts, masked):
  process = cat.get_process("absorbing", K, schedule)
  _product_run("absorbing", schedule, "unmask", steps)
  traces = len(TRACES)
  x, _ = _run(process, "unmask", ts, key=3, temperature=0.7)  # new grid, key, temperature
  np.testing.assert_array_equal(np.sum(x == K, axis=1), masked)
  np.testing.assert_allclose(np.mean(x == K, axis=0), masked / 4, atol=0.05)  # uniform positions
  # Known tokens count as revealed from the start: the schedule spreads over the 2 free positions.
  x, _ = _run(process, "unmask", ts, key=3, with_known=True)
  np.testing.assert_array_equal(np.sum(x == K, axis=1), 1)  # round(2 (1 - alpha)): 1, 0.8, 0.59
  assert len(TRACES) == traces  # traced values: no new compilation


# ----------------------------------------------------------------------------------------------------
# Validation: one clear ValueError per bad input
# ----------------------------------------------------------------------------------------------------


def test_bad_inputs():
  ab, un = cat.get_process("absorbing", K), cat.get_process("uniform", K)
  key = jax.random.PRNGKey(0)
  x0 = np.zeros((2, 4), np.int32)
  cases = [
      (lambda: cat.q_sample(ab, key, x0.astype(np.float32), 0.5), "must be an integer array"),
      (lambda: cat.q_sample(ab, key, x0 + K, 0.5), r"in \[0, 3\)"),
      (lambda: cat.get_process("gaussian", K), "unknown categorical process kind"),
      (lambda: cat.get_process("uniform", 1), "num_tokens"),
      (lambda: cat.get_process("uniform", K, "sqrt"), "unknown categorical schedule"),
      (lambda: cat.masked_elbo(product_model, None, un, x0, key), "absorbing"),
      (lambda: cat.vlb_loss(product_model, None, ab, x0, key, 0), "num_steps"),
      (lambda: jax.jit(lambda k: cat.vlb_loss(lambda *a: jnp.zeros((2, 4, K + 1)), None, ab, x0, k, 4))(
          key), "logits"),
      (lambda: cs.time_grid(0), "steps"),
      (lambda: cs.sample(un, exact_denoise, x0, cs.time_grid(2), key, sampler="unmask"), "absorbing"),
      (lambda: cs.sample(ab, exact_denoise, x0, cs.time_grid(2), key, sampler="gibbs"), "sampler"),
      (lambda: cs.sample(ab, exact_denoise, x0, jnp.array([0.0, 1.0]), key), "descending"),
      (lambda: cs.sample(ab, exact_denoise, x0, jnp.ones((2, 2)), key), "1-D"),
      (lambda: cs.sample(ab, exact_denoise, x0, cs.time_grid(2), key, known=x0), "together"),
  ]
  for fn, match in cases:
    with pytest.raises(ValueError, match=match):
      fn()
