"""Improved consistency training on CIFAR-10 with the settings of Song & Dhariwal 2023 (Sec. 5 and App.):
EDM noise levels in [0.002, 80], the discretization curriculum from s0 = 10 to s1 = 1280 levels,
log-normal level sampling (P_mean -1.1, P_std 2.0), the 1 / (sigma_{n+1} - sigma_n) weighting, the
pseudo-Huber metric with c = 0.00054 sqrt(3072) = 0.03, no EMA target network, dropout 0.3, Adam 1e-4,
batch 1024, 400k iterations, EMA 0.99993 of the weights for sampling; 1- and 2-step sampling (levels 80
and 0.821). Their network is NCSN++; here the DDPM U-Net. Sized for an accelerator."""
from configs import cifar10_ddpm


def get_config():
  c = cifar10_ddpm.get_config()
  c.diffusion.schedule = "edm"
  c.diffusion.parametrization = "consistency"
  c.diffusion.sigma_data = 0.5
  c.model.embedding = "fourier"
  c.model.dropout = 0.3
  c.training.objective = "consistency_training"
  c.consistency.s0 = 10
  c.consistency.s1 = 1280
  c.consistency.p_mean = -1.1
  c.consistency.p_std = 2.0
  c.consistency.weighting = "ict"
  c.consistency.metric = "pseudo_huber"
  c.consistency.huber_c = 0.03
  c.data.batch_size = 1024
  c.training.num_steps = 400_000
  c.training.ema_decay = 0.99993
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 0
  c.sampling.sampler = "consistency"
  c.sampling.grid = "consistency"
  c.sampling.steps = 2
  return c
