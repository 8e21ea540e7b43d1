"""Progressive distillation (jdiff.distillation) against exact answers: the target's defining identity
(one student DDIM step from z_t lands on the teacher's two steps), a hand-computed loss, and one
distillation round with the exact denoiser of Gaussian data as teacher, whose two-step DDIM map is linear,
so a student that is one scalar per grid time can match it exactly."""
import dataclasses
import json
import os
import sys

import _gaussian
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdiff import distillation as pd
from jdiff import keys, samplers, sampling, schedules
from jdiff.parametrization import make_denoiser

S = 0.8  # x0 ~ N(0, S^2 I)


def exact_x0(schedule):
  return _gaussian.exact_x0(schedule, S)


@pytest.mark.parametrize("name", ["cosine", "flow"])
def test_one_student_step_lands_on_two_teacher_steps(name):
  sched = schedules.get_schedule(name)
  teacher = make_denoiser(exact_x0(sched), None, sched, "x0")
  z = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
  for t, t_mid, t_end in ((0.75, 0.625, 0.5), (0.25, 0.125, 0.0), (1.0, 0.75, 0.5)):
    tb = lambda v: jnp.full((6,), v, jnp.float32)
    ddim = samplers.ddim()  # the library's own DDIM step, eta = 0
    keys_ = jax.random.split(jax.random.PRNGKey(1), 6)
    f32, hp = jnp.float32, {"eta": jnp.float32(0.0)}
    mid, _ = ddim.step(teacher, sched, samplers.XState(z), f32(t), f32(t_mid), keys_, hp)
    two, _ = ddim.step(teacher, sched, mid, f32(t_mid), f32(t_end), keys_, hp)
    x_tilde = pd.two_step_target(lambda x, s: teacher(x, s).x0, sched, z, tb(t), tb(t_mid), tb(t_end))
    one = pd.ddim_step(sched, x_tilde, z, tb(t), tb(t_end))
    np.testing.assert_allclose(np.asarray(one), np.asarray(two.x), rtol=1e-4, atol=1e-5)


def test_loss_hand_case():
  """A student whose x0 is 0 on the flow schedule at N = 1: t = 1, t_end = 0, so the target is the
  teacher's two-step sample and the weight is max(snr(1), 1) = 1: loss = mean(x_tilde^2)."""
  sched = schedules.get_schedule("flow")
  teacher_x0 = lambda x, t: make_denoiser(exact_x0(sched), None, sched, "x0")(x, t).x0
  x0 = jax.random.normal(jax.random.PRNGKey(2), (5, 4))
  key = jax.random.PRNGKey(3)
  loss = pd.progressive_distillation_loss(lambda p, z, t, c: jnp.zeros_like(z), None, teacher_x0, sched,
                                          x0, key, student_steps=1, parametrization="x0")
  eps = keys.example_normal(jax.random.split(key)[1], jnp.arange(5), (4,))  # the documented draw
  # On flow at t = 1: z_1 = eps and x0_hat(z_1, 1) = 0 (alpha = 0), so z_1/2 = (sigma_1/2 / sigma_1) z_1.
  z_half = 0.5 * eps
  c = S * S * 0.5 / (0.25 * S * S + 0.25)  # E[x0 | z] at t = 1/2: alpha S^2 / (alpha^2 S^2 + sigma^2)
  # The step 1/2 -> 0 lands on x0_hat(z_1/2) = c z_1/2, which is the target (sigma_0 = 0).
  want = jnp.mean(jnp.square(c * z_half), axis=1)
  np.testing.assert_allclose(np.asarray(loss), np.asarray(want), rtol=1e-5)


def test_one_round_on_the_exact_teacher_matches_two_teacher_steps():
  """Teacher: the exact Gaussian denoiser sampled by DDIM with 8 steps; student: x0_hat = c_i z_t, one
  scalar per student grid time (4 steps), trained by the loss from c = 0. The student's 4-step DDIM
  samples then equal the teacher's 8-step ones."""
  sched = schedules.get_schedule("cosine")
  teacher = make_denoiser(exact_x0(sched), None, sched, "x0")
  n = 4

  def student(c, z, t, cond):
    del cond
    i = jnp.clip(jnp.round(t * n).astype(jnp.int32) - 1, 0, n - 1)
    return c[i][:, None] * z

  x0 = jax.random.normal(jax.random.PRNGKey(4), (256, 3)) * S
  opt = optax.adam(0.05)
  c = jnp.zeros((n,))
  state = opt.init(c)

  @jax.jit
  def step(c, state, k):
    loss, g = jax.value_and_grad(lambda c: jnp.mean(pd.progressive_distillation_loss(
        student, c, lambda z, t: teacher(z, t).x0, sched, x0, k, n, parametrization="x0")))(c)
    upd, state = opt.update(g, state)
    return optax.apply_updates(c, upd), state, loss

  for k in range(600):
    c, state, loss = step(c, state, jax.random.PRNGKey(100 + k))
  assert float(loss) < 1e-6
  z = jax.random.normal(jax.random.PRNGKey(5), (64, 3))
  ts_teacher, ts_student = jnp.linspace(1.0, 0.0, 2 * n + 1), jnp.linspace(1.0, 0.0, n + 1)
  want = sampling.sample("ddim", teacher, sched, z, ts_teacher, jax.random.PRNGKey(6)).x
  got = sampling.sample("ddim", make_denoiser(student, c, sched, "x0"), sched, z, ts_student,
                        jax.random.PRNGKey(6)).x
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-3, atol=1e-3)
  # ...and differ from the teacher's own 4 steps (the test can tell a student from the teacher).
  own4 = sampling.sample("ddim", teacher, sched, z, ts_student, jax.random.PRNGKey(6)).x
  assert float(jnp.max(jnp.abs(own4 - want))) > 10 * float(jnp.max(jnp.abs(got - want)))


@pytest.mark.parametrize("teacher,student,ok", [(8, 4, True), (8, 1, True), (256, 64, True),
                                                (8, 3, False), (8, 8, False), (6, 4, False),
                                                (12, 3, True), (12, 2, False)])
def test_student_steps_must_be_a_power_of_two_fraction(teacher, student, ok):
  if ok:
    assert pd.check_student_steps(teacher, student) == teacher // student
  else:
    with pytest.raises(ValueError, match="teacher's divided by a power of two"):
      pd.check_student_steps(teacher, student)


# ----------------------------------------------------------------------------------------------------
# Through train.py / sample.py: progressive and consistency distillation of a tiny toy teacher
# ----------------------------------------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = ["--config.training.sample_every=0", "--config.training.log_every=1"]


_cli = _gaussian.cli


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("teacher") / "run")
  r = _cli("train.py", ["--config=configs/toy2d.py", f"--workdir={wd}", "--config.training.num_steps=4",
                        *QUIET])
  assert r.returncode == 0, r.stderr[-3000:]
  return wd


def _losses(wd):
  return [json.loads(l)["loss"] for l in open(os.path.join(wd, "metrics.jsonl"))]


def test_progressive_distillation_rounds_chain_resume_exactly_and_sample(teacher, tmp_path):
  """teacher_steps 8 -> student_steps 2 is two rounds from one command (round_1: 4 steps, round_2: 2),
  each a workdir that sample.py draws from with its own step count; each student starts from its
  teacher's EMA weights; a round resumed mid-way gives the losses of a straight run."""
  pd_args = ["--config=configs/toy2d.py", "--config.training.objective=progressive_distillation",
             f"--config.distill.teacher_workdir={teacher}", "--config.distill.teacher_steps=8",
             "--config.distill.student_steps=2", "--config.training.ckpt_every=2", *QUIET]
  wd, split = str(tmp_path / "pd"), str(tmp_path / "split")
  one = pd_args[:4] + ["--config.distill.student_steps=4"] + pd_args[5:]
  # The two rounds, and round 1 alone run 2 steps then resumed to 4, in one train.py worker process.
  runs = _gaussian.train_cases(
      [("pd", pd_args + [f"--workdir={wd}", "--config.training.num_steps=4"])] +
      [(n, one + [f"--workdir={split}", f"--config.training.num_steps={n}"]) for n in (2, 4)], tmp_path)
  r = runs["pd"]
  assert r.returncode == 0, r.stderr[-3000:]
  assert "round 2/2: 4 -> 2 steps" in r.stdout + r.stderr
  for k, steps in ((1, 4), (2, 2)):
    cfg = json.load(open(os.path.join(wd, f"round_{k}", "config.json")))
    assert (cfg["sampling"]["sampler"], cfg["sampling"]["steps"]) == ("ddim", steps)
    out = str(tmp_path / f"r{k}.npz")
    r = _gaussian.sample_in_process([f"--workdir={os.path.join(wd, f'round_{k}')}", "--num=3", f"--out={out}"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{steps} NFE per batch" in r.stdout + r.stderr
    assert np.all(np.isfinite(np.load(out)["samples"]))
  # Resume: round 1 again, 2 steps then 4, equals the straight 4 steps (one round: in the workdir).
  for n in (2, 4):
    assert runs[n].returncode == 0, runs[n].stderr[-3000:]
  assert _losses(split) == _losses(os.path.join(wd, "round_1"))


def test_the_student_starts_from_the_teacher(teacher):
  sys.path.insert(0, REPO)
  from configs import toy2d
  from jdiff.generation import restore as restore_lib
  from jdiff.training import loop
  c = toy2d.get_config()
  c.training.objective = "progressive_distillation"
  c.distill.teacher_workdir, c.distill.teacher_steps = teacher, 8
  from jdiff.training import distill
  exp = loop.Experiment(distill.round_config(c, teacher, 8, 4))
  state = exp.init_state()
  want = restore_lib.restore(workdir=teacher).params
  for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("teacher_labels", [True, False])
def test_a_student_reads_labels_exactly_when_the_run_it_starts_from_did(teacher_labels, tmp_path):
  """A class-conditional teacher (the default Fashion-MNIST model) gives a conditional student whatever
  the student's config says, and an unconditional one an unconditional student: through
  distill.teacher_workdir (progressive distillation, reflow) and training.init_from (consistency
  distillation, fine-tuning), the student takes the teacher's weights, label embedding included."""
  import _sample_models
  from jdiff.generation import restore as restore_lib
  from jdiff.training import distill, loop
  wd = _sample_models.write_workdir(str(tmp_path / "teacher"),
                                    _sample_models.unet_config(conditional=teacher_labels),
                                    (28, 28, 1), 10 if teacher_labels else 0)
  want = jax.tree_util.tree_leaves(restore_lib.restore(workdir=wd).params)
  c = _sample_models.unet_config(conditional=not teacher_labels)
  c.training.num_steps = 10
  c.training.objective = "reflow"
  c.distill.teacher_workdir = wd
  assert distill.with_teacher_model(c, wd).training.conditional == teacher_labels
  c.training.objective = "denoising"
  c.training.init_from = wd
  exp = loop.Experiment(distill.with_init_model(c))
  assert exp.config.training.conditional == teacher_labels
  assert exp.num_classes == (10 if teacher_labels else 0)
  got = jax.tree_util.tree_leaves(exp.init_state().params)
  assert len(got) == len(want)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow  # ~40 s; default run: the CD loss (test_consistency) and iCT through train.py (same loop)
def test_consistency_distillation_trains_resumes_exactly_and_samples_in_one_step(teacher, tmp_path):
  """The student (consistency model, edm) distills the v-prediction cosine teacher; the EMA target
  network is part of the checkpoint, so 2 + 2 steps give the losses of 4 straight."""
  cd_args = ["--config=configs/toy2d.py", "--config.training.objective=consistency_distillation",
             "--config.diffusion.schedule=edm", "--config.diffusion.parametrization=consistency",
             "--config.sampling.sampler=consistency", "--config.sampling.grid=consistency",
             "--config.sampling.steps=2", f"--config.distill.teacher_workdir={teacher}",
             "--config.training.ckpt_every=2", *QUIET]
  _resumes_exactly_and_samples_in_one_step(cd_args, tmp_path)


def _resumes_exactly_and_samples_in_one_step(args, tmp_path):
  """``train.py args`` for 4 steps straight and 2 + 2 resumed give the same losses (the state, with any
  target network, is all in the checkpoint); ``sample.py --steps=1`` draws in one network call."""
  straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
  r = _cli("train.py", args + [f"--workdir={straight}", "--config.training.num_steps=4"])
  assert r.returncode == 0, r.stderr[-3000:]
  for n in (2, 4):
    r = _cli("train.py", args + [f"--workdir={split}", f"--config.training.num_steps={n}"])
    assert r.returncode == 0, r.stderr[-3000:]
  assert _losses(split) == _losses(straight) and len(_losses(straight)) == 4
  r = _gaussian.sample_in_process([f"--workdir={straight}", "--num=3", "--steps=1", f"--out={tmp_path / 's.npz'}"])
  assert r.returncode == 0 and "1 NFE per batch" in r.stdout + r.stderr, r.stderr[-3000:]


CD_INIT = ["--config=configs/toy2d.py", "--config.training.objective=consistency_distillation",
           "--config.diffusion.schedule=edm", "--config.diffusion.parametrization=consistency",
           "--config.sampling.sampler=consistency", "--config.sampling.grid=consistency",
           "--config.sampling.steps=2", *QUIET]


def test_a_consistency_student_initialised_from_its_teacher_starts_as_its_denoiser(teacher):
  """training.init_from: the student takes the teacher's network and weights, read as the teacher's
  denoiser on the VE process under the boundary condition, so at step 0 f = c_skip x + (1 - c_skip)
  D_teacher."""
  sys.path.insert(0, REPO)
  from configs import toy2d
  from jdiff import consistency
  from jdiff.generation import restore as restore_lib
  from jdiff.parametrization import make_denoiser
  from jdiff.training import distill, loop
  c = toy2d.get_config()
  c.training.objective = "consistency_distillation"
  c.diffusion.schedule, c.diffusion.parametrization = "edm", "consistency"
  c.sampling.sampler, c.sampling.grid = "consistency", "consistency"
  c.distill.teacher_workdir = c.training.init_from = teacher
  exp = loop.Experiment(distill.with_init_model(c))
  assert (exp.config.consistency.base_schedule, exp.config.consistency.base_parametrization) == (
      "cosine", "v")
  t_run = restore_lib.restore(workdir=teacher)
  params = exp.init_state().params
  fn, _ = exp.model_fn()
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 2)) * 2.0
  t = jnp.array([0.0, 0.2, 0.5, 0.9])
  sig = exp.schedule.sigma(t)
  c_skip = consistency.coefficients(sig, consistency.sigma_min(exp.schedule))[0][:, None]
  d = consistency.ve_denoiser(make_denoiser(t_run.model_fn, t_run.params, t_run.schedule,
                                            t_run.parametrization), t_run.schedule)
  np.testing.assert_allclose(np.asarray(fn(params, x, t, None)),
                             np.asarray(c_skip * x + (1 - c_skip) * d(x, sig)), rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # ~60 s; default run: the test above (step 0) and the CD run's resume without init_from
def test_a_consistency_student_initialised_from_its_teacher_resumes_exactly_and_samples(teacher, tmp_path):
  """A resumed run with training.init_from continues from its own checkpoint, not from the teacher."""
  _resumes_exactly_and_samples_in_one_step(
      CD_INIT + [f"--config.distill.teacher_workdir={teacher}", f"--config.training.init_from={teacher}",
                 "--config.training.ckpt_every=2"], tmp_path)


def test_init_from_fine_tunes_with_the_runs_network_process_and_weights(teacher):
  """A denoising run with training.init_from takes that run's model and diffusion sections (whatever
  its own config says) and starts from its EMA weights."""
  sys.path.insert(0, REPO)
  from configs import toy2d
  from jdiff.generation import restore as restore_lib
  from jdiff.training import distill, loop
  c = toy2d.get_config()
  c.diffusion.schedule, c.diffusion.parametrization = "flow", "flow"  # replaced by the run's
  c.training.init_from = teacher
  exp = loop.Experiment(distill.with_init_model(c))
  assert (exp.config.diffusion.schedule, exp.config.diffusion.parametrization) == ("cosine", "v")
  want = restore_lib.restore(workdir=teacher).params
  for a, b in zip(jax.tree_util.tree_leaves(exp.init_state().params), jax.tree_util.tree_leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow  # ~40 s (three train.py runs); default run: test_bad_teacher_or_steps_is_one_error
def test_init_from_a_consistency_model_or_missing_run_is_one_error(teacher, tmp_path):
  cd = str(tmp_path / "cd")
  r = _cli("train.py", CD_INIT + [f"--config.distill.teacher_workdir={teacher}", f"--workdir={cd}",
                                  "--config.training.num_steps=2"])
  assert r.returncode == 0, r.stderr[-3000:]
  for src, want in ((cd, "is a consistency model; a consistency model starts from a denoiser"),
                    (str(tmp_path / "nowhere"), "training.init_from: workdir")):
    r = _cli("train.py", CD_INIT + [f"--config.distill.teacher_workdir={teacher}",
                                    f"--config.training.init_from={src}",
                                    f"--workdir={tmp_path / 'student'}", "--config.training.num_steps=2"])
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and want in last, last
    assert not os.path.exists(tmp_path / "student" / "checkpoints")


_BAD_TEACHER = {"missing": "does not exist", "damaged": "damaged",
                "other_data": "makes data of shape (2,) but this run's data has shape (8, 8, 1)",
                "steps": "teacher's divided by a power of two"}


@pytest.fixture(scope="module")
def bad_teacher_runs(teacher, tmp_path_factory):
  """Every bad-teacher case's train.py run, in one process."""
  import shutil
  tmp = tmp_path_factory.mktemp("bad_teacher")
  cases = []
  for case in _BAD_TEACHER:
    args = ["--config=configs/toy2d.py", "--config.training.objective=progressive_distillation",
            "--config.distill.teacher_steps=8", f"--workdir={tmp / case / 'student'}", *QUIET]
    t = teacher
    if case == "missing":
      t = str(tmp / case / "nowhere")
    elif case == "damaged":
      t = str(tmp / case / "damaged")
      shutil.copytree(teacher, t)
      ckpt = os.path.join(t, "checkpoints", "4")
      victim = max((os.path.join(d, f) for d, _, fs in os.walk(ckpt) for f in fs
                    if "state" in d and not f.startswith(".")), key=os.path.getsize)
      with open(victim, "r+b") as f:
        f.seek(os.path.getsize(victim) // 2)
        f.write(b"\xff" * 64)
    elif case == "other_data":
      args += ["--config.data.name=digits"]
    elif case == "steps":
      args += ["--config.distill.student_steps=3"]
    cases.append((case, args + [f"--config.distill.teacher_workdir={t}"]))
  return tmp, _gaussian.train_cases(cases, tmp)


@pytest.mark.parametrize("case", list(_BAD_TEACHER))
def test_bad_teacher_or_steps_is_one_error(bad_teacher_runs, case):
  tmp, runs = bad_teacher_runs
  r = runs[case]
  assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and _BAD_TEACHER[case] in last, last
  assert "Traceback" not in r.stderr
  assert not os.path.exists(tmp / case / "student" / "checkpoints")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _StateBeforeTargets:
  """TrainState as it was before consistency distillation added ``target``."""
  step: object
  params: object
  ema_params: object
  opt_state: object
  rng: object
  skipped: object


def test_checkpoints_written_before_the_target_field_still_restore(tmp_path):
  """Only consistency distillation's state has the ``target`` subtree: a checkpoint written with the
  six-field state restores into today's state (orbax refuses a tree of another structure, even one that
  differs by a None), and a state with a target round-trips too."""
  import optax
  from jdiff.experiment import checkpoint as ckpt_lib
  from jdiff.experiment.state import create_state
  params = {"w": jnp.ones((2, 3)), "b": jnp.arange(3.0)}
  state = create_state(params, optax.adam(1e-3), 0)
  old = _StateBeforeTargets(state.step, state.params, state.ema_params, state.opt_state, state.rng,
                            state.skipped)
  with_target = create_state(params, optax.adam(1e-3), 0, with_target=True)
  for name, saved, into in (("old", old, state), ("cd", with_target, with_target)):
    ck = ckpt_lib.Checkpointer(str(tmp_path / name), 2)
    ck.save(1, saved, {}, {})
    restored, _, _ = ck.restore(1, jax.eval_shape(lambda: into))
    ck.close()
    assert (restored.target is None) == (name == "old")
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(into)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
