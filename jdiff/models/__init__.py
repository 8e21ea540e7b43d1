"""Flax denoisers for jdiff: a DDPM/DDPM++ U-Net, a Diffusion Transformer (DiT, Peebles & Xie 2023),
a residual MLP, a permutation-equivariant point-set denoiser (``PointNet``) and a bidirectional
transformer over token sequences for discrete diffusion (``TokenTransformer``), behind one functional
interface; plus ``NoisyClassifier`` (the U-Net's downsampling half with logits) for classifier guidance.
The U-Net and DiT also take text (GLIDE, Nichol et al. 2022: a jointly trained ``TextEncoder``, or
precomputed embeddings as in Imagen, Saharia et al. 2022) and the U-Net a low-resolution image
(super-resolution stage of a cascade, Ho et al. 2021).

Why Flax **Linen** (not NNX): a Linen module is a description, not a container of state.
``module.init(key, ...)`` returns the parameters as a plain pytree and ``module.apply(params, ...)`` is a
pure function of ``(params, inputs, rngs)``: exactly the ``fn(params, x_t, t, cond)`` denoiser interface
of jdiff's core, so it goes through ``jax.jit``, ``pmap``, ``vmap``, ``grad`` and ``lax.scan`` as is,
with no ``nnx.split``/``merge`` of graph state at every boundary. Parameters are a nested dict of
arrays that optax, EMA updates and orbax handle directly. Linen is fully supported (no deprecation
warnings) in flax 0.12.

Interface used by the rest of jdiff::

  model = jdiff.models.create("unet", ch=128, ch_mult=(1, 2, 2, 2), num_classes=10)
  model = jdiff.models.create("dit", size="B", patch_size=2, num_classes=10)   # DiT-B/2
  model = jdiff.models.create("token_transformer", vocab_size=28, num_outputs=27)  # 27 chars + mask
  model = jdiff.models.create("unet", text_vocab_size=40, text_length=16)       # GLIDE-style text
  model = jdiff.models.create("unet", low_res_channels=3, text_embed_dim=512)   # Imagen-style SR stage
  init, apply = jdiff.models.functional(model)
  params = init(key, x, t, cond)                  # {"params": ...}, also valid for model.apply
  out = apply(params, x, t, cond)                 # deterministic (dropout off)
  out = apply(params, x, t, cond, rng=k, train=True)   # dropout on

``x``: ``[B, H, W, C]`` (U-Net, DiT), ``[B, D]`` (MLP), ``[B, N, 3]`` (PointNet) or int token ids
``[B, L]`` (TokenTransformer, whose output is logits ``[B, L, num_outputs]``); ``t``: float ``[B]``
or a scalar (continuous time in [0, 1], or EDM's ``c_noise``); ``cond``: ``None``, bare int labels
``[B]``, or a dict of named conditions (``embeddings.prepare_cond``; the keys a model takes follow from
its fields, ``embeddings.cond_keys``, and any other key is an error):

* ``"label"``: int32 ``[B]`` (``num_classes > 0``; ``num_classes`` = NULL label);
* ``"caption"``: int32 ``[B, L]`` token ids, 0 = padding at the end, ``L <= text_length``
  (``text_vocab_size > 0``; an all-zero row is the null caption);
* ``"text_emb"`` float ``[B, L, text_embed_dim]`` with ``"text_mask"`` int/bool ``[B, L]`` (1 = real
  token) (``text_embed_dim > 0``; an all-zero mask row is the null caption);
* ``"low_res"`` float ``[B, h, w, low_res_channels]`` (h, w dividing H, W) with ``"low_res_t"``
  ``[B]`` in [0, 1], its noise-augmentation level (U-Net with ``low_res_channels > 0``; required).

A missing kind, or ``cond=None``, is the NULL label / null caption for every example. Initialise with a
complete ``cond`` (a super-resolution model needs ``low_res``); text and label parameters are created
whether or not the caption or label is given. Models never import jdiff's core (schedules, samplers;
only the shared input checks of ``jdiff._checks``): training glues them.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Callable, Tuple

import flax.linen as nn
import jax
import numpy as np

from jdiff import _checks
from jdiff.models.embeddings import (COND_KEYS, EMBEDDINGS, NoiseEmbedding, cond_keys, fourier_embedding,
                                     prepare_cond, prepare_labels, prepare_t, sinusoidal_embedding)
from jdiff.models.classifier import NoisyClassifier
from jdiff.models.dit import DiT
from jdiff.models.mlp import MLP
from jdiff.models.point_net import PointNet
from jdiff.models.text_encoder import TextEncoder
from jdiff.models.token_transformer import TokenTransformer
from jdiff.models.unet import UNet, num_groups

MODELS = {"unet": UNet, "dit": DiT, "mlp": MLP, "point_net": PointNet, "classifier": NoisyClassifier,
          "token_transformer": TokenTransformer}


def model_kwargs(cls) -> Tuple[str, ...]:
  """The configuration fields a model class accepts."""
  return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name"))


def create(name: str, **kwargs) -> nn.Module:
  """Build a denoiser by name (a key of ``MODELS``: ``"unet"``, ``"dit"``, ``"mlp"``, ...) from keyword
  configuration."""
  cls = MODELS[_checks.choice("model", name, MODELS)]
  valid = model_kwargs(cls)
  unknown = sorted(set(kwargs) - set(valid))
  if unknown:
    raise ValueError(f"unknown argument(s) {unknown} for model {name!r}; valid arguments are: "
                     f"{', '.join(valid)}")
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  return cls(**kwargs)


def count_params(params) -> int:
  """Total number of scalars in a parameter pytree (arrays or ``jax.ShapeDtypeStruct`` leaves)."""
  return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params)))


def _check_call(module, x, t, cond) -> None:
  """All input checks, before tracing (label, caption-id and ``low_res_t`` values are checked only here
  when ``apply`` is jitted)."""
  model = type(module).__name__
  module.check_input(x)
  prepare_t(t, x.shape[0], model)
  if not getattr(module, "takes_labels", True):  # a classifier predicts the label, it takes none
    if cond is not None:
      raise ValueError(f"{model} takes no label input (it predicts the label); pass cond=None")
    return
  prepare_cond(cond, x.shape[0], module, model, spatial=x.shape[1:-1] if x.ndim >= 3 else None)


def _check_params_fit(module, params, x) -> None:
  """The parameters were initialised for this input: its channels, or (token models, whose ids have no
  channel axis) the module's vocabulary."""
  expected = type(module).data_channels(params)
  if expected is None:  # token ids: the token table must have the module's vocab_size rows
    vocab = type(module).input_vocab(params)
    if vocab != module.vocab_size:
      raise ValueError(f"the parameters were initialised for vocab_size={vocab} but the model has "
                       f"vocab_size={module.vocab_size}; use the model they were made with or re-initialise")
  elif x.shape[-1] != expected:
    raise ValueError(f"x has {x.shape[-1]} channels (last axis) but the parameters were initialised "
                     f"for {expected}; pass x of shape [..., {expected}] or re-initialise")


def functional(module: nn.Module) -> Tuple[Callable, Callable]:
  """``(init, apply)`` pure functions for a denoiser module.

  ``init(key, x, t, cond=None) -> params`` (the Linen variables dict ``{"params": ...}``), jitted.
  ``apply(params, x, t, cond=None, *, rng=None, train=False) -> out``: dropout runs only with
  ``train=True`` and then needs ``rng`` (when the model has ``dropout > 0``). ``train`` must be a
  Python bool: under ``jax.jit`` mark it static (``static_argnames="train"``).
  """
  if not isinstance(module, (UNet, DiT, MLP, PointNet, NoisyClassifier, TokenTransformer)):
    raise ValueError(f"functional() expects a jdiff model (UNet, DiT, MLP, PointNet, NoisyClassifier or "
                     f"TokenTransformer, e.g. from jdiff.models.create), got {type(module).__name__}")

  def _init(key, x, t, cond):
    return module.init({"params": key}, x, t, cond, train=False)

  # The init program runs once and is almost all threefry random-number generation: compiled without
  # XLA backend optimisation it builds ~3x faster on CPU (measured ~15 s -> ~5 s for the DDPM CIFAR-10
  # U-Net on 2 cores), with the same random bits. JAX accepts compiler options only on a top-level jit,
  # so inside an outer trace (jit, pmap, eval_shape) the plain jit is used.
  init_top = jax.jit(_init, compiler_options={"xla_backend_optimization_level": 0})
  init_nested = jax.jit(_init)

  def init(key, x, t, cond=None):
    _check_call(module, x, t, cond)
    if not any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves((key, x, t, cond))):
      try:
        return init_top(key, x, t, cond)
      except ValueError as e:  # under an outer trace with concrete arguments
        if "compiler_options" not in str(e):
          raise
    return init_nested(key, x, t, cond)

  def apply(params, x, t, cond=None, *, rng=None, train=False):
    if not isinstance(train, (bool, np.bool_)):
      raise ValueError(f"train must be a Python bool, got {type(train).__name__}; under jax.jit pass "
                       f"static_argnames='train'")
    if not isinstance(params, Mapping) or "params" not in params:
      raise ValueError("params must be the dict returned by init (with a 'params' entry)")
    _check_call(module, x, t, cond)
    _check_params_fit(module, params, x)
    rngs = {}
    if train and module.dropout > 0:
      if rng is None:
        raise ValueError(f"train=True with dropout={module.dropout} needs a PRNG key: pass rng=key "
                         f"(or train=False for a deterministic forward)")
      rngs = {"dropout": rng}
    return module.apply(params, x, t, cond, train=bool(train), rngs=rngs)

  return init, apply


__all__ = ["COND_KEYS", "DiT", "EMBEDDINGS", "MLP", "MODELS", "NoiseEmbedding", "NoisyClassifier", "PointNet",
           "TextEncoder", "TokenTransformer", "UNet", "cond_keys", "count_params", "create",
           "fourier_embedding", "functional", "model_kwargs", "num_groups", "sinusoidal_embedding"]
