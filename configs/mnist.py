"""MNIST through TFDS (needs the prepared `mnist` TFDS dataset, or --config.data.download=True online)."""
from configs import fashion_mnist


def get_config():
  c = fashion_mnist.get_config()
  c.data.name = "mnist"
  return c
