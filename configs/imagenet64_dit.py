"""Class-conditional ImageNet 64x64 (TFDS ``imagenet_resized/64x64``, 1000 classes) with DiT-XL/2
(Peebles & Xie 2023; 675M parameters, 1024 tokens of 2x2x3 pixels), for accelerators: bfloat16
compute (parameters, optimizer state, EMA and loss stay float32), flow matching with velocity
prediction and logit-normal time sampling (Lipman et al. 2023; Esser et al. 2024), label dropout 0.1
for classifier-free guidance; the paper's AdamW at a constant 1e-4, no weight decay, batch 256, EMA
0.9999.

Prepare the data once (needs TensorFlow and internet): ``tfds build imagenet_resized/64x64
--file_format=array_record`` (or ``--config.data.download=True``); reading needs neither. With
little accelerator memory add ``--config.model.remat=True`` (one block's activations kept at a time).
"""
from configs import base


def get_config():
  c = base.get_base_config()
  c.data.name = "imagenet_resized/64x64"
  c.data.batch_size = 256
  c.data.random_flip = True
  c.model = base.ml_collections.ConfigDict()
  c.model.name = "dit"
  c.model.size = "XL"          # hidden 1152, depth 28, 16 heads (Table 1)
  c.model.hidden_size = 0      # 0: from size; a positive value overrides it (also depth, num_heads)
  c.model.depth = 0
  c.model.num_heads = 0
  c.model.patch_size = 2
  c.model.dropout = 0.0
  c.model.learned_variance = False
  c.model.remat = False
  c.model.dtype = "bfloat16"
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
  c.sampling.num = 64
  return c
