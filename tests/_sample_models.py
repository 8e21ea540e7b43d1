"""Tiny models written as train.py workdirs (config.json + an orbax checkpoint) for the sampling tests.

``write_workdir`` saves what ``jdiff.training.loop.train`` saves (the same ``Checkpointer``, metadata and
``config.json``) without running training steps: the parameters are the initial ones plus small random
perturbations, different for the raw and the EMA copy, so that outputs are non-zero and ``--raw``
differs from the default EMA. Sampling does not care whether weights were trained; tests that need the
real training path call ``loop.train`` themselves.
"""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

TINY_UNET = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(14,))


def unet_config(conditional=True, cond_drop_prob=0.1, parametrization="v", schedule="linear"):
  from configs import fashion_mnist
  c = fashion_mnist.get_config()
  for k, v in TINY_UNET.items():
    c.model[k] = v
  c.training.conditional = conditional
  c.training.cond_drop_prob = cond_drop_prob
  c.diffusion.parametrization = parametrization
  c.diffusion.schedule = schedule
  c.sampling.sampler = "ddpm"
  c.sampling.steps = 4
  return c


def mlp_config(parametrization="eps"):
  from configs import toy2d
  c = toy2d.get_config()
  c.model.features = 32
  c.model.num_blocks = 1
  c.diffusion.parametrization = parametrization
  c.sampling.steps = 8
  return c


def _perturb(tree, seed, scale):
  rng = np.random.default_rng(seed)  # numpy: eager jax.random would compile once per leaf shape
  return jax.tree_util.tree_map(
      lambda l: (np.asarray(l) + scale * rng.standard_normal(np.shape(l))).astype(np.float32), tree)


def write_workdir(workdir, config, data_shape, num_classes, step=3, scale=0.05, text=None):
  from jdiff.experiment import builder, checkpoint
  from jdiff.experiment.state import make_optimizer
  os.makedirs(workdir, exist_ok=True)
  model = builder.build_model(config, data_shape, num_classes, text=text)
  state = model.init_state(make_optimizer(config.optim, config.training.num_steps))
  state = state.replace(step=jnp.int32(step),
                        params=_perturb(state.params, 1, scale),
                        ema_params=_perturb(state.params, 2, scale))
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  ckpt = checkpoint.Checkpointer(workdir, 3)
  ckpt.save(step, state, {"position": 0}, model.meta(state))
  ckpt.close()
  return workdir
