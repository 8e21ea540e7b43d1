"""Progressive distillation (Salimans & Ho 2022) of the default Fashion-MNIST model.

The teacher is the workdir of ``python train.py`` (``runs/fashion_mnist``, flow matching): each round's
student starts from its teacher's EMA weights with the teacher's model and diffusion settings and learns
one DDIM step that matches two of the teacher's, with the truncated-SNR weighting (``jdiff.distillation``).
From 16 teacher steps down to 2 (three rounds, ``<workdir>/round_1..3``, each sampled with ``ddim`` on
``uniform_t``: ``sample.py --workdir=<workdir>/round_3`` draws in 2 steps). The paper's settings for
CIFAR-10 are 8192 teacher steps, 50k (then 25k) updates per round at batch 128, lr 1e-4 (their App. E).
"""
from configs import fashion_mnist


def get_config():
  c = fashion_mnist.get_config()
  c.training.objective = "progressive_distillation"
  c.distill.teacher_workdir = "runs/fashion_mnist"
  c.distill.teacher_steps = 16
  c.distill.student_steps = 2
  c.training.num_steps = 1000   # per round
  c.training.ema_decay = 0.999
  c.optim.lr = 2e-4
  c.optim.warmup_steps = 0
  c.sampling.sampler = "ddim"
  c.sampling.grid = "uniform_t"
  c.sampling.steps = 2
  return c
