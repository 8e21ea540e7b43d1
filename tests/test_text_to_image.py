"""Text-to-image end to end: train.py on captioned Fashion-MNIST, sample.py --prompt (guidance, dynamic
thresholding, captions in the JSON and under the grid), bad prompts as one error line, sample i the same
at any batch size, the precomputed-embedding path and the super-resolution cascade."""
import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import _gaussian
import _sample_models as sm
from jdiff import generation
from jdiff.data import captions
from jdiff.generation import restore

REPO = _gaussian.REPO
TINY = ["--config.model.ch=8", "--config.model.ch_mult=(1,)", "--config.model.attn_resolutions=()",
        "--config.model.text_width=16", "--config.model.text_layers=1", "--config.model.text_heads=2",
        "--config.data.batch_size=8", "--config.training.num_steps=2", "--config.training.ckpt_every=2",
        "--config.training.sample_every=2", "--config.training.log_every=1",
        "--config.optim.warmup_steps=0", "--config.sampling.num=4", "--config.sampling.steps=2",
        "--config.eval.every=0"]


# One-level U-Nets (the middle attention block is the text's way in): compile about twice as fast.
ONE_LEVEL = dict(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=())
TINY_TEXT = dict(ONE_LEVEL, text_width=16, text_layers=1, text_heads=2)


@pytest.fixture(scope="module")
def text_wd(tmp_path_factory):
  """configs/fashion_mnist_text.py, tiny, trained for 2 steps by train.py itself (a subprocess)."""
  wd = str(tmp_path_factory.mktemp("t2i") / "text")
  r = subprocess.run(["timeout", "-k", "5", "300", sys.executable, "train.py",
                      "--config=configs/fashion_mnist_text.py", f"--workdir={wd}", *TINY],
                     capture_output=True, text=True, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert r.returncode == 0, r.stderr[-3000:]
  return wd


def _png_size(data: bytes) -> tuple:
  return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # IHDR width, height


def test_the_train_time_grid_of_a_super_resolution_stage_refines_real_images(tmp_path):
  """A super-resolution stage cannot sample on its own (train.py used to die at its first grid): its
  train-time grid (``loop.sample_grid``, what train.py draws) refines the low-resolution view of the
  first training batch, each input drawn to the left of its refinement."""
  from configs import fashion_mnist_sr
  from jdiff.training import loop
  from jdiff.utils import images
  c = fashion_mnist_sr.get_config()
  for k, v in ONE_LEVEL.items():
    c.model[k] = v
  c.data.batch_size, c.sampling.steps = 8, 2
  exp = loop.Experiment(c)
  low = loop.grid_low_res(exp)
  first = exp.pipeline.batch_at(0)["image"]
  np.testing.assert_allclose(low, first.reshape(-1, 14, 2, 14, 2, 1).mean(axis=(2, 4)), atol=1e-6)
  params = restore.restore(sm.write_workdir(str(tmp_path / "sr"), c, (28, 28, 1), 0)).params
  path = str(tmp_path / "grid.png")
  samples = loop.sample_grid(exp, params, 4, 0, path)
  assert samples.shape == (4, 28, 28, 1) and np.isfinite(samples).all()
  with open(path, "rb") as f:
    grid = f.read()
  assert _png_size(grid) == _png_size(images.preview_png(np.zeros((4, 28, 56, 1)), "image", ncols=2))


def test_train_py_trains_a_text_model_and_sample_py_draws_the_prompts(text_wd, tmp_path):
  assert os.path.isfile(os.path.join(text_wd, "samples", "step_0000002.png"))  # the train-time grid
  out = str(tmp_path / "t2i.png")
  r = _gaussian.sample_in_process([f"--workdir={text_wd}", "--num=4", "--steps=2",
                                   "--prompt=a sneaker", "--prompt=A photo of a BAG!", "--guidance=3",
                                   "--threshold=0.995", f"--out={out}"])
  assert r.returncode == 0, r.stderr
  info = json.load(open(str(tmp_path / "t2i.json")))
  assert info["captions"] == ["a sneaker", "a photo of a bag", "a sneaker", "a photo of a bag"]
  assert info["settings"]["prompts"] == ["a sneaker", "A photo of a BAG!"]
  assert "--prompt=a sneaker" in info["command"] and "--threshold=0.995" in info["command"]
  with open(out, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  meta = restore.restore(text_wd).meta
  assert meta["text"]["length"] == captions.CAPTION_LENGTH  # the tokenizer is saved with the model
  assert captions.WordTokenizer.from_json(meta["text"]["tokenizer"]) == captions.caption_tokenizer()


@pytest.mark.parametrize("args,message", [
    (["--prompt=a purple sneaker"], "unknown word 'purple'"),
    (["--prompt=" + " ".join(["a"] * 17)], "17 words but the model reads at most 16"),
    (["--prompt= "], "non-empty text"),
    (["--prompt=a bag", "--threshold=99.5"], "not 99.5"),
])
def test_a_prompt_the_model_cannot_represent_is_one_error_and_nothing_is_written(
    text_wd, tmp_path, args, message):
  out = tmp_path / "bad.png"
  r = _gaussian.sample_in_process([f"--workdir={text_wd}", "--num=2", f"--out={out}", *args])
  assert message in _gaussian.one_error_line(r)
  assert not os.listdir(tmp_path)


def test_prompts_of_a_model_without_captions_and_an_empty_prompts_file_are_errors(tmp_path):
  wd = sm.write_workdir(str(tmp_path / "unc"), sm.unet_config(conditional=False), (28, 28, 1), 0)
  r = _gaussian.sample_in_process([f"--workdir={wd}", "--num=2", "--prompt=a bag"])
  assert "not conditioned on captions" in _gaussian.one_error_line(r)
  empty = tmp_path / "prompts.txt"
  empty.write_text("\n \n")
  r = _gaussian.sample_in_process([f"--workdir={wd}", "--num=2", f"--prompts_file={empty}"])
  assert "holds no prompt" in _gaussian.one_error_line(r)


def _text_restored(tmp_path):
  from configs import fashion_mnist_text
  c = fashion_mnist_text.get_config()
  for k, v in TINY_TEXT.items():
    c.model[k] = v
  c.sampling.steps = 3
  tok = captions.caption_tokenizer()
  text = {"tokenizer": tok.to_json(), "length": captions.CAPTION_LENGTH}
  wd = sm.write_workdir(str(tmp_path / "text"), c, (28, 28, 1), 0, scale=0.2, text=text)
  return restore.restore(wd)


def test_sample_i_for_a_prompt_is_the_same_at_any_batch_size_and_w0_is_the_conditional_model(tmp_path):
  r = _text_restored(tmp_path)
  prompts = ("a bag", "an image of a dress", "a coat")
  run = lambda **kw: generation.generate(r, generation.Settings(num=6, prompts=prompts, **kw),
                                         progress=False).samples
  whole = run(batch_size=6, guidance=2.0)
  np.testing.assert_allclose(run(batch_size=2, guidance=2.0), whole, atol=2e-5)
  split = generation.generate(r, generation.Settings(num=3, start_index=3, prompts=prompts,
                                                     batch_size=2, guidance=2.0), progress=False)
  np.testing.assert_allclose(split.samples, whole[3:], atol=2e-5)
  assert split.captions == ["a bag", "an image of a dress", "a coat"]
  np.testing.assert_allclose(run(guidance=0.0), run(), atol=2e-5)  # w = 0: the conditional model
  assert np.abs(run(guidance=4.0) - run()).max() > 1e-3  # and guidance moves the samples
  other = generation.generate(r, generation.Settings(num=6, prompts=("a sneaker",)), progress=False)
  assert np.abs(other.samples - run()).max() > 1e-3  # the prompt reaches the model


@pytest.mark.slow  # ~30 s; default run: the same model on embeddings and a mask (test_text_models)
def test_the_precomputed_embedding_path_trains_and_samples(tmp_path):
  """Imagen's frozen encoder: each example carries an embedding sequence [L, D] and a mask, here from
  a synthetic embedding table over the caption tokens; the same model consumes them."""
  from configs import fashion_mnist_text
  from jdiff import data as jdata
  from jdiff.experiment import builder
  from jdiff.experiment.state import make_optimizer
  from jdiff.training.step import make_train_step
  src = jdata.get_dataset("fashion_mnist_captions", "test")
  n, length, dim = 64, captions.CAPTION_LENGTH, 6
  table = np.random.default_rng(0).standard_normal((src.tokenizer.vocab_size, dim)).astype(np.float32)
  tokens = src.read_extras(np.arange(n))["caption"]
  emb_src = jdata.ArraySource(src.read(np.arange(n))[0], src.read(np.arange(n))[1], name="synthetic",
                              split="train", num_classes=10,
                              extras={"text_emb": table[tokens], "text_mask": (tokens > 0).astype(np.int32)})
  c = fashion_mnist_text.get_config()
  for k, v in TINY_TEXT.items():
    c.model[k] = v
  spec = builder.text_spec(emb_src)
  assert spec == {"length": length, "dim": dim}
  model = builder.build_model(c, (28, 28, 1), 0, text=spec)
  assert sorted(model.conditions.kinds) == ["text_emb", "text_mask"]
  opt = make_optimizer(c.optim, 10)
  state = model.init_state(opt)
  step = jax.jit(make_train_step(model.apply_fn, model.schedule, opt,
                                 parametrization_name=c.diffusion.parametrization,
                                 conditions=model.conditions, cond_drop_prob=0.1, axis_name=None))
  batch = jdata.Pipeline(emb_src, 8, seed=0, num_local_devices=1).batch_at(0)
  batch = {k: v[0] for k, v in batch.items()}
  assert batch["text_emb"].dtype == np.float32 and batch["text_mask"].dtype == np.int32
  state, metrics = step(state, batch)
  assert np.isfinite(float(metrics["loss"]))
  r = generation.Restored.from_params(model, state.ema_params)
  cond = {"text_emb": table[tokens[:2]], "text_mask": (tokens[:2] > 0).astype(np.int32)}
  a = generation.generate(r, generation.Settings(num=2, steps=2), cond=cond, progress=False)
  assert a.samples.shape == (2, 28, 28, 1) and np.isfinite(a.samples).all()
  with pytest.raises(ValueError, match="takes"):
    generation.generate(r, generation.Settings(num=2, steps=2), cond={"caption": tokens[:2]},
                        progress=False)


@pytest.mark.slow  # ~22 s; default run: the augmentation and shapes (test_text_conditions, test_text_models)
def test_a_cascade_refines_the_base_samples_in_one_sample_py_command(tmp_path):
  from configs import fashion_mnist_sr, fashion_mnist_text
  base_c = fashion_mnist_text.get_config("14")
  for k, v in TINY_TEXT.items():
    base_c.model[k] = v
  base_c.sampling.steps = 2
  text = {"tokenizer": captions.caption_tokenizer().to_json(), "length": captions.CAPTION_LENGTH}
  base = sm.write_workdir(str(tmp_path / "base"), base_c, (14, 14, 1), 0, text=text)
  sr_c = fashion_mnist_sr.get_config()
  for k, v in ONE_LEVEL.items():
    sr_c.model[k] = v
  sr_c.sampling.steps = 2
  sr = sm.write_workdir(str(tmp_path / "sr"), sr_c, (28, 28, 1), 0)
  out = str(tmp_path / "cascade.png")
  r = _gaussian.sample_in_process([f"--workdir={base}", f"--sr_workdir={sr}", "--num=3", "--prompt=a bag",
                                   "--guidance=2", "--sr_level=0.2", f"--out={out}"])
  assert r.returncode == 0, r.stderr
  z = np.load(str(tmp_path / "cascade.npz"))
  assert z["samples"].shape == (3, 28, 28, 1) and z["base_samples"].shape == (3, 14, 14, 1)
  info = json.load(open(str(tmp_path / "cascade.json")))
  assert info["captions"] == ["a bag"] * 3 and info["cascade"]["level"] == 0.2
  # the stage reads the base samples: sample i refines base sample i (same at another batch size)
  sr_r, base_r = restore.restore(sr), restore.restore(base)
  base_res = generation.generate(base_r, generation.Settings(num=3, prompts=("a bag",), guidance=2.0),
                                 progress=False)
  np.testing.assert_allclose(base_res.samples, z["base_samples"], atol=2e-5)
  again = generation.cascade.refine(sr_r, base_res, 0.2, progress=False)
  np.testing.assert_allclose(again.samples, z["samples"], atol=2e-5)
  moved = generation.cascade.refine(
      sr_r, dataclasses.replace(base_res, samples=base_res.samples + 0.5), 0.2, progress=False)
  assert np.abs(moved.samples - again.samples).max() > 1e-4  # the low-resolution input reaches it
  # at level 1 the flow schedule's augmentation (alpha = 0, sigma = 1) replaces the input by noise
  blind = [generation.cascade.refine(sr_r, dataclasses.replace(base_res, samples=b), 1.0, progress=False)
           for b in (base_res.samples, base_res.samples + 0.5)]
  np.testing.assert_allclose(blind[0].samples, blind[1].samples, atol=1e-5)
  bad = _gaussian.sample_in_process([f"--workdir={sr}", f"--sr_workdir={sr}", "--num=2"])
  assert "refines images of shape (14, 14, 1) but the base model makes (28, 28, 1)" in \
      _gaussian.one_error_line(bad)
  bad = _gaussian.sample_in_process([f"--workdir={sr}", "--num=2"])
  assert "needs the low-resolution images it refines" in _gaussian.one_error_line(bad)


@pytest.fixture(scope="module")
def untrained_net(tmp_path_factory):
  """An untrained Fashion-MNIST feature net, and a $JDIFF_CACHE directory holding it (the report's
  numbers are then meaningless, its plumbing is what is tested; the real net is trained by the slow
  test of tests/test_caption_metrics.py)."""
  from jdiff.eval import features
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(lambda: features.FashionCNN().init(jax.random.PRNGKey(0),
                                                             np.zeros((1, 28, 28, 1), np.float32)))
  params = jax.tree_util.tree_map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(np.float32),
                                  shapes)
  net = features.FeatureNet(params, test_accuracy=0.1)
  cache = str(tmp_path_factory.mktemp("jdiff_cache"))
  features.save_feature_net(net, features.cache_path(cache))
  return net, cache


@pytest.mark.slow  # ~25 s (a subprocess); default run: the report itself (the pair report test below)
def test_eval_py_reports_caption_accuracy_and_fd_per_place(text_wd, untrained_net, tmp_path):
  out = str(tmp_path / "report.json")
  r = subprocess.run(["timeout", "-k", "5", "300", sys.executable, "eval.py", f"--workdir={text_wd}",
                      "--num=20", "--steps=2", "--guidance=1", "--noprogress", f"--out={out}"],
                     capture_output=True, text=True, cwd=REPO,
                     env=dict(os.environ, JAX_PLATFORMS="cpu", JDIFF_CACHE=untrained_net[1]))
  assert r.returncode == 0, r.stderr[-3000:]
  rep = json.load(open(out))
  items = rep["captions"]["items"]
  assert items["n"] == 20 and items["prompts"] == 10 and 0 <= items["accuracy"] <= 1
  assert 0 <= items["floor"]["accuracy"] <= 1 and np.isfinite(items["fd"])
  assert "--guidance=1.0" in rep["command"]
  assert "caption accuracy" in r.stdout
  # --sr_workdir (the cascade's stage, checked as sample.py checks it): a model that is no
  # super-resolution model is one error line, and nothing is written
  bad = str(tmp_path / "bad.json")
  r = _gaussian.cli("eval.py", [f"--workdir={text_wd}", f"--sr_workdir={text_wd}", "--num=20", f"--out={bad}"])
  assert "--sr_workdir: " in _gaussian.one_error_line(r) and "is not a super-resolution model" in r.stderr
  assert not os.path.exists(bad)


def test_the_pair_report_scores_training_and_held_out_combinations_place_by_place(tmp_path, untrained_net):
  from configs import fashion_mnist_compose
  from jdiff.eval import caption_report
  c = fashion_mnist_compose.get_config()
  for k, v in TINY_TEXT.items():
    c.model[k] = v
  c.sampling.steps = 2
  text = {"tokenizer": captions.caption_tokenizer().to_json(), "length": captions.CAPTION_LENGTH}
  r = restore.restore(sm.write_workdir(str(tmp_path / "pairs"), c, (28, 56, 1), 0, text=text))
  sets = caption_report.prompt_sets("fashion_mnist_pairs")
  train, held = captions.pair_split()
  assert [captions.parse_caption(p) for p in sets["heldout"][0]] == [tuple(p) for p in held]
  assert len(sets["train"][0]) == 80 and sets["heldout"][1] == "heldout"
  rep = caption_report.report(r, generation.Settings(num=20), net=untrained_net[0], progress=False,
                              log=lambda *a: None)
  assert set(rep) == {"train", "heldout"}
  assert len(rep["heldout"]["per_place"]) == 2 and len(rep["heldout"]["fd_per_place"]) == 2
  with pytest.raises(ValueError, match="5 samples are too few"):
    caption_report.report(r, generation.Settings(num=5), net=untrained_net[0], progress=False)
