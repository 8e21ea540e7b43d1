"""Consistency distillation on CIFAR-10 with the settings of Song et al. 2023 (Sec. 6 and App. C): the
teacher an EDM model (``configs/cifar10_edm.py``, ``runs/cifar10_edm``), the student starting from its
network and weights (``training.init_from``, as their code does), N = 18 levels with one Heun step
of the teacher, the EMA target network with mu = 0.95, Adam 4e-4, batch 512, 800k iterations, EMA 0.9999
of the weights for sampling. Their best metric is LPIPS, which needs a pretrained network that cannot be
downloaded here: this config uses iCT's pseudo-Huber metric (c = 0.03) instead. Sampled in 1-2 steps.
Sized for an accelerator."""
from configs import cifar10_ict


def get_config():
  c = cifar10_ict.get_config()  # the same consistency model, metric, sampler and grid
  c.training.objective = "consistency_distillation"
  c.distill.teacher_workdir = "runs/cifar10_edm"
  c.training.init_from = "runs/cifar10_edm"
  c.distill.num_levels = 18
  c.distill.target_ema = 0.95
  c.distill.weighting = "uniform"
  c.model.dropout = 0.0
  c.data.batch_size = 512
  c.training.num_steps = 800_000
  c.training.ema_decay = 0.9999
  c.optim.lr = 4e-4
  return c
