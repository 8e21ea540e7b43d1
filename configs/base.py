"""The one base config every other config overrides (score_sde style). No logic beyond defaults.

Override any field from the command line: ``--config.optim.lr=1e-4``.
"""
import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "diffusion"         # or "classifier": a noise-conditional classifier for classifier guidance

  c.data = d = ml_collections.ConfigDict()
  d.name = "fashion_mnist"     # see jdiff.data.dataset_names()
  d.split = "train"
  d.batch_size = 64            # global batch, over all devices of all processes
  d.random_flip = False
  d.data_dir = ""              # TFDS data_dir ("" = TFDS default)
  d.download = False           # let TFDS download and prepare (needs internet and TensorFlow)
  d.image_size = 0             # resize TFDS images to this size (0 = native)
  d.kind = ""                  # the data kind the config is for (image | vector | points | signal | tokens); "" = any
  d.seq_length = 0             # text datasets: tokens per example (0 = the dataset's default, 128)

  c.model = m = ml_collections.ConfigDict()
  m.name = "unet"
  m.ch = 32
  m.ch_mult = (1, 2, 2)
  m.num_res_blocks = 1
  m.attn_resolutions = (14,)
  m.attn_positions = False     # fixed sin-cos positions in the attention blocks (captions naming places)
  m.dropout = 0.0
  m.embedding = "sinusoidal"   # or "fourier"
  m.learned_variance = False
  m.dtype = "float32"          # compute dtype; "bfloat16" on GPU/TPU (params, loss, EMA stay float32)

  c.diffusion = f = ml_collections.ConfigDict()
  f.process = "gaussian"       # gaussian | absorbing | uniform (categorical, for tokens: jdiff.categorical)
  f.schedule = "linear"        # jdiff.SCHEDULES (gaussian); jdiff.categorical.SCHEDULES (categorical)
  f.schedule_kwargs = ml_collections.ConfigDict()
  f.parametrization = "eps"    # eps | x0 | v | score | edm
  f.weighting = "simple"       # simple | snr | min_snr | edm
  f.time_sampling = "uniform"  # uniform | low_discrepancy | lognormal | logit_normal
  f.logit_mean = 0.0           # logit_normal: logit(t) ~ N(logit_mean, logit_std^2) (Esser et al. 2024)
  f.logit_std = 1.0
  f.sigma_data = 0.5
  f.loss = "elbo"              # categorical: elbo (continuous time, absorbing) | vlb (D3PM, discrete time)
  f.num_steps = 1000           # categorical vlb: the number of discrete steps T
  f.aux_weight = 0.0           # categorical vlb: weight of D3PM's auxiliary cross-entropy (lambda)

  c.optim = o = ml_collections.ConfigDict()
  o.optimizer = "adam"
  o.lr = 2e-4
  o.warmup_steps = 100
  o.decay = "constant"         # constant | cosine
  o.grad_clip = 1.0
  o.b1 = 0.9
  o.b2 = 0.999
  o.eps = 1e-8
  o.weight_decay = 0.0

  c.training = t = ml_collections.ConfigDict()
  t.num_steps = 10000
  t.ema_decay = 0.999
  t.ema_warmup = True          # decay min(ema_decay, (1+n)/(10+n)) after n updates
  t.ema_power = 0.0            # gamma > 0: power-function EMA (Karras et al. 2024), decay (1-1/n)^(gamma+1)
                               # at the n-th update, instead of ema_decay / ema_warmup
  # "denoising", "consistency_training" / "consistency_distillation" (with diffusion.parametrization=
  # "consistency"), "progressive_distillation" (see distill below), "reflow" / "reflow_distill" (see
  # reflow below)
  t.objective = "denoising"
  # Start from another run's EMA weights (its workdir), with its network (the model section is taken from
  # it): fine-tuning; for a consistency model (diffusion.parametrization="consistency") the network is
  # read as that run's denoiser under the boundary condition (consistency.base_*, set from its diffusion
  # section), as consistency distillation initialised from its teacher (configs/fashion_mnist_cd.py).
  t.init_from = ""
  t.log_every = 50
  t.ckpt_every = 1000
  t.sample_every = 1000
  t.keep_checkpoints = 3
  t.fallback_to_previous_checkpoint = False  # resume from an earlier checkpoint if the latest is damaged
  t.conditional = False        # class-conditional (labels from the dataset)
  t.cond_drop_prob = 0.1       # condition dropout to the null (label, caption), for classifier-free guidance
  t.text_conditional = False   # text-to-image: captions (or precomputed text embeddings) from the dataset
  # "pmap": data parallel, every device holds the whole state (the default). "fsdp": one jit step over
  # a (data, fsdp) device mesh, params/EMA/optimizer state sharded along fsdp (ZeRO-3), the batch split
  # along both axes (jdiff/training/sharded.py).
  t.parallelism = "pmap"
  t.mesh = (0, 0)              # fsdp only: (data, fsdp) sizes, data * fsdp = all devices; a 0 is
                               # inferred, (0, 0) = (processes, devices per process)

  # Improved consistency training (Song & Dhariwal 2023; jdiff.consistency), training.objective=
  # "consistency_training": the discretization curriculum N(k) = min(s0 2^floor(k/K'), s1) + 1 over the
  # run, log-normal noise levels, weighting 1/(sigma_{n+1} - sigma_n), pseudo-Huber metric.
  c.consistency = cc = ml_collections.ConfigDict()
  cc.s0 = 10
  cc.s1 = 1280
  cc.p_mean = -1.1
  cc.p_std = 2.0
  cc.weighting = "ict"         # ict | uniform
  cc.metric = "pseudo_huber"   # pseudo_huber | l2
  cc.huber_c = 0.0             # 0: 0.00054 sqrt(data dimensions)
  # The network as a denoiser of this schedule and parametrization ("": the raw network F of Song et al.
  # 2023, App. C); set by training.init_from from the run it starts from.
  cc.base_schedule = ""
  cc.base_parametrization = ""
  cc.base_schedule_kwargs = ml_collections.ConfigDict()

  # Distillation of a trained teacher (training.objective "consistency_distillation" or
  # "progressive_distillation"; jdiff.training.distill).
  c.distill = dd = ml_collections.ConfigDict()
  dd.teacher_workdir = ""      # the teacher's train.py workdir
  dd.teacher_step = 0          # its checkpoint (0: the newest)
  # Progressive distillation (Salimans & Ho 2022): the teacher's DDIM step count and the final student's;
  # a power-of-two ratio, one round (training.num_steps steps) per halving, chained in one command,
  # round k in <workdir>/round_k (student_steps 0: teacher_steps / 2, one round).
  dd.teacher_steps = 0
  dd.student_steps = 0
  # Consistency distillation (Song et al. 2023): N levels of the uniform-t grid on the edm schedule, the
  # target network's EMA decay mu, and the weighting (the metric is consistency.metric / huber_c).
  dd.num_levels = 18
  dd.target_ema = 0.95
  dd.weighting = "uniform"     # uniform | ict

  # Reflow (Liu et al. 2023; jdiff.reflow) of a flow-matching teacher (distill.teacher_workdir):
  # training.objective "reflow" retrains it on (noise, sample) pairs of its ODE, "reflow_distill" trains
  # on the same pairs at t = 1 only (a one-step model). The pairs are drawn once, before the first step,
  # into pairs_dir ("" = <workdir>/pairs), with the teacher's sampling settings unless set here (the
  # sampler must be deterministic: an ODE solver). Their noise is fold_in(PRNGKey(seed), i): keep the seed
  # apart from the sampling/eval seeds, or the student is scored on the noise it was trained on.
  c.reflow = rf = ml_collections.ConfigDict()
  rf.num_pairs = 10000
  rf.sampler = ""
  rf.steps = 0
  rf.grid = ""
  rf.seed = 1000
  rf.batch_size = 250          # pairs per sampling call
  rf.pairs_dir = ""
  rf.time_sampling = ""        # "" = the teacher's diffusion.time_sampling (Liu et al. 2023: uniform)

  # Super-resolution stage of a cascade (Ho et al. 2022; jdiff.conditions.LowRes): the model refines the
  # factor x factor average pool of its data, noised by the forward process at a level drawn in
  # [0, max_level] in training (noise-conditioning augmentation) and fixed to `level` when sampling.
  c.super_res = sr = ml_collections.ConfigDict()
  sr.factor = 0                # 0: not a super-resolution model; 2: e.g. 14x14 -> 28x28
  sr.max_level = 0.5
  sr.level = 0.1

  c.sampling = s = ml_collections.ConfigDict()
  s.sampler = "dpmpp_2m"
  s.steps = 20
  # Measured (bench/README.md, `sampler_accuracy.py --grids`): on the linear schedule uniform_logsnr is
  # the best built-in grid for data of scale below ~0.75 (images in [-1, 1]: about 0.5-0.7), 2.9x
  # closer to the exact ODE solution than uniform_t with dpmpp_2m at 20 steps at scale 0.65; uniform_t is
  # best above ~0.8 and on the cosine schedule at scales 0.3-1.2 (configs/toy2d.py).
  s.grid = "uniform_logsnr"
  s.num = 64
  s.clip_x0 = True             # clip x0_hat to [-1, 1] at every step (image data only)
  s.prompts = ()               # text-to-image: the prompts of the training grids and of sample.py by default
  s.guidance = 0.0             # classifier-free guidance scale of the training grids (0: none)
  # Sampler hyperparameters by sampler name, e.g. `s.hparams.heun = ConfigDict({"S_churn": 10.0})`:
  # used whenever that sampler samples this model (train-time grids, sample.py, eval.py, whichever sampler
  # is asked for); --hparam=name=value overrides one.
  s.hparams = ml_collections.ConfigDict()

  # Periodic evaluation of EMA samples in the Fashion-MNIST feature space (jdiff.eval.report):
  # FD, KID, precision, recall (+ classifier accuracy for conditional models) and their floors, into
  # metrics.jsonl and TensorBoard as eval/*. Fashion-MNIST (28x28x1) only.
  c.eval = e = ml_collections.ConfigDict()
  e.every = 0                  # evaluate every K steps and at the last step (0 = off)
  e.num_samples = 1000         # N samples (>= 4; FD of 128-D features wants N in the thousands)
  e.sampler = ""               # "" = sampling.sampler
  e.steps = 0                  # 0 = sampling.steps
  e.batch_size = 250           # samples per jitted call
  e.seed = 0                   # sample i's noise: fold_in(PRNGKey(seed), i), the same at every eval
  return c
