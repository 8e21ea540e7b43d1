"""The diffusers side of ``sampler_accuracy.py --vs-diffusers``: the exact Gaussian-mixture denoiser in
torch and diffusers' schedulers driven by it. Bench-only: jdiff never imports torch or diffusers.

* ``TorchMixture``: ``E[x0 | x_t]`` of ``x0 ~ sum_k w_k N(mu_k, Sigma_k)`` in closed form, in float64 (the
  same formula as ``jdiff.toy.GaussianMixture.denoise``, written through the scaled variable
  ``y = x_t / alpha = x0 + sigma_tilde eps``, on which it depends alone).
* ``make_scheduler(kind, spacing, ...)``: one of diffusers' ``DDIMScheduler``, ``EulerDiscreteScheduler``,
  ``HeunDiscreteScheduler``, ``DPMSolverMultistepScheduler`` (dpmsolver++) and
  ``UniPCMultistepScheduler`` over a 1000-step discrete table (DDPM's linear betas, or ``trained_betas``),
  predicting ``x0`` (``prediction_type="sample"``, so no eps round trip amplifies float errors at t = 1).
* ``run_scheduler``: the standard diffusers loop; the model is the exact denoiser evaluated at the noise
  level the scheduler itself holds for the current step (its ``sigmas[step]`` or, for DDIM,
  ``alphas_cumprod[t]``), not at a level recomputed from the timestep it passes: diffusers rounds the
  timesteps of Karras/exponential grids to integers for the model, and a network conditioned on them
  would see slightly different levels. Only the solver and its grid are measured.
"""
from __future__ import annotations

import math

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000
SCHEDULERS = ("ddim", "euler", "heun", "dpmpp_2m", "unipc_2", "unipc_3")
# Timestep spacings / sigma grids per scheduler that start at the last training timestep (999, the
# prior) and step consistently. DDIM: "trailing" only ("leading" starts at 1000 - 1000 // N, e.g. 900,
# and "linspace" steps from t to t - 1000 // N but evaluates the model next at linspace's own t).
SPACINGS = {
    "ddim": ("trailing",),
    "euler": ("linspace", "trailing", "karras", "exponential"),
    "heun": ("linspace", "trailing", "karras", "exponential"),
    "dpmpp_2m": ("linspace", "trailing", "karras", "exponential"),
    "unipc_2": ("linspace", "trailing", "karras", "exponential"),
    "unipc_3": ("linspace", "trailing", "karras", "exponential"),
}


class TorchMixture:
  """The exact denoiser of a Gaussian mixture (``weights [K]``, ``means [K, D]``, ``covs [K, D, D]``)."""

  def __init__(self, weights, means, covs, dtype=torch.float64):
    self.dtype = dtype
    w = np.asarray(weights, np.float64)
    lam, u = np.linalg.eigh(np.asarray(covs, np.float64))  # Sigma_k = U_k diag(lam_k) U_k^T
    self.log_w = torch.tensor(np.log(w), dtype=dtype)
    self.mu = torch.tensor(np.asarray(means, np.float64), dtype=dtype)
    self.lam = torch.tensor(lam, dtype=dtype)
    self.u = torch.tensor(u, dtype=dtype)

  def denoise_scaled(self, y: torch.Tensor, sigma_tilde) -> torch.Tensor:
    """``E[x0 | y]`` for ``y = x0 + sigma_tilde eps``, ``y [N, D]``."""
    s2 = torch.as_tensor(sigma_tilde, dtype=self.dtype) ** 2
    var = self.lam + s2  # [K, D]: eigenvalues of C_k = Sigma_k + s^2 I
    diff = y[:, None, :] - self.mu[None]  # [N, K, D]
    proj = torch.einsum("kji,nkj->nki", self.u, diff)  # U_k^T (y - mu_k)
    log_comp = -0.5 * ((proj ** 2 / var).sum(-1) + torch.log(var).sum(-1))
    probs = torch.softmax(self.log_w + log_comp, dim=-1)  # [N, K]
    shrunk = torch.einsum("kij,nkj->nki", self.u, proj * (self.lam / var))  # Sigma_k C_k^{-1} (y - mu_k)
    return torch.einsum("nk,nki->ni", probs, self.mu[None] + shrunk)

  def denoise(self, x_t: torch.Tensor, sigma_tilde) -> torch.Tensor:
    """``E[x0 | x_t]`` for the variance-preserving ``x_t = alpha x0 + sigma eps``, given the noise
    level as ``sigma_tilde = sigma / alpha`` (``alpha = 1 / sqrt(1 + sigma_tilde^2)``)."""
    s = torch.as_tensor(sigma_tilde, dtype=self.dtype)
    return self.denoise_scaled(x_t * torch.sqrt(1.0 + s * s), s)


def make_scheduler(kind: str, spacing: str, *, trained_betas=None, cosine: bool = False):
  """A diffusers scheduler over DDPM's linear table (beta 1e-4..0.02, 1000 steps) or ``trained_betas``
  (``cosine``: a cosine schedule's table)."""
  import diffusers
  table = dict(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_start=1e-4, beta_end=0.02,
               beta_schedule="linear", prediction_type="sample")
  if trained_betas is not None:
    table["trained_betas"] = np.asarray(trained_betas, np.float64)
  if cosine:
    # The table still comes from trained_betas; the name only keeps diffusers' cosine handling: DPM-Solver
    # and UniPC do not round the timesteps of Karras/exponential grids to integers for cosine tables
    # (rounded, the top levels of a cosine grid, sigma_tilde 2.2e4 to 4e3, all become timestep 999).
    table["beta_schedule"] = "squaredcos_cap_v2"
  grid = {}
  if spacing in ("linspace", "trailing"):
    grid["timestep_spacing"] = spacing
  else:  # sigma grids are built from the full table ("linspace" timesteps end at t = 0)
    grid["timestep_spacing"] = "linspace"
    grid[{"karras": "use_karras_sigmas", "exponential": "use_exponential_sigmas"}[spacing]] = True
  if kind == "ddim":
    assert spacing == "trailing", spacing
    return diffusers.DDIMScheduler(**table, clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                                   timestep_spacing="trailing")
  if kind == "euler":
    return diffusers.EulerDiscreteScheduler(**table, **grid)
  if kind == "heun":
    return diffusers.HeunDiscreteScheduler(**table, **grid)
  if kind == "dpmpp_2m":
    return diffusers.DPMSolverMultistepScheduler(**table, **grid, algorithm_type="dpmsolver++",
                                                 solver_order=2, solver_type="midpoint",
                                                 lower_order_final=True)
  if kind.startswith("unipc_"):
    return diffusers.UniPCMultistepScheduler(**table, **grid, solver_order=int(kind[-1]),
                                             solver_type="bh2", predict_x0=True, lower_order_final=True)
  raise ValueError(kind)


def steps_for(kind: str, nfe: int) -> int:
  """``num_inference_steps`` spending at most ``nfe`` model calls (Heun: 2 per step, 1 on the last)."""
  return max(1, (nfe + 1) // 2) if kind == "heun" else nfe


def start_sigma_tilde(sched) -> float:
  """The noise level (``sigma / alpha``) of the scheduler's first model call."""
  return _sigma_tilde(sched, 0, sched.timesteps[0])


def _sigma_tilde(sched, i: int, t) -> float:
  if hasattr(sched, "sigmas"):
    # Euler/Heun: step_index is set by scale_model_input; DPM/UniPC: it is the loop index (set at
    # their first step()).
    k = sched.step_index if sched.step_index is not None else i
    return float(sched.sigmas[k])
  ac = float(sched.alphas_cumprod[int(t)])  # DDIM
  return math.sqrt((1.0 - ac) / ac)


def run_scheduler(sched, mixture: TorchMixture, x_init: np.ndarray, nfe_budget: int, kind: str):
  """Samples from ``x_init`` (the variance-preserving ``x_1``, float64 ``[N, D]``) with the standard
  diffusers loop; returns ``(x0 [N, D] float64, nfe, levels)`` with ``levels`` the sigma_tilde of each
  model call."""
  sched.set_timesteps(steps_for(kind, nfe_budget))
  if hasattr(sched, "set_begin_index"):
    # The loop starts at the first timestep (as a text-to-image pipeline does). Without this, a
    # scheduler looks its first timestep up in the list and, when it occurs twice (integer timesteps
    # of a Karras grid), starts at the second occurrence (meant for image-to-image).
    sched.set_begin_index(0)
  x = torch.tensor(np.asarray(x_init, np.float64)) * float(sched.init_noise_sigma)
  levels = []
  for i, t in enumerate(sched.timesteps):
    x_in = sched.scale_model_input(x, t)
    s = _sigma_tilde(sched, i, t)
    levels.append(s)
    x0 = mixture.denoise(x_in, s)
    x = sched.step(x0, t, x).prev_sample
  return x.numpy(), len(levels), levels


def trained_betas_from(logsnr_at) -> np.ndarray:
  """``trained_betas`` whose table equals a continuous VP schedule at ``t_i = (i + 1) / 1000``:
  ``alpha_bar_i = sigmoid(logsnr(t_i))``, ``beta_i = 1 - alpha_bar_i / alpha_bar_{i-1}``."""
  t = np.arange(1, NUM_TRAIN_TIMESTEPS + 1, dtype=np.float64) / NUM_TRAIN_TIMESTEPS
  abar = 1.0 / (1.0 + np.exp(-np.asarray(logsnr_at(t), np.float64)))
  prev = np.concatenate([[1.0], abar[:-1]])
  return 1.0 - abar / prev
