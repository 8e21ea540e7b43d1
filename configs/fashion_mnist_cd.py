"""Consistency distillation (Song et al. 2023, Alg. 2) of the default Fashion-MNIST model.

The teacher is the workdir of ``python train.py`` (``runs/fashion_mnist``, flow matching; read on the VE
process by ``jdiff.consistency.ve_denoiser``). The student is a consistency model on the EDM noise levels
that starts from the teacher's network and weights (``training.init_from``, as the paper's code starts
its student from the teacher): the network is read as the teacher's flow denoiser under the boundary
condition (``jdiff.consistency.precondition_over``), so at step 0 it is the teacher's one-step
denoiser. It is trained on a grid of N = 18 levels with one Heun step of the teacher per example, an EMA
target network (mu = 0.95) and the pseudo-Huber metric; sampled with the multistep consistency sampler in
2 steps (levels 80 and 0.821; ``--steps=1`` for one).
"""
from configs import fashion_mnist_ict


def get_config():
  c = fashion_mnist_ict.get_config()  # the same consistency model, sampler and grid
  c.training.objective = "consistency_distillation"
  c.distill.teacher_workdir = "runs/fashion_mnist"
  c.training.init_from = "runs/fashion_mnist"
  c.distill.num_levels = 18
  c.distill.target_ema = 0.95
  c.training.num_steps = 3000
  c.optim.lr = 1e-4  # from the teacher's weights: a fine-tuning rate
  return c
