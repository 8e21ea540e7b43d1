"""The default: a small UNet on Fashion-MNIST (28x28x1), DDPM linear schedule, eps-prediction.

Sized to give recognizable items within ~20 minutes on a 2-core CPU.

Sample grids use ancestral DDPM sampling (50 steps): early in training the probability-flow ODE
samplers (DDIM eta=0, DPM-Solver++, Heun) turn a quarter or more of the samples into textured noise
with this model, while ancestral sampling from the same checkpoint gives clean items (see the
quality-vs-NFE table in bench/README.md).
"""
from configs import base


def get_config():
  c = base.get_base_config()
  c.data.name = "fashion_mnist"
  c.data.batch_size = 32
  c.model.ch = 32
  c.model.ch_mult = (1, 2, 2)
  c.model.num_res_blocks = 1
  c.model.attn_resolutions = (7,)
  c.training.num_steps = 2500
  c.training.ema_decay = 0.999
  c.training.ckpt_every = 500
  c.training.sample_every = 500
  c.sampling.sampler = "ddpm"
  c.sampling.steps = 50
  c.sampling.grid = "uniform_t"
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 200
  return c
