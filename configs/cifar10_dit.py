"""Class-conditional CIFAR-10 (32x32x3) with DiT-B/2 (Peebles & Xie 2023; 130M parameters, 256 tokens)
trained by flow matching: the linear interpolant with velocity prediction (Lipman et al. 2023; Liu et
al. 2023) and logit-normal time sampling (Esser et al. 2024, Sec. 3.1), label dropout 0.1 for
classifier-free guidance. The paper's optimisation: AdamW at a constant 1e-4, no weight decay, batch
256, EMA 0.9999; horizontal flips. Sized for an accelerator (``--config.model.dtype=bfloat16`` there).
"""
from configs import base


def get_config():
  c = base.get_base_config()
  c.data.name = "cifar10"
  c.data.batch_size = 256
  c.data.random_flip = True
  c.model = base.ml_collections.ConfigDict()
  c.model.name = "dit"
  c.model.size = "B"           # hidden 768, depth 12, 12 heads (Table 1)
  c.model.hidden_size = 0      # 0: from size; a positive value overrides it (also depth, num_heads)
  c.model.depth = 0
  c.model.num_heads = 0
  c.model.patch_size = 2
  c.model.dropout = 0.0
  c.model.learned_variance = False
  c.model.remat = False
  c.model.dtype = "float32"
  c.diffusion.schedule = "flow"
  c.diffusion.parametrization = "flow"
  c.diffusion.time_sampling = "logit_normal"
  c.optim.optimizer = "adamw"
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 0
  c.optim.decay = "constant"
  c.optim.weight_decay = 0.0
  c.training.conditional = True
  c.training.cond_drop_prob = 0.1
  c.training.num_steps = 400_000
  c.training.ema_decay = 0.9999
  c.training.log_every = 100
  c.training.ckpt_every = 10_000
  c.training.sample_every = 10_000
  c.sampling.sampler = "euler"
  c.sampling.steps = 50
  c.sampling.grid = "uniform_t"
  return c
