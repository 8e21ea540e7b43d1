"""Sample from a trained model (a train.py workdir or one of its checkpoints).

  python sample.py --workdir=runs/fashion_mnist --num=64 --seed=0 --sampler=dpmpp_2m --steps=20 \
      --out=samples/fm.png

Loads the EMA parameters of the newest checkpoint (``--raw``: the raw ones; ``--checkpoint=<workdir>/
checkpoints/<step>``: another step), runs the sampler pmapped over all local devices and writes
``FILE.png`` (a grid of the images; for point sets a grid of 3-D scatter views, for 1-D signals a grid
of plots; none for vectors), ``FILE.ply`` (point sets: every sample in one PLY, sample ``i`` in grid cell
``i``), ``FILE.npz`` (``samples``, ``indices``, ``labels``, ``ts``; with ``--save_noise`` also ``x_init``)
and ``FILE.json`` (every setting, including the command that reproduces the run); for token (text) models
``FILE.txt`` (the texts, also under ``texts`` in the JSON) instead of a picture, and ``--prefix=TEXT``
makes every sample start with TEXT. Sample ``i`` (global index ``start_index + k``) is the same whatever ``--batch_size``, the
number of devices or how a run is split with ``--start_index``.

Text-to-image models (``training.text_conditional``, e.g. configs/fashion_mnist_text.py):
``--prompt="a bag to the left of a sneaker" [--prompt=...]`` or ``--prompts_file=F`` (one per line;
sample i gets prompt i % count; default the config's ``sampling.prompts``), ``--guidance=W`` and
``--threshold=P`` (Imagen's dynamic thresholding); the prompts are recorded in FILE.json (``captions``)
and written under the grid. A prompt the model cannot represent (an unknown word, too many words) is
an error, never truncated. Models on precomputed text embeddings: ``--text_emb=FILE.npz``.

Class-conditional models: ``--labels=3`` or ``--labels=0,1,2`` (sample i gets labels[i % len]; default
i % num_classes) and ``--guidance=W`` (classifier-free guidance, Ho & Salimans 2022: W=0 is the
conditional model, larger is stronger). Classifier guidance (Dhariwal & Nichol 2021), for
unconditional or conditional models: ``--classifier=CLASSIFIER_WORKDIR --classifier_scale=S
--labels=...`` (a classifier trained by ``train.py`` with e.g. configs/fashion_mnist_classifier.py).
Sampler hyperparameters: ``--eta`` (ddim) or ``--hparam=name=value`` (e.g. S_churn=40 for euler/heun,
snr=0.16 for pc).

Editing: ``--input=IMAGE`` (PNG, or .npy/.npz such as an earlier FILE.npz) alone is SDEdit (noised to
``--strength``, default 0.5, then denoised); with ``--mask=MASK`` (white = keep, black = generate) it is
inpainting (strength default 1), optionally with RePaint resampling ``--resample=R --jump_length=J``.
"""
import os
import sys

from absl import app, flags

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

import jdiff
from jdiff import generation
from jdiff.data import text as text_data
from jdiff.generation import cascade
from jdiff.generation import files as gfiles
from jdiff.generation import flags as gflags
from jdiff.generation import restore
from jdiff.utils import cli, files
from jdiff.utils import images as image_utils
gflags.define(num_default=64)
flags.DEFINE_string("classifier", None, "Classifier guidance: the workdir (or <workdir>/checkpoints/"
                    "<step>) of a noise-conditional classifier trained by train.py with task "
                    "'classifier' (EMA parameters); guides toward --labels.")
flags.DEFINE_float("classifier_scale", None, "Classifier guidance scale s (default 1 with --classifier).")
flags.DEFINE_string("ddpm_variance", None, "ddpm sampler variance: small, large or learned.")
flags.DEFINE_integer("start_index", 0, "Global index of the first sample (to split a run).")
flags.DEFINE_string("out", None, "Output path FILE(.png): writes FILE.png, FILE.npz and FILE.json "
                    "(and FILE.ply for point sets) "
                    "(default <workdir>/samples/<sampler>_<steps>_seed<seed>).")
flags.DEFINE_string("input", None, "Image (PNG) or array (.npy/.npz) to edit.")
flags.DEFINE_string("mask", None, "Inpainting mask for --input: white/1 = keep, black/0 = generate.")
flags.DEFINE_float("strength", None, "Editing: noise level t the input is noised to, in (0, 1] "
                   "(default 0.5 for SDEdit, 1 for inpainting).")
flags.DEFINE_integer("resample", 1, "RePaint: times each jump is resampled (1 = plain inpainting).")
flags.DEFINE_integer("jump_length", 1, "RePaint: levels jumped back before resampling.")
flags.DEFINE_string("prefix", None, "Token (text) models: every sample starts with this text (its "
                    "tokens are clamped while the rest is generated).")
flags.DEFINE_bool("save_noise", False, "Also save each sample's starting point x_init in FILE.npz.")
flags.DEFINE_bool("allow_nonfinite", False, "Write samples that contain NaN or Inf (a diverged model or "
                  "sampler). By default such a run fails (exit status 2, nothing written) with a "
                  "message giving how many and which samples; with this flag they are written: their "
                  "values as they are in FILE.npz, a black-and-white checkerboard tile in the PNG, and "
                  "their indices under 'nonfinite' in FILE.json, with a warning.")
FLAGS = flags.FLAGS


def _base_path(out, workdir, s):
  if out is None:
    out = os.path.join(workdir, "samples", f"{s.sampler}_{s.steps}_seed{s.seed}")
  root, ext = os.path.splitext(out)
  return root if ext.lower() in (".png", ".npz", ".json", ".ply", ".txt") else out


def _command(ckpt_dir, s, base, classifier_dir=None):
  args = gflags.settings_args(s) + [f"--start_index={s.start_index}"]
  if classifier_dir:
    args += [f"--classifier={classifier_dir}", f"--classifier_scale={s.classifier_scale!r}"]
  if s.ddpm_variance:
    args.append(f"--ddpm_variance={s.ddpm_variance}")
  if FLAGS.input:
    args += [f"--input={os.path.abspath(FLAGS.input)}", f"--strength={s.strength!r}"]
  if FLAGS.mask:
    args += [f"--mask={os.path.abspath(FLAGS.mask)}", f"--resample={s.resample}",
             f"--jump_length={s.jump_length}"]
  if s.save_noise:
    args.append("--save_noise")
  if FLAGS.prefix is not None:
    args.append(f"--prefix={FLAGS.prefix}")
  return gflags.command("sample.py", ckpt_dir, args + [f"--out={base}.png"])


def _refine(sr, restored, base_result):
  """The super-resolution stage on the base samples: its result and the cascade's arrays and info."""
  level = cascade.check_stage(sr, restored, FLAGS.sr_level)
  print(f"super-resolution: {sr.which} parameters of step {sr.step} from {sr.checkpoint_dir}, noise "
        f"level {level:g}", flush=True)
  out = cascade.refine(sr, base_result, level, progress=FLAGS.progress)
  info = {"sr_checkpoint": sr.checkpoint_dir, "sr_step": sr.step, "level": float(level),
          "sr_settings": out.settings.to_json(), "base_shape": list(base_result.samples.shape[1:]),
          "base_timing": base_result.throughput()}
  return out, {"base_samples": base_result.samples.astype(np.float32), "info": info}


def _file_info(path):
  return None if not path else {"path": os.path.abspath(path), "sha256": files.sha256(path)}


def _main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}; flags look like --num=16")
  cli.set_cpu_devices(FLAGS.cpu_devices)  # before anything starts JAX's backends
  settings = gflags.settings(
      start_index=FLAGS.start_index, classifier_scale=FLAGS.classifier_scale,
      ddpm_variance=FLAGS.ddpm_variance,
      strength=FLAGS.strength, resample=FLAGS.resample, jump_length=FLAGS.jump_length,
      save_noise=FLAGS.save_noise)
  generation.check_settings(settings)  # everything that needs no checkpoint, before loading one
  if FLAGS.mask and not FLAGS.input:
    raise ValueError("--mask needs --input (the image to inpaint)")
  if FLAGS.classifier_scale is not None and not FLAGS.classifier:
    raise ValueError("--classifier_scale needs --classifier=WORKDIR (a classifier trained by train.py "
                     "with task 'classifier'); drop --classifier_scale")
  if FLAGS.prefix is not None and (FLAGS.input or FLAGS.mask):
    raise ValueError("--prefix fills text; --input/--mask edit images: pass one or the other")
  for path, what in ((FLAGS.input, "--input"), (FLAGS.mask, "--mask")):
    if path and not os.path.isfile(path):
      raise ValueError(f"{what} file {path} does not exist")

  if FLAGS.sr_level is not None and not FLAGS.sr_workdir:
    raise ValueError("--sr_level needs --sr_workdir (the super-resolution model of a cascade)")
  restored = restore.restore(FLAGS.workdir, FLAGS.checkpoint, use_ema=not FLAGS.raw)
  sr = gflags.sr_stage(restored)
  classifier = None
  if FLAGS.classifier:
    try:
      classifier = restore.restore_path(FLAGS.classifier, task="classifier")
    except ValueError as e:
      raise type(e)(f"--classifier: {e}") from None
  tokens = restored.data_kind == "tokens"
  if (FLAGS.prefix is not None) != tokens and (FLAGS.prefix is not None or FLAGS.input):
    raise ValueError("--prefix is for token (text) models; this model makes "
                     f"{restored.data_kind} data: drop --prefix" if not tokens else
                     "this is a token (text) model: --input/--mask edit images; pass --prefix=TEXT")
  if FLAGS.prefix is not None:
    x_known, mask = gfiles.prefix_tokens(restored.vocab, restored.data_shape[0], FLAGS.prefix)
  else:
    x_known = gfiles.load_input(FLAGS.input, restored.data_shape) if FLAGS.input else None
    mask = gfiles.load_mask(FLAGS.mask, x_known.shape) if FLAGS.mask else None
  plan = generation.plan(restored, settings, x_known, mask, classifier=classifier,
                         cond=gflags.read_text_emb(FLAGS.text_emb))
  s = plan.settings
  base = gflags.writable_output(_base_path(FLAGS.out, restored.workdir, s))
  print(f"{restored.which} parameters of step {restored.step} from {restored.checkpoint_dir}; "
        f"{s.num} samples on {len(plan.devices)} device(s), {plan.num_batches} batch(es) of "
        f"{plan.batch_size}", flush=True)
  if classifier is not None:
    print(f"classifier guidance, scale {s.classifier_scale:g}: {classifier.which} parameters of "
          f"step {classifier.step} from {classifier.checkpoint_dir}", flush=True)
  result = generation.run(plan, progress=FLAGS.progress)
  stages = None
  if sr is not None:
    result, stages = _refine(sr, restored, result)
  bad = result.nonfinite
  if bad.size:
    shown = ", ".join(map(str, bad[:10])) + (", ..." if bad.size > 10 else "")
    what = f"{bad.size} of {result.samples.shape[0]} samples contain NaN or Inf (indices {shown})"
    if not FLAGS.allow_nonfinite:
      raise ValueError(f"{what}: the model or the sampler diverged; nothing was written. Check the "
                       f"checkpoint (another step with --checkpoint, or --raw) or the sampler settings, "
                       f"or pass --allow_nonfinite to write them anyway")
    print(f"warning: {what}; writing them anyway (--allow_nonfinite): a checkerboard tile in the PNG, "
          f"their values in the .npz, their indices under 'nonfinite' in the .json", file=sys.stderr)
  kind = restored.data_kind
  if kind == "image" and restored.data_shape[-1] not in (1, 3):
    kind = "image_channels"  # no PNG for images of other channel counts
  if not image_utils.has_preview(kind) and kind != "tokens":
    print(f"note: the data are {'vectors' if kind == 'vector' else 'not 1- or 3-channel images'}; "
          f"writing no PNG")
  th = result.throughput()
  info = {
      "command": _command(restored.checkpoint_dir, s, base,
                          classifier.checkpoint_dir if classifier is not None else None),
      "classifier": None if classifier is None else {
          "checkpoint": classifier.checkpoint_dir, "step": classifier.step, "params": classifier.which,
          "scale": s.classifier_scale, "num_classes": classifier.num_classes},
      "checkpoint": restored.checkpoint_dir, "workdir": restored.workdir, "step": restored.step,
      "params": restored.which, "mode": result.mode, "settings": s.to_json(),
      "hparams": result.hparams, "ts": [float(t) for t in result.ts],
      "model": {k: restored.meta.get(k) for k in ("model", "data_shape", "num_classes",
                                                    "parametrization", "schedule", "process")},
      "prefix": FLAGS.prefix,
      "num_devices": result.num_devices, "per_device_batch": result.batch_size // result.num_devices,
      "num_batches": result.num_batches, "nfe_per_batch": result.nfe_per_batch,
      "input": _file_info(FLAGS.input), "mask": _file_info(FLAGS.mask),
      "versions": {"jax": jax.__version__, "jdiff": jdiff.__version__},
      "xla_flags": os.environ.get("XLA_FLAGS", ""),  # kernels (hence rounding) may depend on them
      "timing": th,
      "nonfinite": {"count": int(bad.size), "indices": [int(i) for i in bad]},
  }
  if stages is not None:
    info["cascade"] = stages.pop("info")
  paths = gfiles.write_outputs(base, result, info, kind=kind, vocab=restored.vocab or "",
                               arrays=stages)
  if tokens:
    for i, text in zip(result.indices[:3], text_data.decode_rows(restored.vocab, result.samples[:3])):
      print(f"--- sample {i} ---\n{text}")
  print(f"sampled {s.num} in {th['sample_seconds']:.2f} s: {th['images_per_s']:.1f} samples/s, "
        f"{th['seconds_per_nfe'] * 1e3:.2f} ms per NFE ({result.nfe_per_batch} NFE per batch of "
        f"{plan.batch_size}); compile {th['compile_seconds']:.1f} s (not included)")
  print("wrote " + ", ".join(paths[k] for k in ("png", "ply", "txt", "npz", "json") if k in paths))


def main(argv):
  sys.exit(cli.run_main(_main, argv, FLAGS.debug))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser)
