"""Reflow (Liu et al. 2023, "Flow straight and fast") of the default Fashion-MNIST flow model.

The teacher is the workdir of ``python train.py`` (``runs/fashion_mnist``, flow matching). Before the first
step the run draws ``reflow.num_pairs`` (noise, sample) pairs with the teacher's ODE sampler (UniPC, 10
steps) into ``<workdir>/pairs``; the student starts from the teacher's EMA weights and is trained by the
flow-matching loss on the coupled pairs (``jdiff.reflow``), with uniform t as in the paper. Its straighter
paths are sampled with a few Euler steps (``sample.py --steps=1|2|4``). ``configs/fashion_mnist_reflow_distill.py``
then distills it to one step. The paper's CIFAR-10 settings are in ``configs/cifar10_reflow.py``.
"""
from configs import fashion_mnist


def get_config():
  c = fashion_mnist.get_config()
  c.training.objective = "reflow"
  c.distill.teacher_workdir = "runs/fashion_mnist"
  c.reflow.num_pairs = 10000
  c.reflow.time_sampling = "uniform"
  c.reflow.sampler, c.reflow.steps, c.reflow.grid = "unipc", 10, "uniform_t"  # an ODE solver, not the
  #                                                           teacher's default sampler (Heun with churn)
  c.training.num_steps = 2000
  c.training.ema_decay = 0.999
  c.optim.lr = 2e-4
  c.optim.warmup_steps = 0
  c.sampling.sampler = "euler"
  c.sampling.grid = "uniform_t"
  c.sampling.steps = 2
  return c
