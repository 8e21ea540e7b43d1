"""Text-to-image compositions: two Fashion-MNIST items side by side on a 28x56 canvas, captioned with
the items and their places ("a bag to the left of a sneaker", "a sneaker to the right of a bag").
Ten ordered class pairs are never shown in training (``jdiff.data.captions``), to measure
compositional generalization: does "a dress to the left of a coat" come out right without a single
training canvas of that pair?

Same model as configs/fashion_mnist_text.py (joint attention between the U-Net's features and the
caption's tokens), with a fixed sin-cos embedding of each place added in the attention blocks
(``model.attn_positions``): the U-Net's convolutions are translation-equivariant, so without it a
query has no place of its own to match to "left" or "right" (stop 27's run with attention at 14x28 and
7x14 but no positions flattened at 0.14 caption accuracy while its FD kept falling). Attention at 7x14
only: 1.17 s per step on the 2-core CPU against 1.6 s when also attending at 14x28, so the 2300 steps
take about 45 minutes.

  python train.py --config=configs/fashion_mnist_compose.py --workdir=runs/fashion_mnist_compose
  python sample.py --workdir=runs/fashion_mnist_compose --prompt="a bag to the left of a sneaker" \\
      --guidance=3

``--config=configs/fashion_mnist_compose.py:dit`` trains configs/fashion_mnist_dit.py's DiT on the
canvas instead, with the same text encoder (bench/README.md compares the two at 45 minutes).
"""
from configs import fashion_mnist_dit, fashion_mnist_text

# The last one is a held-out pair (dress | coat): never a training canvas.
PROMPTS = ("a bag to the left of a sneaker", "a sandal to the right of a dress",
           "a t-shirt on the left and an ankle boot on the right", "a dress to the left of a coat")


def get_config(model: str = "unet"):
  """``model``: "unet" (default), or "dit" for configs/fashion_mnist_dit.py's DiT on the canvas (patch
  4: 7x14 tokens with their 2-D positions, the caption joined to every block's attention; 0.8 s per
  step, so the 45 minutes fit about 3000 steps), e.g. ``--config=configs/fashion_mnist_compose.py:dit``."""
  if model not in ("unet", "dit"):
    raise ValueError(f"configs/fashion_mnist_compose.py takes the model 'unet' (default) or 'dit', got {model!r}")
  c = fashion_mnist_text.get_config()
  c.data.name = "fashion_mnist_pairs"
  c.model.attn_resolutions = (7,)
  c.model.attn_positions = True
  c.training.num_steps = 2300
  c.sampling.prompts = PROMPTS
  c.sampling.num = 32
  if model == "dit":
    text = {k: c.model[k] for k in ("text_width", "text_layers", "text_heads")}
    d = fashion_mnist_dit.get_config()
    c.model, c.optim, c.diffusion = d.model, d.optim, d.diffusion
    for k, v in text.items():
      c.model[k] = v
    c.training.num_steps = 3000
    c.training.ema_decay = d.training.ema_decay
  return c
