"""sample.py: outputs (PNG grid, .npz loadable without pickle, JSON that reproduces the run), editing from
the command line, and one clear error (exit status 2, nothing written) for each kind of bad input.

Most runs call sample.py's main in this process (absl flags re-parsed each time) to keep the suite fast;
a few run it as a real subprocess to check the exit status and the one-line message end to end.
"""
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import _sample_models as sm

REPO = sm.REPO


@pytest.fixture(scope="module")
def unet_wd(tmp_path_factory):
  """A tiny class-conditional UNet (trained with label dropout) on 28x28x1."""
  return sm.write_workdir(str(tmp_path_factory.mktemp("cli") / "unet"), sm.unet_config(),
                          (28, 28, 1), 10)


@pytest.fixture(scope="module")
def mlp_wd(tmp_path_factory):
  """An unconditional MLP on the 2-D mixture, really trained (1 step) by jdiff.training.loop.train."""
  from jdiff.training import loop
  c = sm.mlp_config()
  c.training.num_steps = 1
  c.training.ckpt_every = 1
  c.training.sample_every = 0
  c.data.batch_size = 32
  c.optim.warmup_steps = 0  # a large first step, so that the raw parameters differ from their EMA
  c.optim.lr = 0.05
  wd = str(tmp_path_factory.mktemp("cli") / "mlp")
  loop.train(c, wd, log=lambda *a: None)
  return wd


def _main(args, progress=False):
  """Run sample.py's main in-process (re-parsing the absl flags); returns the exit status."""
  import sample  # sample.py at the repository root
  from jdiff.utils import cli
  sample.FLAGS.unparse_flags()
  sample.FLAGS(["sample.py", f"--{'' if progress else 'no'}progress", *args])
  return cli.run_main(sample._main, ["sample.py"], False)


def _subprocess(args, timeout=240):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(["timeout", "-k", "5", str(timeout), sys.executable, "sample.py", *args],
                        capture_output=True, text=True, cwd=REPO, env=env)


def _png(path, array):
  Image.fromarray(np.asarray(array, np.uint8)).save(path)
  return str(path)


def test_outputs_and_the_json_reproduces_the_run(unet_wd, tmp_path, capsys):
  out = tmp_path / "o" / "s.png"
  assert _main([f"--workdir={unet_wd}", "--num=6", "--batch_size=4", "--sampler=ddpm", "--steps=3",
                "--guidance=2", "--labels=1,3", "--seed=7", "--save_noise", f"--out={out}"],
               progress=True) == 0
  printed = capsys.readouterr()
  assert "samples/s" in printed.out and "compile" in printed.out and "per NFE" in printed.out
  assert "batch 2/2" in printed.err  # the progress bar, on stderr
  png = Image.open(out)
  assert png.size[0] > 3 * 28 and png.mode == "L"
  with np.load(tmp_path / "o" / "s.npz", allow_pickle=False) as z:
    assert set(z.files) == {"samples", "indices", "labels", "ts", "x_init"}
    samples, x_init = z["samples"], z["x_init"]
    assert samples.shape == (6, 28, 28, 1) and samples.dtype == np.float32
    np.testing.assert_array_equal(z["indices"], np.arange(6))
    np.testing.assert_array_equal(z["labels"], [1, 3, 1, 3, 1, 3])
    assert z["ts"].shape == (4,)
  info = json.load(open(tmp_path / "o" / "s.json"))
  # NFE counts denoiser calls: with guidance each is one call on a doubled batch.
  assert info["params"] == "ema" and info["step"] == 3 and info["nfe_per_batch"] == 3
  assert info["settings"]["guidance"] == 2.0 and info["settings"]["batch_size"] == 4
  assert info["timing"]["compile_seconds"] > 0 and info["timing"]["images_per_s"] > 0
  assert not [f for f in os.listdir(tmp_path / "o") if f.startswith(".tmp")]
  # The recorded command reproduces the samples (written elsewhere), run as a real subprocess.
  cmd = shlex.split(info["command"])
  cmd = cmd[1:] if cmd[0].startswith("XLA_FLAGS=") else cmd  # the flags of this process, if any
  assert cmd[:2] == ["python", "sample.py"]
  again = tmp_path / "again.png"
  r = _subprocess([a for a in cmd[2:] if not a.startswith("--out=")] + [f"--out={again}"])
  assert r.returncode == 0, r.stderr[-2000:]
  with np.load(tmp_path / "again.npz", allow_pickle=False) as z:
    np.testing.assert_array_equal(z["samples"], samples)
    np.testing.assert_array_equal(z["x_init"], x_init)


@pytest.mark.slow  # ~7 s; default run: the x0-clipping tests of test_guidance
def test_clip_x0_follows_the_config_and_the_flag(unet_wd, tmp_path):
  """Image models clip x0_hat to [-1, 1] at every step by default (the config's sampling.clip_x0, as
  train.py's grids); --noclip_x0 turns it off. With clipping a final x0 step stays in [-1, 1]."""
  args = [f"--workdir={unet_wd}", "--num=4", "--sampler=ddim", "--steps=3", "--labels=2"]
  assert _main(args + [f"--out={tmp_path / 'c'}"]) == 0
  assert _main(args + ["--noclip_x0", f"--out={tmp_path / 'n'}"]) == 0
  clipped, free = (np.load(tmp_path / f"{n}.npz")["samples"] for n in ("c", "n"))
  assert np.abs(clipped).max() <= 1.0 + 1e-6
  assert np.abs(free).max() > 1.0  # the tiny random model's x0_hat leaves the data range
  assert json.load(open(tmp_path / "c.json"))["settings"]["clip_x0"] is True
  assert "--noclip_x0" in json.load(open(tmp_path / "n.json"))["command"]


def test_raw_parameters_differ_from_ema(mlp_wd, tmp_path):
  args = [f"--workdir={mlp_wd}", "--num=2", "--sampler=ddim", "--steps=2", "--eta=0.5"]
  assert _main(args + [f"--out={tmp_path / 'ema'}"]) == 0
  assert _main(args + ["--raw", f"--out={tmp_path / 'raw'}"]) == 0
  ema, raw = (np.load(tmp_path / f"{n}.npz")["samples"] for n in ("ema", "raw"))
  assert float(np.max(np.abs(ema - raw))) > 1e-3
  assert json.load(open(tmp_path / "raw.json"))["params"] == "raw"


@pytest.mark.slow  # ~18 s; default run: inpainting and SDEdit exactness (test_editing), --input errors (test_bad_input)
def test_inpainting_and_sdedit_from_files(unet_wd, tmp_path):
  rng = np.random.default_rng(0)
  image = _png(tmp_path / "in.png", rng.integers(0, 256, (28, 28)))
  mask = np.zeros((28, 28), np.uint8)
  mask[:, :14] = 255  # keep the left half
  mask_path = _png(tmp_path / "mask.png", mask)
  assert _main([f"--workdir={unet_wd}", "--num=3", "--sampler=dpmpp_2m", "--steps=4", f"--input={image}",
                f"--mask={mask_path}", "--resample=2", "--jump_length=2",
                f"--out={tmp_path / 'inpaint.png'}"]) == 0
  x = np.load(tmp_path / "inpaint.npz")["samples"][..., 0]
  want = np.asarray(Image.open(image), np.float32) / 127.5 - 1.0
  np.testing.assert_array_equal(x[:, :, :14], np.broadcast_to(want[:, :14], (3, 28, 14)))
  assert float(np.max(np.abs(x[:, :, 14:] - want[:, 14:]))) > 0.1  # the right half is generated
  info = json.load(open(tmp_path / "inpaint.json"))
  assert info["mode"] == "inpaint" and info["settings"]["strength"] is None
  assert info["nfe_per_batch"] == 4 * 2 and len(info["input"]["sha256"]) == 64
  # SDEdit from the .npz just written (its 3 samples; the default strength 0.5). How the strength
  # trades fidelity for realism is tested against exact answers in tests/test_editing.py.
  src = str(tmp_path / "inpaint.npz")
  assert _main([f"--workdir={unet_wd}", "--num=3", "--sampler=ddim", "--steps=4", f"--input={src}",
                "--save_noise", "--seed=2", f"--out={tmp_path / 'sd'}"]) == 0
  info = json.load(open(tmp_path / "sd.json"))
  assert info["mode"] == "sdedit" and info["settings"]["strength"] == 0.5 and info["ts"][0] == 0.5
  # The start is input row i noised to t = 0.5 with the noise of sample i (jdiff.editing).
  import jax
  from jdiff import editing
  from jdiff.generation import restore
  start = editing.noised_input(jax.random.PRNGKey(2), np.arange(3), x[..., None],
                               restore.restore(unet_wd).schedule, 0.5)
  np.testing.assert_allclose(np.load(tmp_path / "sd.npz")["x_init"], start, atol=1e-6)


def test_vector_data_unconditional_ode(mlp_wd, tmp_path, capsys):
  assert _main([f"--workdir={mlp_wd}", "--num=5", "--sampler=ode", "--steps=2",
                f"--out={tmp_path / 'v'}"]) == 0
  assert "the data are vectors; writing no PNG" in capsys.readouterr().out
  assert sorted(os.listdir(tmp_path)) == ["v.json", "v.npz"]
  with np.load(tmp_path / "v.npz", allow_pickle=False) as z:
    assert z["samples"].shape == (5, 2) and "labels" not in z.files
    assert np.all(np.isfinite(z["samples"]))


# ----------------------------------------------------------------------------------------------------
# Bad input: exit status 2, one line naming the problem, nothing written
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory, unet_wd):
  d = tmp_path_factory.mktemp("files")
  rng = np.random.default_rng(1)
  out = {"img28": _png(d / "img28.png", rng.integers(0, 256, (28, 28))),
         "img32": _png(d / "img32.png", rng.integers(0, 256, (32, 32))),
         "mask20": _png(d / "mask20.png", np.full((20, 20), 255)),
         "not_ckpt": str(d / "not_ckpt")}
  os.makedirs(out["not_ckpt"])
  # A workdir whose config.json no longer matches its checkpoint (a wider model).
  bad = d / "changed"
  os.makedirs(bad / "checkpoints")
  os.symlink(os.path.join(unet_wd, "checkpoints", "3"), bad / "checkpoints" / "3")
  cfg = json.load(open(os.path.join(unet_wd, "config.json")))
  cfg["model"]["ch"] = 16
  json.dump(cfg, open(bad / "config.json", "w"))
  out["changed"] = str(bad)
  # A conditional model trained without label dropout.
  out["no_drop"] = sm.write_workdir(str(d / "no_drop"), sm.unet_config(cond_drop_prob=0.0),
                                    (28, 28, 1), 10)
  os.makedirs(d / "empty")
  json.dump(cfg, open(d / "empty" / "config.json", "w"))
  out["empty"] = str(d / "empty")
  return out


BAD = [
    # (id, workdir key or None, args, message)
    ("missing_workdir", None, ["--workdir=/nonexistent/run"], "does not exist"),
    ("no_checkpoint", "empty", [], "no checkpoint in"),
    ("not_a_checkpoint", None, ["--checkpoint={not_ckpt}"], "is not a <workdir>/checkpoints/<step>"),
    ("incompatible_checkpoint", "changed", [], "incompatible with its workdir's config.json"),
    ("unknown_sampler", "unet", ["--sampler=dpm"], "unknown sampler 'dpm'; valid samplers are: consistency, ddim, "
                                                   "ddpm, dpmpp_2m, dpmpp_3m, euler, heun, langevin, "
                                                   "ode, pc"),
    ("num_zero", "unet", ["--num=0"], "num must be an integer >= 1, got 0"),
    ("steps_zero", "unet", ["--steps=0"], "steps must be an integer >= 1, got 0"),
    ("label_out_of_range", "unet", ["--labels=3,10"], "label 10 is out of range"),
    ("labels_not_ints", "unet", ["--labels=shirt"], "--labels must be comma-separated integers"),
    ("labels_unconditional", "mlp", ["--labels=1"], "the model is unconditional"),
    ("guidance_unconditional", "mlp", ["--guidance=2"], "guidance needs a conditional model (labels or captions)"),
    ("guidance_without_label_dropout", "no_drop", ["--guidance=2"], "trained with condition dropout"),
    ("mask_shape", "unet", ["--input={img28}", "--mask={mask20}"],
     "has shape (20, 20) but the image has shape (28, 28, 1)"),
    ("input_size", "unet", ["--input={img32}"], "is 32x32 but the model makes 28x28 images"),
    ("mask_without_input", "unet", ["--mask={mask20}"], "--mask needs --input"),
    ("strength_range", "unet", ["--input={img28}", "--strength=1.5"], "strength must be in (0, 1]"),
    ("ve_sampler_on_vp", "unet", ["--sampler=langevin"], "is for variance-exploding schedules"),
    ("unknown_hparam", "unet", ["--sampler=ddpm", "--eta=0.5"], "has no hyperparameter(s) eta"),
    ("repaint_without_mask", "unet", ["--input={img28}", "--resample=3"], "needs --mask"),
    ("strength_without_input", "unet", ["--strength=0.5"], "strength applies to editing an input"),
    ("missing_input_file", "unet", ["--input=/nonexistent/in.png"], "does not exist"),
]


@pytest.mark.parametrize("name, wd, args, message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_in_process(name, wd, args, message, unet_wd, mlp_wd, files, tmp_path, capsys):
  wds = {"unet": unet_wd, "mlp": mlp_wd, **files}
  args = [a.format(**files) for a in args]
  if wd:
    args = [f"--workdir={wds[wd]}"] + args
  out = tmp_path / "out"
  assert _main(args + [f"--out={out / 's.png'}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
  assert not out.exists()  # nothing written, not even the directory


@pytest.mark.parametrize("args, message", [
    (["--workdir=/nonexistent/run"], "does not exist"),
    (["--sampler=dpm", "--num=-3"], "num must be an integer >= 1"),
])
def test_bad_input_subprocess_exit_status(args, message, unet_wd, tmp_path):
  if not any(a.startswith("--workdir") for a in args):
    args = [f"--workdir={unet_wd}"] + args
  r = _subprocess(args + [f"--out={tmp_path / 'x' / 's.png'}"], timeout=120)
  assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
  last = r.stderr.strip().splitlines()
  assert "Traceback" not in r.stderr and len(last) == 1 and message in last[0], r.stderr[-2000:]
  assert not (tmp_path / "x").exists()


def test_failure_while_sampling_or_writing_leaves_nothing(mlp_wd, tmp_path, monkeypatch, capsys):
  from jdiff.generation import program
  calls = []
  real_call = program.Program.__call__

  def fail_second_batch(self, *a, **k):
    calls.append(1)
    if len(calls) == 2:
      raise ValueError("simulated failure in batch 2")
    return real_call(self, *a, **k)

  monkeypatch.setattr(program.Program, "__call__", fail_second_batch)
  out = tmp_path / "o"
  assert _main([f"--workdir={mlp_wd}", "--num=4", "--batch_size=2", "--sampler=ddim", "--steps=2",
                f"--out={out / 's.png'}"]) == 2
  assert "simulated failure" in capsys.readouterr().err and not out.exists()
  monkeypatch.undo()
  # A failure while writing the second of the three files: no output, no temporary file left.
  real_fdopen = os.fdopen
  opened = []

  def fail_second_file(fd, *a, **k):
    opened.append(fd)
    if len(opened) == 2:
      os.close(fd)
      raise OSError(28, "No space left on device")
    return real_fdopen(fd, *a, **k)

  monkeypatch.setattr(os, "fdopen", fail_second_file)
  with pytest.raises(OSError):
    _main([f"--workdir={mlp_wd}", "--num=2", "--sampler=ddim", "--steps=2", f"--out={out / 's.png'}"])
  assert os.listdir(out) == []


@pytest.mark.slow  # ~9 s; default run: test_sample_repro's two-device test
def test_cpu_devices_flag_samples_the_same_over_two_host_devices(mlp_wd, tmp_path):
  """sample.py --cpu_devices=2 shards each batch over two CPU devices: same samples as one device
  (same noise per sample index; the MLP's kernels may round differently per batch layout)."""
  for n in (1, 2):
    r = _subprocess([f"--workdir={mlp_wd}", f"--cpu_devices={n}", "--num=6", "--sampler=ddim",
                     "--steps=4", f"--out={tmp_path / f'd{n}'}"], timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
  with np.load(tmp_path / "d1.npz") as a, np.load(tmp_path / "d2.npz") as b:
    np.testing.assert_allclose(b["samples"], a["samples"], atol=1e-5)
  r = _subprocess([f"--workdir={mlp_wd}", "--cpu_devices=-2", f"--out={tmp_path / 'x' / 's'}"],
                  timeout=60)
  assert r.returncode == 2 and "--cpu_devices must be an integer >= 0" in r.stderr
  assert not (tmp_path / "x").exists()


def test_the_config_records_sampler_hyperparameters_by_sampler(tmp_path):
  """``sampling.hparams.<sampler>`` applies whenever that sampler samples the model (the config's own or
  one asked for), under ``--hparam``; another sampler does not get them. The samples use them, and the
  command sample.py writes spells them out."""
  import ml_collections
  from jdiff import generation as gen
  from jdiff.generation import restore
  c = sm.mlp_config()
  c.sampling.sampler, c.sampling.steps = "heun", 3
  c.sampling.hparams.heun = ml_collections.ConfigDict({"S_churn": 10.0})
  wd = sm.write_workdir(str(tmp_path / "m"), c, (2,), 0)
  r = restore.restore(wd, None)
  res = lambda **kw: gen.resolve(gen.Settings(**{"num": 4, "batch_size": 4, **kw}), r)
  assert res().hparams == {"S_churn": 10.0}
  assert res(sampler="heun", hparams={"S_churn": 0.0}).hparams == {"S_churn": 0.0}
  assert res(sampler="euler").hparams == {}
  draw = lambda s: np.asarray(gen.generate(r, s, progress=False).samples)
  default = draw(res())
  np.testing.assert_array_equal(default, draw(res(hparams={"S_churn": 10.0})))
  assert np.abs(default - draw(res(hparams={"S_churn": 0.0}))).max() > 1e-3   # the churn is used
  # Its noise is drawn per sample: sample i is the same one at a time (float32 rounding aside; this
  # random network's samples reach 1e4, hence a relative tolerance).
  np.testing.assert_allclose(draw(res(batch_size=1)), default, rtol=2e-5, atol=2e-5)
  assert _main([f"--workdir={wd}", "--num=4", f"--out={tmp_path / 's'}"]) == 0
  with open(tmp_path / "s.json") as f:
    meta = json.load(f)
  assert meta["hparams"]["S_churn"] == 10.0 and "--hparam=S_churn=10.0" in meta["command"]
  with np.load(tmp_path / "s.npz") as z:
    np.testing.assert_array_equal(z["samples"], default)
