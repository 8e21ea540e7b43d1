"""CIFAR-10 with EDM (Karras et al. 2022): EDM preconditioning, the EDM loss weighting with log-normal
noise levels, and the Heun sampler on the rho=7 grid (18 steps, 35 NFE)."""
from configs import cifar10_ddpm


def get_config():
  c = cifar10_ddpm.get_config()
  c.diffusion.schedule = "edm"
  c.diffusion.parametrization = "edm"
  c.diffusion.weighting = "edm"
  c.diffusion.time_sampling = "lognormal"
  c.diffusion.sigma_data = 0.5
  c.model.embedding = "fourier"
  c.model.dropout = 0.13
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 10_000
  c.training.ema_decay = 0.9999
  c.sampling.sampler = "heun"
  c.sampling.steps = 18
  c.sampling.grid = "karras"
  return c
