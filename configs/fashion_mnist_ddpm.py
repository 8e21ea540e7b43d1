"""The default Fashion-MNIST U-Net with the DDPM recipe of Ho et al. 2020: linear beta schedule,
eps-prediction, the simple loss at uniform t, sampled by 50-step ancestral sampling (Alg. 2).

It was the default until ``bench/default_recipe.py`` measured it against flow matching at equal training
time: with the probability-flow samplers it needs many more minutes to stop drawing noise tiles (see
bench/README.md, "Default recipe"); ancestral sampling at 50 steps is its best sampler here.
"""
from configs import fashion_mnist


def get_config():
  c = fashion_mnist.get_config()
  c.training.conditional = False  # unconditional, as measured (bench/README.md)
  c.diffusion.schedule = "linear"
  c.diffusion.parametrization = "eps"
  c.diffusion.weighting = "simple"
  c.diffusion.time_sampling = "uniform"
  c.sampling.sampler = "ddpm"
  c.sampling.steps = 50
  c.training.num_steps = 2500  # its measured runs (bench/README.md); the default has 2000
  c.sampling.grid = "uniform_t"
  return c
