"""The default Fashion-MNIST U-Net trained with flow matching (rectified flow) instead of DDPM.

Same network, data, optimizer and step count as ``configs/fashion_mnist.py``; the process is the linear
interpolant ``x_t = (1 - t) x0 + t eps`` (Lipman et al. 2023; Liu et al. 2023) with the velocity
``eps - x0`` as the target and logit-normal times (Esser et al. 2024, Sec. 3.1), sampled with Euler
steps from pure noise (the rectified-flow sampler; DDIM is the same update on this schedule).
"""
from configs import fashion_mnist


def get_config():
  c = fashion_mnist.get_config()
  c.diffusion.schedule = "flow"
  c.diffusion.parametrization = "flow"
  c.diffusion.time_sampling = "logit_normal"
  c.sampling.sampler = "euler"
  c.sampling.steps = 20
  c.sampling.grid = "uniform_t"
  return c
