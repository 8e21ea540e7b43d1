"""The character n-gram baseline (interpolated modified Kneser-Ney) and the text sample metrics of
``jdiff.eval.text_metrics``."""
import collections
import math
import os

import numpy as np
import pytest

from jdiff.eval import text_metrics as tm


def _corpus(seed=0, num=12, length=20, vocab=6):
  """Chunks of a small Markov chain over ``vocab - 1`` tokens (the last id is never used)."""
  rng = np.random.default_rng(seed)
  trans = rng.dirichlet(np.full(vocab - 1, 0.3), size=vocab - 1)
  out = np.zeros((num, length), np.int32)
  for r in range(num):
    s = rng.integers(vocab - 1)
    for i in range(length):
      out[r, i] = s
      s = rng.choice(vocab - 1, p=trans[s])
  return out


# --- an independent reference: Chen & Goodman (1999) written out with dicts ----------------------


def _ref_discounts(counter):
  n = [sum(1 for c in counter.values() if c == k) for k in (1, 2, 3, 4)]
  d = [0.75] * 3
  if all(n):
    y = n[0] / (n[0] + 2 * n[1])
    d = [1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1], 3 - 4 * y * n[3] / n[2]]
  return {1: d[0] if 0 < d[0] <= 1 else 0.75, 2: d[1] if 0 < d[1] <= 2 else 0.75,
          3: d[2] if 0 < d[2] <= 3 else 0.75}


def _ref_model(chunks, n, vocab):
  raw = {k: collections.Counter() for k in range(1, n + 1)}
  lefts = {k: collections.defaultdict(set) for k in range(1, n)}
  for ch in chunks.tolist():
    for k in range(1, n + 1):
      for i in range(len(ch) - k + 1):
        raw[k][tuple(ch[i:i + k])] += 1
    padded = ["<s>"] + ch
    for k in range(1, n):
      for i in range(len(padded) - k):
        lefts[k][tuple(padded[i + 1:i + 1 + k])].add(padded[i])
  cont = {k: collections.Counter({g: len(s) for g, s in lefts[k].items()}) for k in range(1, n)}
  disc = {("raw", k): _ref_discounts(raw[k]) for k in raw}
  disc.update({("cont", k): _ref_discounts(cont[k]) for k in cont})

  def prob(w, ctx, top, m=None):
    m = top if m is None else m
    if m == 0:
      return 1.0 / vocab
    kind = "raw" if m == top else "cont"
    table = raw[m] if kind == "raw" else cont[m]
    d = disc[(kind, m)]
    h = tuple(ctx[len(ctx) - (m - 1):]) if m > 1 else ()
    rows = {g[-1]: c for g, c in table.items() if g[:-1] == h}
    lower = prob(w, ctx, top, m - 1)
    total = sum(rows.values())
    if total == 0:
      return lower
    gamma = sum(d[min(c, 3)] for c in rows.values())
    c = rows.get(w, 0)
    return (max(c - (d[min(c, 3)] if c else 0), 0) + gamma * lower) / total

  return prob


def test_matches_a_dict_reference_of_modified_kneser_ney():
  chunks = _corpus()
  model = tm.NGramModel(3, 6).fit(chunks)
  ref = _ref_model(chunks, 3, 6)
  contexts = [(), (0,), (4,), (5,), (1, 2), (2, 2), (5, 5), (3, 0), (0, 5)]
  contexts += [tuple(chunks[r, i:i + 2]) for r, i in ((0, 0), (3, 7), (11, 17))]
  for ctx in contexts:
    got = np.exp(model.log_probs(ctx))
    want = [ref(w, ctx, min(3, len(ctx) + 1)) for w in range(6)]
    np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=str(ctx))
  # Scoring uses the same numbers: the first tokens of a chunk with the shorter contexts.
  row = chunks[2]
  bits = [-math.log2(ref(int(row[i]), tuple(row[max(0, i - 2):i]), min(3, i + 1)))
          for i in range(len(row))]
  np.testing.assert_allclose(model.token_bits(row)[0], bits, rtol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_conditionals_sum_to_one_for_seen_and_unseen_contexts(n):
  chunks = _corpus(seed=n)
  model = tm.NGramModel(n, 6).fit(chunks)
  rng = np.random.default_rng(1)
  contexts = [(), (5,), (5, 5, 5), tuple(chunks[0, :n - 1])]
  contexts += [tuple(rng.integers(0, 6, size=k)) for k in range(n) for _ in range(5)]
  for ctx in contexts:
    for order in range(1, n + 1):
      p = np.exp(model.log_probs(ctx, order=order))
      assert abs(p.sum() - 1.0) < 1e-9, (ctx, order, p.sum())
      assert (p > 0).all()  # the uniform base: token 5 never occurs, yet has a probability
  assert model.prob(5, (5,)) > 0


def test_unigram_without_counts_of_counts_falls_back_to_a_plain_discount():
  # Every token occurs many times: n1 = n2 = 0, the Chen-Goodman estimate is undefined.
  chunks = np.tile(np.arange(3), (4, 10))  # 40 of each of 0, 1, 2; token 3 never
  model = tm.NGramModel(1, 4).fit(chunks)
  p = np.exp(model.log_probs())
  np.testing.assert_allclose(p[:3], (40 - 0.75 + 3 * 0.75 / 4) / 120)
  np.testing.assert_allclose(p[3], 3 * 0.75 / 4 / 120)
  assert abs(p.sum() - 1) < 1e-12
  np.testing.assert_allclose(model.bits_per_token(chunks), -np.log2(p[0]))


def test_a_repeated_sequence_is_nearly_free_with_context():
  chunks = np.tile(np.arange(5), (30, 8))  # 0 1 2 3 4 0 1 ... : deterministic given one token
  table = dict(tm.ngram_table(chunks, chunks[:3], vocab_size=5, n_max=4))
  assert abs(table[1] - math.log2(5)) < 0.01  # unigram: uniform over 5
  for n in (2, 3, 4):
    assert table[n] < 0.1 * table[1], table  # only the chunk's first token costs bits
  n, bits, model = tm.best_ngram(chunks, chunks[:3], 5, n_max=4)
  assert bits == min(table.values()) and table[n] == bits and model.n == n
  assert tm.sample_bits(model, chunks[:3]) == pytest.approx(bits)


def test_chunks_are_scored_independently_from_their_start():
  chunks = _corpus(seed=3)
  model = tm.NGramModel(4, 6).fit(chunks)
  both = model.token_bits(chunks[:2])
  np.testing.assert_allclose(both[1], model.token_bits(chunks[1])[0], rtol=1e-12)
  # The first token of a chunk is predicted from nothing: the unigram of raw counts.
  np.testing.assert_allclose(both[:, 0], -np.log2(np.exp(model.log_probs((), order=1))[chunks[:2, 0]]))
  # Contexts never reach across chunks: swapping the chunks' order changes nothing.
  np.testing.assert_allclose(model.token_bits(chunks[[1, 0]]), both[[1, 0]])
  assert model.bits_per_token(chunks[:2]) == pytest.approx(both.mean())


def test_fit_counts_within_chunks_only():
  # Two chunks "0 1" and "2 3": the bigram "1 2" spans the boundary and is never counted.
  model = tm.NGramModel(2, 4).fit(np.array([[0, 1], [2, 3]]))
  p_after_1 = np.exp(model.log_probs((1,)))
  assert p_after_1[2] == pytest.approx(np.exp(model.log_probs((3,)))[2])  # both unseen contexts
  assert p_after_1[2] < 0.5


def test_bad_input():
  model = tm.NGramModel(3, 5)
  with pytest.raises(ValueError, match="not fitted; call .fit"):
    model.bits_per_token(np.zeros((1, 4), np.int32))
  with pytest.raises(ValueError, match=r"integer token ids \[N, L\]"):
    model.fit(np.zeros((2, 4), np.float32))
  with pytest.raises(ValueError, match=r"token ids in \[0, vocab_size=5\)"):
    model.fit(np.full((2, 4), 5))
  with pytest.raises(ValueError, match="n must be an integer >= 1"):
    tm.NGramModel(0, 5)
  with pytest.raises(ValueError, match="overflows"):
    tm.NGramModel(20, 100)
  model.fit(np.zeros((2, 4), np.int32))
  with pytest.raises(ValueError, match="order=4 exceeds this model's n=3"):
    model.bits_per_token(np.zeros((1, 4), np.int32), order=4)
  with pytest.raises(ValueError, match="ngram_model must be a fitted NGramModel"):
    tm.sample_bits("model", np.zeros((1, 4), np.int32))


# --- sample quality on text ----------------------------------------------------------------------


def test_word_fraction_and_training_words():
  vocab = tm.training_words(["The cat sat on the mat.", "A dog's life"])
  assert vocab == {"the", "cat", "sat", "on", "mat", "a", "dog", "s", "life"}
  # Words: "the", "cat", "xqz", "mat", "dogz" -> 3 of 5 known (case-insensitive, punctuation splits).
  assert tm.word_fraction(["THE cat, xqz!", "mat-dogz 123"], vocab) == pytest.approx(3 / 5)
  assert tm.word_fraction("cat cat cat", vocab) == 1.0
  assert tm.word_fraction(["1234 !!"], vocab) == 0.0  # no words at all
  assert tm.word_fraction("a s cat qz", vocab, min_length=2) == pytest.approx(1 / 2)


def test_ngram_divergence():
  a = ["hello world, hello there", "the world is round"]
  assert tm.ngram_divergence(a, a, 3) == 0.0
  assert tm.ngram_divergence(a, list(reversed(a)), 2) == pytest.approx(0.0, abs=1e-15)
  b = ["zzzz qqqq zzzz", "hello xyz"]
  d = tm.ngram_divergence(a, b, 2)
  assert 0 < d < 1 and d == pytest.approx(tm.ngram_divergence(b, a, 2), rel=1e-12)
  assert tm.ngram_divergence(["aaaa"], ["bbbb"], 2) == pytest.approx(1.0)  # disjoint supports
  # Matches the formula on a hand case: P = {ab: 1}, Q = {ab: 1/2, bc: 1/2}.
  want = 0.5 * math.log2(1 / 0.75) + 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(2))
  assert tm.ngram_divergence(["ab"], ["abc"], 2) == pytest.approx(want)
  with pytest.raises(ValueError, match="sample_texts hold no 5-gram"):
    tm.ngram_divergence(["abc"], ["abcdef"], 5)


# --- on the fortunes corpus ----------------------------------------------------------------------

FORTUNES = "/usr/share/games/fortunes"


@pytest.mark.skipif(not os.path.isdir(FORTUNES),
                    reason="needs the Debian package fortunes (apt-get install fortunes)")
def test_fortunes_baseline_improves_with_order():
  from jdiff import data
  train = data.get_dataset("fortunes", "train")
  test = data.get_dataset("fortunes", "test")
  table = dict(tm.ngram_table(train.data[:3000], test.data[:200], len(train.vocab), n_max=3))
  assert 4.0 < table[1] < 5.0 and table[3] < table[2] < table[1], table
