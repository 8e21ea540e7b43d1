"""Bad input, in one table: every case names what is wrong and how to fix it, in one line.

``CASES`` is the single list of jdiff's bad-input cases across the public API, ``sample.py``,
``train.py`` and ``eval.py`` (some repeat cases tested elsewhere, so that this table is the one place
listing them):

* ``api``: a Python expression (evaluated in ``_api_namespace``) that must raise ``ValueError``,
  ``TypeError`` or ``FileNotFoundError`` with a one-line message containing every fragment;
* ``sample.py`` / ``train.py`` / ``eval.py``: command-line arguments; the CLI must exit with status 2,
  print one ``error: ...`` line as its last stderr line with no traceback (a case with ``--debug``
  must show the traceback) and write nothing: no ``--out`` files, no workdir, no checkpoint directory.

As a user meets them: the cases in ``REAL_PROCESS`` (>= 10, every CLI, the ones naming a path among
them) and every ``eval.py`` case run as real processes, ``python sample.py ...`` from the repository
root with ``JAX_PLATFORMS=cpu``, and must print exactly one line on stderr, nothing else (no warning,
no log line, no traceback). They start with the first case, a few at a time, concurrently with the
others.

Speed: the other ``sample.py`` cases run in this process (flags re-parsed per case, as ``app.run``
would). ``train.py`` defines the same absl flags as ``sample.py``, so its other cases run in one worker
process (``tests/_bad_input_train_worker.py``) started with the first case.

Also here: sampling refuses non-finite samples (``--allow_nonfinite`` writes them, marked), and no
loader ever unpickles: the pickle payloads below would create a file if they were ever loaded.
"""
import collections
import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import _gaussian
import _sample_models as sm

REPO = sm.REPO

Case = collections.namedtuple("Case", "id where input message")

CASES = [
    # -- the public API -----------------------------------------------------------------------------
    Case("schedule_unknown", "api", "jdiff.get_schedule('cosin')",
         "unknown schedule 'cosin'; valid schedules are: cosine, edm, flow, linear"),
    Case("schedule_bad_parameter", "api", "jdiff.get_schedule('cosine', bta=1)",
         "has no parameter(s) bta; its parameters are: logsnr_min, s"),
    Case("add_noise_t_out_of_range", "api", "jdiff.add_noise(S, x, 1.5, x)",
         "t must lie in [0, 1] (data at 0, prior at 1)"),
    Case("add_noise_t_wrong_shape", "api", "jdiff.add_noise(S, x, np.zeros(3), x)",
         "t must be a scalar or have shape [batch]=(4,), got shape (3,)"),
    Case("add_noise_eps_wrong_shape", "api", "jdiff.add_noise(S, x, 0.5, np.zeros((4, 3)))",
         "eps must have the shape of x0 (4, 2), got (4, 3)"),
    Case("add_noise_integer_data", "api", "jdiff.add_noise(S, x.astype(np.int32), 0.5, x)",
         ("x0 must be a floating-point array, got dtype int32", "cast it with .astype(jnp.float32)")),
    Case("add_noise_nan_data", "api", "jdiff.add_noise(S, nan, 0.5, x)",
         "x0 contains NaN or Inf; pass finite values"),
    Case("grid_unknown", "api", "grids.get_grid('uniform', S, 10)",
         "unknown grid 'uniform'; valid grids are: consistency, karras, uniform_logsnr, uniform_t"),
    Case("grid_steps_zero", "api", "grids.get_grid('uniform_t', S, 0)",
         "steps must be an integer >= 1, got 0"),
    Case("grid_t_max_out_of_range", "api", "grids.get_grid('uniform_t', S, 4, t_max=1.5)",
         "t_max must lie in (0, 1], got 1.5"),
    Case("sample_fn_steps_negative", "api", "sampling.make_sample_fn(mf, S, 'x0', 'ddim', -2)",
         "steps must be an integer >= 1, got -2"),
    Case("sampler_unknown", "api", "sampling.make_sample_fn(mf, S, 'x0', 'dpmpp', 4)",
         "unknown sampler 'dpmpp'; valid samplers are: consistency, ddim, ddpm, dpmpp_2m"),
    Case("parametrization_unknown", "api", "sampling.make_sample_fn(mf, S, 'epsilon', 'ddim', 4)",
         "unknown parametrization 'epsilon'; valid parametrizations are: eps, flow, score, v, x0"),
    Case("sampler_schedule_mismatch", "api", "sampling.make_sample_fn(mf, S, 'x0', 'langevin', 4)",
         ("sampler 'langevin' is for variance-exploding schedules", "use ddpm/ddim/euler/heun")),
    Case("sampler_option_unknown_value", "api", "jdiff.get_sampler('ddpm', variance='big')",
         "unknown ddpm variance 'big'; valid ddpm variances are: large, learned, small"),
    Case("grid_length_mismatch", "api", "fn(None, (4, 2), grids.get_grid('uniform_t', S, 3), key)",
         "ts has 4 entries but this sample fn was built for steps=4 (needs 5); rebuild with steps=3"),
    Case("grid_ascending", "api", "fn(None, (4, 2), ts[::-1], key)",
         "ts must be strictly descending (from the prior at 1 to the data at 0)"),
    Case("sample_x_init_nan", "api", "fn(None, nan, ts, key)",
         "x_init contains NaN or Inf; pass finite values"),
    Case("sample_x_init_integer", "api", "fn(None, x.astype(np.int32), ts, key)",
         ("x_init must be a floating-point array", "cast it with .astype(jnp.float32)")),
    Case("sample_key_not_a_key", "api", "fn(None, (4, 2), ts, 0)",
         "key must be a PRNG key such as jax.random.PRNGKey(0) or jax.random.key(0), got int"),
    Case("sample_unknown_hyperparameter", "api", "fn(None, (4, 2), ts, key, eta2=0.5)",
         "sampler 'ddim' has no hyperparameter(s) eta2; its"),
    Case("loss_integer_data", "api", "losses.denoising_loss(mf, None, S, x.astype(np.int32), key)",
         ("x0 must be a floating-point array", ".astype(jnp.float32)")),
    Case("loss_nan_data", "api", "losses.denoising_loss(mf, None, S, nan, key)",
         "x0 contains NaN or Inf; pass finite values"),
    Case("loss_unknown_weighting", "api", "losses.denoising_loss(mf, None, S, x, key, weighting='snr2')",
         "unknown weighting 'snr2'; valid weightings are: edm, min_snr, simple, snr"),
    Case("loss_key_not_a_key", "api", "losses.denoising_loss(mf, None, S, x, 42)",
         "key must be a PRNG key such as jax.random.PRNGKey(0)"),
    Case("guidance_scale_nan", "api",
         "guidance.classifier_free(lambda p, x, t, c: x, 4)(None, x, np.full(4, 0.5), labels, np.nan)",
         "guidance_scale must be finite"),
    Case("threshold_percentile_in_percent", "api", "guidance.dynamic_threshold(den, S, 99.5)",
         "percentile must be a scalar fraction in (0, 1] such as 0.995 (not 99.5)"),
    Case("model_unknown", "api", "models.create('unett')", "unknown model 'unett'; valid models are"),
    Case("model_misspelled_argument", "api", "models.create('mlp', featurs=64)",
         ("unknown argument(s) ['featurs'] for model 'mlp'", "valid arguments are: features")),
    Case("unet_too_deep_for_28x28", "api",
         "models.functional(models.create('unet', ch=8, ch_mult=(1, 2, 2, 2)))[0]("
         "key, jnp.zeros((1, 28, 28, 1)), jnp.zeros((1,)))",
         ("must be divisible by 8; got 28x28", "Use at most 3 levels")),
    Case("dataset_unknown", "api", "data.get_dataset('fashion_mnst')",
         "unknown dataset 'fashion_mnst'; valid names are digits, fashion_mnist, mixture2d"),
    Case("dataset_files_missing", "api",
         "data.get_dataset('fashion_mnist', local_dir=P['nodir'], data_dir=P['nodir'])",
         ("no IDX files in", "apt-get install dataset-fashion-mnist", "tfds build fashion_mnist")),
    Case("batch_not_divisible_by_devices", "api",
         "data.make_pipeline('mixture2d', 30, num_local_devices=4)",
         "global_batch_size=30 must be divisible by process_count * num_local_devices"),
    Case("fid_weights_missing", "api", "inception.load_params(P['nodir'] + '/fid.npz')",
         ("FID Inception weights not found", "python tools/convert_fid_inception.py")),
    Case("fid_weights_pickle", "api", "inception.load_params(P['evil_npz'])",
         ("holds an object array", "jdiff never loads pickles")),
    Case("fid_stats_pickle", "api", "fid_stats.load_statistics(P['evil_npz'])",
         ("holds an object array", "save plain numeric arrays with np.save or np.savez")),
    Case("feature_cache_pickle", "api",
         "features.load_feature_net(P['evil_cache'], train_if_missing=False, verbose=False)",
         ("holds an object array", "load_feature_net(train_if_missing=True) to train and cache it")),
    # -- sample.py (workdirs: {mlp} unconditional 2-D MLP, {cond} 4 classes) --------------------------
    Case("sample_missing_workdir", "sample.py", ["--workdir=/nonexistent/run"],
         "does not exist; pass the --workdir that train.py wrote"),
    Case("sample_unknown_sampler", "sample.py", ["--workdir={mlp}", "--sampler=dpm"],
         "unknown sampler 'dpm'; valid samplers are: consistency, ddim, ddpm"),
    Case("sample_steps_zero", "sample.py", ["--workdir={mlp}", "--steps=0"],
         "steps must be an integer >= 1, got 0"),
    Case("sample_num_not_an_integer", "sample.py", ["--workdir={mlp}", "--num=many"],
         ("bad command-line flag: flag --num=many: invalid literal for int()", "--num takes an int value")),
    Case("sample_misspelled_flag", "sample.py", ["--workdir={mlp}", "--sampler_name=ddim"],
         "bad command-line flag: Unknown command line flag sampler_name"),
    Case("sample_label_out_of_range", "sample.py", ["--workdir={cond}", "--labels=7"],
         "label 7 is out of range: the model has 4 classes, labels must be in [0, 3]"),
    Case("sample_malformed_hparam", "sample.py", ["--workdir={mlp}", "--sampler=ddim",
                                                  "--hparam=eta0.5"],
         "--hparam must look like name=value (e.g. S_churn=40)"),
    Case("sample_guidance_unconditional", "sample.py", ["--workdir={mlp}", "--guidance=2"],
         "guidance needs a conditional model (labels or captions) but this one has no condition to "
         "drop; drop --guidance"),
    Case("sample_checkpoint_of_another_model", "sample.py", ["--workdir={other}"],
         ("incompatible with its workdir's config.json", "use the config.json written with this "
                                                         "checkpoint")),
    Case("sample_damaged_checkpoint", "sample.py", ["--workdir={damaged}"],
         ("is damaged (1 file(s) missing, truncated or changed", "it cannot be used; train again")),
    Case("sample_unwritable_out", "sample.py", ["--workdir={mlp}", "--out={afile}/sub/s.png"],
         "is not a writable directory); pass an --out you can write to"),
    Case("sample_input_missing", "sample.py", ["--workdir={mlp}", "--input={nodir}/x.npy"],
         "--input file {nodir}/x.npy does not exist"),
    Case("sample_input_nan", "sample.py", ["--workdir={mlp}", "--input={nan_npy}"],
         "contains NaN or Inf"),
    Case("sample_input_wrong_shape", "sample.py", ["--workdir={mlp}", "--input={shape_npy}"],
         ("has shape (3, 5) but the model makes data of shape (2,)", "give one example of that shape")),
    Case("sample_input_strings", "sample.py", ["--workdir={mlp}", "--input={str_npy}"],
         "holds <U5 values; give real numbers"),
    Case("sample_input_pickled_object_array", "sample.py", ["--workdir={mlp}", "--input={evil_npz}"],
         ("holds an object array (pickled Python objects)", "jdiff never loads pickles")),
    Case("sample_input_pickle_file", "sample.py", ["--workdir={mlp}", "--input={evil_pkl}"],
         ("is not a .npy/.npz array file", "jdiff never loads pickles")),
    Case("sample_nan_parameters", "sample.py",
         ["--workdir={nan}", "--num=3", "--sampler=ddim", "--steps=2"],
         ("3 of 3 samples contain NaN or Inf (indices 0, 1, 2)", "nothing was written",
          "pass --allow_nonfinite to write them anyway")),
    Case("sample_debug_shows_traceback", "sample.py", ["--workdir=/nonexistent/run", "--debug"],
         "does not exist"),
    # -- train.py (--config=configs/toy2d.py and a fresh --workdir unless given) ----------------------
    Case("train_misspelled_config_key", "train.py", ["--config.training.num_stepz=3"],
         'Did you mean "num_steps" instead of "num_stepz"?'),
    Case("train_mistyped_config_value", "train.py", ["--config.training.num_steps=abc"],
         ("flag --config.training.num_steps=abc: invalid literal for int()",
          "--config.training.num_steps takes an int value")),
    Case("train_misspelled_flag", "train.py", ["--workdirr={tmp}/runs/train_misspelled_flag/w"],
         "Unknown command line flag workdirr. Did you mean: workdir ?"),
    Case("train_missing_config_file", "train.py", ["--config=configs/nope.py"],
         ("cannot load --config=configs/nope.py", "No such file or directory",
          "pass a config file such as configs/toy2d.py")),
    Case("train_unknown_schedule", "train.py", ["--config.diffusion.schedule=cosin"],
         "unknown schedule 'cosin'; valid schedules are"),
    Case("train_unknown_dataset", "train.py", ["--config.data.name=no_such_data"],
         "unknown dataset 'no_such_data'; valid names are"),
    Case("train_data_files_missing", "train.py", ["--config.data.name=mnist",
                                                  "--config.data.data_dir={nodir}"],
         ("TFDS dataset 'mnist' is not prepared in", "tfds build mnist --file_format=array_record")),
    Case("train_batch_size_zero", "train.py", ["--config.data.batch_size=0"],
         "config.data.batch_size must be an integer >= 1, got 0"),
    Case("train_ema_decay_out_of_range", "train.py", ["--config.training.ema_decay=1.5"],
         "config.training.ema_decay must be a number in [0, 1), got 1.5"),
    Case("train_cond_drop_prob_out_of_range", "train.py", ["--config.training.cond_drop_prob=2.0"],
         "config.training.cond_drop_prob must be a number in [0, 1], got 2.0"),
    Case("train_negative_learning_rate", "train.py", ["--config.optim.lr=-0.001"],
         "config.optim.lr must be a number > 0, got -0.001"),
    Case("train_integer_model_dtype", "train.py", ["--config.model.dtype=int8"],
         "dtype must be a floating dtype such as jnp.float32 or jnp.bfloat16, got 'int8'"),
    Case("train_unknown_sampler", "train.py", ["--config.sampling.sampler=dpm"],
         "unknown sampler 'dpm'; valid samplers are"),
    Case("train_sampler_schedule_mismatch", "train.py", ["--config.sampling.sampler=langevin"],
         "sampler 'langevin' is for variance-exploding schedules"),
    Case("train_unwritable_workdir", "train.py", ["--workdir={afile}/w"],
         "is not a writable directory); pass a --workdir you can write to"),
    Case("train_positional_argument", "train.py", ["extra"],
         "unexpected arguments ['extra']; flags look like --config.training.num_steps=10"),
    Case("train_checkpoint_of_another_model", "train.py", ["--workdir={train_other}"],
         ("was written by a different model", "use the config it was trained with or a new --workdir")),
    Case("train_debug_shows_traceback", "train.py", ["--config.data.batch_size=0", "--debug"],
         "config.data.batch_size must be an integer >= 1"),
    # -- eval.py (always real processes: it defines sample.py's flags too) ----------------------------
    Case("eval_missing_workdir", "eval.py", ["--workdir=/nonexistent/run"],
         "does not exist; pass the --workdir that train.py wrote"),
    Case("eval_nothing_to_evaluate", "eval.py", ["--workdir={mlp}", "--num=0"],
         "nothing to evaluate: --num=0 skips the sample metrics; add --bpd or pass --num"),
    Case("eval_unwritable_out", "eval.py", ["--workdir={mlp}", "--num=0", "--bpd",
                                            "--out={afile}/r.json"],
         "--out directory {afile} is a file; pass --out=DIR/FILE"),
]

assert len({c.id for c in CASES}) == len(CASES)

# Run as real processes (with every eval.py case): both other CLIs, flag-parser and library errors, and
# the cases that name a path (a misspelled --workdirr, an unwritable workdir, an unwritable --out).
REAL_PROCESS = {
    "sample_missing_workdir", "sample_misspelled_flag", "sample_steps_zero", "sample_unwritable_out",
    "sample_label_out_of_range",
    "train_misspelled_flag", "train_unwritable_workdir", "train_missing_config_file",
    "train_misspelled_config_key", "train_batch_size_zero", "train_checkpoint_of_another_model",
} | {c.id for c in CASES if c.where == "eval.py"}
assert REAL_PROCESS <= {c.id for c in CASES}
# Cases known to print absl INFO lines before the error (none since jdiff.utils.cli.run_main lowers
# absl's log level for every CLI); a case listed here is marked xfail after every other check passed.
ABSL_INFO_ON_STDERR = set()

# ----------------------------------------------------------------------------------------------------
# Files and workdirs the cases refer to
# ----------------------------------------------------------------------------------------------------


class _Payload:
  """Unpickling this object opens (creates) ``marker`` for writing: proof that a loader unpickled."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))


def _evil_npz(path, marker):
  np.savez(path, samples=np.array([_Payload(marker), 1], dtype=object))  # savez pickles object arrays
  return str(path)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
  d = tmp_path_factory.mktemp("bad_input")
  p = {"nodir": str(d / "nonexistent"), "marker": str(d / "PAYLOAD_RAN")}
  p["mlp"] = sm.write_workdir(str(d / "mlp"), sm.mlp_config(), (2,), 0)
  cond = sm.mlp_config()
  cond.training.conditional = True
  cond.training.cond_drop_prob = 0.1
  p["cond"] = sm.write_workdir(str(d / "cond"), cond, (2,), 4)
  p["nan"] = sm.write_workdir(str(d / "nan"), sm.mlp_config(), (2,), 0, scale=float("nan"))
  # config.json no longer matches the checkpoint (a wider model).
  p["other"] = str(d / "other")
  shutil.copytree(p["mlp"], p["other"])
  cfg = json.load(open(os.path.join(p["other"], "config.json")))
  cfg["model"]["features"] = 48
  json.dump(cfg, open(os.path.join(p["other"], "config.json"), "w"))
  # One byte of the checkpoint's parameter data changed after it was saved.
  p["damaged"] = str(d / "damaged")
  shutil.copytree(p["mlp"], p["damaged"])
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(p["damaged"], "checkpoints", "3"))
           for f in fs if not f.startswith(("jdiff_", "_"))]
  victim = max(files, key=os.path.getsize)
  data = bytearray(open(victim, "rb").read())
  data[len(data) // 2] ^= 0xFF
  open(victim, "wb").write(bytes(data))
  # A train.py workdir holding a checkpoint of a smaller MLP than configs/toy2d.py's.
  p["train_other"] = sm.write_workdir(str(d / "train_other"), sm.mlp_config(), (2,), 0)
  p["afile"] = str(d / "a_file")
  open(p["afile"], "w").write("not a directory")
  p["nan_npy"] = str(d / "nan.npy")
  np.save(p["nan_npy"], np.array([[0.1, np.nan]], np.float32))
  p["shape_npy"] = str(d / "shape.npy")
  np.save(p["shape_npy"], np.zeros((3, 5), np.float32))
  p["str_npy"] = str(d / "str.npy")
  np.save(p["str_npy"], np.array(["hello", "world"]))
  p["evil_npz"] = _evil_npz(d / "evil.npz", p["marker"])
  p["evil_pkl"] = str(d / "evil.npy")  # a plain pickle named like an array file
  with open(p["evil_pkl"], "wb") as f:
    pickle.dump(_Payload(p["marker"]), f)
  p["evil_cache"] = str(d / "cache")  # the feature-net cache directory, its file replaced by a pickle
  os.makedirs(p["evil_cache"])
  from jdiff.eval import features
  shutil.copy(p["evil_npz"], features.cache_path(p["evil_cache"]))
  p["tmp"] = str(d)
  return p


def _cli_argv(case, p):
  """The case's arguments as run: sample.py and eval.py get a fresh --out, train.py a config and a
  fresh --workdir, unless the case names them."""
  args = [a.format(**p) for a in case.input]
  if case.where == "train.py":
    return _train_argv(case, p)
  if not any(a.startswith("--out=") for a in args):
    name = "s.png" if case.where == "sample.py" else "r.json"
    args.append(f"--out={_fresh(p, case.id)}/out/{name}")
  return args


def _train_argv(case, p):
  args = [a.format(**p) for a in case.input]
  if not any(a.startswith("--config=") for a in args):
    args = ["--config=configs/toy2d.py"] + args
  if not any(a.startswith("--workdir") for a in args):
    args.append(f"--workdir={_fresh(p, case.id)}/w")
  return args


def _fresh(p, name):
  return os.path.join(p["tmp"], "runs", name)


@pytest.fixture(scope="module")
def train_results(paths):
  """Starts the train.py worker over every train.py case now; ``get()[id]`` waits for the results."""
  collect = _gaussian.start_train_cases([(c.id, _train_argv(c, paths)) for c in CASES
                                         if c.where == "train.py" and c.id not in REAL_PROCESS], paths["tmp"])
  yield collect
  collect.stop()


@pytest.fixture(scope="module")
def real_runs(paths):
  """Starts every REAL_PROCESS case as `python <cli> ARGS` from the repository root, 4 at a time (each
  ~2 s of CPU, mostly imports); ``get(id)`` waits for its ``CompletedProcess``."""
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)

  def run(case):
    return subprocess.run(["timeout", "-k", "5", "180", sys.executable, case.where,
                           *_cli_argv(case, paths)],
                          capture_output=True, text=True, cwd=REPO, env=env, stdin=subprocess.DEVNULL)

  # train.py's default workdir for configs/toy2d.py (where a run ignoring a misspelled --workdirr goes)
  default_workdir = os.path.join(REPO, "runs", "toy2d")
  existed = os.path.exists(default_workdir)
  futures = {c.id: pool.submit(run, c) for c in CASES if c.id in REAL_PROCESS}

  def get(case_id):
    result = futures[case_id].result(timeout=300)
    assert os.path.exists(default_workdir) == existed, f"{default_workdir} was created"
    return result

  yield get
  pool.shutdown(wait=True, cancel_futures=True)


_ABSL_INFO = re.compile(r"^I\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")


def _check_real_process(case, r, fragments):
  """Exit status 2 and exactly one stderr line, ``error: ...`` with every fragment, no traceback."""
  assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  extra = []
  if case.id in ABSL_INFO_ON_STDERR:
    extra = [l for l in lines[:-1] if _ABSL_INFO.match(l)]
    lines = [l for l in lines if l not in extra]
  assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
  for frag in fragments:
    assert frag in lines[0], (frag, lines[0])
  return extra


# ----------------------------------------------------------------------------------------------------
# Running one case
# ----------------------------------------------------------------------------------------------------


def _api_namespace(p):
  import jax
  import jax.numpy as jnp

  import jdiff
  from jdiff import data, editing, grids, guidance, losses, models, sampling
  from jdiff.eval import features, fid_stats, inception
  S = jdiff.CosineSchedule()
  mf = jdiff.toy.default_mixture().model_fn(S)
  return dict(
      jax=jax, jnp=jnp, np=np, jdiff=jdiff, data=data, editing=editing, grids=grids,
      guidance=guidance, losses=losses, models=models, sampling=sampling, features=features,
      fid_stats=fid_stats, inception=inception, P=p, S=S, mf=mf, key=jax.random.PRNGKey(0),
      x=np.zeros((4, 2), np.float32), nan=np.full((4, 2), np.nan, np.float32),
      labels=np.zeros(4, np.int32), den=jdiff.make_denoiser(mf, None, S, "x0"),
      ts=grids.get_grid("uniform_t", S, 4), fn=sampling.make_sample_fn(mf, S, "x0", "ddim", 4))


def run_sample(args):
  """sample.py's command line in this process, as ``app.run`` would (flag parsing included); returns
  the exit status."""
  import sample  # sample.py at the repository root
  from jdiff.utils import cli
  sample.FLAGS.unparse_flags()
  try:
    argv = cli.flags_parser(["sample.py", "--noprogress", *args])
    sample.main(argv)
  except SystemExit as e:
    return e.code
  return "returned without sys.exit"


def _check_cli_output(code, err, fragments, debug):
  lines = [l for l in err.strip().splitlines() if l.strip()]
  assert code == 2, (code, err[-3000:])
  assert lines and lines[-1].startswith("error: "), err[-3000:]
  assert len([l for l in lines if l.startswith("error: ")]) == 1, err[-3000:]
  assert ("Traceback (most recent call last)" in err) == debug, err[-3000:]
  for frag in fragments:
    assert frag in lines[-1], (frag, lines[-1])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, paths, train_results, real_runs, capsys):
  fragments = (case.message,) if isinstance(case.message, str) else case.message
  fragments = [f.format(**paths) if case.where != "api" else f for f in fragments]
  if case.where == "api":
    ns = _api_namespace.cache = getattr(_api_namespace, "cache", None) or _api_namespace(paths)
    with pytest.raises((ValueError, TypeError, FileNotFoundError)) as info:
      eval(case.input, ns)  # pylint: disable=eval-used
    msg = str(info.value)
    assert "\n" not in msg.strip(), msg
    for frag in fragments:
      assert frag in msg, (frag, msg)
  elif case.id in REAL_PROCESS:
    extra = _check_real_process(case, real_runs(case.id), fragments)
    # Nothing created: no --out (the fresh one, or the case's own) nor workdir, no eval report, and
    # the file the unwritable paths go through is still that file.
    assert not os.path.exists(_fresh(paths, case.id))
    assert os.path.isfile(paths["afile"]) and open(paths["afile"]).read() == "not a directory"
    assert not os.path.exists(os.path.join(paths["mlp"], "eval"))
    assert not os.path.exists(os.path.join(paths["mlp"], "samples"))
    if case.id == "train_checkpoint_of_another_model":  # the existing run is left as it was
      wd = paths["train_other"]
      assert json.load(open(os.path.join(wd, "config.json")))["model"]["features"] == 32
      assert os.listdir(os.path.join(wd, "checkpoints")) == ["3"]
    if extra:
      pytest.xfail(f"{len(extra)} absl INFO line(s) on stderr before the error (orbax reading the "
                   f"checkpoint; see ABSL_INFO_ON_STDERR), e.g. {extra[0][:120]}")
  elif case.where == "sample.py":
    args = [a.format(**paths) for a in case.input]
    out = os.path.join(_fresh(paths, case.id), "out")
    if not any(a.startswith("--out=") for a in args):
      args.append(f"--out={out}/s.png")
    code = run_sample(args)
    _check_cli_output(code, capsys.readouterr().err, fragments, "--debug" in args)
    assert not os.path.exists(out)  # nothing written, not even the directory
    assert os.path.isfile(paths["afile"])
  else:
    r = train_results()[case.id]
    _check_cli_output(r.returncode, r.stderr, fragments, "--debug" in case.input)
    # A failed run creates nothing: no workdir (hence no checkpoint directory, no config.json).
    assert not os.path.exists(_fresh(paths, case.id))
    if case.id == "train_checkpoint_of_another_model":  # the existing run is left as it was
      wd = paths["train_other"]
      assert json.load(open(os.path.join(wd, "config.json")))["model"]["features"] == 32
      assert os.listdir(os.path.join(wd, "checkpoints")) == ["3"]
  assert not os.path.exists(paths["marker"]), "a pickle payload was unpickled"


# ----------------------------------------------------------------------------------------------------
# Pickles: the payloads are live, and no loader runs them
# ----------------------------------------------------------------------------------------------------


def test_pickle_payloads_would_run_if_unpickled(tmp_path):
  """The cases above prove something only if loading these files with pickle runs the payload."""
  marker = tmp_path / "ran"
  path = _evil_npz(tmp_path / "e.npz", str(marker))
  with np.load(path, allow_pickle=True) as z:
    z["samples"]
  assert marker.exists()
  marker.unlink()
  with open(tmp_path / "e.pkl", "wb") as f:
    pickle.dump(_Payload(str(marker)), f)
  with open(tmp_path / "e.pkl", "rb") as f:
    pickle.load(f)
  assert marker.exists()


def test_feature_cache_holding_a_pickle_is_replaced_not_loaded(paths, monkeypatch):
  """With ``train_if_missing=True`` (the default) a pickle-bearing cache is ignored: the net is trained
  (here: a stand-in) and written over it, and the payload never runs."""
  from jdiff.eval import features
  d = os.path.join(paths["tmp"], "cache2")
  os.makedirs(d)
  shutil.copy(paths["evil_npz"], features.cache_path(d))
  trained = []
  monkeypatch.setattr(features, "train_feature_net",
                      lambda dataset, verbose: trained.append(dataset) or "net")
  monkeypatch.setattr(features, "save_feature_net", lambda net, path: None)
  assert features.load_feature_net(d, verbose=False) == "net" and trained == ["fashion_mnist"]
  assert not os.path.exists(paths["marker"])


# ----------------------------------------------------------------------------------------------------
# Non-finite samples
# ----------------------------------------------------------------------------------------------------


def test_nonfinite_samples_are_refused_or_written_marked(paths, monkeypatch, capsys, tmp_path):
  """Samples 1 and 3 of 4 turn NaN/Inf (a monkeypatched program): by default sample.py exits 2 naming
  them and writes nothing; with --allow_nonfinite it writes them, warns, and lists them in the JSON."""
  from jdiff.generation import program
  real_call = program.Program.__call__

  def poisoned(self, args):
    x, nfe, x_init = real_call(self, args)
    indices = np.asarray(args[2]).reshape(-1)  # the global sample indices of the batch
    x = np.array(x)
    x[indices == 1] = np.nan
    x[indices == 3, 0] = np.inf
    return x, nfe, x_init

  monkeypatch.setattr(program.Program, "__call__", poisoned)
  args = [f"--workdir={paths['mlp']}", "--num=5", "--batch_size=2", "--sampler=ddim", "--steps=2"]
  assert run_sample(args + [f"--out={tmp_path / 'refused' / 's'}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("error: 2 of 5 samples contain NaN or Inf (indices 1, 3)"), err
  assert not (tmp_path / "refused").exists()
  assert run_sample(args + ["--allow_nonfinite", f"--out={tmp_path / 's'}"]) == 0
  err = capsys.readouterr().err
  assert "warning: 2 of 5 samples contain NaN or Inf (indices 1, 3)" in err
  info = json.load(open(tmp_path / "s.json"))
  assert info["nonfinite"] == {"count": 2, "indices": [1, 3]}
  x = np.load(tmp_path / "s.npz", allow_pickle=False)["samples"]
  assert np.isnan(x[1]).all() and np.isinf(x[3, 0]) and np.isfinite(x[[0, 2, 4]]).all()


def test_png_grids_mark_nonfinite_images():
  """A NaN/Inf image is drawn as a black-and-white checkerboard, never as a plausible image."""
  from jdiff.utils import images
  x = np.zeros((3, 8, 8, 1), np.float32)
  x[1, 2, 3, 0] = np.nan
  x[2, 0, 0, 0] = -np.inf
  u = images.to_uint8(x)
  assert (u[0] == 128).all()
  checker = (np.arange(8)[:, None] // 4 + np.arange(8)[None, :] // 4) % 2 * 255
  for i in (1, 2):
    np.testing.assert_array_equal(u[i, ..., 0], checker)
