"""Reflow (jdiff.reflow, Liu et al. 2023) against exact answers, and through train.py / sample.py.

Gaussian data N(0, S^2 I) on the flow schedule has an exact teacher (``_gaussian.exact_x0``) whose ODE
maps noise z to S z along curved paths; its reflow (pairs (z, S z)) has the straight velocity
``(1 - S) z``, a linear function of ``x_t`` with coefficient ``(1 - S) / ((1 - t) S + t)``. A model
``v = c(t) x`` (``c`` a polynomial in t) can represent both fields, so training it by the reflow loss on
coupled pairs must give straight paths, and on independent pairs the teacher's curved ones."""
import json
import os

import _gaussian
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdiff import data as jdata
from jdiff import grids, losses, reflow, sampling, schedules
from jdiff.parametrization import make_denoiser

S = 0.8
FLOW = schedules.get_schedule("flow")


def test_loss_uses_the_pairs_noise_hand_case():
  """An identity 'velocity' model: out - target = x_t - (z - x0) = (2 - t) x0 - (1 - t) z with the
  pair's z and t from the documented draw; with one_step, t = 1: x0 exactly."""
  x0 = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
  z = jax.random.normal(jax.random.PRNGKey(1), (6, 3))
  key = jax.random.PRNGKey(2)
  ident = lambda p, x, t, c: x
  got = reflow.reflow_loss(ident, None, FLOW, x0, z, key, time_sampling="uniform")
  t = losses.sample_times(jax.random.split(key)[0], jnp.arange(6), "uniform", t_min=1e-5)[:, None]
  np.testing.assert_allclose(np.asarray(got), np.mean(np.square((2 - t) * x0 - (1 - t) * z), axis=1),
                             rtol=1e-5)
  got1 = reflow.reflow_loss(ident, None, FLOW, x0, z, key, one_step=True)
  np.testing.assert_allclose(np.asarray(got1), np.mean(np.square(x0), axis=1), rtol=1e-6)


def test_loss_refuses_other_schedules_and_unpaired_shapes():
  x0 = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="needs a flow-matching model"):
    reflow.reflow_loss(lambda p, x, t, c: x, None, schedules.get_schedule("cosine"), x0, x0,
                       jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="same shape"):
    reflow.reflow_loss(lambda p, x, t, c: x, None, FLOW, x0, jnp.zeros((2, 4)), jax.random.PRNGKey(0))


def _teacher_straightness_per_unit_z2():
  """int_0^1 (1 - S - std'(t))^2 dt for the exact ODE path x(t) = std(t) z, std = sqrt((1-t)^2 S^2 +
  t^2) (the path's displacement is (1 - S) z, its velocity std'(t) z)."""
  t = np.linspace(0.0, 1.0, 200001)
  std = np.sqrt((1 - t) ** 2 * S * S + t * t)
  dstd = (t - (1 - t) * S * S) / std
  return float(np.trapezoid((1 - S - dstd) ** 2, t))


def test_straightness_of_the_exact_teacher_and_of_its_exact_reflow():
  z = jax.random.normal(jax.random.PRNGKey(3), (8, 5))
  teacher = make_denoiser(_gaussian.exact_x0(FLOW, S), None, FLOW, "x0")
  got = np.asarray(reflow.straightness(teacher, z, steps=2000)) / np.mean(np.square(z), axis=1)
  np.testing.assert_allclose(got, _teacher_straightness_per_unit_z2(), rtol=2e-3)
  # The reflowed field is straight: S = 0 (float32 rounding only).
  straight = lambda p, x, t, c: ((1 - S) / ((1 - t) * S + t))[:, None] * x
  flat = reflow.straightness(make_denoiser(straight, None, FLOW, "flow"), z, steps=50)
  assert float(jnp.max(flat)) < 1e-9


def _poly_velocity(params, x, t, cond):
  del cond
  return jnp.polyval(params, t)[:, None] * x


def _fit(x0, z, steps=400):
  """The reflow loss on pairs (z, x0) minimised over a degree-4 polynomial c(t) (full batch, Adam)."""
  opt = optax.adam(0.05)
  params = jnp.zeros((5,))

  @jax.jit
  def step(params, opt_state, k):
    loss, g = jax.value_and_grad(lambda p: jnp.mean(reflow.reflow_loss(
        _poly_velocity, p, FLOW, x0, z, k, time_sampling="uniform")))(params)
    updates, opt_state = opt.update(g, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = opt.init(params)
  for k in jax.random.split(jax.random.PRNGKey(4), steps):
    params, opt_state, _ = step(params, opt_state, k)
  return params


def test_reflow_on_the_teachers_own_pairs_straightens_its_paths():
  """Pairs drawn by the library's ODE sampler from the exact teacher are (z, S z); the reflow loss on
  them learns straight paths (one Euler step lands on the pair), on independent pairs it does not."""
  n, d = 512, 4
  z = jax.random.normal(jax.random.PRNGKey(5), (n, d))
  teacher = make_denoiser(_gaussian.exact_x0(FLOW, S), None, FLOW, "x0")
  ts = grids.get_grid("uniform_t", FLOW, 40)
  x = sampling.sample(sampling.get_sampler("heun"), teacher, FLOW, z, ts, jax.random.PRNGKey(6)).x
  # the ODE map z -> S z, up to Heun's discretisation error at 40 steps (~1.6e-3 relative)
  np.testing.assert_allclose(np.asarray(x), S * np.asarray(z), rtol=4e-3, atol=1e-4)
  z_test = jax.random.normal(jax.random.PRNGKey(7), (256, d))
  s_teacher = float(jnp.mean(reflow.straightness(teacher, z_test)))
  coupled = _fit(x, z)
  independent = _fit(S * jax.random.normal(jax.random.PRNGKey(8), (n, d)), z)
  s_coupled = float(jnp.mean(reflow.straightness(
      make_denoiser(_poly_velocity, coupled, FLOW, "flow"), z_test)))
  s_independent = float(jnp.mean(reflow.straightness(
      make_denoiser(_poly_velocity, independent, FLOW, "flow"), z_test)))
  assert s_coupled < 0.01 * s_teacher, (s_coupled, s_teacher)
  assert s_independent > 0.5 * s_teacher, (s_independent, s_teacher)
  # One Euler step (x_0 = z - v(z, 1)) of the reflowed model lands on S z; the teacher's gives 0.
  one = z_test - _poly_velocity(coupled, z_test, jnp.ones((256,)), None)
  assert float(jnp.sqrt(jnp.mean(jnp.square(one - S * z_test)))) < 0.02


def test_pipeline_carries_a_sources_extra_fields_with_its_examples():
  """Each batch row's noise is the noise of the same dataset example (here: minus its image)."""
  x = np.random.default_rng(0).normal(size=(40, 3, 3, 1)).astype(np.float32)
  src = jdata.ArraySource(x, np.arange(40) % 4, name="pairs", split="train", num_classes=4,
                          extras={"noise": -x})
  pipe = jdata.Pipeline(src, 8, seed=3, num_local_devices=2, process_index=0, process_count=1)
  for step in (0, 7):
    b = pipe.batch_at(step)
    assert b["noise"].shape == (2, 4, 3, 3, 1) == pipe.shapes["noise"]
    np.testing.assert_array_equal(b["noise"], -b["image"])  # float images pass through unscaled
  with pytest.raises(ValueError, match="random_flip would flip"):
    jdata.Pipeline(src, 8, num_local_devices=1, process_index=0, process_count=1, random_flip=True)
  with pytest.raises(ValueError, match="must have 40 rows"):
    jdata.ArraySource(x, np.zeros(40), name="p", split="train", num_classes=None,
                      extras={"noise": x[:3]})


# ----------------------------------------------------------------------------------------------------
# Through train.py / sample.py, on a tiny flow-matching toy teacher
# ----------------------------------------------------------------------------------------------------

QUIET = ["--config.training.sample_every=0", "--config.training.log_every=1"]
FLOW_TOY = ["--config=configs/toy2d.py", "--config.diffusion.schedule=flow",
            "--config.diffusion.parametrization=flow"]
_cli = _gaussian.cli


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("teacher") / "run")
  r = _cli("train.py", FLOW_TOY + [f"--workdir={wd}", "--config.training.num_steps=30", *QUIET])
  assert r.returncode == 0, r.stderr[-3000:]
  return wd


def _args(teacher, objective="reflow"):
  return ["--config=configs/toy2d.py", f"--config.training.objective={objective}",
          f"--config.distill.teacher_workdir={teacher}", "--config.reflow.num_pairs=1100",
          "--config.reflow.seed=7", "--config.training.ckpt_every=2", "--config.sampling.sampler=euler",
          "--config.sampling.steps=2", *QUIET]


def _losses(wd):
  return [json.loads(l)["loss"] for l in open(os.path.join(wd, "metrics.jsonl"))]


def _pairs(wd):
  out = {}
  for f in sorted(os.listdir(os.path.join(wd, "pairs"))):
    if f.endswith(".npz"):
      with np.load(os.path.join(wd, "pairs", f)) as z:
        out[f] = {k: z[k] for k in z}
  return out


def test_reflow_run_draws_the_teachers_samples_resumes_exactly_and_samples(teacher, tmp_path):
  """Pair i is the teacher's sample.py sample i at the pairs' seed (noise and sample); a run resumed
  mid-way (pairs kept) gives the losses of a straight run; a lost chunk is redrawn identically; the
  student starts from the teacher and samples in 2 Euler steps."""
  straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
  # The straight run and the split one (2 steps, then resumed to 4) in one train.py worker process.
  runs = _gaussian.train_cases(
      [("straight", _args(teacher) + [f"--workdir={straight}", "--config.training.num_steps=4"])] +
      [(n, _args(teacher) + [f"--workdir={split}", f"--config.training.num_steps={n}"]) for n in (2, 4)],
      tmp_path)
  r = runs["straight"]
  assert r.returncode == 0, r.stderr[-3000:]
  assert "drawing 1100 (noise, sample) pairs" in r.stdout + r.stderr
  pairs = _pairs(straight)
  assert sorted(pairs) == ["pairs_000000000.npz", "pairs_000001000.npz"]
  out = str(tmp_path / "t.npz")
  r = _gaussian.sample_in_process([f"--workdir={teacher}", "--num=5", "--seed=7", "--save_noise", f"--out={out}"])
  assert r.returncode == 0, r.stderr[-3000:]
  with np.load(out) as s:
    first = pairs["pairs_000000000.npz"]
    np.testing.assert_allclose(first["x0"][:5], s["samples"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(first["noise"][:5], s["x_init"])
  for n in (2, 4):
    r = runs[n]
    assert r.returncode == 0, r.stderr[-3000:]
    assert ("drawing" in r.stdout + r.stderr) == (n == 2)  # the resumed run keeps its pairs
  assert _losses(split) == _losses(straight) and len(_losses(straight)) == 4
  # A chunk lost (e.g. a run killed while drawing) is drawn again, the same.
  os.remove(os.path.join(split, "pairs", "pairs_000001000.npz"))
  r = _cli("train.py", _args(teacher) + [f"--workdir={split}", "--config.training.num_steps=5"])
  assert r.returncode == 0, r.stderr[-3000:]
  again = _pairs(split)["pairs_000001000.npz"]
  np.testing.assert_array_equal(again["noise"], pairs["pairs_000001000.npz"]["noise"])
  np.testing.assert_allclose(again["x0"], pairs["pairs_000001000.npz"]["x0"], atol=1e-6)
  r = _gaussian.sample_in_process([f"--workdir={straight}", "--num=3", f"--out={tmp_path / 's.npz'}"])
  assert r.returncode == 0 and "2 NFE per batch" in r.stdout + r.stderr, r.stderr[-3000:]


def test_the_reflow_student_starts_from_the_teacher(teacher):
  import sys
  sys.path.insert(0, _gaussian.REPO)
  from configs import toy2d
  from jdiff.generation import restore as restore_lib
  from jdiff.training import distill, loop
  c = toy2d.get_config()
  c.training.objective = "reflow"
  c.distill.teacher_workdir = teacher
  exp = loop.Experiment(distill.with_teacher_model(c, teacher))
  want = restore_lib.restore(workdir=teacher).params
  for a, b in zip(jax.tree_util.tree_leaves(exp.init_state().params), jax.tree_util.tree_leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow  # ~40 s; default run: the reflow run itself (the same path with another objective)
def test_one_step_distillation_of_the_reflowed_model_samples_in_one_step(teacher, tmp_path):
  wd = str(tmp_path / "distill")
  r = _cli("train.py", _args(teacher, "reflow_distill") + [
      f"--workdir={wd}", "--config.training.num_steps=3", "--config.sampling.steps=1",
      "--config.reflow.sampler=euler", "--config.reflow.steps=4", "--config.reflow.grid=uniform_t"])
  assert r.returncode == 0, r.stderr[-3000:]
  assert "with euler (4 steps, uniform_t)" in r.stdout + r.stderr
  r = _gaussian.sample_in_process([f"--workdir={wd}", "--num=3", f"--out={tmp_path / 's.npz'}"])
  assert r.returncode == 0 and "1 NFE per batch" in r.stdout + r.stderr, r.stderr[-3000:]


_BAD = {"not_flow": "needs a flow-matching model", "stochastic": "need a deterministic (ODE) sampler",
        "other_pairs": "were drawn with other settings (seed: 7 there, 8 now)",
        "flip": "random_flip=False", "few_pairs": "fewer than one batch"}


@pytest.fixture(scope="module")
def bad_runs(teacher, tmp_path_factory):
  """Every bad-input case's train.py run (and the runs they start from) in one process."""
  tmp = tmp_path_factory.mktemp("bad_reflow")
  other = str(tmp / "cosine")  # a cosine / v-prediction toy teacher
  cases = [("cosine_teacher", ["--config=configs/toy2d.py", f"--workdir={other}",
                               "--config.training.num_steps=2", *QUIET])]
  for case in _BAD:
    args = _args(teacher) + [f"--workdir={tmp / case}", "--config.training.num_steps=2"]
    if case == "not_flow":
      args += [f"--config.distill.teacher_workdir={other}"]
    elif case == "stochastic":
      args += ["--config.reflow.sampler=ddpm"]
    elif case == "other_pairs":  # a run that drew its pairs with seed 7, resumed with seed 8
      cases.append(("pairs_drawn", list(args)))
      args += ["--config.reflow.seed=8", "--config.training.num_steps=3"]
    elif case == "flip":
      args += ["--config.data.random_flip=True"]
    elif case == "few_pairs":
      args += ["--config.reflow.num_pairs=10"]
    cases.append((case, args))
  return tmp, _gaussian.train_cases(cases, tmp)


@pytest.mark.parametrize("case", list(_BAD))
def test_bad_reflow_input_is_one_error(bad_runs, case):
  tmp, runs = bad_runs
  for setup in ("cosine_teacher", "pairs_drawn"):
    assert runs[setup].returncode == 0, runs[setup].stderr[-3000:]
  r, wd = runs[case], tmp / case
  assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and _BAD[case] in last, last
  assert "Traceback" not in r.stderr
  if case != "other_pairs":
    assert not os.path.exists(wd / "checkpoints") and not os.path.exists(wd / "pairs")


def test_pairs_refuse_a_teacher_sampler_that_the_config_makes_stochastic(tmp_path):
  """A teacher whose config records churn for its sampler (``sampling.hparams.heun.S_churn``) would draw
  pairs that are not its ODE's: refused, and accepted once ``reflow.sampler`` names an ODE solver."""
  import ml_collections
  import _sample_models as sm
  from jdiff.generation import restore
  from jdiff.training import reflow as reflow_run
  c = sm.mlp_config("flow")
  c.diffusion.schedule = "flow"
  c.sampling.sampler, c.sampling.grid = "heun", "uniform_t"
  c.sampling.hparams.heun = ml_collections.ConfigDict({"S_churn": 10.0})
  teacher = restore.restore(sm.write_workdir(str(tmp_path / "t"), c, (2,), 0), None)
  student = sm.mlp_config()
  with pytest.raises(ValueError, match=r"'heun' with \{'S_churn': 10.0\} draws noise"):
    reflow_run.settings(student, teacher, 8)
  student.reflow.sampler = "unipc"
  assert reflow_run.settings(student, teacher, 8).hparams == {}
  for name, hp, noisy in [("unipc", {}, False), ("ddpm", {}, True), ("heun", {}, False),
                          ("heun", {"S_churn": 1.0}, True), ("heun", {"S_churn": 1.0, "S_noise": 0.0}, False),
                          ("ddim", {"eta": 0.5}, True), ("ddim", {"eta": 0.0}, False)]:
    assert sampling.draws_noise(sampling.get_sampler(name), hp) is noisy, (name, hp)
