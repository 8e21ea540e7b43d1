"""CIFAR-10 by flow matching with the DDPM U-Net: the "1-rectified flow" of Liu et al. 2023 (the linear
interpolant ``x_t = (1 - t) x0 + t eps``, velocity prediction, uniform t), the teacher of
``configs/cifar10_reflow.py``. Optimisation as ``configs/cifar10_ddpm.py`` (Adam 2e-4, batch 128, EMA
0.9999, flips); sampled with UniPC on the uniform-t grid. Sized for an accelerator."""
from configs import cifar10_ddpm


def get_config():
  c = cifar10_ddpm.get_config()
  c.diffusion.schedule = "flow"
  c.diffusion.parametrization = "flow"
  c.diffusion.time_sampling = "uniform"
  c.sampling.sampler = "unipc"
  c.sampling.steps = 20
  c.sampling.grid = "uniform_t"
  return c
