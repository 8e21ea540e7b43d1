"""One-step distillation of the reflowed CIFAR-10 flow (Liu et al. 2023, Sec. 2.3): pairs drawn from
``runs/cifar10_reflow`` (the 2-rectified flow) with the adaptive ODE solver, trained only at t = 1 (the
paper's ``t0`` schedule, with LPIPS; LPIPS needs a pretrained network that cannot be downloaded here, so
this is the squared error). Sampled with one Euler step."""
from configs import cifar10_reflow


def get_config():
  c = cifar10_reflow.get_config()
  c.training.objective = "reflow_distill"
  c.distill.teacher_workdir = "runs/cifar10_reflow"
  c.reflow.sampler = "ode"
  c.sampling.steps = 1
  return c
