"""The command-line flags that ``sample.py`` and ``eval.py`` share, defined once: which checkpoint, how
many samples, and the sampling settings; ``settings`` turns them into ``jdiff.generation.Settings`` and
``command`` writes the line that reproduces a run."""
from __future__ import annotations

import os
import shlex
from typing import Optional, Sequence

from absl import flags
import jax
import numpy as np

from jdiff.generation import cascade, restore
from jdiff.generation.settings import Settings

FLAGS = flags.FLAGS


def define(num_default: int) -> None:
  """Define the shared flags (once per program)."""
  flags.DEFINE_string("workdir", None, "A train.py workdir: uses its newest checkpoint.")
  flags.DEFINE_string("checkpoint", None, "A checkpoint directory <workdir>/checkpoints/<step>.")
  flags.DEFINE_integer("num", num_default, "Number of samples.")
  flags.DEFINE_integer("seed", 0, "Random seed (sample i draws its noise from fold_in(PRNGKey(seed), i)).")
  flags.DEFINE_string("sampler", None, "Sampler (default: the config's sampling.sampler).")
  flags.DEFINE_integer("steps", None, "Number of steps of the time grid (default: the config's).")
  flags.DEFINE_string("grid", None, "Time grid: uniform_t, uniform_logsnr, karras or a grid FILE fit "
                      "for this model by tools/fit_grid.py (its steps and sampler unless given; refused "
                      "for other parameters) (default: config's).")
  flags.DEFINE_float("guidance", None, "Classifier-free guidance scale w (conditional models).")
  flags.DEFINE_string("labels", None, "Comma-separated class labels; sample i gets labels[i % len] "
                      "(default i % num_classes).")
  flags.DEFINE_multi_string("prompt", None, "Text-to-image models: a prompt (repeatable); sample i gets "
                            "prompt i % count (default: the config's sampling.prompts).")
  flags.DEFINE_string("prompts_file", None, "Text-to-image models: a text file of prompts, one per line "
                      "(after any --prompt).")
  flags.DEFINE_float("threshold", None, "Imagen's dynamic thresholding of x0_hat at this percentile, "
                     "e.g. 0.995 (replaces --clip_x0; useful at large --guidance).")
  flags.DEFINE_string("text_emb", None, "Models on precomputed text embeddings: an .npz with text_emb "
                      "[n, L, D] and text_mask [n, L] (1 = token); sample i gets row i % n.")
  flags.DEFINE_string("sr_workdir", None, "A cascade: the workdir of a super-resolution model "
                      "(super_res.factor > 0) that refines the samples of --workdir (its own sampling "
                      "settings, the same seed and prompts).")
  flags.DEFINE_float("sr_level", None, "Cascade: the noise-augmentation level of the low-resolution "
                     "images, in [0, 1] (default: the super-resolution config's super_res.level).")
  flags.DEFINE_float("eta", None, "DDIM eta (0: deterministic, 1: DDPM-like).")
  flags.DEFINE_multi_string("hparam", [], "A sampler hyperparameter as name=value (repeatable; over "
                            "the config's sampling.hparams.<sampler>), e.g. S_churn=10 for euler/heun.")
  flags.DEFINE_integer("batch_size", None, "Samples per pmapped call over all devices (default "
                       "min(num, 64), rounded up to a multiple of the device count).")
  flags.DEFINE_bool("clip_x0", None, "Clip x0_hat to the data range [-1, 1] at every step (default: the "
                    "config's sampling.clip_x0, on for image data; --noclip_x0 turns it off).")
  flags.DEFINE_bool("raw", False, "Use the raw parameters instead of their EMA.")
  flags.DEFINE_bool("progress", True, "Show a progress bar over sampling batches.")
  flags.DEFINE_bool("debug", False, "Show the full traceback of user errors.")
  flags.DEFINE_integer("cpu_devices", None, "CPU-only hosts: split the CPU into N JAX devices for pmap "
                       "(default: automatic, README: Training; 1: one device).")


def parse_labels(text: Optional[str]) -> Optional[tuple]:
  if text is None:
    return None
  try:
    return tuple(int(v) for v in text.split(",") if v.strip())
  except ValueError:
    raise ValueError(f"--labels must be comma-separated integers such as 0,1,2, got {text!r}") from None


def read_prompts(prompts: Optional[Sequence[str]], prompts_file: Optional[str]) -> Optional[tuple]:
  """``--prompt`` values then the lines of ``--prompts_file`` (blank lines skipped); ``None`` if
  neither is given."""
  out = list(prompts or [])
  if prompts_file:
    if not os.path.isfile(prompts_file):
      raise ValueError(f"--prompts_file {prompts_file} does not exist")
    with open(prompts_file, encoding="utf-8") as f:
      lines = [line.strip() for line in f]
    if not any(lines):
      raise ValueError(f"--prompts_file {prompts_file} holds no prompt; write one per line")
    out += [line for line in lines if line]
  return tuple(out) if out else None


def read_text_emb(path: Optional[str]) -> Optional[dict]:
  """``{"text_emb": [n, L, D], "text_mask": [n, L]}`` from ``--text_emb`` (an .npz), or ``None``."""
  if not path:
    return None
  if not os.path.isfile(path):
    raise ValueError(f"--text_emb file {path} does not exist")
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: np.asarray(z[k]) for k in ("text_emb", "text_mask") if k in z.files}
  except (OSError, ValueError) as e:
    raise ValueError(f"--text_emb {path} is not a readable .npz ({e})") from None
  if set(arrays) != {"text_emb", "text_mask"}:
    raise ValueError(f"--text_emb {path} must hold the arrays text_emb [n, L, D] and text_mask [n, L]")
  return arrays


def parse_hparams(items: Sequence[str], eta: Optional[float]) -> dict:
  """``--hparam=name=value`` items (and ``--eta``) as a dict of floats."""
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


def settings(**extra) -> Settings:
  """``Settings`` from the shared flags (``extra``: the fields of flags only one program has)."""
  hparams = parse_hparams(FLAGS.hparam, FLAGS.eta)
  return Settings(num=FLAGS.num, seed=FLAGS.seed, sampler=FLAGS.sampler, steps=FLAGS.steps,
                  grid=FLAGS.grid, batch_size=FLAGS.batch_size, guidance=FLAGS.guidance,
                  labels=parse_labels(FLAGS.labels), hparams=hparams, clip_x0=FLAGS.clip_x0,
                  prompts=read_prompts(FLAGS.prompt, FLAGS.prompts_file), threshold=FLAGS.threshold,
                  **extra)


def settings_args(s: Settings) -> list:
  """The flags that reproduce resolved settings ``s`` (sample.py and eval.py spell them alike)."""
  args = [f"--num={s.num}", f"--seed={s.seed}", f"--sampler={s.sampler}", f"--steps={s.steps}",
          f"--grid={s.grid}", f"--batch_size={s.batch_size}"]
  if s.guidance is not None:
    args.append(f"--guidance={s.guidance!r}")
  if s.labels is not None:
    args.append("--labels=" + ",".join(map(str, s.labels)))
  if s.clip_x0 is not None:
    args.append("--clip_x0" if s.clip_x0 else "--noclip_x0")
  if s.threshold is not None:
    args.append(f"--threshold={s.threshold!r}")
  args += [f"--hparam={k}={v!r}" for k, v in sorted(s.hparams.items())]
  args += [f"--prompt={p}" for p in (s.prompts or ())]
  if FLAGS.text_emb:
    args.append(f"--text_emb={os.path.abspath(FLAGS.text_emb)}")
  if FLAGS.sr_workdir:
    args.append(f"--sr_workdir={os.path.abspath(FLAGS.sr_workdir)}")
    if FLAGS.sr_level is not None:
      args.append(f"--sr_level={FLAGS.sr_level!r}")
  return args


def command(script: str, checkpoint: str, args: Sequence[str]) -> str:
  """The shell line ``python SCRIPT --checkpoint=... ARGS`` (with ``XLA_FLAGS`` when set, and on a
  single CPU-only process the ``--cpu_devices`` count used: kernels and the per-device batch layout, hence
  float32 rounding, depend on them; measured: 1 device x 4 vs 2 devices x 2 differ by up to 2.4e-6)."""
  line = ["python", script, f"--checkpoint={checkpoint}"] + list(args)
  if FLAGS.raw:
    line.append("--raw")
  if jax.process_count() == 1 and jax.default_backend() == "cpu":
    line.append(f"--cpu_devices={jax.local_device_count()}")
  env = [f"XLA_FLAGS={shlex.quote(os.environ['XLA_FLAGS'])}"] if os.environ.get("XLA_FLAGS") else []
  return " ".join(env + [shlex.quote(a) for a in line])


def sr_stage(base):
  """The super-resolution model of a cascade (``--sr_workdir``, its EMA unless ``--raw``), checked
  against the ``base`` model and ``--sr_level``; ``None`` without ``--sr_workdir``. Errors name the
  flag."""
  if not FLAGS.sr_workdir:
    return None
  try:
    sr = restore.restore(FLAGS.sr_workdir, use_ema=not FLAGS.raw)
    cascade.check_stage(sr, base, FLAGS.sr_level)
  except ValueError as e:
    raise ValueError(f"--sr_workdir: {e}") from None
  return sr


def writable_output(path: str, what: str = "--out") -> str:
  """``path`` as an absolute path whose directory exists or can be created by this user."""
  path = os.path.abspath(path)
  out_dir = os.path.dirname(path)
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise ValueError(f"{what} directory {out_dir} is a file; pass {what}=DIR/FILE")
  existing = out_dir
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
    raise ValueError(f"cannot write to {out_dir} ({existing} is not a writable directory); pass an "
                     f"{what} you can write to")
  return path
