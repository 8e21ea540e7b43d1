"""Text by discrete diffusion through the ordinary train.py / sample.py / eval.py: a token data kind, a
categorical process (``jdiff.categorical``), a token transformer and two configs (masked diffusion and
D3PM), on a small user text file (``text:<path>``)."""
import json
import os

import numpy as np
import pytest

import _gaussian

_cli = _gaussian.cli
TINY = ["--config.model.hidden_size=32", "--config.model.depth=1", "--config.model.num_heads=2",
        "--config.data.seq_length=32", "--config.data.batch_size=8",
        "--config.training.sample_every=0", "--config.training.log_every=1",
        "--config.training.ckpt_every=2"]
WORDS = ("the cat sat on a mat and the dog ran to the old red barn while a bird sang in the tall green "
         "tree near our small house by the river").split()


def _corpus(path):
  rng = np.random.default_rng(0)
  paras = [" ".join(rng.choice(WORDS, size=rng.integers(8, 20))).capitalize() + "."
           for _ in range(300)]
  with open(path, "w") as f:
    f.write("\n\n".join(paras) + "\n")
  return path


_losses, _one_error_line = _gaussian.logged_losses, _gaussian.one_error_line


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return _corpus(str(tmp_path_factory.mktemp("text") / "corpus.txt"))


def _args(corpus, config="configs/fortunes_mdlm.py"):
  return [f"--config={config}", f"--config.data.name=text:{corpus}", *TINY]


_BAD = (("missing", "not found"), ("empty", "empty"),
        ("gaussian", "holds text tokens: train it with a categorical process"),
        ("uniform_elbo", "diffusion.loss='elbo' (continuous time) is for the absorbing process"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus):
  """The module's train.py runs in one worker process (``_gaussian.train_cases``): a 4-step MDLM run, the
  same run in 2 + 2 steps (resumed), and the refused inputs of test_bad_text_input."""
  tmp = tmp_path_factory.mktemp("mdlm")
  missing, empty = str(tmp / "nope.txt"), str(tmp / "empty.txt")
  open(empty, "w").close()
  bad = {"missing": _args(missing), "empty": _args(empty),
         "gaussian": _args(corpus) + ["--config.diffusion.process=gaussian", "--config.sampling.sampler=unipc",
                                      "--config.data.kind="],
         "uniform_elbo": _args(corpus) + ["--config.diffusion.process=uniform"]}
  cases = [("run", _args(corpus) + [f"--workdir={tmp / 'run'}", "--config.training.num_steps=4"])]
  cases += [(f"split_{n}", _args(corpus) + [f"--workdir={tmp / 'split'}", f"--config.training.num_steps={n}"])
            for n in (2, 4)]
  cases += [(name, bad[name] + [f"--workdir={tmp / name}"]) for name, _ in _BAD]
  return tmp, _gaussian.train_cases(cases, tmp)


@pytest.fixture(scope="module")
def mdlm_run(runs):
  tmp, results = runs
  assert results["run"].returncode == 0, results["run"].stderr[-3000:]
  return str(tmp / "run")


def test_masked_diffusion_run_resumes_exactly(runs, mdlm_run):
  """2 + 2 steps (resumed from the checkpoint) give the losses of the straight 4-step run; the loss is
  the ELBO in nats per sequence, so bits per token is loss / (L ln 2)."""
  tmp, results = runs
  for n in (2, 4):
    assert results[f"split_{n}"].returncode == 0, results[f"split_{n}"].stderr[-3000:]
  assert "resumed from checkpoint step 2" in results["split_4"].stdout + results["split_4"].stderr
  split = str(tmp / "split")
  assert _losses(split) == _losses(mdlm_run) and len(_losses(split)) == 4
  m = [json.loads(l) for l in open(os.path.join(mdlm_run, "metrics.jsonl"))]
  assert m[0]["bits_per_token"] == pytest.approx(m[0]["loss"] / (32 * np.log(2)), rel=1e-5)


def test_sample_with_prefix_is_batch_independent(mdlm_run, tmp_path):
  outs = []
  for bs in (2, 6):
    out = str(tmp_path / f"s{bs}.txt")
    r = _gaussian.sample_in_process([f"--workdir={mdlm_run}", "--num=6", "--steps=8", f"--batch_size={bs}",
                           "--prefix=The cat", f"--out={out}"])
    assert r.returncode == 0, r.stderr[-3000:]
    base = out[:-4]
    for ext in (".txt", ".npz", ".json"):
      assert os.path.exists(base + ext), ext
    info = json.load(open(base + ".json"))
    assert len(info["texts"]) == 6 and all(t.startswith("The cat") and len(t) == 32
                                           for t in info["texts"])
    assert open(base + ".txt").read().startswith("=== sample 0 ===\nThe cat")
    with np.load(base + ".npz") as z:
      assert z["samples"].dtype == np.int32 and z["samples"].shape == (6, 32)
      outs.append(z["samples"])
  np.testing.assert_array_equal(outs[0], outs[1])


def test_eval_text_report(mdlm_run, tmp_path):
  rep = str(tmp_path / "rep.json")
  r = _cli("eval.py", [f"--workdir={mdlm_run}", "--num=8", "--steps=4", "--bpd", "--bpd_num=6",
                       "--bpd_vlb_repeats=2", f"--out={rep}"])
  assert r.returncode == 0, r.stderr[-3000:]
  report = json.load(open(rep))
  m, b = report["metrics"], report["bpd"]
  assert 0 <= m["word_fraction"] <= 1 and m["floor"]["word_fraction"] > 0.9  # real text: its own words
  assert m["js_1gram"] >= 0 and m["floor"]["num_samples"] == 8
  assert b["num"] == 6 and b["repeats"] == 2 and b["bound"] == "elbo" and 0 < b["bits_per_token"] < 20


@pytest.mark.slow  # ~27 s; default run: the MDLM run (the same train.py / sample.py path, another loss)
def test_d3pm_trains_and_samples(corpus, tmp_path):  # and the D3PM bound's unit tests (test_categorical)
  wd = str(tmp_path / "d3pm")
  r = _cli("train.py", _args(corpus, "configs/fortunes_d3pm.py") + [
      f"--workdir={wd}", "--config.training.num_steps=2", "--config.diffusion.num_steps=10"])
  assert r.returncode == 0, r.stderr[-3000:]
  out = str(tmp_path / "d.txt")
  r = _gaussian.sample_in_process([f"--workdir={wd}", "--num=2", "--steps=5", f"--out={out}"])
  assert r.returncode == 0, r.stderr[-3000:]
  assert len(json.load(open(out[:-4] + ".json"))["texts"]) == 2
  line = _one_error_line(_gaussian.sample_in_process([f"--workdir={wd}", "--num=2", "--sampler=unmask"]))
  assert "sampler 'unmask' reveals masked tokens: it needs the absorbing process" in line


def test_bad_text_input(runs, mdlm_run, tmp_path):
  """sample.py's checks in this process (its exit status and one line; end to end as a real subprocess in
  test_d3pm_trains_and_samples, a slow test); train.py's in the module's worker process (``runs``)."""
  out = [f"--out={tmp_path / 'never.txt'}"]
  for args, message in ((["--prefix=The cat~"], "outside the model's vocabulary"),
                        (["--prefix=" + "a" * 33], "--prefix has 33 characters but the model generates 32"),
                        (["--steps=0"], "steps must be an integer >= 1, got 0"),
                        (["--sampler=unipc"], "sampler 'unipc' integrates Gaussian diffusion")):
    line = _one_error_line(_gaussian.sample_in_process([f"--workdir={mdlm_run}", "--num=2", *args, *out]))
    assert message in line, line
  assert "'~'" in _one_error_line(_gaussian.sample_in_process(
      [f"--workdir={mdlm_run}", "--num=2", "--prefix=The cat~", *out]))
  assert not os.listdir(tmp_path)  # nothing written
  tmp, results = runs
  for name, message in _BAD:
    assert message in _one_error_line(results[name]), name
    assert not os.path.exists(tmp / name / "checkpoints"), name
