"""Class-conditional ImageNet 64x64 (TFDS ``imagenet_resized/64x64``, 1000 classes) with DiT-XL/2
(Peebles & Xie 2023; 675M parameters, 1024 tokens of 2x2x3 pixels), for accelerators: bfloat16
compute (parameters, optimizer state, EMA and loss stay float32), flow matching with velocity
prediction and logit-normal time sampling (Lipman et al. 2023; Esser et al. 2024), label dropout 0.1
for classifier-free guidance; the paper's AdamW at a constant 1e-4, no weight decay, batch 256, EMA
0.9999.

Prepare the data once (needs TensorFlow and internet): ``tfds build imagenet_resized/64x64
--file_format=array_record`` (or ``--config.data.download=True``); reading needs neither. With
little accelerator memory add ``--config.model.remat=True`` (one block's activations kept at a time).
"""
from configs import cifar10_dit


def get_config():
  c = cifar10_dit.get_config()  # the same DiT recipe (flow matching, AdamW 1e-4, EMA 0.9999, CFG dropout)
  c.data.name = "imagenet_resized/64x64"
  c.model.size = "XL"          # hidden 1152, depth 28, 16 heads (Table 1)
  c.model.dtype = "bfloat16"
  c.sampling.num = 64
  return c
