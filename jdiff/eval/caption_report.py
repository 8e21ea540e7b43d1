"""The text-to-image report of a captioned-data model (``fashion_mnist_captions``, ``fashion_mnist_pairs``;
``jdiff.data.captions``): does a sample show what its prompt asks for, where it asks for it?

For each prompt set the model is sampled with the prompts cycled over the samples (sample ``i`` gets
prompt ``i % P``), optionally refined by a super-resolution stage (``jdiff.generation.cascade``), and
scored with the project's Fashion-MNIST classifier applied per canvas place
(``jdiff.eval.caption_metrics``): caption accuracy (the fraction of samples whose items and places all
match) and FD per place against real canvases of the same prompt set. Prompt sets: single items, one
prompt per class (``items``); pairs, the 80 training combinations (``train``) and the 10 held-out ones
(``heldout``), each with the first pair template ("a bag to the left of a sneaker").

Floors, at the same N: the accuracy of the classifier on real canvases of the set (about 0.91 for
single items, 0.83 for pairs: two places right at ~0.91 each) and the FD per place between two
disjoint sets of real canvases.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from jdiff import generation
from jdiff.data import captions
from jdiff.data import sources
from jdiff.eval import caption_metrics

DATASETS = ("fashion_mnist_captions", "fashion_mnist_pairs")
MIN_SAMPLES = 20


def prompt_sets(dataset: str) -> dict:
  """``{set name: (prompts, real split)}`` of a captioned dataset (see the module docstring)."""
  if dataset not in DATASETS:
    raise ValueError(f"the text-to-image report scores models of {', '.join(DATASETS)}, not "
                     f"{dataset!r}")
  grammar = captions.get_grammar(captions.DATASETS[dataset][0])
  if captions.DATASETS[dataset][1] == "single":
    return {"items": ([captions.caption((c,), 0, grammar.dataset) for c in range(grammar.num_classes)],
                      "test")}
  train, held = captions.pair_split(grammar.num_classes)
  prompt = lambda pairs: [captions.caption(tuple(int(v) for v in p), 0, grammar.dataset) for p in pairs]
  return {"train": (prompt(train), "test"), "heldout": (prompt(held), "heldout")}


def _real(dataset: str, split: str, num: int, offset: int = 0) -> tuple:
  """``num`` real canvases of a split (from ``offset``) in [-1, 1] and their items."""
  src = sources.get_dataset(dataset, split)
  if offset + num > src.num_examples:
    raise ValueError(f"{num} samples need {offset + num} real canvases but the {split} split of "
                     f"{dataset} holds {src.num_examples}; use fewer")
  idx = np.arange(offset, offset + num)
  x = src.read(idx)[0].astype(np.float32) / np.float32(127.5) - np.float32(1.0)
  return x, src.items[idx]


def check(restored, num: int) -> None:
  """The report applies to ``restored`` (a caption model of a captioned dataset) with ``num`` samples."""
  if "caption" not in restored.conditions:
    raise ValueError("the text-to-image report needs a model conditioned on captions "
                     "(training.text_conditional=True)")
  prompt_sets(restored.config.data.name)
  if num < MIN_SAMPLES:
    raise ValueError(f"{num} samples are too few for the text-to-image report; use {MIN_SAMPLES} or "
                     f"more (1000 gives stable FDs)")


def report(restored, settings: generation.Settings, *, sr=None, sr_level: Optional[float] = None,
           net=None, devices=None, progress: bool = True, log=print) -> dict:
  """Sample ``settings.num`` images per prompt set (prompts cycled; ``settings.prompts`` is replaced)
  and score them; with ``sr`` refine them by that super-resolution stage first. Returns
  ``{set: {"accuracy", "per_place", "fd", "fd_per_place", "floor": {...}, "prompts", "n"}}``."""
  dataset = restored.config.data.name
  check(restored, settings.num)
  level = None if sr is None else generation.cascade.check_stage(sr, restored, sr_level)
  out = {}
  for name, (prompts, split) in prompt_sets(dataset).items():
    s = dataclasses.replace(settings, prompts=tuple(prompts))
    result = generation.generate(restored, s, devices=devices, progress=progress)
    if sr is not None:
      result = generation.cascade.refine(sr, result, level, devices=devices, progress=progress)
    x = np.clip(result.samples, -1.0, 1.0)
    if x.shape[1:3] != (28, 28 * (2 if name != "items" else 1)):
      raise ValueError(f"the report scores 28x28 items on 28x28 or 28x56 canvases, got samples of shape "
                       f"{x.shape[1:]}; score the cascade's output (--sr_workdir) for a low-resolution "
                       f"base model")
    items = captions.caption_items(result.captions, captions.DATASETS[dataset][0])
    acc = caption_metrics.caption_accuracy(x, items, net)
    real, real_items = _real(dataset, split, x.shape[0])
    fd = caption_metrics.fd_per_place(x, real, net)
    other, _ = _real(dataset, split, x.shape[0], offset=x.shape[0]) \
        if 2 * x.shape[0] <= sources.get_dataset(dataset, split).num_examples else (None, None)
    floor = {"accuracy": caption_metrics.caption_accuracy(real, real_items, net)["accuracy"],
             "fd": None if other is None else caption_metrics.fd_per_place(other, real, net)["fd"]}
    out[name] = {"accuracy": acc["accuracy"], "per_place": acc["per_place"], "fd": fd["fd"],
                 "fd_per_place": fd["per_place"], "floor": floor, "n": int(x.shape[0]),
                 "prompts": len(prompts)}
    log(format_row(name, out[name]))
  return out


def format_row(name: str, r: dict) -> str:
  fd_floor = "-" if r["floor"]["fd"] is None else f"{r['floor']['fd']:.2f}"
  return (f"{name}: caption accuracy {r['accuracy']:.3f} (real {r['floor']['accuracy']:.3f}; per place "
          f"{', '.join(f'{a:.3f}' for a in r['per_place'])}), FD per place {r['fd']:.2f} (real "
          f"{fd_floor}), N={r['n']} over {r['prompts']} prompts")


__all__ = ["DATASETS", "MIN_SAMPLES", "check", "format_row", "prompt_sets", "report"]
