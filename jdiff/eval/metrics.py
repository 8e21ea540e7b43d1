"""Sample-quality metrics on feature vectors: Fréchet distance, KID, precision/recall, accuracy.

All functions take features ``[N, D]`` (from :class:`jdiff.eval.FeatureNet` for Fashion-MNIST or the
FID Inception for photos) and validate their inputs with one clear ``ValueError``. Statistics, sums
and the Fréchet distance are float64 numpy; the large ``N x N`` matrix products of KID and
precision/recall are float32 through XLA (see :func:`_gram`).

- Fréchet distance (Dowson & Landau 1982; FID: Heusel et al. 2017, Eq. 6) between Gaussians fitted
  to two feature sets: ``|mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2))``.
- Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs", Sec. 4 / Eq. 3 and the
  unbiased MMD^2 estimator of Gretton et al. 2012, Lemma 6) with the cubic polynomial kernel
  ``k(x, y) = (x.y / D + 1)^3``, averaged over random subsets.
- Improved precision and recall (Kynkäänniemi et al. 2019, Sec. 2, Eq. 1-2) from k-NN balls.

On pixels: :func:`roughness` and :func:`noise_fraction`, the share of samples rougher than every real
image (the "noise tiles" that a sampler or an undertrained model turns some samples into).
"""
from __future__ import annotations

import contextlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import _checks


def _features(x, name: str, min_n: int, why: str) -> np.ndarray:
  a = np.asarray(x)
  if a.ndim != 2:
    raise ValueError(f"{name} must be features of shape [N, D], got shape {a.shape}")
  if not np.issubdtype(a.dtype, np.number):
    raise ValueError(f"{name} must be numbers, got dtype {a.dtype}")
  if not np.all(np.isfinite(a)):
    raise ValueError(f"{name} contains NaN or Inf; pass finite features")
  if a.shape[0] < min_n:
    raise ValueError(f"{name} has {a.shape[0]} samples; {why}")
  return a.astype(np.float64)


def _same_dim(a: np.ndarray, b: np.ndarray, na: str, nb: str) -> None:
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"{na} and {nb} must have the same feature dimension, got {a.shape[1]} and "
                     f"{b.shape[1]}")


# ---------------------------------------------------------------------------------------------------
# Fréchet distance.


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of features ``[N, D]``, ``N >= 2``.

  With ``N <= D`` the covariance is singular (rank ``N - 1``): the Fréchet distance is still defined
  but biased upward; use ``N > D`` (e.g. > 2048 for Inception, > 128 for the Fashion-MNIST net)."""
  f = _features(features, "features", 2, "a covariance needs at least 2 samples (and N > D = "
                f"{np.shape(features)[-1]} for a full-rank one)")
  if f.shape[0] <= f.shape[1]:
    warnings.warn(f"{f.shape[0]} samples for {f.shape[1]}-D features: the covariance is singular and "
                  f"the Fréchet distance is biased upward; use more than {f.shape[1]} samples",
                  stacklevel=2)
  return f.mean(axis=0), np.cov(f, rowvar=False)


def _one_blas_thread():
  """Run dense ``D x D`` linear algebra on one BLAS thread when ``threadpoolctl`` (installed with
  scikit-learn) is available: multi-threaded OpenBLAS eigendecompositions slow down 10-20x when the
  cores are shared with other processes (measured: 2048 x 2048 ``eigh`` 37 s with two threads on a
  busy 2-core machine, 1.9 s with one), and gain little otherwise."""
  try:
    from threadpoolctl import threadpool_limits  # pylint: disable=g-import-not-at-top
  except ImportError:
    return contextlib.nullcontext()
  return threadpool_limits(1, user_api="blas")


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh(s)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _check_stats(mu, sigma, name: str) -> tuple[np.ndarray, np.ndarray]:
  mu = np.asarray(mu, np.float64)
  sigma = np.asarray(sigma, np.float64)
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f"{name}: mean must have shape [D] and covariance [D, D], got {mu.shape} and "
                     f"{sigma.shape}")
  if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
    raise ValueError(f"{name}: mean and covariance must be finite")
  scale = max(float(np.max(np.abs(sigma))), 1e-300)
  if np.max(np.abs(sigma - sigma.T)) > 1e-6 * scale:
    raise ValueError(f"{name}: covariance must be symmetric")
  return mu, 0.5 * (sigma + sigma.T)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Squared Fréchet (2-Wasserstein) distance between ``N(mu1, S1)`` and ``N(mu2, S2)``.

  ``d^2 = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2))`` (Dowson & Landau 1982; Heusel et
  al. 2017, Eq. 6). ``Tr((S1 S2)^(1/2))`` is the sum of the square roots of the eigenvalues of the
  symmetric PSD matrix ``S1^(1/2) S2 S1^(1/2)`` (similar to ``S1 S2``), so no non-symmetric matrix
  square root (and no imaginary parts) appear; negative round-off eigenvalues are clipped to 0.
  Computed in float64. Singular covariances are fine.
  """
  mu1, sigma1 = _check_stats(mu1, sigma1, "first Gaussian")
  mu2, sigma2 = _check_stats(mu2, sigma2, "second Gaussian")
  if mu1.shape != mu2.shape:
    raise ValueError(f"the two Gaussians must have the same dimension, got {mu1.shape[0]} and "
                     f"{mu2.shape[0]}")
  with _one_blas_thread():
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh(0.5 * (middle + middle.T))
  tr_covmean = float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))
  diff = mu1 - mu2
  d2 = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
  return max(d2, 0.0)


def frechet_distance_from_features(features1, features2) -> float:
  """:func:`frechet_distance` of Gaussians fitted to two feature sets (each ``N >= 2``)."""
  f1 = _features(features1, "features1", 2, "the Fréchet distance needs at least 2 samples per set "
                 "(and more than the feature dimension for a full-rank covariance)")
  f2 = _features(features2, "features2", 2, "the Fréchet distance needs at least 2 samples per set "
                 "(and more than the feature dimension for a full-rank covariance)")
  _same_dim(f1, f2, "features1", "features2")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the rank warning is for users calling gaussian_stats directly
    s1, s2 = gaussian_stats(f1), gaussian_stats(f2)
  return frechet_distance(*s1, *s2)


# ---------------------------------------------------------------------------------------------------
# Kernel Inception Distance.


@jax.jit
def _gram_f32(x, y):
  return jnp.matmul(x, y.T, precision=jax.lax.Precision.HIGHEST)


def _gram(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """``x @ y.T`` as a float32 product through XLA, returned as float64 for the sums that follow.

  float32 suffices (features carry far fewer than 7 significant digits) and is several times faster
  than float64; XLA rather than numpy because multi-threaded OpenBLAS slows down by 10x or more when
  the CPU cores are shared with other processes."""
  return np.asarray(_gram_f32(np.asarray(x, np.float32), np.asarray(y, np.float32)), np.float64)


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """``k(x, y) = (x.y / D + 1)^3`` (Bińkowski et al. 2018, Sec. 4)."""
  t = _gram(x, y) / x.shape[1] + 1.0
  return t * t * t  # (faster than t ** 3, which numpy evaluates with pow())


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 with the cubic polynomial kernel (Gretton et al. 2012, Lemma 6):
  ``sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (n(n-1)) - 2 sum k(x_i, y_j) /
  (mn)``."""
  m, n = x.shape[0], y.shape[0]
  kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
  sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
  syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
  return float(sxx + syy - 2.0 * kxy.mean())


def kernel_inception_distance(features1, features2, *, subset_size: int = 1000,
                              num_subsets: int = 100, seed: int = 0) -> dict:
  """KID (Bińkowski et al. 2018): the unbiased MMD^2 of the cubic polynomial kernel, averaged over
  ``num_subsets`` pairs of random subsets (drawn without replacement, ``np.random.default_rng(seed)``)
  of ``m = min(subset_size, N1, N2)`` samples each.

  Returns:
    ``{"kid": mean, "kid_std": standard deviation over subsets, "kid_stderr": std /
    sqrt(num_subsets), "subset_size": m, "num_subsets": num_subsets}``. Unbiased: its expectation is
    0 when both sets come from one distribution, so small negative values occur.
  """
  subset_size = _checks.positive_int(subset_size, "subset_size")
  num_subsets = _checks.positive_int(num_subsets, "num_subsets")
  if subset_size < 2:
    raise ValueError("subset_size must be >= 2: the unbiased MMD estimator needs 2 samples per set")
  why = "KID needs at least 2 samples per set (a subset size >= 2)"
  f1 = _features(features1, "features1", 2, why)
  f2 = _features(features2, "features2", 2, why)
  _same_dim(f1, f2, "features1", "features2")
  m = min(subset_size, f1.shape[0], f2.shape[0])
  rng = np.random.default_rng(seed)
  vals = np.empty(num_subsets)
  for i in range(num_subsets):
    a = f1[rng.choice(f1.shape[0], m, replace=False)]
    b = f2[rng.choice(f2.shape[0], m, replace=False)]
    vals[i] = mmd2_unbiased(a, b)
  std = float(vals.std(ddof=1)) if num_subsets > 1 else 0.0
  return {"kid": float(vals.mean()), "kid_std": std, "kid_stderr": float(std / np.sqrt(num_subsets)),
          "subset_size": int(m), "num_subsets": int(num_subsets)}


# ---------------------------------------------------------------------------------------------------
# Precision and recall.


def _sq_dists(a, b):
  """Squared Euclidean distances ``[len(a), len(b)]`` via ``|a|^2 + |b|^2 - 2 a.b`` (float32, XLA),
  and the rounding allowance of that formula: a point within it of a ball's boundary counts as
  inside, so identical points always lie in each other's balls."""
  na, nb = jnp.sum(a * a, axis=1)[:, None], jnp.sum(b * b, axis=1)[None, :]
  d = na + nb - 2.0 * jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(d, 0.0), 1e-5 * (na + nb)


@jax.jit
def _sq_dists_only(q, support):
  return _sq_dists(q, support)[0]


@jax.jit
def _inside_any_ball(q, support, radii):
  d, slack = _sq_dists(q, support)
  return jnp.any(d <= radii[None, :] + slack, axis=1)


def _blocks(fn, queries: np.ndarray, *args, block: int):
  """``fn(q_block, *args)`` over row blocks of ``queries``, the last one zero-padded so that one
  program is compiled."""
  q32 = np.asarray(queries, np.float32)
  n = q32.shape[0]
  b = min(block, n)
  out = []
  for i in range(0, n, b):
    chunk = q32[i:i + b]
    m = chunk.shape[0]
    if m < b:
      chunk = np.concatenate([chunk, np.zeros((b - m, q32.shape[1]), np.float32)])
    out.append(np.asarray(fn(chunk, *args))[:m])
  return np.concatenate(out)


def knn_radii(features: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
  """Squared distance of each point to its ``k``-th nearest neighbour in the same set (itself
  excluded), ``float64 [N]``."""
  f32 = np.asarray(features, np.float32)

  def kth(q, support):
    # Entry 0 of the sorted row is the point itself (distance 0). (numpy's partition: XLA's top_k
    # is ~20x slower on CPU here.)
    return np.partition(np.asarray(_sq_dists_only(q, support)), k, axis=1)[:, k]

  return _blocks(kth, f32, f32, block=block).astype(np.float64)


def _coverage(queries: np.ndarray, support: np.ndarray, radii: np.ndarray,
              block: int = 1024) -> float:
  """Fraction of ``queries`` inside at least one ball ``|q - s_j|^2 <= r_j``."""
  inside = _blocks(_inside_any_ball, queries, np.asarray(support, np.float32),
                   np.asarray(radii, np.float32), block=block)
  return float(np.mean(inside))


def precision_recall(real_features, fake_features, *, k: int = 3) -> dict:
  """Improved precision and recall (Kynkäänniemi et al. 2019, Eq. 1-2).

  The real manifold is the union of balls around each real feature with radius its distance to its
  ``k``-th nearest real neighbour; precision is the fraction of generated features inside it. Recall
  swaps the roles (balls around generated features, fraction of real features inside). Read the two
  together (and with FD): outlier real points have large balls, so collapsed samples that land in one
  (e.g. noise images, whose features bunch together) can score a high precision with recall near 0
  (Naeem et al. 2020, Sec. 3). Distances are float32 (see :func:`_sq_dists`).

  Returns:
    ``{"precision": float, "recall": float, "k": k}``.
  """
  k = _checks.positive_int(k, "k")
  why = f"precision/recall with k={k} needs more than k = {k} samples per set"
  real = _features(real_features, "real_features", k + 1, why)
  fake = _features(fake_features, "fake_features", k + 1, why)
  _same_dim(real, fake, "real_features", "fake_features")
  precision = _coverage(fake, real, knn_radii(real, k))
  recall = _coverage(real, fake, knn_radii(fake, k))
  return {"precision": precision, "recall": recall, "k": int(k)}


# ---------------------------------------------------------------------------------------------------
# Classifier accuracy.


def accuracy(logits, labels) -> float:
  """Fraction of rows of ``logits [N, C]`` whose argmax equals ``labels [N]`` (the requested class of
  each class-conditional sample)."""
  lg = np.asarray(logits)
  lb = np.asarray(labels)
  if lg.ndim != 2 or lg.shape[0] < 1:
    raise ValueError(f"logits must have shape [N, C] with N >= 1, got {lg.shape}")
  if lb.shape != (lg.shape[0],) or not np.issubdtype(lb.dtype, np.integer):
    raise ValueError(f"labels must be integers of shape [{lg.shape[0]}], got {lb.dtype} {lb.shape}")
  if lb.min() < 0 or lb.max() >= lg.shape[1]:
    raise ValueError(f"labels must lie in [0, {lg.shape[1]}), got values in [{lb.min()}, "
                     f"{lb.max()}]")
  return float(np.mean(np.argmax(lg, axis=1) == lb))


def feature_metrics(real_features, fake_features, *, kid_subset_size: int = 1000,
                    kid_num_subsets: int = 100, k: int = 3, seed: int = 0) -> dict:
  """FD, KID and precision/recall of ``fake_features`` against ``real_features`` in one dict:
  ``fd``, ``kid``, ``kid_std``, ``kid_stderr``, ``precision``, ``recall``, ``num_real``,
  ``num_fake``."""
  out = {"fd": frechet_distance_from_features(real_features, fake_features)}
  kid = kernel_inception_distance(real_features, fake_features, subset_size=kid_subset_size,
                                  num_subsets=kid_num_subsets, seed=seed)
  out.update({key: kid[key] for key in ("kid", "kid_std", "kid_stderr")})
  pr = precision_recall(real_features, fake_features, k=k)
  out.update({"precision": pr["precision"], "recall": pr["recall"]})
  out["num_real"], out["num_fake"] = int(np.shape(real_features)[0]), int(np.shape(fake_features)[0])
  return out


def roughness(images) -> np.ndarray:
  """Mean absolute difference between horizontally and vertically neighbouring pixels of each image
  ``[N, H, W, C]`` (float64 ``[N]``): 0 for a flat image, 2/3 times the value range for i.i.d. uniform
  noise (1/3 of it per direction); Fashion-MNIST items in [-1, 1] lie below ~0.5."""
  x = np.asarray(images, np.float64)
  if x.ndim != 4 or x.shape[1] < 2 or x.shape[2] < 2:
    raise ValueError(f"roughness needs images [N, H, W, C] with H, W >= 2, got shape {x.shape}")
  dx = np.abs(np.diff(x, axis=2)).mean(axis=(1, 2, 3))
  dy = np.abs(np.diff(x, axis=1)).mean(axis=(1, 2, 3))
  return 0.5 * (dx + dy)


def noise_fraction(sample_roughness, real_roughness) -> float:
  """Share of samples rougher than the roughest real image: the noise tiles of a sample set.

  A real item is at most as rough as the roughest of ``N`` real images with probability ``N/(N+1)``, so
  a perfect generator scores about ``1/N`` (the floor of :func:`jdiff.eval.report`); a sample turned to
  textured noise is far rougher than any real item."""
  s, r = np.asarray(sample_roughness, np.float64), np.asarray(real_roughness, np.float64)
  if s.ndim != 1 or r.ndim != 1 or s.size == 0 or r.size == 0:
    raise ValueError(f"noise_fraction needs two non-empty 1-D roughness arrays (from roughness()), got "
                     f"shapes {s.shape} and {r.shape}")
  return float(np.mean(s > r.max()))


__all__ = ["accuracy", "feature_metrics", "frechet_distance", "frechet_distance_from_features",
           "gaussian_stats", "kernel_inception_distance", "knn_radii", "mmd2_unbiased",
           "noise_fraction", "polynomial_kernel", "precision_recall", "roughness"]

