"""Text-to-image on single Fashion-MNIST items (GLIDE line, Nichol et al. 2022): the default model
(configs/fashion_mnist.py: flow matching, a small U-Net, UniPC) conditioned on a caption ("a photo of
an ankle boot") through a jointly trained text transformer, its pooled output added to the noise
embedding and its tokens joined to the U-Net's attention (joint attention). Captions are dropped to the
empty caption with probability 0.1, so one network gives the conditional and the unconditional model
for classifier-free guidance.

  python train.py --config=configs/fashion_mnist_text.py --workdir=runs/fashion_mnist_text
  python sample.py --workdir=runs/fashion_mnist_text --prompt="a sneaker" --prompt="a photo of a bag" \\
      --guidance=3

The caption grammar, the word tokenizer (saved with the model) and the data are in
``jdiff.data.captions``; the evaluation (caption accuracy with the project's Fashion-MNIST classifier)
is ``eval.py --captions``.
"""
from configs import fashion_mnist

PROMPTS = ("a t-shirt", "a trouser", "a pullover", "a dress", "a coat", "a sandal", "a shirt",
           "a sneaker", "a bag", "an ankle boot")


def get_config(size: str = ""):
  """``size``: "" for 28x28; "14" for the 14x14 base of a cascade (configs/fashion_mnist_sr.py), e.g.
  ``--config=configs/fashion_mnist_text.py:14``."""
  c = fashion_mnist.get_config()
  c.data.name = "fashion_mnist_captions"
  if size not in ("", "28", "14"):
    raise ValueError(f"configs/fashion_mnist_text.py takes the image size 28 (default) or 14, got {size!r}")
  c.training.conditional = False  # the caption is the condition (it names the class)
  c.training.text_conditional = True
  c.training.cond_drop_prob = 0.1
  c.model.text_width = 64      # the text transformer: width, blocks, heads
  c.model.text_layers = 2
  c.model.text_heads = 4
  c.model.attn_resolutions = (7,)
  c.sampling.prompts = PROMPTS
  c.sampling.guidance = 2.0
  c.sampling.sampler, c.sampling.steps = "unipc", 10  # as measured (README, "Text to image")
  c.training.num_steps = 3000  # as measured (bench/README.md, text_to_image.py); the default has 2000
  c.sampling.num = 60
  if size == "14":  # two levels: 14 -> 7
    c.data.image_size = 14
    c.model.ch_mult = (1, 2)
  return c
