"""Text by discrete diffusion against character n-grams: held-out bits per character of trained token
models (their ELBO, ``jdiff.eval.text_report``) next to interpolated Kneser-Ney n-gram models of orders
1..5 fitted on the same training split and scored on the same held-out chunks (each chunk on its own,
as the diffusion model sees it), and the statistics of samples as a function of the sampling steps.

    python bench/text_diffusion.py --workdir runs/fortunes_mdlm [--workdir runs/fortunes_d3pm] \\
        [--orders 1,2,3,4,5] [--steps 16,32,64,128] [--num 256] [--heldout_num 0] [--repeats 4]

For each sample-step count: the fraction of generated words found among the training words, the
Jensen-Shannon divergence of character n-gram distributions (n = 1..4) between samples and the training
text, the samples' bits per character under the training 4-gram model, each with the floor of as many
real held-out chunks; the sampling seconds; and the first samples' text. Prints the tables, writes
``bench/out/text_diffusion.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(0, os.path.dirname(_HERE))

import _harness  # noqa: E402
import numpy as np  # noqa: E402

from jdiff import generation  # noqa: E402
from jdiff.data import text as text_data  # noqa: E402
from jdiff.eval import text_metrics, text_report  # noqa: E402
from jdiff.generation import restore  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", action="append", required=True, help="a token model's train.py workdir")
  p.add_argument("--orders", default="1,2,3,4,5")
  p.add_argument("--steps", default="16,32,64,128")
  p.add_argument("--num", type=int, default=256, help="samples per step count")
  p.add_argument("--heldout_num", type=int, default=0, help="held-out chunks scored (0: all)")
  p.add_argument("--repeats", type=int, default=4, help="draws of the bound per held-out chunk")
  p.add_argument("--show", type=int, default=3, help="samples printed per step count")
  p.add_argument("--out", default=os.path.join(_HERE, "out", "text_diffusion.json"))
  args = p.parse_args()
  orders = _harness.int_list(p, args.orders, "--orders")
  steps = _harness.int_list(p, args.steps, "--steps")
  if args.num < 2:
    p.error("--num must be >= 2")
  models = [restore.restore(w) for w in args.workdir]
  for r in models:
    if r.data_kind != "tokens":
      p.error(f"{r.workdir} is not a token model")
  first = models[0]
  corp = text_report.corpus(first)
  test = corp.test_tokens if not args.heldout_num else corp.test_tokens[:args.heldout_num]
  out = {"machine": _harness.machine_info(), "dataset": first.config.data.name,
         "seq_length": int(first.data_shape[0]), "vocab_size": len(first.vocab),
         "train_chunks": int(corp.train_tokens.shape[0]), "heldout_chunks": int(test.shape[0]),
         "ngram": [], "models": []}
  rows = []
  for n in orders:
    t0 = time.perf_counter()
    lm = text_metrics.NGramModel(n, len(first.vocab)).fit(corp.train_tokens)
    bits = float(lm.bits_per_token(test))
    out["ngram"].append({"order": n, "bits_per_char": bits, "seconds": time.perf_counter() - t0})
    rows.append([f"{n}-gram (Kneser-Ney)", f"{bits:.4f}", "", ""])
  best = min(out["ngram"], key=lambda e: e["bits_per_char"])
  for r in models:
    if r.vocab != first.vocab or r.config.data.name != first.config.data.name:
      p.error(f"{r.workdir} was trained on another corpus or vocabulary than {first.workdir}")
    t0 = time.perf_counter()
    h = text_report.heldout_bits(r, test, repeats=args.repeats)
    entry = {"workdir": r.workdir, "step": r.step, "process": r.process.kind,
             "bound": h["bound"], "heldout": h, "bound_seconds": time.perf_counter() - t0,
             "beats_best_ngram": h["bits_per_token"] < best["bits_per_char"], "samples": []}
    rows.append([f"{os.path.basename(r.workdir)} ({r.process.kind}, step {r.step})",
                 f"{h['bits_per_token']:.4f}", f"±{h['stderr']:.4f}",
                 f"{h['bits_per_token'] - best['bits_per_char']:+.4f} vs {best['order']}-gram"])
    for k in steps:
      res = generation.generate(r, generation.Settings(num=args.num, steps=k, seed=0), progress=False)
      texts = text_data.decode_rows(r.vocab, res.samples)
      stats = text_report.sample_report(texts, res.samples, corp, seed=0)
      entry["samples"].append({"steps": k, "sampler": res.settings.sampler, **stats,
                               "sample_seconds": res.sample_seconds, "texts": texts[:args.show]})
    out["models"].append(entry)
    _harness.write_json(args.out, out)
  print(f"held-out bits per character on {test.shape[0]} chunks of {out['seq_length']} characters of "
        f"{out['dataset']} (vocabulary {out['vocab_size']}, {out['train_chunks']} training chunks):")
  print(_harness.format_table(["model", "bits/char", "stderr", "vs best n-gram"], rows))
  for entry in out["models"]:
    print(f"\nsamples of {entry['workdir']} (N={args.num}; floor: as many real held-out chunks):")
    srows = []
    for e in entry["samples"]:
      f = e["floor"]
      srows.append([str(e["steps"]), e["sampler"], f"{e['word_fraction']:.3f} ({f['word_fraction']:.3f})",
                    f"{e['js_1gram']:.4f} ({f['js_1gram']:.4f})", f"{e['js_2gram']:.4f} ({f['js_2gram']:.4f})",
                    f"{e['js_4gram']:.4f} ({f['js_4gram']:.4f})",
                    f"{e['lm_bits']:.3f} ({f['lm_bits']:.3f})", f"{e['sample_seconds']:.1f}"])
    print(_harness.format_table(["steps", "sampler", "words known", "JS 1-gram", "JS 2-gram", "JS 4-gram",
                                 "4-gram bits/char", "seconds"], srows))
    for e in entry["samples"]:
      print(f"\n--- {e['steps']} steps ---")
      for t in e["texts"]:
        print(repr(t))
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
