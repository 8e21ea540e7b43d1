"""Evaluate a trained model: every sample-quality metric for one checkpoint and sampler, optionally
bits/dim, written as a JSON report.

  python eval.py --workdir=runs/fashion_mnist [--sampler=dpmpp_2m --steps=20 --num=1000 --seed=0] \
      [--bpd --bpd_num=256] [--out=report.json]

Samples ``--num`` images from the EMA parameters of the newest checkpoint (``--checkpoint=<workdir>/
checkpoints/<step>`` or ``--step`` for another one, ``--raw`` for the raw parameters) exactly as
``sample.py`` does (same seed -> same samples), clips them to [-1, 1] and scores them in the
Fashion-MNIST feature space (``jdiff.eval``): FD, KID ± std over subsets, precision, recall and, for
class-conditional models, the accuracy of the feature classifier on the requested labels. Every number
is printed next to its floor: the same metric for N real test images against the N real training
images the samples are compared with (what a perfect model would score at this N).

``--bpd``: bits/dim of the first ``--bpd_num`` test images by the probability-flow ODE (Hutchinson
trace, uniform dequantization) and by the continuous VLB (discretized decoder). ``--num=0 --bpd``
computes only those (any dataset). The report goes to ``--out`` (default
``<workdir>/eval/<sampler>_<steps>_n<num>_seed<seed>_step<step>.json``).
"""
import json
import os
import shlex
import sys

from absl import app, flags

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)

flags.DEFINE_string("workdir", None, "A train.py workdir: evaluates its newest checkpoint.")
flags.DEFINE_string("checkpoint", None, "A checkpoint directory <workdir>/checkpoints/<step>.")
flags.DEFINE_integer("step", None, "With --workdir: the checkpoint step (default: the newest).")
flags.DEFINE_integer("num", 1000, "Number of samples to score (0: no sample metrics, e.g. with --bpd).")
flags.DEFINE_integer("seed", 0, "Random seed (sample i draws its noise from fold_in(PRNGKey(seed), i)).")
flags.DEFINE_string("sampler", None, "Sampler (default: the config's sampling.sampler).")
flags.DEFINE_integer("steps", None, "Number of steps of the time grid (default: the config's).")
flags.DEFINE_string("grid", None, "Time grid: uniform_t, uniform_logsnr or karras (default: config's).")
flags.DEFINE_float("guidance", None, "Classifier-free guidance scale w (conditional models).")
flags.DEFINE_string("labels", None, "Comma-separated class labels; sample i gets labels[i % len] "
                    "(default i % num_classes).")
flags.DEFINE_float("eta", None, "DDIM eta (0: deterministic).")
flags.DEFINE_integer("batch_size", None, "Samples per pmapped call (default min(num, 64)).")
flags.DEFINE_bool("clip_x0", None, "Clip x0_hat to [-1, 1] at every step (default: the config's "
                  "sampling.clip_x0, on for images; --noclip_x0 turns it off).")
flags.DEFINE_bool("raw", False, "Use the raw parameters instead of their EMA.")
flags.DEFINE_bool("bpd", False, "Also compute ODE and VLB bits/dim on test images.")
flags.DEFINE_integer("bpd_num", 256, "Number of test images for --bpd.")
flags.DEFINE_integer("bpd_batch", 64, "Test images per compiled likelihood call.")
flags.DEFINE_enum("bpd_trace", "rademacher", ["rademacher", "gaussian", "exact"],
                  "Trace estimator of the ODE likelihood (exact: one JVP per dimension; small data).")
flags.DEFINE_float("bpd_tol", 1e-5, "rtol = atol of the adaptive ODE solver (Song et al. 2021: 1e-5).")
flags.DEFINE_float("bpd_t_min", 1e-5, "Data end of the ODE and of the VLB integral.")
flags.DEFINE_integer("bpd_vlb_repeats", 4, "VLB: Monte-Carlo draws (time, noise) per image.")
flags.DEFINE_string("out", None, "Output JSON path.")
flags.DEFINE_bool("progress", True, "Show a progress bar over sampling batches.")
flags.DEFINE_bool("debug", False, "Show the full traceback of user errors.")
flags.DEFINE_integer("cpu_devices", 0, "Split the CPU into N JAX devices for pmap (0: one; README: Training).")
FLAGS = flags.FLAGS
_MIN_SAMPLES = 4  # = jdiff.eval.model_eval.MIN_SAMPLES (not imported here: errors come before JAX loads)


def _parse_labels(text):
  if text is None:
    return None
  try:
    return tuple(int(v) for v in text.split(",") if v.strip())
  except ValueError:
    raise ValueError(f"--labels must be comma-separated integers such as 0,1,2, got {text!r}") from None


def _check_flags():
  """Everything that needs no checkpoint, before one is read (and before JAX is imported)."""
  if FLAGS.num < 0:
    raise ValueError(f"--num must be >= 0, got {FLAGS.num}")
  if 0 < FLAGS.num < _MIN_SAMPLES:
    raise ValueError(f"--num={FLAGS.num} is too few samples: precision/recall (k=3) need at least "
                     f"{_MIN_SAMPLES}, FD and KID at least 2; use 1000 or more for stable "
                     f"numbers (or --num=0 with --bpd to skip the sample metrics)")
  if FLAGS.num == 0 and not FLAGS.bpd:
    raise ValueError("nothing to evaluate: --num=0 skips the sample metrics; add --bpd or pass --num")
  if FLAGS.bpd:
    if FLAGS.bpd_num < 2:
      raise ValueError(f"--bpd_num must be >= 2 (a standard error needs 2 images), got {FLAGS.bpd_num}")
    if FLAGS.bpd_batch < 1:
      raise ValueError(f"--bpd_batch must be >= 1, got {FLAGS.bpd_batch}")
    if not 0 < FLAGS.bpd_tol < 1:
      raise ValueError(f"--bpd_tol must be in (0, 1), got {FLAGS.bpd_tol}")
    if not 0 <= FLAGS.bpd_t_min < 1:
      raise ValueError(f"--bpd_t_min must be in [0, 1), got {FLAGS.bpd_t_min}")
    if FLAGS.bpd_vlb_repeats < 1:
      raise ValueError(f"--bpd_vlb_repeats must be >= 1, got {FLAGS.bpd_vlb_repeats}")


def _command(report, ckpt_dir, out):
  s = report["settings"]
  args = ["python", "eval.py", f"--checkpoint={ckpt_dir}", f"--num={FLAGS.num}", f"--seed={FLAGS.seed}"]
  if FLAGS.num:
    args += [f"--sampler={s['sampler']}", f"--steps={s['steps']}", f"--grid={s['grid']}"]
    if s.get("guidance") is not None:
      args.append(f"--guidance={s['guidance']!r}")
    if s.get("labels") is not None:
      args.append("--labels=" + ",".join(map(str, s["labels"])))
    if FLAGS.eta is not None:
      args.append(f"--eta={FLAGS.eta!r}")
    args.append("--clip_x0" if s.get("clip_x0") else "--noclip_x0")
  if FLAGS.raw:
    args.append("--raw")
  if FLAGS.bpd:
    args += ["--bpd", f"--bpd_num={FLAGS.bpd_num}", f"--bpd_batch={FLAGS.bpd_batch}",
             f"--bpd_trace={FLAGS.bpd_trace}", f"--bpd_tol={FLAGS.bpd_tol!r}",
             f"--bpd_t_min={FLAGS.bpd_t_min!r}", f"--bpd_vlb_repeats={FLAGS.bpd_vlb_repeats}"]
  args.append(f"--out={out}")
  return " ".join(shlex.quote(a) for a in args)


def _main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}; flags look like --num=1000")
  from jdiff.utils import cli
  cli.set_cpu_devices(FLAGS.cpu_devices)  # before anything starts JAX's backends
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  import dataclasses
  _check_flags()
  from jdiff.training import generate as gen
  settings = gen.Settings(num=max(FLAGS.num, 1), seed=FLAGS.seed, sampler=FLAGS.sampler,
                          steps=FLAGS.steps, grid=FLAGS.grid, batch_size=FLAGS.batch_size,
                          guidance=FLAGS.guidance, labels=_parse_labels(FLAGS.labels),
                          hparams={} if FLAGS.eta is None else {"eta": float(FLAGS.eta)},
                          clip_x0=FLAGS.clip_x0)
  gen.check_settings(settings)

  import jax
  from jdiff.eval import model_eval
  from jdiff.training import restore
  restored = restore.restore(FLAGS.workdir, FLAGS.checkpoint, step=FLAGS.step, use_ema=not FLAGS.raw)
  settings = gen.with_defaults(settings, restored)
  if FLAGS.num:
    model_eval.check_sample_metrics(restored, settings.num)
    gen.check_for_model(settings, restored)
  else:
    settings = dataclasses.replace(settings, num=0)
  out = FLAGS.out
  if out is None:
    name = (f"{settings.sampler}_{settings.steps}_n{settings.num}_seed{settings.seed}" if FLAGS.num
            else "bpd") + f"_step{restored.step}.json"
    out = os.path.join(restored.workdir, "eval", name)
  out = os.path.abspath(out)
  out_dir = os.path.dirname(out)
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise ValueError(f"--out directory {out_dir} is a file; pass --out=DIR/FILE.json")
  print(f"{restored.which} parameters of step {restored.step} from {restored.checkpoint_dir}", flush=True)
  bpd_opts = {"batch_size": FLAGS.bpd_batch, "trace": FLAGS.bpd_trace, "rtol": FLAGS.bpd_tol,
              "atol": FLAGS.bpd_tol, "t_min": FLAGS.bpd_t_min, "vlb_repeats": FLAGS.bpd_vlb_repeats,
              "seed": FLAGS.seed}
  report = model_eval.evaluate_checkpoint(restored, settings, bpd_num=FLAGS.bpd_num if FLAGS.bpd else 0,
                                          bpd_options=bpd_opts, progress=FLAGS.progress)
  if report["metrics"] is not None:
    f = report["metrics"]["floor"]
    print(f"floor (N={f['num_samples']} real test vs real train images): FD {f['fd']:.4g}, "
          f"KID {f['kid']:.4g}±{f['kid_std']:.2g}, precision {f['precision']:.3f}, recall "
          f"{f['recall']:.3f}, classifier accuracy {f['accuracy']:.3f}")
  report["command"] = _command(report, restored.checkpoint_dir, out)
  report["versions"] = {"jax": jax.__version__, "jdiff": __import__("jdiff").__version__}
  report["num_devices"] = jax.local_device_count()
  os.makedirs(out_dir, exist_ok=True)
  tmp = out + ".tmp"
  with open(tmp, "w") as fh:
    json.dump(report, fh, indent=1)
    fh.write("\n")
  os.replace(tmp, out)
  print(f"wrote {out}")


def main(argv):
  from jdiff.utils import cli
  sys.exit(cli.run_main(_main, argv, FLAGS.debug))


if __name__ == "__main__":
  from jdiff.utils.cli import flags_parser
  app.run(main, flags_parser=flags_parser)
