"""Evaluation of trained models: periodic FD/KID/precision/recall during training (config.eval),
eval.py's JSON report for a checkpoint, bits/dim of held-out data, and one clear error for each bad input.

The Fashion-MNIST feature net is replaced by an untrained one written into a temporary cache (the
metrics' plumbing does not depend on its weights; tests/test_eval_metrics.py trains the real one), so
these tests take seconds. Sample counts are tiny: FD of 8 samples is heavily biased but finite.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import _sample_models as sm
from _fmnist import have_fmnist, needs_fmnist

REPO = sm.REPO


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory):
  """A cache directory holding an (untrained) Fashion-MNIST feature net, set as $JDIFF_CACHE."""
  import jax
  from jdiff.eval import features
  cache = str(tmp_path_factory.mktemp("jdiff_cache"))
  params = features.FashionCNN().init(jax.random.PRNGKey(0), np.zeros((1, 28, 28, 1), np.float32))
  features.save_feature_net(features.FeatureNet(params, test_accuracy=0.1), features.cache_path(cache))
  old = os.environ.get("JDIFF_CACHE")
  os.environ["JDIFF_CACHE"] = cache
  yield cache
  if old is None:
    os.environ.pop("JDIFF_CACHE", None)
  else:
    os.environ["JDIFF_CACHE"] = old


def _tiny_unet_config(**eval_fields):
  c = sm.unet_config(conditional=True)
  c.model.ch_mult = (1,)  # one resolution: the train step compiles in about half the time
  c.model.attn_resolutions = ()
  c.data.batch_size = 8
  c.training.num_steps = 2
  c.training.ckpt_every = 2
  c.training.sample_every = 0
  c.training.log_every = 1
  for k, v in eval_fields.items():
    c.eval[k] = v
  return c


@pytest.fixture(scope="module")
def trained_wd(tmp_path_factory, feature_cache):
  """A tiny conditional UNet trained 2 steps with an evaluation at every step."""
  from jdiff.training import loop
  wd = str(tmp_path_factory.mktemp("eval") / "run")
  lines = []
  c = _tiny_unet_config(every=1, num_samples=8, batch_size=8, sampler="ddim", steps=2)
  loop.train(c, wd, log=lines.append)
  return wd, lines


@needs_fmnist
def test_training_logs_eval_metrics_every_k_steps(trained_wd):
  wd, lines = trained_wd
  rows = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  evals = [r for r in rows if "eval/fd" in r]
  assert [r["step"] for r in evals] == [1, 2]
  for r in evals:
    for k in ("fd", "kid", "kid_std", "precision", "recall", "accuracy"):
      assert np.isfinite(r[f"eval/{k}"]) and np.isfinite(r[f"eval/{k}_floor"]), k
    assert r["eval/num_samples"] == 8 and r["eval/nfe"] == 2
    assert r["eval/fd"] >= 0 and 0 <= r["eval/precision"] <= 1
  assert evals[0]["eval/fd_floor"] == evals[1]["eval/fd_floor"]  # the floor is computed once
  assert any("eval (ddim, 2 steps, NFE 2, EMA)" in l and "floor" in l for l in lines)
  events = [os.path.join(wd, "tb", f) for f in os.listdir(os.path.join(wd, "tb"))]
  blob = b"".join(open(f, "rb").read() for f in events)
  assert b"eval/fd" in blob and b"eval/kid_floor" in blob  # TensorBoard scalar tags


def test_periodic_eval_config_errors(tmp_path):
  from jdiff.training import loop
  from configs import toy2d
  c = toy2d.get_config()
  c.eval.every = 10
  with pytest.raises(ValueError, match=r"fashion_mnist \(28x28x1 images\), mnist1d.*but this model "
                                       r"makes 'mixture2d'.*--config.eval.every=0"):
    loop.train(c, str(tmp_path / "toy"))
  assert not os.path.exists(tmp_path / "toy")  # refused before anything was written
  if have_fmnist():
    c = _tiny_unet_config(every=1, num_samples=3)
    with pytest.raises(ValueError, match="num_samples=3 is too few.*at least 4"):
      loop.train(c, str(tmp_path / "few"))
    c = _tiny_unet_config(every=1, sampler="dpm")
    with pytest.raises(ValueError, match="unknown sampler 'dpm'"):
      loop.train(c, str(tmp_path / "sampler"))


def _eval_py(args, cache, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JDIFF_CACHE=cache)
  return subprocess.run(["timeout", "-k", "5", str(timeout), sys.executable, "eval.py", *args],
                        capture_output=True, text=True, cwd=REPO, env=env)


@needs_fmnist
def test_checkpoint_report_every_metric(trained_wd, feature_cache):
  """What eval.py computes for a conditional Fashion-MNIST checkpoint (in this process: the CLI itself
  is run below on a toy model)."""
  from jdiff.eval import model_eval
  from jdiff import generation as gen
  from jdiff.generation import restore
  wd, _ = trained_wd
  restored = restore.restore(wd)
  lines = []
  rep = model_eval.evaluate_checkpoint(
      restored, gen.Settings(num=8, seed=0, sampler="ddim", steps=2), progress=False, log=lines.append)
  m = rep["metrics"]
  for k in ("fd", "kid", "kid_std", "kid_stderr", "precision", "recall", "accuracy"):
    assert np.isfinite(m[k]) and np.isfinite(m["floor"][k]), k
  assert m["num_samples"] == m["floor"]["num_samples"] == 8
  assert rep["step"] == 2 and rep["params"] == "ema" and rep["nfe"] == 2 and rep["bpd"] is None
  assert rep["settings"]["sampler"] == "ddim" and rep["settings"]["seed"] == 0
  # The same samples as the evaluation logged in training at this step (same seed, sampler, clipping):
  # only float32 rounding differs (pmapped program vs jitted one).
  logged = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  logged = [r for r in logged if r["step"] == 2 and "eval/fd" in r][0]
  for k in ("fd", "kid", "precision", "recall", "accuracy"):
    assert m[k] == pytest.approx(logged[f"eval/{k}"], rel=1e-3, abs=1e-5), k
    assert m["floor"][k] == pytest.approx(logged[f"eval/{k}_floor"], rel=1e-6), k
  assert rep["settings"]["clip_x0"] is True  # the config's sampling.clip_x0, as in sample.py
  assert "floor" in lines[0] and "accuracy" in lines[0]
  json.dumps(rep)  # JSON-ready
  with pytest.raises(ValueError, match="--num=3 is too few samples.*at least 4"):
    model_eval.evaluate_checkpoint(restored, gen.Settings(num=3))


@pytest.mark.parametrize("args, message", [
    (["--num=2"], "--num=2 is too few samples: precision/recall (k=3) need at least 4"),
    (["--bpd", "--bpd_num=1"], "--bpd_num must be >= 2"),
])
def test_eval_py_flag_errors(tmp_path, args, message):
  r = _eval_py([f"--workdir={tmp_path}", *args], str(tmp_path))
  assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last, last
  assert "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def mlp_wd(tmp_path_factory):
  return sm.write_workdir(str(tmp_path_factory.mktemp("eval") / "mlp"), sm.mlp_config(), (2,), 0)


@pytest.mark.slow  # ~7 s; default run: test_likelihood's bits/dim tests
def test_eval_py_bits_per_dim_only(mlp_wd, tmp_path):
  """eval.py end to end: --num=0 --bpd works for any dataset (here the 2-D mixture) and writes the
  JSON report; sample metrics refuse a model that is not Fashion-MNIST."""
  out = str(tmp_path / "bpd.json")
  r = _eval_py([f"--workdir={mlp_wd}", "--num=0", "--bpd", "--bpd_num=16", "--bpd_batch=8",
                "--bpd_tol=1e-4", "--bpd_vlb_repeats=2", f"--out={out}"], str(tmp_path))
  assert r.returncode == 0, r.stderr[-3000:]
  assert "bits/dim on 16 mixture2d test images" in r.stdout
  rep = json.load(open(out))
  b = rep["bpd"]
  assert rep["metrics"] is None and b["num"] == 16 and not b["discrete"]
  assert np.isfinite(b["ode"]["bpd"]) and b["ode"]["stderr"] > 0 and b["ode"]["nfe_mean"] > 0
  assert not b["ode"]["dequantized"] and b["vlb"]["decoder"] == "gaussian"
  assert np.isfinite(b["vlb"]["bpd"]) and b["vlb"]["stderr"] > 0
  assert "eval.py --checkpoint=" in rep["command"] and "--bpd_num=16" in rep["command"]
  assert rep["step"] == 3 and rep["params"] == "ema"


def test_sample_metrics_refuse_other_data(mlp_wd):
  from jdiff.eval import model_eval
  from jdiff import generation as gen
  from jdiff.generation import restore
  restored = restore.restore(mlp_wd)
  with pytest.raises(ValueError, match=r"'mixture2d' data of shape \(2,\); pass --num=0 --bpd"):
    model_eval.evaluate_checkpoint(restored, gen.Settings(num=8))
  with pytest.raises(ValueError, match="--bpd_num=1 is too few"):
    model_eval.evaluate_checkpoint(restored, gen.Settings(num=0), bpd_num=1)
  with pytest.raises(ValueError, match="exceeds the .* test examples"):
    model_eval.heldout_data(restored.config, 10 ** 9)


def test_bits_per_dim_report_bad_input():
  from jdiff import schedules
  from jdiff.eval import bpd
  fn = lambda p, x, t, c: x
  with pytest.raises(ValueError, match="at least 2 examples"):
    bpd.bits_per_dim_report(fn, None, schedules.LinearSchedule(), "eps", np.zeros((1, 3), np.float32))
  with pytest.raises(ValueError, match="dequantize=True needs data in"):
    bpd.bits_per_dim_report(fn, None, schedules.LinearSchedule(), "eps",
                            np.full((4, 3), 2.0, np.float32), vlb=False)
