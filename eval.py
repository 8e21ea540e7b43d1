"""Evaluate a trained model: every sample-quality metric for one checkpoint and sampler, optionally
bits/dim, written as a JSON report.

  python eval.py --workdir=runs/fashion_mnist [--sampler=dpmpp_2m --steps=20 --num=1000 --seed=0] \
      [--bpd --bpd_num=256] [--out=report.json]

Samples ``--num`` images from the EMA parameters of the newest checkpoint (``--checkpoint=<workdir>/
checkpoints/<step>`` or ``--step`` for another one, ``--raw`` for the raw parameters) exactly as
``sample.py`` does (same seed -> same samples; the same sampler flags, ``--hparam=name=value``
included) and scores them by their dataset:

- Fashion-MNIST (clipped to [-1, 1]) and MNIST-1D: in the feature space of the dataset's classifier
  (``jdiff.eval``): FD, KID ± std over subsets, precision, recall and, for class-conditional models,
  the accuracy of the feature classifier on the requested labels;
- point clouds: 1-NNA, COV and MMD by Chamfer distance against held-out shapes, per class
  (``jdiff.eval.point_report``);
- text-to-image models (captioned Fashion-MNIST, ``jdiff.eval.caption_report``): caption accuracy (the
  Fashion-MNIST classifier per canvas place) and FD per place, per prompt set (single items; pairs:
  training and held-out combinations), ``--num`` samples each, at ``--guidance`` / ``--threshold``;
  ``--sr_workdir`` scores a cascade's refined samples;
- text (token models): the fraction of generated words in the training vocabulary, character n-gram
  divergences from held-out text and bits per character under a training n-gram model
  (``jdiff.eval.text_report``).

Every number is printed next to its floor: the same metric for N real held-out examples against the
real examples the samples are compared with (what a perfect model would score at this N).

``--bpd``: bits/dim of the first ``--bpd_num`` test images by the probability-flow ODE (Hutchinson
trace, uniform dequantization) and by the continuous VLB (discretized decoder); for a token model the
held-out bits per character of its bound (``--bpd_vlb_repeats`` draws per chunk). ``--num=0 --bpd``
computes only those (any dataset). The report goes to ``--out`` (default
``<workdir>/eval/<sampler>_<steps>_n<num>_seed<seed>_step<step>.json``).
"""
import os
import sys

from absl import app, flags

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

import jdiff
from jdiff import generation
from jdiff.eval import caption_report, evaluate, model_eval
from jdiff.generation import flags as gflags
from jdiff.generation import restore
from jdiff.utils import cli, files

gflags.define(num_default=1000)
flags.DEFINE_integer("step", None, "With --workdir: the checkpoint step (default: the newest).")
flags.DEFINE_bool("bpd", False, "Also compute ODE and VLB bits/dim on test images.")
flags.DEFINE_integer("bpd_num", 256, "Number of test images for --bpd.")
flags.DEFINE_integer("bpd_batch", 64, "Test images per compiled likelihood call.")
flags.DEFINE_enum("bpd_trace", "rademacher", ["rademacher", "gaussian", "exact"],
                  "Trace estimator of the ODE likelihood (exact: one JVP per dimension; small data).")
flags.DEFINE_float("bpd_tol", 1e-5, "rtol = atol of the adaptive ODE solver (Song et al. 2021: 1e-5).")
flags.DEFINE_float("bpd_t_min", 1e-5, "Data end of the ODE and of the VLB integral.")
flags.DEFINE_integer("bpd_vlb_repeats", 4, "VLB: Monte-Carlo draws (time, noise) per image.")
flags.DEFINE_string("out", None, "Output JSON path.")
FLAGS = flags.FLAGS


def _check_flags():
  """Everything that needs no checkpoint, before one is read."""
  if FLAGS.num < 0:
    raise ValueError(f"--num must be >= 0, got {FLAGS.num}")
  if FLAGS.num:
    evaluate.check_num_samples(FLAGS.num, "--num")
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


def _command(s, ckpt_dir, out):
  args = gflags.settings_args(s) if FLAGS.num else ["--num=0"]
  if FLAGS.bpd:
    args += ["--bpd", f"--bpd_num={FLAGS.bpd_num}", f"--bpd_batch={FLAGS.bpd_batch}",
             f"--bpd_trace={FLAGS.bpd_trace}", f"--bpd_tol={FLAGS.bpd_tol!r}",
             f"--bpd_t_min={FLAGS.bpd_t_min!r}", f"--bpd_vlb_repeats={FLAGS.bpd_vlb_repeats}"]
  return gflags.command("eval.py", ckpt_dir, args + [f"--out={out}"])


def _main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}; flags look like --num=1000")
  cli.set_cpu_devices(FLAGS.cpu_devices)  # before anything starts JAX's backends
  _check_flags()
  settings = gflags.settings()
  if FLAGS.num == 0:
    settings.num = 1  # checked like a run of one sample; no sample is drawn
  generation.check_settings(settings)
  if FLAGS.sr_level is not None and not FLAGS.sr_workdir:
    raise ValueError("--sr_level needs --sr_workdir (the super-resolution model of a cascade)")
  restored = restore.restore(FLAGS.workdir, FLAGS.checkpoint, step=FLAGS.step, use_ema=not FLAGS.raw)
  settings = generation.resolve(settings, restored)
  text = "caption" in restored.conditions  # a text-to-image model: the caption report
  if FLAGS.sr_workdir and not text:
    raise ValueError("--sr_workdir evaluates a text-to-image cascade; this model reads no captions")
  sr = gflags.sr_stage(restored)
  if FLAGS.num and text:
    if FLAGS.bpd:
      raise ValueError("--bpd is not computed for text-to-image models; drop --bpd")
    caption_report.check(restored, settings.num)
    settings = generation.plan(restored, settings).settings
  elif FLAGS.num:
    model_eval.check_sample_metrics(restored, settings.num)
    settings = generation.plan(restored, settings).settings
  else:
    settings.num = 0
  out = FLAGS.out
  if out is None:
    name = (f"{settings.sampler}_{settings.steps}_n{settings.num}_seed{settings.seed}" if FLAGS.num
            else "bpd") + f"_step{restored.step}.json"
    out = os.path.join(restored.workdir, "eval", name)
  out = gflags.writable_output(out)
  print(f"{restored.which} parameters of step {restored.step} from {restored.checkpoint_dir}", flush=True)
  bpd_opts = {"batch_size": FLAGS.bpd_batch, "trace": FLAGS.bpd_trace, "rtol": FLAGS.bpd_tol,
              "atol": FLAGS.bpd_tol, "t_min": FLAGS.bpd_t_min, "vlb_repeats": FLAGS.bpd_vlb_repeats,
              "seed": FLAGS.seed}
  if text and FLAGS.num:
    report = {"checkpoint": restored.checkpoint_dir, "workdir": restored.workdir, "step": restored.step,
              "params": restored.which, "settings": settings.to_json(), "metrics": None, "bpd": None,
              "captions": caption_report.report(restored, settings, sr=sr, sr_level=FLAGS.sr_level,
                                                progress=FLAGS.progress),
              "cascade": None if sr is None else {"sr_checkpoint": sr.checkpoint_dir,
                                                  "sr_step": sr.step, "level": FLAGS.sr_level}}
  else:
    report = model_eval.evaluate_checkpoint(restored, settings,
                                            bpd_num=FLAGS.bpd_num if FLAGS.bpd else 0,
                                            bpd_options=bpd_opts, progress=FLAGS.progress)
  if report["metrics"] is not None and "fd" in report["metrics"]:
    f = report["metrics"]["floor"]
    noisy = "" if f.get("noisy") is None else f", noisy {f['noisy']:.3f}"
    print(f"floor (N={f['num_samples']} real test vs real train examples): FD {f['fd']:.4g}, "
          f"KID {f['kid']:.4g}±{f['kid_std']:.2g}, precision {f['precision']:.3f}, recall "
          f"{f['recall']:.3f}{noisy}, classifier accuracy {f['accuracy']:.3f}")
  report["command"] = _command(settings, restored.checkpoint_dir, out)
  report["versions"] = {"jax": jax.__version__, "jdiff": jdiff.__version__}
  report["num_devices"] = jax.local_device_count()
  files.write_json(out, report)
  print(f"wrote {out}")


def main(argv):
  sys.exit(cli.run_main(_main, argv, FLAGS.debug))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser)
