"""Ground truth for verification: a Gaussian mixture with its exact, closed-form optimal denoiser.

For data ``x0 ~ sum_k w_k N(mu_k, Sigma_k)`` and ``x_t = alpha x0 + sigma eps``:
``x_t | k ~ N(alpha mu_k, C_k)`` with ``C_k = alpha^2 Sigma_k + sigma^2 I``;
``p(k | x_t) = softmax_k(log w_k + log N(x_t; alpha mu_k, C_k))``;
``E[x0 | x_t, k] = mu_k + alpha Sigma_k C_k^{-1} (x_t - alpha mu_k)``;
``E[x0 | x_t] = sum_k p(k | x_t) E[x0 | x_t, k]`` — the minimum-MSE denoiser, so any sampler driven by it
samples the mixture up to discretization error. Conditioning on a component ``k`` (the "class label")
gives the exact conditional denoiser, and ``p(k | x_t)`` is the exact noisy-data classifier.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jdiff.noising import bcast
from jdiff.parametrization import broadcast_t
from jdiff.schedules import Schedule


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GaussianMixture:
  """``weights [K]``, ``means [K, D]``, ``covs [K, D, D]`` (positive definite)."""
  weights: jnp.ndarray
  means: jnp.ndarray
  covs: jnp.ndarray

  @property
  def num_components(self) -> int:
    return self.weights.shape[0]

  @property
  def dim(self) -> int:
    return self.means.shape[1]

  def sample(self, key, n: int):
    """``n`` samples and their component labels."""
    kc, kz = jax.random.split(key)
    labels = jax.random.categorical(kc, jnp.log(self.weights), shape=(n,))
    chol = jnp.linalg.cholesky(self.covs)
    z = jax.random.normal(kz, (n, self.dim))
    x = self.means[labels] + jnp.einsum("nij,nj->ni", chol[labels], z)
    return x, labels

  def sample_component(self, key, k: int, n: int):
    chol = jnp.linalg.cholesky(self.covs[k])
    return self.means[k] + jax.random.normal(key, (n, self.dim)) @ chol.T

  def _noisy(self, x, alpha, sigma):
    # C_k = alpha^2 Sigma_k + sigma^2 I shares the eigenvectors U_k of Sigma_k (eigenvalues lam_k), so
    # C_k^{-1} d = U_k diag(1 / (alpha^2 lam_k + sigma^2)) U_k^T d and log|C_k| = sum log(alpha^2 lam_k
    # + sigma^2). Only the K small eigendecompositions use LAPACK: no per-example batched solve (jaxlib's
    # CPU solve/slogdet split large batches over the intra-op pool and can deadlock a 2-core host).
    a = jnp.broadcast_to(jnp.asarray(alpha, jnp.float32), x.shape[:1])
    s = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape[:1])
    lam, u = jnp.linalg.eigh(self.covs)  # [K, D], [K, D, D]
    var = a[:, None, None] ** 2 * lam[None] + s[:, None, None] ** 2  # [N, K, D]
    diff = x[:, None, :] - a[:, None, None] * self.means[None]  # [N, K, D]
    proj = jnp.einsum("kji,nkj->nki", u, diff) / var  # diag(1/var) U^T diff
    sol = jnp.einsum("kij,nkj->nki", u, proj)  # C^{-1} (x - a mu)
    logdet = jnp.sum(jnp.log(var), -1)
    log_comp = -0.5 * (jnp.sum(diff * sol, -1) + logdet + self.dim * math.log(2 * math.pi))
    return a, log_comp, sol

  def component_log_likelihood(self, x, alpha, sigma):
    """``log w_k + log N(x_t; alpha mu_k, C_k)``, shape ``[N, K]``."""
    _, log_comp, _ = self._noisy(x, alpha, sigma)
    return jnp.log(self.weights) + log_comp

  def log_prob(self, x, alpha=1.0, sigma=0.0):
    """Log density of ``x_t`` (of the data itself with the defaults)."""
    return jax.nn.logsumexp(self.component_log_likelihood(x, alpha, sigma), axis=-1)

  def posterior_probs(self, x, alpha, sigma):
    """The exact noisy-data classifier ``p(k | x_t)``, shape ``[N, K]``."""
    return jax.nn.softmax(self.component_log_likelihood(x, alpha, sigma), axis=-1)

  def denoise(self, x, alpha, sigma, labels=None):
    """``E[x0 | x_t]`` (or ``E[x0 | x_t, k=labels]`` where ``labels`` is given and in ``[0, K)``;
    a label equal to ``K`` is the null label: unconditional)."""
    a, log_comp, sol = self._noisy(x, alpha, sigma)
    cond_mean = self.means[None] + a[:, None, None] * jnp.einsum("kij,nkj->nki", self.covs, sol)
    probs = jax.nn.softmax(jnp.log(self.weights) + log_comp, axis=-1)
    if labels is not None:
      labels = jnp.broadcast_to(jnp.asarray(labels), x.shape[:1])
      onehot = jax.nn.one_hot(labels, self.num_components)
      probs = jnp.where((labels < self.num_components)[:, None], onehot, probs)
    return jnp.einsum("nk,nki->ni", probs, cond_mean)

  def model_fn(self, schedule: Schedule):
    """The exact denoiser as a jdiff model ``fn(params, x, t, cond) -> x0`` (parametrization ``x0``).

    ``params`` is ignored; ``cond`` is ``None`` or integer labels (``K`` = null label).
    """

    def fn(params, x, t, cond):
      del params
      tb = broadcast_t(t, x)
      alpha, sigma = schedule.alpha_sigma(tb)
      return self.denoise(x, alpha, sigma, cond)

    return fn


def default_mixture() -> GaussianMixture:
  """A fixed 2-D, 3-component mixture with unequal weights and anisotropic covariances."""
  weights = jnp.array([0.5, 0.3, 0.2])
  means = jnp.array([[-1.5, 0.5], [1.5, 1.0], [0.0, -1.5]])
  covs = jnp.array([[[0.15, 0.05], [0.05, 0.10]],
                    [[0.10, -0.04], [-0.04, 0.20]],
                    [[0.25, 0.0], [0.0, 0.05]]])
  return GaussianMixture(weights, means, covs)


def sliced_wasserstein(x, y, key, num_projections: int = 256):
  """Sliced Wasserstein-1 distance between two equal-size point sets ``[N, D]``: the mean over random
  unit directions of the 1-D W1 distance of the projections (sorted-sample formula)."""
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  if x.shape != y.shape:
    raise ValueError(f"sliced_wasserstein needs equal shapes, got {x.shape} and {y.shape}")
  d = jax.random.normal(key, (num_projections, x.shape[1]))
  d = d / jnp.linalg.norm(d, axis=1, keepdims=True)
  px, py = jnp.sort(x @ d.T, axis=0), jnp.sort(y @ d.T, axis=0)
  return jnp.mean(jnp.abs(px - py))


def assign_components(mix: GaussianMixture, x):
  """Most likely component of each clean sample (for comparing component weights)."""
  return jnp.argmax(mix.component_log_likelihood(x, 1.0, 0.0), axis=-1)


def component_weight_error(mix: GaussianMixture, x) -> float:
  """Largest absolute difference between the mixture weights and the fractions of samples assigned
  to each component."""
  counts = np.bincount(np.asarray(assign_components(mix, x)), minlength=mix.num_components)
  ref = np.bincount(np.asarray(assign_components(mix, mix.sample(jax.random.PRNGKey(12345),
                                                                  200_000)[0])),
                    minlength=mix.num_components) / 200_000
  return float(np.max(np.abs(counts / counts.sum() - ref)))
