"""Grids optimized through the sampler (jdiff.grid_fit, jdiff.generation.grid_fit, tools/fit_grid.py):
the parametrization always gives a valid grid, a fit on the exact mixture denoiser lowers the held-out
distance to the ODE solution, changing the grid's values compiles nothing new, and grid files round-trip
and are refused (one line) when malformed or fit for other parameters."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _sample_models as sm
import jdiff
from jdiff import grid_fit, grids, sampling
from jdiff.parametrization import make_denoiser


_GRID = jax.jit(jax.vmap(grid_fit.grid_from_logits, in_axes=(0, None, None)))  # t_max, t_lo traced


def test_every_logit_vector_gives_a_valid_grid():
  los = {name: grid_fit.t_low(jdiff.get_schedule(name)) for name in ("linear", "sigmoid", "edm")}
  assert los == {"linear": 1e-3, "sigmoid": 1e-3, "edm": 0.0}
  rng = np.random.default_rng(0)
  for k in (1, 2, 3, 5, 10, 64, grid_fit.MAX_STEPS):
    cases = np.stack([np.zeros(k), rng.normal(0, 1, k), rng.normal(0, 30, k), rng.uniform(-1e4, 1e4, k),
                      np.where(np.arange(k) == k - 1, 1e30, -1e30), np.where(np.arange(k) == 0, 1e30, -1e30),
                      np.full(k, -1e30), np.sort(rng.normal(0, 50, k)), np.sort(rng.normal(0, 50, k))[::-1]])
    for lo in sorted(set(los.values())):
      for t_max in (1.0, 0.5):
        for ts in np.asarray(_GRID(jnp.asarray(cases, jnp.float32), t_max, lo)):
          grids.check_grid(ts)  # 1-D, finite, in [0, 1], strictly descending, ends at exactly 0
          assert ts.shape == (k + 1,) and ts.dtype == np.float32
          assert ts[0] == np.float32(t_max) and ts[-1] == 0.0
          assert k == 1 or ts[-2] > lo


def test_logits_from_grid_inverts_the_parametrization():
  for schedule in ("cosine", "edm"):
    sch = jdiff.get_schedule(schedule)
    lo = grid_fit.t_low(sch)
    for name in grids.GRIDS:
      ts = np.asarray(grids.get_grid(name, sch, 10), np.float64)
      back = np.asarray(_GRID(grid_fit.logits_from_grid(ts, lo)[None], 1.0, lo))[0]
      # Exact up to the floor fraction (a VP grid's last time at t_lo comes back just above it).
      np.testing.assert_allclose(back, ts, atol=3 * grid_fit.floor_fraction(10), rtol=1e-5)


def _mixture_case(schedule="cosine", n_train=64, n_held=128):
  sch = jdiff.get_schedule(schedule)
  mix = jdiff.toy.default_mixture()
  fn = mix.model_fn(sch)
  key = jax.random.PRNGKey(3)
  x_train = sampling.initial_noise(key, jnp.arange(n_train), (2,), sch)
  x_held = sampling.initial_noise(key, jnp.arange(n_train, n_train + n_held), (2,), sch)
  return sch, mix, (lambda p: make_denoiser(fn, p, sch, "x0")), x_train, x_held


def test_fit_lowers_the_heldout_distance_and_compiles_once():
  sch, mix, make_denoise, x_train, x_held = _mixture_case()
  traces = []

  def counted(params, x, ts):  # counts traces: a new grid value must not trace (compile) again
    traces.append(1)
    return run(params, x, ts)

  run = grid_fit.sample_fn(make_denoise, sch, "dpmpp_2m")
  # A many-step reference (jdiff.grid_fit.reference_fn's adaptive solve is used by fit_grid, below).
  fine = grids.get_grid("uniform_logsnr", sch, 400)
  ref_train, ref_held = (jax.jit(run)(mix, x, fine) for x in (x_train, x_held))
  init = grids.get_grid("uniform_t", sch, 4)
  r = grid_fit.fit(counted, mix, x_train, ref_train, init, t_lo=grid_fit.t_low(sch), x_heldout=x_held,
                   ref_heldout=ref_held, iters=40, lr=0.1)
  grids.check_grid(r.ts)
  assert r.ts.shape == (5,) and r.skipped == 0 and len(r.history) == 40
  assert len({tuple(np.round(h, 6)) for h in [r.ts, r.init_ts]}) == 2  # the grid moved
  assert r.train_distance < 0.8 * r.init_train_distance
  assert r.heldout_distance < 0.8 * r.init_heldout_distance, (r.init_heldout_distance,
                                                              r.heldout_distance)
  # 40 Adam steps and 5 evaluations, each at other grid values: one trace for the step (value and
  # gradient), one for the evaluation; the batch shape is the same everywhere.
  assert len(traces) == 2, len(traces)
  # The held-out distance is the mean per-sample RMS distance of the sampler on the fitted grid.
  x = jax.jit(run)(mix, x_held, jnp.asarray(r.ts))
  d = np.sqrt(np.mean((np.asarray(x) - np.asarray(ref_held)) ** 2, axis=1))
  np.testing.assert_allclose(d.mean(), r.heldout_distance, rtol=1e-4)


def test_only_deterministic_differentiable_samplers_are_fit():
  sch, mix, make_denoise, x_train, _ = _mixture_case(n_train=8, n_held=1)
  for name in ("ddpm", "ode"):
    with pytest.raises(ValueError, match=f"sampler '{name}' cannot have its grid fit"):
      grid_fit.sample_fn(make_denoise, sch, name)
  # A sampler whose gradient in t is NaN at the start (DDIM: sqrt(0) of its eta = 0 noise term; a
  # stand-in here, to compile nothing big) is refused at the first step.
  run = lambda params, x, ts: x * jnp.sqrt(ts[1] - ts[1])
  with pytest.raises(ValueError, match="not differentiable in t"):
    grid_fit.fit(run, mix, x_train, np.zeros_like(x_train), grids.get_grid("uniform_t", sch, 3),
                 t_lo=1e-3, iters=1)


def test_params_hash_depends_on_values_only():
  a = {"w": np.ones((2, 3), np.float32), "b": {"c": np.zeros(3, np.float32)}}
  b = {"b": {"c": jnp.zeros(3, jnp.float32)}, "w": jnp.ones((2, 3), jnp.float32)}
  assert grid_fit.params_hash(a) == grid_fit.params_hash(b)
  assert grid_fit.params_hash(a).startswith("sha256:") and len(grid_fit.params_hash(a)) == 71
  c = {"w": np.ones((2, 3), np.float32), "b": {"c": np.full(3, 1e-30, np.float32)}}
  assert grid_fit.params_hash(a) != grid_fit.params_hash(c)
  assert grid_fit.params_hash(a) != grid_fit.params_hash({"w": np.ones((3, 2), np.float32),
                                                          "b": a["b"]})


# ----------------------------------------------------------------------------------------------------
# Grid files through jdiff.generation and sample.py
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
  """A tiny MLP workdir and a 3-step grid file fit for its EMA parameters (a short, real fit)."""
  from jdiff.generation import grid_fit as gen_grid_fit
  from jdiff.generation import restore
  d = tmp_path_factory.mktemp("gridfit")
  wd = sm.write_workdir(str(d / "mlp"), sm.mlp_config(), (2,), 0)
  r = restore.restore(wd)
  record = gen_grid_fit.fit_model(r, steps=3, num_train=16, num_heldout=8, batch_size=8, iters=3)
  path = str(d / "grid.json")
  gen_grid_fit.write(path, record)
  return wd, r, path, record


def test_grid_file_round_trips(fitted):
  wd, r, path, record = fitted
  g = grid_fit.read_grid_file(path)
  assert g.steps == 3 and g.sampler == "dpmpp_2m" and g.schedule == repr(r.schedule)
  assert g.model_hash == grid_fit.params_hash(r.params) == record["model_hash"]
  np.testing.assert_array_equal(g.ts, np.asarray(record["ts"], np.float32))
  grids.check_grid(g.ts)
  assert g.record["model"]["step"] == 3 and g.record["model"]["params"] == "ema"
  assert set(g.record["distance"]["builtin"]) == set(grids.SOLVER_GRIDS)
  assert g.record["fit"]["num_train"] == 16 and g.record["fit"]["num_heldout"] == 8
  grid_fit.check_grid_file(g, schedule=r.schedule, model_hash=g.model_hash, steps=3)


def _write(path, obj):
  path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
  return str(path)


def test_malformed_grid_files_are_refused(fitted, tmp_path):
  _, _, _, record = fitted
  cases = {
      "not_json": ("{\"format\": ", "is not readable JSON"),
      "no_format": ({"ts": [1.0, 0.0]}, "is not a jdiff grid file"),
      "newer": (dict(record, version=99), "newer than this jdiff reads"),
      "ascending": (dict(record, ts=record["ts"][::-1]), "must be strictly descending"),
      "length": (dict(record, ts=record["ts"][:-1]), "has 3 times but steps=3 needs 4"),
      "not_zero": (dict(record, ts=record["ts"][:-1] + [0.001]), "must end at exactly 0.0"),
      "out_of_range": (dict(record, ts=[1.5] + record["ts"][1:]), "must lie in [0, 1]"),
      "strings": (dict(record, ts=["1"] * 4), "\"ts\" must be a list of numbers"),
      "no_hash": ({k: v for k, v in record.items() if k != "model_hash"}, "lacks \"model_hash\""),
      "steps": (dict(record, steps=0), "\"steps\" must be an integer >= 1"),
  }
  for name, (content, message) in cases.items():
    path = _write(tmp_path / f"{name}.json", content)
    with pytest.raises(ValueError, match="grid file") as e:
      grid_fit.read_grid_file(path)
    assert message in str(e.value) and path in str(e.value) and "\n" not in str(e.value), name


def test_generation_samples_with_a_grid_file_and_refuses_other_models(fitted, tmp_path):
  from jdiff import generation
  from jdiff.generation import restore
  wd, r, path, record = fitted
  a = generation.generate(r, generation.Settings(num=4, grid=path), progress=False)
  assert a.settings.sampler == "dpmpp_2m" and a.settings.steps == 3  # the file's, not the config's
  np.testing.assert_array_equal(a.ts, np.asarray(record["ts"], np.float32))
  # Other grid values, same steps: the same compiled program, nothing compiled again.
  other = dict(record, ts=[1.0, 0.5, 0.01, 0.0])
  path2 = _write(tmp_path / "other.json", other)
  b = generation.generate(r, generation.Settings(num=4, grid=path2), progress=False)
  assert len(r.programs) == 1 and b.compile_seconds == 0.0
  np.testing.assert_array_equal(b.ts, np.asarray(other["ts"], np.float32))
  assert not np.allclose(a.samples, b.samples)
  # Another sampler: allowed, with a warning.
  with pytest.warns(UserWarning, match="was fit for the sampler 'dpmpp_2m'"):
    assert generation.plan(r, generation.Settings(num=4, grid=path, sampler="unipc")).settings.steps == 3
  # Refused, one line each, before anything is compiled.
  raw = restore.restore(wd, use_ema=False)  # other parameters
  bad = {
      "another_model": (raw, generation.Settings(num=4, grid=path), "was fit for another model"),
      "steps": (r, generation.Settings(num=4, grid=path, steps=4), "has 3 steps but steps=4"),
      "schedule": (r, generation.Settings(num=4, grid=_write(
          tmp_path / "sch.json", dict(record, schedule="CosineSchedule(s=0.01, logsnr_min=-20.0)"))),
                   "was fit for the schedule CosineSchedule(s=0.01"),
      "editing": (r, generation.Settings(num=4, grid=path, strength=0.5), "needs a named grid"),
      "missing": (r, generation.Settings(num=4, grid=str(tmp_path / "nope.json")),
                  "valid grids are: consistency, karras, uniform_logsnr, uniform_t, or a grid file"),
  }
  for name, (model, s, message) in bad.items():
    with pytest.raises(ValueError) as e:
      generation.plan(model, s)
    assert message in str(e.value) and "\n" not in str(e.value), (name, str(e.value))


def _sample_main(args):
  import sample  # sample.py at the repository root
  from jdiff.utils import cli
  sample.FLAGS.unparse_flags()
  sample.FLAGS(["sample.py", "--noprogress", *args])
  return cli.run_main(sample._main, ["sample.py"], False)


def test_sample_py_takes_a_grid_file_and_refuses_a_foreign_one(fitted, tmp_path, capsys):
  wd, _, path, record = fitted
  out = tmp_path / "s.png"
  assert _sample_main([f"--workdir={wd}", "--num=4", f"--grid={path}", f"--out={out}"]) == 0
  info = json.loads((tmp_path / "s.json").read_text())
  assert info["ts"] == [float(np.float32(t)) for t in record["ts"]]
  assert info["settings"]["grid"] == path and info["settings"]["steps"] == 3
  assert f"--grid={path}" in info["command"]
  capsys.readouterr()
  cases = [(["--raw"], "was fit for another model"), (["--steps=5"], "has 3 steps but steps=5"),
           ([f"--grid={_write(tmp_path / 'bad.json', 'nope')}"], "is not readable JSON")]
  for extra, message in cases:
    args = [f"--workdir={wd}", "--num=4", f"--grid={path}", f"--out={tmp_path / 'x.png'}"] + extra
    assert _sample_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: grid file") and message in err[0], err
  assert not (tmp_path / "x.json").exists()


@pytest.mark.slow  # ~12 s; default run: the fit and grid-file tests of this module
def test_fit_grid_cli_on_the_exact_mixture(tmp_path):
  import subprocess
  import sys
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = lambda *args: subprocess.run([sys.executable, "tools/fit_grid.py", *args], capture_output=True,
                                     text=True, cwd=sm.REPO, env=env, timeout=300)
  out = str(tmp_path / "toy_{steps}.json")
  p = run("--toy=cosine", "--steps=2,3", "--num_train=8", "--num_heldout=4", "--batch_size=4",
          "--iters=2", f"--out={out}")
  assert p.returncode == 0, p.stderr[-2000:]
  for k in (2, 3):
    g = grid_fit.read_grid_file(out.format(steps=k))
    assert g.steps == k and g.sampler == "dpmpp_2m" and g.schedule == repr(jdiff.get_schedule("cosine"))
    assert g.model_hash == grid_fit.params_hash(jdiff.toy.default_mixture())
    assert g.record["fit"]["num_train"] == 8 and "--toy=cosine" in g.record["command"]
  p = run("--toy=cosine", "--steps=2,3", f"--out={tmp_path / 'one.json'}")
  assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == (
      "error: with several --steps, --out must contain {steps} (one file per step count)")
