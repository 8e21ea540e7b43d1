"""A small class-conditional DiT (Peebles & Xie 2023) on Fashion-MNIST (28x28x1), trained by flow
matching: the linear interpolant ``x_t = (1 - t) x0 + t eps`` with velocity prediction (Lipman et al.
2023; Liu et al. 2023) and logit-normal time sampling (Esser et al. 2024, Sec. 3.1), label dropout 0.1
for classifier-free guidance; sampled with the rectified-flow Euler sampler.

Sized for a 2-core CPU: patch 4 (7x7 = 49 tokens), hidden 192, depth 6, 3 heads of 64 (4.2M
parameters; ~0.3-0.4 s per batch-32 step on 2 busy cores, ~25 min for the 4000 steps), batch 32; the
paper's DiT training recipe otherwise (AdamW, no weight decay, constant learning rate, EMA of the
weights), with a short warm-up and a higher learning rate for the small model and batch.
``--config.model.patch_size=2`` (196 tokens) is the better but ~4x slower model.
"""
from configs import base


def get_config():
  c = base.get_base_config()
  c.data.name = "fashion_mnist"
  c.data.batch_size = 32
  c.model = base.ml_collections.ConfigDict()
  c.model.name = "dit"
  c.model.size = ""            # "S", "B", "L", "XL" (Table 1), or "" with the three fields below
  c.model.hidden_size = 192
  c.model.depth = 6
  c.model.num_heads = 3
  c.model.patch_size = 4       # 2, 4 or 8; must divide H and W
  c.model.mlp_ratio = 4.0
  c.model.dropout = 0.0
  c.model.learned_variance = False
  c.model.remat = False
  c.model.dtype = "float32"
  c.diffusion.schedule = "flow"
  c.diffusion.parametrization = "flow"
  c.diffusion.time_sampling = "logit_normal"
  c.optim.optimizer = "adamw"
  c.optim.lr = 5e-4
  c.optim.warmup_steps = 200
  c.training.conditional = True
  c.training.cond_drop_prob = 0.1
  c.training.num_steps = 4000
  c.training.ema_decay = 0.999
  c.training.ckpt_every = 500
  c.training.sample_every = 1000
  c.sampling.sampler = "euler"
  c.sampling.steps = 50
  c.sampling.grid = "uniform_t"
  return c
