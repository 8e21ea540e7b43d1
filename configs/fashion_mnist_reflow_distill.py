"""One-step distillation of the reflowed Fashion-MNIST model (Liu et al. 2023, Sec. 2.3).

The teacher is the workdir of ``configs/fashion_mnist_reflow.py`` (``runs/fashion_mnist_reflow``): the run
draws (noise, sample) pairs with its Euler sampler, and the student (starting from its weights) learns
``x0_hat(noise, t = 1) = sample`` (the flow loss at t = 1 only; the paper uses LPIPS, here the squared
error). ``sample.py`` draws with one Euler step.
"""
from configs import fashion_mnist_reflow


def get_config():
  c = fashion_mnist_reflow.get_config()
  c.training.objective = "reflow_distill"
  c.distill.teacher_workdir = "runs/fashion_mnist_reflow"
  c.reflow.sampler = "euler"
  c.reflow.steps = 8
  c.reflow.grid = "uniform_t"
  c.sampling.steps = 1
  return c
