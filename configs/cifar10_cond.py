"""Class-conditional CIFAR-10: the DDPM CIFAR-10 setup (configs/cifar10_ddpm.py) with the UNet's label
embedding and label dropout 0.1 to the null label for classifier-free guidance (Ho & Salimans 2022),
sampled with DPM-Solver++ 2M in 25 steps by default."""
from configs import cifar10_ddpm


def get_config():
  c = cifar10_ddpm.get_config()
  c.training.conditional = True
  c.training.cond_drop_prob = 0.1
  c.sampling.sampler = "dpmpp_2m"
  c.sampling.steps = 25
  c.sampling.grid = "uniform_logsnr"
  return c
