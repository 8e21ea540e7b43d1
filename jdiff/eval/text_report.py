"""The report of a token (text) model: held-out bits per character from its bound, and the statistics
of its samples next to those of real held-out text.

* **Bits per character** (``heldout_bits``): the model's negative ELBO on held-out chunks, in bits per
  token (= per character for the character tokenizer): the continuous-time bound of the masked process
  (``jdiff.categorical.masked_elbo``) or D3PM's discrete-time bound (``jdiff.categorical.vlb_loss``),
  each an unbiased Monte-Carlo estimate, averaged over ``repeats`` draws per chunk; reported with its
  standard error over chunks; the draws of a chunk are stratified in time. A bound: the model's
  true likelihood is at least as good.
* **Samples** (``sample_report``): the fraction of generated words (of 2 or more letters) found among
  the training split's words; the Jensen-Shannon divergence (bits) between the character n-gram
  distributions of the samples and of the training text, n = 1..4; and the bits per character of the
  samples under a character n-gram model of the training split (``jdiff.eval.text_metrics``). Each
  next to its floor: the same numbers for as many real held-out chunks, i.e. what a model that
  generated text like the corpus's (but not its training text) would score at this N.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import categorical
from jdiff.data import sources
from jdiff.data import text as text_data
from jdiff.eval import text_metrics

NGRAM_ORDERS = (1, 2, 3, 4)
LM_ORDER = 4  # the n-gram model that scores samples
WORD_MIN = 2  # words of 2+ letters: random characters make many 1-letter "words" that exist ("a", "s")


def text_split(config, split: str, vocab: str):
  """The ``split`` source of a token model's dataset, checked to use the model's vocabulary."""
  c = config.data
  kwargs = {"seq_length": c.seq_length} if c.get("seq_length", 0) else {}
  try:
    src = sources.get_dataset(c.name, split, data_dir=c.get("data_dir", "") or None, **kwargs)
  except (ValueError, FileNotFoundError) as e:
    raise ValueError(f"the text report needs the {split} split of {c.name!r}: "
                     f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
  if getattr(src, "vocab", None) != vocab:
    raise ValueError(f"the {split} split of {c.name!r} is tokenized with another vocabulary than the "
                     f"model's ({len(getattr(src, 'vocab', '') or '')} vs {len(vocab)} characters): the "
                     f"corpus changed since training; evaluate on the corpus the model was trained on")
  return src


def heldout_bits(restored, x, *, batch_size: int = 64, repeats: int = 4, seed: int = 0) -> dict:
  """Bits per token of the model's bound on token chunks ``x [N, L]`` (see the module docstring):
  ``{"bits_per_token", "stderr", "num", "repeats", "bound"}``."""
  x = np.asarray(x, np.int32)
  n, length = x.shape
  if n < 2:
    raise ValueError(f"held-out bits per token need at least 2 chunks (a standard error), got {n}")
  process = restored.process
  loss = restored.config.diffusion.get("loss", "elbo")
  num_steps = int(restored.config.diffusion.get("num_steps", 1000))
  logits_fn = restored.model_fn

  @jax.jit
  def bound(params, xb, idx, key, u):
    if loss == "elbo":
      return categorical.masked_elbo(logits_fn, params, process, xb, key, indices=idx, t=u)
    t_index = 1 + jnp.minimum(jnp.floor(u * num_steps), num_steps - 1).astype(jnp.int32)
    return categorical.vlb_loss(logits_fn, params, process, xb, key, num_steps, indices=idx,
                                t_index=t_index).vlb

  # Stratified times: chunk i's r-th draw at u_i + r / repeats (mod 1), u_i uniform: each chunk sees
  # the whole time range (the bound's integrand is heavy-tailed near t = 0).
  u0 = np.random.default_rng(seed).uniform(size=n)
  total = np.zeros((n,), np.float64)
  for r in range(repeats):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), r)
    u = np.mod(u0 + r / repeats, 1.0).astype(np.float32)
    for start in range(0, n, batch_size):
      idx = np.arange(start, start + batch_size) % n  # a fixed batch shape: the last batch wraps
      nats = np.asarray(bound(restored.params, jnp.asarray(x[idx]), jnp.asarray(idx, jnp.int32), key,
                              jnp.asarray(u[idx])))
      keep = min(batch_size, n - start)
      total[start:start + keep] += nats[:keep]
  bits = total / repeats / (length * np.log(2.0))
  return {"bits_per_token": float(bits.mean()), "stderr": float(bits.std(ddof=1) / np.sqrt(n)),
          "num": int(n), "repeats": int(repeats), "bound": loss}


class Corpus:
  """A token model's training and held-out text, decoded, with the training words and the n-gram
  model of the training split (built once per dataset and sequence length, see ``corpus``)."""

  def __init__(self, train, test, vocab: str, lm_order: int = LM_ORDER):
    self.train_tokens, self.test_tokens = np.asarray(train, np.int32), np.asarray(test, np.int32)
    self.train_texts, self.test_texts = (text_data.decode_rows(vocab, self.train_tokens),
                                          text_data.decode_rows(vocab, self.test_tokens))
    self.words = text_metrics.training_words(self.train_texts)
    self.lm = text_metrics.NGramModel(lm_order, len(vocab)).fit(self.train_tokens)


@functools.lru_cache(maxsize=2)
def _corpus(name: str, data_dir: str, seq_length: int, vocab: str) -> Corpus:
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict({"data": {"name": name, "data_dir": data_dir,
                                          "seq_length": seq_length}})
  train, test = text_split(c, "train", vocab), text_split(c, "test", vocab)
  return Corpus(train.read(np.arange(train.num_examples))[0], test.read(np.arange(test.num_examples))[0],
                vocab)


def corpus(restored) -> Corpus:
  """The ``Corpus`` of a token model's dataset (cached: several reports reuse it)."""
  c = restored.config.data
  return _corpus(c.name, c.get("data_dir", "") or "", int(c.get("seq_length", 0) or 0) or
                 int(restored.data_shape[0]), restored.vocab)


def sample_report(texts, tokens, corp: Corpus, *, seed: int = 0) -> dict:
  """Statistics of generated ``texts`` (and their ``tokens [N, L]``) against the training text of
  ``corp``, with the floor of as many real held-out chunks drawn with ``seed`` (module docstring)."""
  texts = list(texts)
  n = len(texts)
  if n < 1:
    raise ValueError("the text report needs at least one sample")
  pick = np.sort(np.random.default_rng(seed).choice(len(corp.test_texts),
                                                    size=min(n, len(corp.test_texts)), replace=False))

  def stats(group, group_tokens):
    out = {"word_fraction": text_metrics.word_fraction(group, corp.words, min_length=WORD_MIN),
           "lm_bits": float(text_metrics.sample_bits(corp.lm, group_tokens))}
    for k in NGRAM_ORDERS:
      out[f"js_{k}gram"] = float(text_metrics.ngram_divergence(group, corp.train_texts, k))
    return out

  report = {**stats(texts, np.asarray(tokens)), "num_samples": n}
  report["floor"] = {**stats([corp.test_texts[i] for i in pick], corp.test_tokens[pick]),
                     "num_samples": int(pick.size)}
  return report


def format_report(metrics: dict) -> str:
  """One line: each statistic next to its floor."""
  f = metrics["floor"]
  parts = [f"words in training vocabulary {metrics['word_fraction']:.3f} (real {f['word_fraction']:.3f})"]
  parts += [f"JS {k}-gram {metrics[f'js_{k}gram']:.4f} ({f[f'js_{k}gram']:.4f})" for k in NGRAM_ORDERS]
  if "lm_bits" in metrics:
    parts.append(f"{LM_ORDER}-gram bits/char {metrics['lm_bits']:.3f} ({f['lm_bits']:.3f})")
  if "heldout" in metrics:
    h = metrics["heldout"]
    parts.insert(0, f"held-out bits/char {h['bits_per_token']:.3f}±{h['stderr']:.3f}")
  return "; ".join(parts)
