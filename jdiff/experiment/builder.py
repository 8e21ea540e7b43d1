"""The model a config describes: network, schedule, parametrization and conditions, built from the
config, the data shape and the number of classes, without touching the dataset (so ``sample.py`` builds
it from a workdir's ``config.json`` and the checkpoint's metadata, and ``train.py`` from its data).
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jdiff import categorical
from jdiff import conditions as conditions_lib
from jdiff import consistency
from jdiff import models
from jdiff import parametrization
from jdiff import schedules
from jdiff.data import captions
from jdiff.data import sources as data_sources
from jdiff.experiment import checkpoint as ckpt_lib
from jdiff.experiment import config as config_lib
from jdiff.experiment.state import TrainState, create_state
from jdiff.schedules import Schedule


def make_model_fn(apply: Callable, schedule: Schedule, parametrization_name: str,
                  sigma_data: float = 0.5, base: Optional[tuple] = None):
  """Returns ``(model_fn_factory, core_parametrization)``.

  ``model_fn_factory(rng, train)`` gives ``fn(params, x, t, cond)`` for the core; with
  ``parametrization_name == 'edm'`` the network is wrapped in EDM preconditioning (Karras et al. 2022,
  Table 1), with ``'consistency'`` in the boundary-condition parametrization of a consistency model
  (Song et al. 2023, App. C; ``jdiff.consistency.precondition``); both are read as ``x0`` models.
  ``base = (schedule, parametrization)`` (consistency only): the network is a denoiser of that schedule
  and parametrization, read on the VE process (``consistency.ve_denoiser``) under the boundary condition
  (``consistency.precondition_over``), so that it can start from a trained diffusion model's weights.
  """
  if base is not None and parametrization_name != "consistency":
    raise ValueError("a base denoiser (consistency.base_schedule) is for the consistency "
                     "parametrization only")

  def factory(rng: Optional[jax.Array], train: bool):
    def raw(params, x, t, cond):
      return apply(params, x, t, cond, rng=rng, train=train)
    if parametrization_name == "edm":
      return parametrization.edm_precondition(raw, schedule, sigma_data)
    if parametrization_name == "consistency" and base is not None:
      base_schedule, base_param = base

      inner, inner_param = raw, base_param
      if base_param == "edm":  # an EDM-preconditioned network is an x0 model
        inner, inner_param = parametrization.edm_precondition(raw, base_schedule, sigma_data), "x0"

      def base_x0(params, x, sigma, cond):
        d = parametrization.make_denoiser(inner, params, base_schedule, inner_param, cond)
        return consistency.ve_denoiser(d, base_schedule)(x, sigma)
      return consistency.precondition_over(base_x0, schedule, sigma_data)
    if parametrization_name == "consistency":
      return consistency.precondition(raw, schedule, sigma_data)
    return raw

  core = "x0" if parametrization_name in ("edm", "consistency") else parametrization_name
  if parametrization_name == "consistency":
    consistency.check_schedule(schedule)
  elif parametrization_name != "edm":
    parametrization.check_parametrization(parametrization_name)
  return factory, core


class Model:
  """Network, schedule, parametrization and conditions built from a config, the data shape and the
  number of classes (see the module docstring). A categorical model (``diffusion.process`` absorbing or
  uniform) is built for the token vocabulary ``vocab`` (a string, one character per token): its
  ``process`` (``jdiff.categorical``) replaces the ``schedule`` (``None``), and its network reads token
  ids and gives logits over the vocabulary."""

  def __init__(self, config: ml_collections.ConfigDict, data_shape, num_classes: int,
               vocab: Optional[str] = None, text: Optional[dict] = None):
    c = self.config = config
    self.data_shape = tuple(int(d) for d in data_shape)
    # image, vector, points, signal or tokens: how samples are drawn, written and scored
    self.data_kind = data_sources.kind_of(c.data.name, self.data_shape)
    self.num_classes = int(num_classes)
    self.task = config_lib.task_of(c)  # "diffusion", or "classifier": num_classes are its logits
    model_kwargs = {k: v for k, v in c.model.items() if k != "name"}
    self.vocab, self.process, self.schedule, self.consistency_base = vocab, None, None, None
    if config_lib.is_categorical(c):
      if not vocab or len(self.data_shape) != 1:
        raise ValueError(f"diffusion.process={config_lib.process_of(c)!r} models token sequences: it "
                         f"needs a text dataset (a vocabulary and examples of shape [length]), got "
                         f"{'no vocabulary' if not vocab else 'examples of shape ' + str(self.data_shape)}")
      self.process = categorical.get_process(config_lib.process_of(c), len(vocab), c.diffusion.schedule)
      self.data_kind = "tokens"
      model_kwargs.update(vocab_size=self.process.input_vocab, num_outputs=len(vocab))
    # Text conditioning (text-to-image): captions through the model's own encoder, or precomputed
    # embeddings; ``text`` is what the checkpoint's meta records (``text_spec``).
    self.text, self.tokenizer, cond_text = text, None, None
    if text:
      model_kwargs.update(text_length=int(text["length"]))
      if "dim" in text:
        model_kwargs.update(text_embed_dim=int(text["dim"]))
        cond_text = {"length": int(text["length"]), "dim": int(text["dim"])}
      else:
        self.tokenizer = captions.WordTokenizer.from_json(text["tokenizer"])
        length = int(text["length"])
        model_kwargs.update(text_vocab_size=self.tokenizer.vocab_size)
        encode = lambda texts: self.tokenizer.encode_batch(texts, length)
        prompts = tuple(c.sampling.get("prompts", ()) or ())
        cond_text = {"length": length, "vocab_size": self.tokenizer.vocab_size, "encode": encode,
                     "defaults": encode(list(prompts)) if prompts else None,
                     "decode": self.tokenizer.decode}
    if self.process is None:
      self.schedule = schedules.get_schedule(c.diffusion.schedule, **dict(c.diffusion.schedule_kwargs))
      self.consistency_base = consistency_base(c)
    self.low_res = low_res_spec(c, self.data_shape, self.schedule)
    if self.low_res:
      model_kwargs.update(low_res_channels=self.data_shape[-1])
    self.module = models.create(c.model.name, num_classes=self.num_classes, **model_kwargs)
    self.init_fn, self.apply_fn = models.functional(self.module)
    self.learned_variance = bool(c.model.get("learned_variance", False))
    # What the denoiser is conditioned on (a classifier reads no condition: it predicts the label).
    self.conditions = (conditions_lib.for_model(self.num_classes, cond_text, self.low_res)
                       if self.task == "diffusion" else conditions_lib.Conditions())

  def init_params(self):
    x = jnp.zeros((1,) + self.data_shape, jnp.int32 if self.process is not None else jnp.float32)
    cond = self.conditions.placeholder(1)
    return self.init_fn(jax.random.PRNGKey(self.config.seed), x, jnp.zeros((1,), jnp.float32), cond)

  def init_state(self, optimizer, params=None) -> TrainState:
    """A fresh state (``params``: start from these, e.g. a distillation teacher's)."""
    with_target = self.config.training.get("objective", "denoising") == "consistency_distillation"
    params = self.init_params() if params is None else params
    return create_state(params, optimizer, self.config.seed + 1, with_target)

  def meta(self, state: TrainState) -> dict:
    c = self.config
    meta = {"params": ckpt_lib.param_signature(state.params), "model": c.model.name,
            "data_shape": list(self.data_shape), "num_classes": self.num_classes,
            "parametrization": c.diffusion.parametrization, "schedule": c.diffusion.schedule}
    if self.task != "diffusion":  # diffusion checkpoints predate the field: no "task" means diffusion
      meta["task"] = self.task
    if self.process is not None:  # the tokenizer is saved with the model
      meta.update(process=self.process.kind, vocab=self.vocab)
    if self.text:  # so is a text-to-image model's caption tokenizer (or its embedding shape)
      meta["text"] = self.text
    return meta

  def model_fn(self):
    """``(fn(params, x, t, cond), parametrization)`` for sampling (no dropout); for a classifier
    ``(fn(params, x, t) -> logits, "logits")``."""
    if self.task == "classifier":
      return (lambda params, x, t: self.apply_fn(params, x, t, None)), "logits"
    if self.process is not None:  # logits of the clean tokens p(x0 | x_t)
      return (lambda params, x, t, cond: self.apply_fn(params, x, t, cond)), "logits"
    factory, core = make_model_fn(self.apply_fn, self.schedule, self.config.diffusion.parametrization,
                                  self.config.diffusion.sigma_data, self.consistency_base)
    return factory(None, False), core


def consistency_base(config: ml_collections.ConfigDict) -> Optional[tuple]:
  """``(schedule, parametrization)`` of ``config.consistency.base_schedule`` /
  ``base_parametrization`` (a consistency model over a denoiser of that kind), or ``None``."""
  cc = config.get("consistency", None)
  if cc is None or not cc.get("base_schedule", ""):
    return None
  base_param = cc.get("base_parametrization", "") or "eps"
  if base_param != "edm":
    parametrization.check_parametrization(base_param)
  return (schedules.get_schedule(cc.base_schedule, **dict(cc.get("base_schedule_kwargs", None) or {})),
          base_param)


def low_res_spec(config: ml_collections.ConfigDict, data_shape, schedule) -> Optional[dict]:
  """The ``LowRes`` condition of a super-resolution model (``config.super_res.factor`` > 0), else
  ``None``: images ``[H, W, C]`` refined from their ``factor``-times average pool."""
  sr = config.get("super_res", None)
  factor = int(sr.get("factor", 0)) if sr is not None else 0
  if not factor:
    return None
  if factor < 2:
    raise ValueError(f"super_res.factor must be 0 (off) or an integer >= 2, got {factor}")
  if schedule is None or len(data_shape) != 3 or config.model.name != "unet":
    raise ValueError("a super-resolution model (super_res.factor > 0) is a Gaussian U-Net on images "
                     "[H, W, C]: set model.name='unet' and an image dataset, or super_res.factor=0")
  h, w, ch = data_shape
  if h % factor or w % factor:
    raise ValueError(f"super_res.factor={factor} must divide the image size {h}x{w}")
  return {"shape": (h // factor, w // factor, ch), "factor": factor, "schedule": schedule,
          "max_level": float(sr.max_level), "level": float(sr.level)}


def text_spec(source) -> dict:
  """What a text-conditional model needs to know of its data (saved in the checkpoint's meta):
  ``{"tokenizer": json, "length": L}`` for captions as token ids (a source with a ``tokenizer`` and a
  ``caption`` field), or ``{"length": L, "dim": D}`` for precomputed embeddings (``text_emb`` and
  ``text_mask`` fields)."""
  extras = tuple(getattr(source, "extras", ()))
  if "caption" in extras and getattr(source, "tokenizer", None) is not None:
    return {"tokenizer": source.tokenizer.to_json(), "length": int(source.extra_shape("caption")[0])}
  if "text_emb" in extras and "text_mask" in extras:
    length, dim = source.extra_shape("text_emb")
    if tuple(source.extra_shape("text_mask")) != (length,):
      raise ValueError(f"dataset {source.name!r}: text_mask must have shape [N, {length}] like "
                       f"text_emb [N, {length}, {dim}]")
    return {"length": int(length), "dim": int(dim)}
  raise ValueError(f"training.text_conditional=True but dataset {source.name!r} has no captions: use "
                   f"a captioned dataset (fashion_mnist_captions, fashion_mnist_pairs) or one with "
                   f"text_emb and text_mask fields, or set --config.training.text_conditional=False")


def build_model(config: ml_collections.ConfigDict, data_shape, num_classes: int,
                vocab: Optional[str] = None, text: Optional[dict] = None) -> Model:
  """The network, schedule and parametrization of ``config`` for data of ``data_shape`` (no dataset;
  ``vocab``: the token vocabulary of a categorical model; ``text``: a text-conditional model's
  ``text_spec``)."""
  return Model(config, data_shape, num_classes, vocab, text)
