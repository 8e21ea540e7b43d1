"""Class-conditional Fashion-MNIST: the default model (configs/fashion_mnist.py) with the UNet's label
embedding and label dropout to the null label (probability 0.1), so that one network gives both the
conditional and the unconditional denoiser for classifier-free guidance (Ho & Salimans 2022).

Sample with guidance: ``python sample.py --workdir=runs/fashion_mnist_cond --labels=0,1,2,3,4,5,6,7,8,9
--guidance=2``.
"""
from configs import fashion_mnist


def get_config():
  c = fashion_mnist.get_config()
  c.training.conditional = True
  c.training.cond_drop_prob = 0.1
  return c
