"""A consistency model of Fashion-MNIST (28x28x1) trained from scratch by improved consistency training
(Song & Dhariwal 2023): no teacher, the boundary-condition parametrization on the EDM noise levels
(sigma in [0.002, 80]), the discretization curriculum from 10 to 1280 levels, log-normal noise levels,
the 1 / (sigma_{n+1} - sigma_n) weighting and the pseudo-Huber metric (``configs/base.py``,
``consistency``); no EMA target network (the iCT finding), an EMA of the weights for sampling. The U-Net
is the default model's. Sampled in 2 steps (noise levels 80 and 0.821) with the multistep consistency
sampler (Song et al. 2023, Alg. 1); ``--steps=1`` is one network call per image.
"""
from configs import fashion_mnist


def get_config():
  c = fashion_mnist.get_config()
  c.training.conditional = False  # unconditional, as measured (bench/README.md)
  c.diffusion.schedule = "edm"
  c.diffusion.parametrization = "consistency"
  c.diffusion.sigma_data = 0.5
  c.training.objective = "consistency_training"
  c.training.num_steps = 4000
  c.training.ema_decay = 0.9999
  c.optim.lr = 1e-3
  c.sampling.sampler = "consistency"
  c.sampling.steps = 2
  c.sampling.grid = "consistency"
  return c
