"""A noise-conditional Fashion-MNIST classifier for classifier guidance (Dhariwal & Nichol 2021, Sec. 4).

The U-Net's downsampling half with global average pooling and 10 logits (``jdiff.models.NoisyClassifier``),
trained with cross-entropy on ``x_t`` at uniformly drawn ``t`` of the DDPM linear schedule; it guides
``runs/fashion_mnist`` (any schedule works: the classifier is queried at equal log-SNR). Same loop, checkpoints and resume as the diffusion models::

  python train.py --config=configs/fashion_mnist_classifier.py --workdir=runs/fashion_mnist_classifier
  python sample.py --workdir=runs/fashion_mnist --classifier=runs/fashion_mnist_classifier \\
      --classifier_scale=2 --labels=0,1,2,3,4,5,6,7,8,9
"""
import ml_collections

from configs import fashion_mnist


def get_config():
  c = fashion_mnist.get_config()
  c.task = "classifier"
  c.diffusion.schedule = "linear"   # the process it was measured with (bench/README.md), whatever the default
  c.diffusion.parametrization = "eps"
  c.diffusion.time_sampling = "uniform"
  c.model = ml_collections.ConfigDict(dict(
      name="classifier", ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
      dropout=0.0, embedding="sinusoidal", dtype="float32"))
  c.data.batch_size = 64
  c.training.num_steps = 6000
  c.training.conditional = False  # the classifier reads the labels as targets, not as a condition
  c.training.sample_every = 0     # nothing to sample
  c.training.ckpt_every = 500
  c.training.ema_decay = 0.999
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 100
  return c
