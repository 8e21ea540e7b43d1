"""Point clouds and 1-D signals through the ordinary train.py / sample.py / eval.py: a data kind, a
model and a config each, no special case in the loop."""
import json
import os

import numpy as np
import pytest

import _gaussian

_cli = _gaussian.cli
QUIET = ["--config.training.sample_every=0", "--config.training.log_every=1",
         "--config.training.ckpt_every=2"]
POINTS = ["--config=configs/point_clouds.py", "--config.model.features=16", "--config.model.hidden=32",
          "--config.model.num_blocks=1", "--config.data.batch_size=8", *QUIET]


_losses, _one_error_line = _gaussian.logged_losses, _gaussian.one_error_line


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The module's train.py runs in one process (``_gaussian.train_cases``): a 4-step point-cloud run,
  the same run in 2 + 2 steps (resumed), a 4-step signal run, and the two refused configs."""
  tmp = tmp_path_factory.mktemp("runs")
  cases = [("points", POINTS + [f"--workdir={tmp / 'points'}", "--config.training.num_steps=4"]),
           ("split_2", POINTS + [f"--workdir={tmp / 'split'}", "--config.training.num_steps=2"]),
           ("split_4", POINTS + [f"--workdir={tmp / 'split'}", "--config.training.num_steps=4"]),
           ("signals", SIGNALS + [f"--workdir={tmp / 'signals'}", "--config.training.num_steps=4"]),
           ("points_config_mixture", POINTS + [f"--workdir={tmp / 'a'}", "--config.data.name=mixture2d"]),
           ("signal_config_images", ["--config=configs/mnist1d.py", f"--workdir={tmp / 'b'}",
                                     "--config.data.name=fashion_mnist"])]
  return tmp, _gaussian.train_cases(cases, tmp)


def _run(runs, name):
  tmp, results = runs
  assert results[name].returncode == 0, results[name].stderr[-3000:]
  return str(tmp / name)


@pytest.fixture(scope="module")
def points_run(runs):
  return _run(runs, "points")


@pytest.fixture(scope="module")
def signals_run(runs):
  return _run(runs, "signals")


def test_point_cloud_run_resumes_exactly(runs, points_run):
  """A run of 2 + 2 steps (resumed from its checkpoint) gives the losses of the straight 4-step run:
  the point sets go through the same pipeline (sharded over the devices, position in the checkpoint)."""
  tmp, results = runs
  for name in ("split_2", "split_4"):
    assert results[name].returncode == 0, results[name].stderr[-3000:]
  assert "resumed from checkpoint step 2" in results["split_4"].stdout + results["split_4"].stderr
  split = str(tmp / "split")
  assert _losses(split) == _losses(points_run) and len(_losses(split)) == 4


def test_point_cloud_sample_and_eval(points_run, tmp_path):
  out = str(tmp_path / "s.png")
  r = _gaussian.sample_in_process([f"--workdir={points_run}", "--num=6", "--steps=2", f"--out={out}"])
  assert r.returncode == 0, r.stderr[-3000:]
  base = out[:-4]
  for ext in (".png", ".ply", ".npz", ".json"):
    assert os.path.exists(base + ext), ext
  with np.load(base + ".npz") as z:
    assert z["samples"].shape == (6, 512, 3) and list(z["labels"]) == [0, 1, 2, 3, 4, 5]
  header = open(base + ".ply").read(400)
  assert "element vertex 3072" in header
  rep = str(tmp_path / "rep.json")
  r = _cli("eval.py", [f"--workdir={points_run}", "--num=12", "--steps=2", f"--out={rep}"])
  assert r.returncode == 0, r.stderr[-3000:]
  m = json.load(open(rep))["metrics"]
  assert set(m["per_class"]) == {"sphere", "torus", "cube", "cylinder", "cone", "disc"}
  assert m["per_class"]["torus"]["num_samples"] == 2 and 0 <= m["mean"]["1nna_cd"] <= 1
  assert 0 <= m["floor"]["mean"]["1nna_cd"] <= 1
  # too few shapes per class for 1-NNA, and more than the held-out shapes: one error each
  line = _one_error_line(_cli("eval.py", [f"--workdir={points_run}", "--num=6"]))
  assert "1-NNA needs at least 2 shapes per class, so at least 12 for 6 class(es)" in line
  line = _one_error_line(_cli("eval.py", [f"--workdir={points_run}", "--num=1206"]))
  assert "is too many: the point_clouds test split holds 200 shapes per class" in line


def test_config_for_one_kind_refuses_another(runs):
  tmp, results = runs
  line = _one_error_line(results["points_config_mixture"])
  assert "this config is for points data ([P, 3]), but dataset 'mixture2d' holds vector data" in line
  line = _one_error_line(results["signal_config_images"])
  assert "this config is for signal data ([L, C]), but dataset 'fashion_mnist' holds image data" in line
  assert not os.path.exists(tmp / "a" / "checkpoints") and not os.path.exists(tmp / "b" / "checkpoints")


# One level, no attention (the 1-D attention block is test_unet1d's): the train step compiles in about
# half the time of two levels with attention.
SIGNALS = ["--config=configs/mnist1d.py", "--config.model.ch=8", "--config.model.ch_mult=(1,)",
           "--config.model.num_res_blocks=1", "--config.model.attn_resolutions=()",
           "--config.data.batch_size=8", *QUIET]


@pytest.mark.slow  # ~60 s; default run: test_point_cloud_run_resumes_exactly (the same loop, another data kind)
def test_signal_run_resumes_exactly(signals_run, tmp_path):
  split = str(tmp_path / "split")
  for n in (2, 4):
    r = _cli("train.py", SIGNALS + [f"--workdir={split}", f"--config.training.num_steps={n}"])
    assert r.returncode == 0, r.stderr[-3000:]
  assert _losses(split) == _losses(signals_run) and len(_losses(split)) == 4


def test_signal_sample_and_eval(signals_run, tmp_path):
  out = str(tmp_path / "s.png")
  r = _gaussian.sample_in_process([f"--workdir={signals_run}", "--num=10", "--steps=2", "--labels=3",
                                   f"--out={out}"])
  assert r.returncode == 0, r.stderr[-3000:]
  assert sorted(os.listdir(tmp_path)) == ["s.json", "s.npz", "s.png"]
  with np.load(str(tmp_path / "s.npz")) as z:
    assert z["samples"].shape == (10, 40, 1) and set(z["labels"]) == {3}
  rep = str(tmp_path / "rep.json")
  r = _cli("eval.py", [f"--workdir={signals_run}", "--num=8", "--steps=2", f"--out={rep}"])
  assert r.returncode == 0, r.stderr[-3000:]
  m = json.load(open(rep))["metrics"]
  assert m["num_samples"] == 8 and m["noisy"] is None and 0 <= m["accuracy"] <= 1
  assert m["fd"] > 0 and m["floor"]["accuracy"] > 0.85  # the 1-D classifier on real test signals
