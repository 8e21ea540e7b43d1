"""The DDPM paper's CIFAR-10 setup (Ho et al. 2020, Sec. 4 and App. B): 35.7M-parameter UNet (ch 128,
mults 1-2-2-2, 2 res blocks, attention at 16x16, dropout 0.1), linear beta 1e-4..0.02 over 1000 steps,
eps-prediction with the simple loss, Adam lr 2e-4 with 5000 warm-up steps, gradient clipping at 1,
batch 128, EMA 0.9999, random horizontal flips, 800k steps."""
from configs import base


def get_config():
  c = base.get_base_config()
  c.data.name = "cifar10"
  c.data.batch_size = 128
  c.data.random_flip = True
  c.model.ch = 128
  c.model.ch_mult = (1, 2, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attn_resolutions = (16,)
  c.model.dropout = 0.1
  c.diffusion.schedule = "linear"
  c.optim.lr = 2e-4
  c.optim.warmup_steps = 5000
  c.optim.grad_clip = 1.0
  c.training.num_steps = 800_000
  c.training.ema_decay = 0.9999
  c.training.log_every = 100
  c.training.ckpt_every = 10_000
  c.training.sample_every = 10_000
  c.sampling.sampler = "ddpm"
  c.sampling.steps = 1000
  c.sampling.grid = "uniform_t"
  return c
