"""Progressive distillation on CIFAR-10 with the settings of Salimans & Ho 2022 (App. E and their released
CIFAR-10 config): from 8192 DDIM steps of the teacher down to 1 (13 rounds, ``<workdir>/round_k``), 50k
updates per round at batch 128, Adam 5e-5 (they anneal it linearly to 0 in each round; here constant),
gradient clipping 1, no EMA, dropout 0, flips, truncated-SNR weighting.

The student takes the teacher's model and diffusion settings. The paper's teacher predicts x (or v) on
the cosine schedule, the stable choices for few-step students (their Sec. 4); train it with
``python train.py --config=configs/cifar10_ddpm.py --config.diffusion.schedule=cosine
--config.diffusion.parametrization=v --workdir=runs/cifar10_ddpm`` (an eps-prediction teacher gives an
eps student, unstable at 1-4 steps). Sized for an accelerator.
"""
from configs import cifar10_ddpm


def get_config():
  c = cifar10_ddpm.get_config()
  c.training.objective = "progressive_distillation"
  c.distill.teacher_workdir = "runs/cifar10_ddpm"
  c.distill.teacher_steps = 8192
  c.distill.student_steps = 1
  c.training.num_steps = 50_000   # per round
  c.training.ema_decay = 0.0
  c.model.dropout = 0.0
  c.optim.lr = 5e-5
  c.optim.warmup_steps = 0
  c.optim.grad_clip = 1.0
  c.sampling.sampler = "ddim"
  c.sampling.grid = "uniform_t"
  c.sampling.steps = 1
  return c
