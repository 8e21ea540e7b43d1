"""The default: a small U-Net on Fashion-MNIST (28x28x1) trained by flow matching, sampled by Heun with churn.

Chosen by measurement (``bench/default_recipe.py``; bench/README.md, "Default recipe"): at equal training
time on a 2-core CPU, flow matching (the linear interpolant ``x_t = (1 - t) x0 + t eps`` with velocity
prediction, Lipman et al. 2023; Liu et al. 2023) with logit-normal times (Esser et al. 2024, Sec. 3.1)
gave the lowest FD at 10 and 20 NFE and at 50-step ancestral sampling, ahead of v-prediction on the
cosine schedule with min-SNR weighting, EDM, and the DDPM recipe (linear schedule, eps-prediction; now
``configs/fashion_mnist_ddpm.py``). The sampler, also of the train-time grids and ``eval.py``, is Heun
with churn (Karras et al. 2022, Alg. 2: before each step the noise level is raised by the factor
``1 + gamma``, ``gamma = min(S_churn / N, sqrt(2) - 1)``, by adding fresh noise) on the uniform-t grid, 6
steps = 10 NFE. Chosen on this model by FD at 10 and 20 NFE (``bench/quality_vs_nfe.py``; bench/README.md,
"Default recipe"): the ODE solvers' samples carry the model's errors to the end (UniPC, the most accurate
ODE solver of ``bench/sampler_accuracy.py``, was 2.9x the floor at 10 NFE and no better at 20), the churn's
fresh noise corrects part of them (2.2x at 10 NFE). Sample ``i`` stays a function of the seed and ``i``.

The model is class-conditional: the labels go through the U-Net's label embedding and are dropped to the
null label with probability 0.1, so one network is the conditional and the unconditional model
(classifier-free guidance, Ho & Salimans 2022; ``sample.py --guidance=W``). Measured against the same
recipe without labels (bench/README.md, "Default recipe"): at N = 2000 the FD at 10 NFE falls from 5.5x
to 2.9x the real-data floor, at no measurable cost in training speed. ``sample.py`` draws labels i % 10
unless ``--labels`` says otherwise.

``python train.py`` trains it for 2000 steps on 2 CPU cores (both used as JAX devices): 12.8 minutes at
the 86 images per second of 2026-12-04 (a day on which the 2500 steps of the previous default took 19.0
minutes at 72 images per second, before ``cli.tune_malloc`` kept XLA's per-step buffers from being
unmapped). The EMA samples (Heun with churn, seed 0, N = 2000): 2.4x the real-data floor at 10 NFE,
2.5x at 20; over seeds 0-2 2.9x by the means (README).
"""
from configs import base


def get_config():
  c = base.get_base_config()
  c.data.name = "fashion_mnist"
  c.data.batch_size = 32
  c.model.ch = 32
  c.model.ch_mult = (1, 2, 2)
  c.model.num_res_blocks = 1
  c.model.attn_resolutions = (7,)
  c.training.conditional = True   # class labels, dropped to the null label 10% of the time (CFG)
  c.training.cond_drop_prob = 0.1
  c.diffusion.schedule = "flow"
  c.diffusion.parametrization = "flow"
  c.diffusion.weighting = "simple"
  c.diffusion.time_sampling = "logit_normal"
  c.training.num_steps = 2000
  c.training.ema_decay = 0.999
  c.training.ckpt_every = 500
  c.training.sample_every = 500
  c.sampling.sampler = "heun"     # 6 steps = 10 NFE (1 on the first step from t = 1, 1 on the last)
  c.sampling.steps = 6
  c.sampling.grid = "uniform_t"
  c.sampling.hparams.heun = base.ml_collections.ConfigDict({"S_churn": 10.0})  # gamma = sqrt(2) - 1
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 200
  return c
