"""Text metrics for character-level models (numpy only): an n-gram baseline and sample quality.

**The n-gram baseline.** :class:`NGramModel` is an interpolated *modified* Kneser-Ney model (Chen &
Goodman 1999, "An empirical study of smoothing techniques for language modeling", section 3.4 and
eq. 17-19), fitted on token chunks ``[N, L]`` (n-grams are counted within chunks, never across
them). For order ``k`` and a context ``h`` of ``k - 1`` tokens::

    p_k(w | h) = (max(c(hw) - D_k(c(hw)), 0) + gamma_k(h) p_{k-1}(w | h')) / sum_v c(hv)
    gamma_k(h) = D_k1 N1(h.) + D_k2 N2(h.) + D_k3+ N3+(h.)
    p_0(w) = 1 / V                       (a uniform base: every token has probability > 0)

where ``h'`` drops the oldest token of ``h``, ``Ni(h.)`` is the number of tokens ``v`` with
``c(hv) = i`` (``N3+``: ``>= 3``) and, when ``sum_v c(hv) = 0`` (an unseen context),
``p_k(w | h) = p_{k-1}(w | h')``. At the highest order ``c`` is the raw count; at lower orders it is
the continuation count ``N1+(.hw)``, the number of distinct tokens that precede ``hw`` (the start of
a chunk counts as one more left context, like a sentence-start symbol). The three discounts of each
order and count type come from its counts of counts ``n1..n4`` (Chen & Goodman eq. 26):
``Y = n1 / (n1 + 2 n2)``, ``D1 = 1 - 2Y n2/n1``, ``D2 = 2 - 3Y n3/n2``, ``D3+ = 3 - 4Y n4/n3``;
when some ``n_i`` is 0 (tiny data, or unigrams of a large corpus) or a discount comes out <= 0, that
discount is the plain Kneser-Ney 0.75.

**Scoring.** :meth:`NGramModel.bits_per_token` scores each chunk independently from its start: the
token at position ``i`` is predicted from the ``min(n - 1, i)`` tokens before it in the same chunk,
by the model of order ``min(n, i + 1)`` (raw counts at that order): the same information a diffusion
model of one chunk has. The result is the mean of ``-log2 p`` over all tokens (bits per character for
a character tokenizer). A fitted model of order ``n`` holds every lower order as well
(``bits_per_token(chunks, order=k)``), so :func:`ngram_table` fits once.

Speed (2-core CPU): fitting ``n = 5`` on the 20,179 x 128 training chunks of ``fortunes`` (2.58M
tokens) takes about 3 s, scoring the 1,090 x 128 test chunks (140k tokens) 0.2 s at ``n = 5``. Test
bits per character there: 4.59, 3.70, 2.94, 2.46, 2.20 for n = 1 .. 5 (2.09 and 2.05 for n = 6, 7).

**Sample quality.** :func:`word_fraction` (the fraction of generated words, lowercase alphabetic
runs, that occur in the training text: :func:`training_words`), :func:`ngram_divergence` (the
Jensen-Shannon divergence, in bits, between character n-gram frequencies of samples and reference
text) and :func:`sample_bits` (bits per token of samples under the training n-gram model: low for
text the model finds plausible, though also for degenerate repetition: read it with the others).
"""
from __future__ import annotations

import collections
import re
from typing import Iterable, Optional, Sequence, Union

import numpy as np

_FALLBACK_DISCOUNT = 0.75
_BLOCK = 2048  # chunks scored at a time (bounds memory)
_WORD = re.compile(r"[a-z]+")


def _int(v, name: str, lo: int) -> int:
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
    raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
  return int(v)


def _discounts(counts: np.ndarray) -> np.ndarray:
  """``float64 [4]``: the discounts for counts 0, 1, 2 and 3+ (Chen & Goodman 1999, eq. 26)."""
  n = [int(np.count_nonzero(counts == c)) for c in (1, 2, 3, 4)]
  d = [_FALLBACK_DISCOUNT] * 3
  if all(n):
    y = n[0] / (n[0] + 2.0 * n[1])
    d = [1.0 - 2.0 * y * n[1] / n[0], 2.0 - 3.0 * y * n[2] / n[1], 3.0 - 4.0 * y * n[3] / n[2]]
  d = [x if 0.0 < x <= c else _FALLBACK_DISCOUNT for c, x in zip((1, 2, 3), d)]
  return np.array([0.0] + d, np.float64)


class _Table:
  """Counts of the k-grams of one order (raw or continuation), with per-context statistics.

  k-grams are int64 codes in base ``B``; a k-gram's context is ``code // B``."""

  def __init__(self, codes: np.ndarray, counts: np.ndarray, base: int):
    self.codes = codes  # sorted, distinct
    self.counts = counts.astype(np.int64)
    self.discount = _discounts(self.counts)
    ctx = codes // base
    starts = np.flatnonzero(np.r_[True, ctx[1:] != ctx[:-1]]) if ctx.size else np.zeros(0, np.int64)
    self.ctx = ctx[starts]
    if ctx.size:
      self.total = np.add.reduceat(self.counts, starts).astype(np.float64)
      weight = self.discount[np.minimum(self.counts, 3)]
      self.gamma = np.add.reduceat(weight, starts)  # D1 N1(h.) + D2 N2(h.) + D3+ N3+(h.)
    else:
      self.total = self.gamma = np.zeros(0, np.float64)

  @staticmethod
  def _find(keys: np.ndarray, q: np.ndarray):
    idx = np.searchsorted(keys, q)
    idx = np.minimum(idx, max(keys.size - 1, 0))
    found = (keys[idx] == q) if keys.size else np.zeros(q.shape, bool)
    return idx, found

  def count(self, q: np.ndarray) -> np.ndarray:
    idx, found = self._find(self.codes, q)
    return np.where(found, self.counts[idx] if self.codes.size else 0, 0)

  def context(self, h: np.ndarray):
    idx, found = self._find(self.ctx, h)
    if not self.ctx.size:
      return np.zeros(h.shape), np.zeros(h.shape)
    return np.where(found, self.total[idx], 0.0), np.where(found, self.gamma[idx], 0.0)


def _as_chunks(chunks, vocab_size: int, name: str) -> np.ndarray:
  a = np.asarray(chunks)
  if a.ndim == 1:
    a = a[None]
  if a.ndim != 2 or not np.issubdtype(a.dtype, np.integer):
    raise ValueError(f"{name} must be integer token ids [N, L] (or one chunk [L]), got {a.dtype} "
                     f"of shape {a.shape}")
  if a.size and (a.min() < 0 or a.max() >= vocab_size):
    raise ValueError(f"{name} must be token ids in [0, vocab_size={vocab_size}), got values in "
                     f"[{a.min()}, {a.max()}]; pass the vocab_size of the tokenizer")
  return a.astype(np.int64)


def _window_codes(tokens: np.ndarray, k: int, base: int) -> np.ndarray:
  """Codes of all length-``k`` windows of each row: ``int64 [N, L - k + 1]``."""
  n, length = tokens.shape
  width = length - k + 1
  if width <= 0:
    return np.zeros((n, 0), np.int64)
  codes = np.zeros((n, width), np.int64)
  for i in range(k):
    codes = codes * base + tokens[:, i:i + width]
  return codes


class NGramModel:
  """An interpolated modified Kneser-Ney character n-gram model (see the module docstring).

  Args:
    n: the order (n-grams of ``n`` tokens: contexts of ``n - 1``), ``>= 1``.
    vocab_size: the number of token ids ``V``; probabilities are over ``0 .. V - 1``.

  Use ``NGramModel(n, V).fit(train_chunks)``, then :meth:`bits_per_token`, :meth:`log_probs` or
  :meth:`prob`.
  """

  def __init__(self, n: int, vocab_size: int):
    self.n = _int(n, "n", 1)
    self.vocab_size = _int(vocab_size, "vocab_size", 1)
    self._base = self.vocab_size + 1  # token ids and one more symbol: the start of a chunk
    if float(self._base) ** self.n >= 2.0 ** 62:
      raise ValueError(f"n={self.n} with vocab_size={self.vocab_size} overflows the int64 n-gram "
                       f"codes; use n <= {int(62 / np.log2(self._base))}")
    self._raw, self._cont = None, None
    self.num_tokens = 0

  @property
  def fitted(self) -> bool:
    return self._raw is not None

  def fit(self, chunks) -> "NGramModel":
    """Count the n-grams within each chunk of ``chunks`` (``int [N, L]`` token ids; ``[L]`` is one
    chunk) and estimate the discounts. Returns ``self``."""
    tokens = _as_chunks(chunks, self.vocab_size, "chunks")
    if tokens.size == 0:
      raise ValueError("chunks to fit an n-gram model on are empty; pass at least one token")
    b = self._base
    raw, cont = {}, {}
    for k in range(1, self.n + 1):
      codes, counts = np.unique(_window_codes(tokens, k, b), return_counts=True)
      raw[k] = _Table(codes, counts, b)
    start = np.full((tokens.shape[0], 1), self.vocab_size, np.int64)
    padded = np.concatenate([start, tokens], axis=1)  # a chunk's start is one more left context
    for k in range(1, self.n):
      left = np.unique(_window_codes(padded, k + 1, b))  # distinct (left, k-gram) pairs
      codes, counts = np.unique(left % b ** k, return_counts=True)
      cont[k] = _Table(codes, counts, b)
    self._raw, self._cont = raw, cont
    self.num_tokens = int(tokens.size)
    return self

  def with_order(self, order: int) -> "NGramModel":
    """The fitted model of a lower order ``order <= n`` (shares this model's counts)."""
    order = self._order(order)
    out = NGramModel(order, self.vocab_size)
    out._raw = {k: v for k, v in self._raw.items() if k <= order}
    out._cont = {k: v for k, v in self._cont.items() if k < order}
    out.num_tokens = self.num_tokens
    return out

  def _order(self, order: Optional[int]) -> int:
    if not self.fitted:
      raise ValueError("this NGramModel is not fitted; call .fit(train_chunks) first")
    if order is None:
      return self.n
    order = _int(order, "order", 1)
    if order > self.n:
      raise ValueError(f"order={order} exceeds this model's n={self.n}; fit NGramModel(n={order})")
    return order

  def _probs(self, ctx: np.ndarray, w: np.ndarray, m: int) -> np.ndarray:
    """``p_m(w | ctx)`` for queries ``ctx int64 [Q, m - 1]`` (oldest first), ``w int64 [Q]``."""
    b = self._base
    p = np.full(w.shape, 1.0 / self.vocab_size)
    h = np.zeros(w.shape, np.int64)
    for j in range(1, m + 1):
      if j >= 2:
        h = h + ctx[:, m - j] * b ** (j - 2)
      table = self._raw[j] if j == m else self._cont[j]
      c = table.count(h * b + w)
      total, gamma = table.context(h)
      seen = total > 0
      discounted = np.maximum(c - table.discount[np.minimum(c, 3)], 0.0)
      p = np.where(seen, (discounted + gamma * p) / np.where(seen, total, 1.0), p)
    return p

  def log_probs(self, context: Sequence[int] = (), order: Optional[int] = None) -> np.ndarray:
    """``float64 [V]``: the natural-log probabilities of every token after ``context`` (a sequence of
    token ids, oldest first; only its last ``order - 1`` are used). Exactly normalized."""
    m_max = self._order(order)
    ctx = np.asarray(tuple(context), np.int64).reshape(-1)
    if ctx.size and (ctx.min() < 0 or ctx.max() >= self.vocab_size):
      raise ValueError(f"context must be token ids in [0, {self.vocab_size}), got {tuple(context)}")
    ctx = ctx[ctx.size - min(ctx.size, m_max - 1):]
    m = ctx.size + 1
    w = np.arange(self.vocab_size, dtype=np.int64)
    return np.log(self._probs(np.broadcast_to(ctx, (self.vocab_size, m - 1)), w, m))

  def prob(self, token: int, context: Sequence[int] = (), order: Optional[int] = None) -> float:
    """The probability of ``token`` after ``context`` (see :meth:`log_probs`)."""
    token = _int(token, "token", 0)
    if token >= self.vocab_size:
      raise ValueError(f"token must be an id in [0, {self.vocab_size}), got {token}")
    return float(np.exp(self.log_probs(context, order)[token]))

  def token_bits(self, chunks, order: Optional[int] = None) -> np.ndarray:
    """``float64 [N, L]``: ``-log2 p`` of every token of ``chunks``, each chunk scored from its start
    (position ``i`` by the model of order ``min(order, i + 1)``)."""
    n = self._order(order)
    tokens = _as_chunks(chunks, self.vocab_size, "chunks")
    num, length = tokens.shape
    out = np.zeros((num, length), np.float64)
    for lo in range(0, num, _BLOCK):
      t = tokens[lo:lo + _BLOCK]
      for i in range(min(n - 1, length)):  # the first tokens of a chunk: shorter contexts
        out[lo:lo + _BLOCK, i] = -np.log2(self._probs(t[:, :i], t[:, i], i + 1))
      if length >= n:
        win = np.lib.stride_tricks.sliding_window_view(t, n, axis=1)  # [N, L - n + 1, n]
        q = win.reshape(-1, n)
        bits = -np.log2(self._probs(q[:, :-1], q[:, -1], n))
        out[lo:lo + _BLOCK, n - 1:] = bits.reshape(t.shape[0], length - n + 1)
    return out

  def bits_per_token(self, chunks, order: Optional[int] = None) -> float:
    """The mean of ``-log2 p`` over all tokens of ``chunks`` (``int [N, L]``), each chunk scored
    independently from its start with contexts truncated there (:meth:`token_bits`)."""
    bits = self.token_bits(chunks, order)
    if bits.size == 0:
      raise ValueError("chunks to score are empty; pass at least one token")
    return float(bits.mean())

  def __repr__(self) -> str:
    return (f"NGramModel(n={self.n}, vocab_size={self.vocab_size}, "
            f"{'fitted on %d tokens' % self.num_tokens if self.fitted else 'not fitted'})")


def ngram_table(train_chunks, test_chunks, vocab_size: int, n_max: int = 5) -> list:
  """``[(n, bits_per_token), ...]`` for ``n = 1 .. n_max``: modified Kneser-Ney models fitted on
  ``train_chunks`` scoring ``test_chunks`` (both ``int [N, L]``; one fit of order ``n_max``)."""
  model = NGramModel(n_max, vocab_size).fit(train_chunks)
  return [(k, model.bits_per_token(test_chunks, order=k)) for k in range(1, model.n + 1)]


def best_ngram(train_chunks, test_chunks, vocab_size: int, n_max: int = 5) -> tuple:
  """``(n, bits_per_token, model)``: the order ``n <= n_max`` with the fewest test bits per token,
  and its fitted :class:`NGramModel` (e.g. for :func:`sample_bits`)."""
  model = NGramModel(n_max, vocab_size).fit(train_chunks)
  table = [(k, model.bits_per_token(test_chunks, order=k)) for k in range(1, model.n + 1)]
  n, bits = min(table, key=lambda r: r[1])
  return n, bits, model.with_order(n)


def sample_bits(ngram_model: NGramModel, tokens) -> float:
  """Bits per token of generated ``tokens`` (``int [N, L]``) under a fitted training n-gram model,
  each sample scored from its start (:meth:`NGramModel.bits_per_token`)."""
  if not isinstance(ngram_model, NGramModel):
    raise ValueError(f"ngram_model must be a fitted NGramModel, got {type(ngram_model).__name__}")
  return ngram_model.bits_per_token(tokens)


# ---------------------------------------------------------------------------------------------------
# Sample quality on decoded text.


def _texts(texts, name: str) -> list:
  if isinstance(texts, str):
    return [texts]
  texts = list(texts)
  if not all(isinstance(t, str) for t in texts):
    raise ValueError(f"{name} must be a string or a list of strings (decode tokens first)")
  return texts


def _words(texts: Iterable[str]) -> list:
  return [w for t in texts for w in _WORD.findall(t.lower())]


def training_words(texts: Union[str, Iterable[str]]) -> set:
  """The set of words of ``texts``: lowercase runs of the letters ``a-z`` (after lowercasing)."""
  return set(_words(_texts(texts, "texts")))


def word_fraction(texts: Union[str, Iterable[str]], vocabulary_words, *,
                  min_length: int = 1) -> float:
  """The fraction of the words of ``texts`` (lowercase alphabetic runs of at least ``min_length``
  letters, counted with repeats) found in ``vocabulary_words`` (a set, e.g. :func:`training_words`
  of the training text); 0.0 when ``texts`` hold no such word.

  Uniformly random printable characters score about 0.58 against the fortunes vocabulary (most of
  their words are single letters such as ``a``, ``s``); ``min_length=2`` lowers that floor."""
  min_length = _int(min_length, "min_length", 1)
  if isinstance(vocabulary_words, str) or not isinstance(vocabulary_words, (set, frozenset, dict)):
    vocabulary_words = set(_texts(vocabulary_words, "vocabulary_words"))
  words = [w for w in _words(_texts(texts, "texts")) if len(w) >= min_length]
  if not words:
    return 0.0
  return sum(w in vocabulary_words for w in words) / len(words)


def _ngram_counts(texts: list, n: int) -> collections.Counter:
  counts = collections.Counter()
  for t in texts:
    counts.update(t[i:i + n] for i in range(len(t) - n + 1))
  return counts


def ngram_divergence(sample_texts, ref_texts, n: int = 3) -> float:
  """The Jensen-Shannon divergence, in bits (0 .. 1), between the character ``n``-gram frequency
  distributions of ``sample_texts`` and ``ref_texts`` (n-grams within each text, not across texts):
  ``JS(P, Q) = KL(P || M) / 2 + KL(Q || M) / 2`` with ``M = (P + Q) / 2``. 0 for identical
  distributions; symmetric."""
  n = _int(n, "n", 1)
  p_counts = _ngram_counts(_texts(sample_texts, "sample_texts"), n)
  q_counts = _ngram_counts(_texts(ref_texts, "ref_texts"), n)
  for what, counts in (("sample_texts", p_counts), ("ref_texts", q_counts)):
    if not counts:
      raise ValueError(f"{what} hold no {n}-gram of characters; pass longer texts or a smaller n")
  keys = list(p_counts.keys() | q_counts.keys())
  p = np.array([p_counts.get(k, 0) for k in keys], np.float64)
  q = np.array([q_counts.get(k, 0) for k in keys], np.float64)
  p, q = p / p.sum(), q / q.sum()
  m = 0.5 * (p + q)

  def kl(a):
    nz = a > 0
    return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

  return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


__all__ = ["NGramModel", "best_ngram", "ngram_divergence", "ngram_table", "sample_bits",
           "training_words", "word_fraction"]
