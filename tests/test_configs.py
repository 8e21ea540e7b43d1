"""Every shipped config validates (names, ranges, the sampling grid) and builds its model abstractly."""
import importlib
import os

import jax
import pytest

from jdiff.experiment import builder, config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "configs"))
               if f.endswith(".py") and f not in ("__init__.py", "base.py"))


@pytest.mark.parametrize("name", NAMES)
def test_config_validates_and_builds(name):
  c = importlib.import_module(f"configs.{name}").get_config()
  config_lib.validate(c)
  shapes = {"mixture2d": (2,), "cifar10": (32, 32, 3), "imagenet64": (64, 64, 3), "mnist1d": (40, 1),
            "point_clouds": (512, 3)}
  shape = next((v for k, v in shapes.items() if k in c.data.name), (28, 28, 1))
  if c.data.get("image_size", 0):
    shape = (c.data.image_size, c.data.image_size, shape[-1])
  num_classes = {"imagenet64": 1000, "point_clouds": 6}.get(c.data.name, 10)
  labelled = c.training.get("conditional", False) or config_lib.task_of(c) == "classifier"
  vocab = None
  if config_lib.is_categorical(c):  # token models: a sequence length and a character vocabulary
    shape, vocab = (c.data.seq_length,), "".join(chr(i) for i in range(32, 127)) + "\n"
  model = builder.build_model(c, shape, num_classes if labelled else 0, vocab)
  params = jax.eval_shape(model.init_params)
  assert jax.tree_util.tree_leaves(params)


@pytest.mark.parametrize("name,arg", [("fashion_mnist_text", "14"), ("fashion_mnist_compose", "dit")])
def test_config_variants_validate_and_build(name, arg):
  """The ``--config=configs/NAME.py:ARG`` variants: the 14x14 cascade base, the DiT on the two-item canvas
  (its text encoder as the U-Net's; the canvas is 28x56, 7x14 tokens of patch 4)."""
  from jdiff.data import captions
  module = importlib.import_module(f"configs.{name}")
  c = module.get_config(arg)
  config_lib.validate(c)
  shape = (14, 14, 1) if arg == "14" else (28, 56, 1)
  text = {"tokenizer": captions.caption_tokenizer().to_json(), "length": captions.CAPTION_LENGTH}
  params = jax.eval_shape(builder.build_model(c, shape, 0, text=text).init_params)["params"]
  assert "text_encoder" in params, sorted(params)
  if arg == "dit":
    assert c.model.name == "dit" and c.model.text_width == module.get_config().model.text_width
    assert "context_kv" in params["block0"], sorted(params["block0"])
  with pytest.raises(ValueError, match="takes the"):
    module.get_config("nope")


@pytest.mark.parametrize("hparams,match", [
    ({"unipc": {"S_churn": 1.0}}, r"sampling.hparams.unipc: sampler 'unipc' has no hyperparameter\(s\) "
                                  r"S_churn"),
    ({"S_churn": 1.0}, r"sampling.hparams.S_churn: hyperparameters are grouped by sampler name"),
    ({"heun": {"S_churn": float("nan")}}, r"sampling.hparams.heun.S_churn must be a finite number")])
def test_sampler_hyperparameters_are_checked_with_the_config(hparams, match):
  import ml_collections
  c = importlib.import_module("configs.fashion_mnist").get_config()
  c.sampling.hparams = ml_collections.ConfigDict(hparams)
  with pytest.raises(ValueError, match=match):
    config_lib.validate(c)
