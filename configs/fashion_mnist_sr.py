"""The super-resolution stage of a cascade (Ho et al. 2022, "Cascaded diffusion models"; Saharia et al.
2022, Imagen): a U-Net that turns a 14x14 Fashion-MNIST image into a 28x28 one. It reads the 2x2
average pool of each training image, noised by the forward process at a level drawn uniformly in
[0, super_res.max_level] (noise-conditioning augmentation; the level is an input of the model), through
its own input convolution (jdiff.models.UNet, ``low_res_channels``), and is sampled at the level
``super_res.level`` (``sample.py --sr_level``).

The base of the cascade is the text model at 14x14 (``configs/fashion_mnist_text.py:14``):

  python train.py --config=configs/fashion_mnist_text.py:14 --workdir=runs/fashion_mnist_text14
  python train.py --config=configs/fashion_mnist_sr.py --workdir=runs/fashion_mnist_sr
  python sample.py --workdir=runs/fashion_mnist_text14 --sr_workdir=runs/fashion_mnist_sr \\
      --prompt="a sneaker" --prompt="a bag" --guidance=3
"""
from configs import fashion_mnist


def get_config():
  c = fashion_mnist.get_config()
  c.data.name = "fashion_mnist"
  c.super_res.factor = 2
  c.super_res.max_level = 0.5
  c.super_res.level = 0.1
  c.training.conditional = False  # conditioned on the low-resolution image only
  c.training.cond_drop_prob = 0.0  # the low-resolution image is never dropped
  c.sampling.sampler, c.sampling.steps = "unipc", 10  # as measured (README, "Text to image")
  c.training.num_steps = 1500  # as measured (bench/README.md, text_to_image.py); the default has 2000
  return c
