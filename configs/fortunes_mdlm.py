"""Text by masked diffusion: a character-level masked diffusion language model (MDLM, Sahoo et al. 2024;
Shi et al. 2024) on the Debian package ``fortunes``, the default text config.

The absorbing (masking) process with the linear schedule ``alpha(t) = 1 - t`` (each character is masked
with probability ``t``), trained on the continuous-time ELBO (``jdiff.categorical.masked_elbo``, with
low-discrepancy times over the batch) by a bidirectional transformer over 128-character chunks
(``jdiff.models.TokenTransformer``: adaLN-Zero DiT blocks without patches). The character vocabulary is
fitted on the training split and saved in the checkpoint. Sampling reveals masked characters by
ancestral sampling of ``p(x_s | x_t)`` on a uniform grid of ``sampling.steps`` (fewer steps than
characters are allowed; ``--sampler=unmask`` reveals an exact count per step).

``python train.py --config=configs/fortunes_mdlm.py --workdir=runs/fortunes_mdlm``;
``python sample.py --workdir=runs/fortunes_mdlm --num=8 --prefix="The "``;
``python eval.py --workdir=runs/fortunes_mdlm --num=256 --bpd`` (held-out bits per character and the
sample statistics; ``bench/text_diffusion.py`` adds the n-gram baseline).
"""
from configs import base


def get_config():
  c = base.get_base_config()
  c.data.name = "fortunes"
  c.data.kind = "tokens"
  c.data.seq_length = 128
  c.data.batch_size = 64
  c.model = base.ml_collections.ConfigDict()
  c.model.name = "token_transformer"
  c.model.hidden_size = 128       # 1.3M parameters: about compute-optimal for a 30-minute CPU budget
  c.model.depth = 4
  c.model.num_heads = 4
  c.model.dropout = 0.0
  c.diffusion.process = "absorbing"
  c.diffusion.schedule = "linear"
  c.diffusion.parametrization = "x0"
  c.diffusion.loss = "elbo"
  c.diffusion.time_sampling = "low_discrepancy"
  c.optim.optimizer = "adamw"
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 100
  c.optim.decay = "cosine"
  c.optim.weight_decay = 0.01
  c.training.num_steps = 1000      # ~1.5 s per step of 64 x 128 characters on 2 CPU cores: 24.6 minutes
  c.training.ema_decay = 0.99
  c.training.ckpt_every = 500
  c.training.sample_every = 1000
  c.sampling.sampler = "ancestral"
  c.sampling.steps = 128
  c.sampling.grid = "uniform_t"
  c.sampling.clip_x0 = False
  c.sampling.num = 16
  return c
