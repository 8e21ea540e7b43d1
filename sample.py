"""Sample from a trained model (a train.py workdir or one of its checkpoints).

  python sample.py --workdir=runs/fashion_mnist --num=64 --seed=0 --sampler=dpmpp_2m --steps=20 \
      --out=samples/fm.png

Loads the EMA parameters of the newest checkpoint (``--raw``: the raw ones; ``--checkpoint=<workdir>/
checkpoints/<step>``: another step), runs the sampler pmapped over all local devices and writes
``FILE.png`` (a grid, for image data), ``FILE.npz`` (``samples``, ``indices``, ``labels``, ``ts``; with
``--save_noise`` also ``x_init``) and ``FILE.json`` (every setting, including the command that reproduces
the run). Sample ``i`` (global index ``start_index + k``) is the same whatever ``--batch_size``, the
number of devices or how a run is split with ``--start_index``.

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
import shlex
import sys

from absl import app, flags

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)

flags.DEFINE_string("workdir", None, "A train.py workdir: samples from its newest checkpoint.")
flags.DEFINE_string("checkpoint", None, "A checkpoint directory <workdir>/checkpoints/<step>.")
flags.DEFINE_integer("num", 64, "Number of samples.")
flags.DEFINE_integer("seed", 0, "Random seed (sample i draws its noise from fold_in(PRNGKey(seed), i)).")
flags.DEFINE_string("sampler", None, "Sampler (default: the config's sampling.sampler).")
flags.DEFINE_integer("steps", None, "Number of steps of the time grid (default: the config's).")
flags.DEFINE_string("grid", None, "Time grid: uniform_t, uniform_logsnr or karras (default: config's).")
flags.DEFINE_float("guidance", None, "Classifier-free guidance scale w (conditional models).")
flags.DEFINE_string("labels", None, "Comma-separated class labels; sample i gets labels[i % len].")
flags.DEFINE_string("classifier", None, "Classifier guidance: the workdir (or <workdir>/checkpoints/"
                    "<step>) of a noise-conditional classifier trained by train.py with task "
                    "'classifier' (EMA parameters); guides toward --labels.")
flags.DEFINE_float("classifier_scale", None, "Classifier guidance scale s (default 1 with --classifier).")
flags.DEFINE_float("eta", None, "DDIM eta (0: deterministic, 1: DDPM-like).")
flags.DEFINE_multi_string("hparam", [], "A sampler hyperparameter as name=value (repeatable).")
flags.DEFINE_string("ddpm_variance", None, "ddpm sampler variance: small, large or learned.")
flags.DEFINE_integer("start_index", 0, "Global index of the first sample (to split a run).")
flags.DEFINE_integer("batch_size", None, "Samples per pmapped call over all devices (default "
                     "min(num, 64), rounded up to a multiple of the device count).")
flags.DEFINE_bool("raw", False, "Use the raw parameters instead of their EMA.")
flags.DEFINE_string("out", None, "Output path FILE(.png): writes FILE.png, FILE.npz and FILE.json "
                    "(default <workdir>/samples/<sampler>_<steps>_seed<seed>).")
flags.DEFINE_string("input", None, "Image (PNG) or array (.npy/.npz) to edit.")
flags.DEFINE_string("mask", None, "Inpainting mask for --input: white/1 = keep, black/0 = generate.")
flags.DEFINE_float("strength", None, "Editing: noise level t the input is noised to, in (0, 1] "
                   "(default 0.5 for SDEdit, 1 for inpainting).")
flags.DEFINE_integer("resample", 1, "RePaint: times each jump is resampled (1 = plain inpainting).")
flags.DEFINE_integer("jump_length", 1, "RePaint: levels jumped back before resampling.")
flags.DEFINE_bool("clip_x0", None, "Clip x0_hat to the data range [-1, 1] at every step (default: the "
                  "config's sampling.clip_x0, on for image data; --noclip_x0 turns it off).")
flags.DEFINE_bool("save_noise", False, "Also save each sample's starting point x_init in FILE.npz.")
flags.DEFINE_bool("progress", True, "Show a progress bar over batches.")
flags.DEFINE_bool("allow_nonfinite", False, "Write samples that contain NaN or Inf (a diverged model or "
                  "sampler). By default such a run fails (exit status 2, nothing written) with a "
                  "message giving how many and which samples; with this flag they are written: their "
                  "values as they are in FILE.npz, a black-and-white checkerboard tile in the PNG, and "
                  "their indices under 'nonfinite' in FILE.json, with a warning.")
flags.DEFINE_bool("debug", False, "Show the full traceback of user errors.")
flags.DEFINE_integer("cpu_devices", 0, "Split the CPU into N JAX devices for pmap (0: one; README: Training).")
FLAGS = flags.FLAGS


def _parse_labels(text):
  if text is None:
    return None
  try:
    return tuple(int(v) for v in text.split(",") if v.strip())
  except ValueError:
    raise ValueError(f"--labels must be comma-separated integers such as 0,1,2, got {text!r}") from None


def _parse_hparams(items, eta):
  out = {}
  for item in items:
    name, sep, value = item.partition("=")
    try:
      if not sep or not name:
        raise ValueError
      out[name.strip()] = float(value)
    except ValueError:
      raise ValueError(f"--hparam must look like name=value (e.g. S_churn=40), got {item!r}") from None
  if eta is not None:
    out["eta"] = float(eta)
  return out


def _base_path(out, workdir, s):
  if out is None:
    out = os.path.join(workdir, "samples", f"{s.sampler}_{s.steps}_seed{s.seed}")
  root, ext = os.path.splitext(out)
  return root if ext.lower() in (".png", ".npz", ".json") else out


def _command(ckpt_dir, s, raw, base, input_path, mask_path, classifier_dir=None):
  args = ["python", "sample.py", f"--checkpoint={ckpt_dir}", f"--num={s.num}", f"--seed={s.seed}",
          f"--sampler={s.sampler}", f"--steps={s.steps}", f"--grid={s.grid}",
          f"--start_index={s.start_index}", f"--batch_size={s.batch_size}"]
  if s.guidance is not None:
    args.append(f"--guidance={s.guidance!r}")
  if s.labels is not None:
    args.append("--labels=" + ",".join(map(str, s.labels)))
  if classifier_dir:
    args += [f"--classifier={classifier_dir}", f"--classifier_scale={s.classifier_scale!r}"]
  args += [f"--hparam={k}={v!r}" for k, v in sorted(s.hparams.items())]
  if s.ddpm_variance:
    args.append(f"--ddpm_variance={s.ddpm_variance}")
  if raw:
    args.append("--raw")
  if input_path:
    args += [f"--input={os.path.abspath(input_path)}", f"--strength={s.strength!r}"]
  if mask_path:
    args += [f"--mask={os.path.abspath(mask_path)}", f"--resample={s.resample}",
             f"--jump_length={s.jump_length}"]
  if s.save_noise:
    args.append("--save_noise")
  if s.clip_x0 is not None:
    args.append("--clip_x0" if s.clip_x0 else "--noclip_x0")
  args.append(f"--out={base}.png")
  env = [f"XLA_FLAGS={shlex.quote(os.environ['XLA_FLAGS'])}"] if os.environ.get("XLA_FLAGS") else []
  return " ".join(env + [shlex.quote(a) for a in args])


def _sha256(path):
  import hashlib
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}; flags look like --num=16")
  from jdiff.utils import cli
  cli.set_cpu_devices(FLAGS.cpu_devices)  # before anything starts JAX's backends
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  import dataclasses

  from jdiff.training import generate as gen
  settings = gen.Settings(
      num=FLAGS.num, seed=FLAGS.seed, sampler=FLAGS.sampler, steps=FLAGS.steps, grid=FLAGS.grid,
      start_index=FLAGS.start_index, batch_size=FLAGS.batch_size, guidance=FLAGS.guidance,
      classifier_scale=FLAGS.classifier_scale,
      labels=_parse_labels(FLAGS.labels), hparams=_parse_hparams(FLAGS.hparam, FLAGS.eta),
      ddpm_variance=FLAGS.ddpm_variance, strength=FLAGS.strength, resample=FLAGS.resample,
      jump_length=FLAGS.jump_length, save_noise=FLAGS.save_noise, clip_x0=FLAGS.clip_x0)
  gen.check_settings(settings)  # everything that needs no checkpoint, before loading one
  if FLAGS.mask and not FLAGS.input:
    raise ValueError("--mask needs --input (the image to inpaint)")
  if FLAGS.classifier_scale is not None and not FLAGS.classifier:
    raise ValueError("--classifier_scale needs --classifier=WORKDIR (a classifier trained by train.py "
                     "with task 'classifier'); drop --classifier_scale")
  for path, what in ((FLAGS.input, "--input"), (FLAGS.mask, "--mask")):
    if path and not os.path.isfile(path):
      raise ValueError(f"{what} file {path} does not exist")

  import jax
  from jdiff.training import restore
  restored = restore.restore(FLAGS.workdir, FLAGS.checkpoint, use_ema=not FLAGS.raw)
  classifier = None
  if FLAGS.classifier:
    path = os.path.abspath(FLAGS.classifier.rstrip("/"))
    is_step = os.path.basename(path).isdigit() and os.path.basename(os.path.dirname(path)) == "checkpoints"
    try:
      classifier = restore.restore(None if is_step else path, path if is_step else None,
                                   task="classifier")
    except ValueError as e:
      raise type(e)(f"--classifier: {e}") from None
  settings = gen.with_defaults(settings, restored)
  gen.check_settings(settings)
  x_known = mask = None
  if FLAGS.input:
    x_known = gen.load_input(FLAGS.input, restored.data_shape)
  if FLAGS.mask:
    mask = gen.load_mask(FLAGS.mask, x_known.shape)
  if classifier is not None and settings.classifier_scale is None:
    settings = dataclasses.replace(settings, classifier_scale=1.0)
  gen.check_for_model(settings, restored, x_known, mask, classifier)
  devices = jax.local_devices()
  batch, num_batches = gen.batch_layout(settings.num, settings.batch_size, len(devices))
  settings = dataclasses.replace(settings, batch_size=batch)
  base = os.path.abspath(_base_path(FLAGS.out, restored.workdir, settings))
  out_dir = os.path.dirname(base)
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise ValueError(f"--out directory {out_dir} is a file; pass --out=DIR/FILE.png")
  existing = out_dir
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
    raise ValueError(f"cannot write to {out_dir} ({existing} is not a writable directory); pass an "
                     f"--out you can write to")

  print(f"{restored.which} parameters of step {restored.step} from {restored.checkpoint_dir}; "
        f"{settings.num} samples on {len(devices)} device(s), {num_batches} batch(es) of {batch}",
        flush=True)
  if classifier is not None:
    print(f"classifier guidance, scale {settings.classifier_scale:g}: {classifier.which} parameters of "
          f"step {classifier.step} from {classifier.checkpoint_dir}", flush=True)
  result = gen.generate(restored, settings, x_known, mask, devices=devices, progress=FLAGS.progress,
                        classifier=classifier)
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
  s = result.settings
  if not (len(restored.data_shape) == 3 and restored.data_shape[-1] in (1, 3)):
    print("note: the data are not images; writing no PNG grid")
  th = result.throughput()
  info = {
      "command": _command(restored.checkpoint_dir, s, FLAGS.raw, base, FLAGS.input, FLAGS.mask,
                          classifier.checkpoint_dir if classifier is not None else None),
      "classifier": None if classifier is None else {
          "checkpoint": classifier.checkpoint_dir, "step": classifier.step, "params": classifier.which,
          "scale": s.classifier_scale, "num_classes": classifier.num_classes},
      "checkpoint": restored.checkpoint_dir, "workdir": restored.workdir, "step": restored.step,
      "params": restored.which, "mode": result.mode, "settings": s.to_json(),
      "hparams": result.hparams, "ts": [float(t) for t in result.ts],
      "model": {k: restored.meta.get(k) for k in ("model", "data_shape", "num_classes",
                                                    "parametrization", "schedule")},
      "num_devices": result.num_devices, "per_device_batch": result.batch_size // result.num_devices,
      "num_batches": result.num_batches, "nfe_per_batch": result.nfe_per_batch,
      "input": {"path": os.path.abspath(FLAGS.input), "sha256": _sha256(FLAGS.input)} if FLAGS.input
               else None,
      "mask": {"path": os.path.abspath(FLAGS.mask), "sha256": _sha256(FLAGS.mask)} if FLAGS.mask
              else None,
      "versions": {"jax": jax.__version__, "jdiff": __import__("jdiff").__version__},
      "xla_flags": os.environ.get("XLA_FLAGS", ""),  # kernels (hence rounding) may depend on them
      "timing": th,
  }
  info["nonfinite"] = {"count": int(bad.size), "indices": [int(i) for i in bad]}
  paths = gen.write_outputs(base, result, info,
                            save_png=len(restored.data_shape) == 3 and restored.data_shape[-1] in (1, 3))
  print(f"sampled {settings.num} in {th['sample_seconds']:.2f} s: {th['images_per_s']:.1f} samples/s, "
        f"{th['seconds_per_nfe'] * 1e3:.2f} ms per NFE ({result.nfe_per_batch} NFE per batch of {batch}); "
        f"compile {th['compile_seconds']:.1f} s (not included)")
  print("wrote " + ", ".join(paths[k] for k in ("png", "npz", "json") if k in paths))


def main(argv):
  from jdiff.utils import cli
  sys.exit(cli.run_main(_main, argv, FLAGS.debug))


if __name__ == "__main__":
  from jdiff.utils.cli import flags_parser
  app.run(main, flags_parser=flags_parser)
