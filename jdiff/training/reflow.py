"""Reflow runs of ``train.py`` (``training.objective`` ``reflow`` or ``reflow_distill``; ``jdiff.reflow``):
the (noise, sample) pairs of the teacher's ODE, drawn once before the first step, as the run's dataset.

The teacher is ``distill.teacher_workdir`` (a flow-matching model); its ODE sampler (its config's
``sampling`` section unless ``reflow.sampler`` / ``steps`` / ``grid`` say otherwise; it must be
deterministic) maps the noise of global sample index ``i`` (``fold_in(PRNGKey(reflow.seed), i)``, as
``sample.py --seed`` draws it) to its sample, through the one front door ``jdiff.generation.generate``
with ``save_noise``. So pair ``i`` is the teacher's sample ``i`` of ``sample.py --seed=<reflow.seed>``
whatever the chunking, batch size or device count.

Pairs are written in chunks of ``CHUNK`` to ``reflow.pairs_dir`` (default ``<workdir>/pairs``), each an
atomic ``.npz`` (``x0``, ``noise``, ``label``), next to ``spec.json`` (teacher checkpoint, sampler,
steps, grid, seed, count): a killed run resumes at the first missing chunk, and pairs of another spec are
refused. The run's dataset is then an in-memory ``jdiff.data.ArraySource`` of the samples (``float32``
images in model units, labels of a conditional teacher) with the extra field ``noise``, which the
pipeline puts into each batch; its order and resume are the pipeline's as for any dataset.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np

from jdiff import data as jdata
from jdiff import generation
from jdiff import sampling
from jdiff.generation import settings as settings_lib
from jdiff.utils import files

CHUNK = 1000  # pairs per file
SPEC = "spec.json"


def pairs_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  d = config.reflow.get("pairs_dir", "") or os.path.join(workdir, "pairs")
  return os.path.abspath(d)


def settings(config: ml_collections.ConfigDict, teacher: generation.Restored,
             num: int) -> generation.Settings:
  """The teacher's sampling settings for the pairs, resolved and checked (a deterministic sampler)."""
  r = config.reflow
  s = generation.Settings(num=num, seed=int(r.seed), sampler=r.sampler or None,
                          steps=int(r.steps) or None, grid=r.grid or None,
                          batch_size=int(r.get("batch_size", 250)), save_noise=True)
  s = settings_lib.resolve(s, teacher)
  if sampling.draws_noise(settings_lib.resolve_sampler(s, teacher), s.hparams):
    churn = f" with {s.hparams}" if s.hparams else ""
    raise ValueError(f"reflow pairs need a deterministic (ODE) sampler, but {s.sampler!r}{churn} draws "
                     f"noise: set --config.reflow.sampler to an ODE solver such as unipc, dpmpp_2m, heun "
                     f"or euler (without churn)")
  return s


def spec_of(config: ml_collections.ConfigDict, teacher: generation.Restored) -> dict:
  s = settings(config, teacher, CHUNK)
  return {"teacher": teacher.checkpoint_dir, "teacher_step": int(teacher.step), "sampler": s.sampler,
          "steps": int(s.steps), "grid": s.grid, "seed": int(s.seed), "clip_x0": bool(s.clip_x0),
          "num_pairs": int(config.reflow.num_pairs)}


def _chunk_path(directory: str, start: int) -> str:
  return os.path.join(directory, f"pairs_{start:09d}.npz")


def ensure_pairs(config: ml_collections.ConfigDict, teacher: generation.Restored, workdir: str,
                 log=print) -> jdata.ArraySource:
  """Draw the missing pair chunks (process 0 writes them) and return all pairs as a data source."""
  directory = pairs_dir(config, workdir)
  spec = spec_of(config, teacher)
  spec_path = os.path.join(directory, SPEC)
  if os.path.exists(spec_path):
    try:
      with open(spec_path) as f:
        saved = json.load(f)
    except (OSError, ValueError) as e:
      raise ValueError(f"reflow pairs: cannot read {spec_path} ({e}); remove {directory} to draw "
                       f"the pairs again") from None
    if saved != spec:
      diff = ", ".join(f"{k}: {saved.get(k)!r} there, {v!r} now" for k, v in spec.items()
                       if saved.get(k) != v)
      raise ValueError(f"the reflow pairs in {directory} were drawn with other settings ({diff}); "
                       f"pass another --config.reflow.pairs_dir (or workdir), or remove {directory}")
  num = spec["num_pairs"]
  starts = list(range(0, num, CHUNK))
  missing = [s for s in starts if not os.path.exists(_chunk_path(directory, s))]
  main = jax.process_index() == 0
  if missing and jax.process_count() > 1:
    raise ValueError(f"reflow pairs in {directory} are incomplete ({len(missing)} of {len(starts)} "
                     f"chunks missing): draw them with one process first (the same command without "
                     f"the multi-process flags), then start the multi-process run")
  if missing and main:
    os.makedirs(directory, exist_ok=True)
    files.write_json(spec_path, spec)
    log(f"reflow: drawing {num} (noise, sample) pairs from {teacher.checkpoint_dir} with "
        f"{spec['sampler']} ({spec['steps']} steps, {spec['grid']}) into {directory}")
  for k, start in enumerate(missing):
    n = min(CHUNK, num - start)
    s = settings(config, teacher, n)
    result = generation.generate(teacher, dataclasses.replace(s, start_index=start), progress=False)
    bad = result.nonfinite
    if bad.size:
      raise ValueError(f"the teacher's samples {bad[:5].tolist()} are not finite: it cannot give "
                       f"reflow pairs; check the teacher workdir")
    labels = (result.labels if result.labels is not None else np.zeros(n, np.int32))
    files.write_npz(_chunk_path(directory, start), {
        "x0": result.samples.astype(np.float32), "noise": result.x_init.astype(np.float32),
        "label": np.asarray(labels, np.int32)})
    log(f"reflow: pairs {start + n}/{num} ({result.throughput()['images_per_s']:.0f} per second)")
  return load_pairs(directory, num, teacher)


def load_pairs(directory: str, num: int, teacher: generation.Restored) -> jdata.ArraySource:
  """The ``num`` pairs in ``directory`` as an ``ArraySource`` with the extra field ``noise``."""
  x0, noise, labels = [], [], []
  for start in range(0, num, CHUNK):
    path = _chunk_path(directory, start)
    try:
      with np.load(path) as z:
        x0.append(z["x0"])
        noise.append(z["noise"])
        labels.append(z["label"])
    except (OSError, KeyError, ValueError) as e:
      raise ValueError(f"reflow pairs: cannot read {path} ({e}); remove it to draw it again") from None
  x0, noise, labels = np.concatenate(x0), np.concatenate(noise), np.concatenate(labels)
  shape = tuple(teacher.data_shape)
  if x0.shape != (num,) + shape or noise.shape != x0.shape:
    raise ValueError(f"reflow pairs in {directory} hold samples {x0.shape} and noise {noise.shape}, "
                     f"expected {(num,) + shape} each; remove {directory} to draw them again")
  return jdata.ArraySource(x0, labels, name="reflow_pairs", split="train",
                           num_classes=teacher.num_classes or None, extras={"noise": noise})
