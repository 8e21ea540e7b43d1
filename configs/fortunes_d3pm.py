"""Text by D3PM (Austin et al. 2021): the uniform categorical process in 1000 discrete steps on the
characters of the Debian package ``fortunes``.

Each step replaces a character by a uniformly random one with probability ``beta_t``; the cumulative
``alpha(t)`` follows the cosine schedule (``jdiff.categorical``, ``alpha = cos(pi t / 2)``; Austin et al.
use the cosine schedule of Nichol & Dhariwal 2021 for the uniform process). The loss is D3PM's
variational bound ``L_vb`` (one random step per example, an unbiased estimate) plus ``lambda = 0.01``
times the auxiliary cross-entropy of the clean characters (Austin et al. 2021, Sec. 3.4). The network,
data and optimizer are those of ``configs/fortunes_mdlm.py``; sampling is ancestral, ``p(x_s | x_t)``
on a uniform grid of 250 steps (the x0-parametrization allows skipping steps).

``python train.py --config=configs/fortunes_d3pm.py --workdir=runs/fortunes_d3pm``.
"""
from configs import fortunes_mdlm


def get_config():
  c = fortunes_mdlm.get_config()
  c.diffusion.process = "uniform"
  c.diffusion.schedule = "cosine"
  c.diffusion.loss = "vlb"
  c.diffusion.num_steps = 1000
  c.diffusion.aux_weight = 0.01
  c.diffusion.time_sampling = "uniform"
  c.sampling.sampler = "ancestral"
  c.sampling.steps = 250
  return c
