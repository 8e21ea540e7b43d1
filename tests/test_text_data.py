"""Text corpora as data (``jdiff.data.text`` and the ``tokens`` kind of ``jdiff.data.sources``):
normalization, the character tokenizer, the held-out split by document, chunked sources, the
``fortunes`` and ``text:<path>`` datasets, TFDS text through a fake data source, and the pipeline."""
import os
import types

import numpy as np
import pytest

from jdiff import data
from jdiff.data import sources
from jdiff.data import text

HAVE_FORTUNES = os.path.isdir(text.FORTUNES_DIR)
needs_fortunes = pytest.mark.skipif(
    not HAVE_FORTUNES, reason=f"{text.FORTUNES_DIR} is absent: apt-get install fortunes")


def _docs(num=60):
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]
  return [" ".join(rng.choice(words, size=rng.integers(3, 12))) + f" #{i}" for i in range(num)]


# --- normalization and reading -------------------------------------------------------------------


def test_normalize_text():
  n = text.normalize_text
  assert n("a\r\nb\rc") == "a\nb\nc"
  assert n("x\ty  \n\tz\t") == "x       y\n        z"  # tab stops of 8; trailing spaces stripped
  assert n("_\bI and ___\b\b\bnot x\bx") == "I and not x"  # overstrikes: underline, bold
  assert n("Caf'\be") == "Cafe"
  assert n("don\u2019t \u201cquote\u201d \u2014 na\u00efve \u00fcber Stra\u00dfe \u00a35") == \
      "don't \"quote\" -- naive uber Strasse GBP5"
  assert n("don\u00c3\u00a2\u00c2\u0080\u00c2\u0099t") == "don't"  # UTF-8 read as Latin-1, twice
  assert n("bell\x07 and \u4e2d!") == "bell and !"  # other controls and unmappable characters go
  for s in ("a\tb\r\n_\bc \u2019", "plain"):
    assert n(n(s)) == n(s)
  assert set(n("".join(chr(c) for c in range(300)))) <= set(text.PRINTABLE)


def test_read_text_file(tmp_path):
  p = tmp_path / "corpus.txt"
  p.write_bytes(b"First para\r\nline two  \r\n\r\n \t \n\nSecond\tpara\n\n\n\nThird caf\xc3\xa9\n")
  assert text.read_text_file(str(p)) == ["First para\nline two", "Second  para", "Third cafe"]
  latin = tmp_path / "latin1.txt"
  latin.write_bytes(b"caf\xe9 one\n\ntwo")  # not UTF-8: read as Latin-1
  assert text.read_text_file(str(latin)) == ["cafe one", "two"]
  with pytest.raises(ValueError, match=r"text file .*missing.txt not found; pass an existing text "
                     r"file.*apt-get install fortunes"):
    text.read_text_file(str(tmp_path / "missing.txt"))
  empty = tmp_path / "empty.txt"
  empty.write_text("\n \n\t\n\x07")
  with pytest.raises(ValueError, match="holds no text"):
    text.read_text_file(str(empty))


def test_read_fortunes_from_a_directory(tmp_path):
  d = tmp_path / "fortunes"
  d.mkdir()
  (d / "b").write_text("Second file.\n%\n")
  (d / "a").write_text("One\n\ttwo\n%\n%\n\nThree\n%\n")
  (d / "a.dat").write_bytes(b"\x00\x00\x00\x02%")
  os.symlink("a", d / "a.u8")
  assert text.read_fortunes(str(d)) == ["One\n        two", "Three", "Second file."]
  with pytest.raises(ValueError, match=r"fortunes directory .*nowhere not found; install the Debian "
                     r"package fortunes \(apt-get install fortunes\) or pass a text file"):
    text.read_fortunes(str(tmp_path / "nowhere"))
  (tmp_path / "void").mkdir()
  with pytest.raises(ValueError, match="no fortunes in"):
    text.read_fortunes(str(tmp_path / "void"))


# --- the tokenizer -------------------------------------------------------------------------------


def test_char_tokenizer_round_trip():
  tok = text.CharTokenizer.fit(["hello world", "\nhi!"])
  assert tok.chars == "\n !dehilorw" and tok.vocab_size == 11
  ids = tok.encode("hello\nworld!")
  assert ids.dtype == np.int32 and ids.shape == (12,)
  np.testing.assert_array_equal(ids[:2], [tok.chars.index("h"), tok.chars.index("e")])
  assert tok.decode(ids) == "hello\nworld!"
  assert tok.decode(ids.astype(np.int64)) == "hello\nworld!" and tok.decode([]) == ""
  again = text.CharTokenizer.from_json(tok.to_json())
  assert again == tok and again.chars == tok.chars
  assert text.CharTokenizer("ba").encode("ab").tolist() == [1, 0]  # any order of characters


def test_char_tokenizer_errors():
  tok = text.CharTokenizer("abc")
  with pytest.raises(ValueError, match="3 character\\(s\\) outside the vocabulary \\('\\\\t', 'd', "
                     "'\u00e9'\\): the model's vocabulary of 3 characters cannot represent them"):
    tok.encode("abd\u00e9a\t")
  with pytest.raises(ValueError, match=r"token ids must lie in \[0, 3\)"):
    tok.decode([0, 3])
  with pytest.raises(ValueError, match="1-D integer array"):
    tok.decode(np.zeros(2, np.float32))
  with pytest.raises(ValueError, match="must be distinct"):
    text.CharTokenizer("abca")
  with pytest.raises(ValueError, match="non-empty string"):
    text.CharTokenizer("")
  with pytest.raises(ValueError, match="string 'chars'"):
    text.CharTokenizer.from_json({"vocab": "abc"})


# --- splits and sources --------------------------------------------------------------------------


def test_split_documents():
  docs = _docs(60) + ["alpha #0"] * 3  # duplicates are removed before splitting
  train, test = text.split_documents(docs)
  assert len(test) == 3 and len(train) == 58 and not set(train) & set(test)
  assert text.split_documents(docs) == (train, test)  # deterministic
  assert [d for d in docs[:60] if d in set(test)] == test  # corpus order kept
  assert len(text.split_documents(["a", "b"])[1]) == 1  # at least one test document
  with pytest.raises(ValueError, match="at least 2 distinct documents"):
    text.split_documents(["same", "same"])
  with pytest.raises(ValueError, match="list of strings"):
    text.split_documents("one long text")


def test_text_source_chunks():
  docs = _docs(60)
  train = data.text_source(docs, "train", 16, "toy")
  assert isinstance(train, data.ArraySource) and train.kind == "tokens"
  assert train.data.dtype == np.int32 and train.shape == (16,) and train.num_classes is None
  assert (train.labels == 0).all() and train.vocab == train.tokenizer.chars
  stream = text.SEPARATOR.join(train.documents)
  assert train.num_chars == len(stream) and train.num_examples == len(stream) // 16
  assert train.tokenizer.decode(train.data.reshape(-1)) == stream[:train.num_examples * 16]
  # The documents of a split do not depend on the chunk length.
  long = data.text_source(docs, "train", 64, "toy")
  assert long.documents == train.documents and long.vocab == train.vocab
  test = data.text_source(docs, "test", 16, "toy")
  assert test.documents == text.split_documents(docs)[1] and test.vocab == train.vocab
  with pytest.raises(ValueError, match="fewer than one chunk of seq_length=100000"):
    data.text_source(docs, "test", 100000, "toy")
  with pytest.raises(ValueError, match="unknown split 'validation'"):
    data.text_source(docs, "validation", 16, "toy")


def test_test_characters_outside_the_training_vocabulary_are_dropped_and_counted():
  docs = _docs(40)
  _, test_docs = text.split_documents(docs)
  odd = [d + " XYZ!" if d in test_docs else d for d in docs]  # characters only in test documents
  test = data.text_source(odd, "test", 8, "toy")
  assert test.dropped_chars == 4 * len(test_docs)  # "X", "Y", "Z", "!" (the space is known)
  assert not set("XYZ!") & set(test.vocab)
  assert data.text_source(odd, "train", 8, "toy").dropped_chars == 0


# --- the fortunes and text:<path> datasets -------------------------------------------------------


@needs_fortunes
def test_fortunes_dataset():
  train = data.get_dataset("fortunes", "train")
  test = data.get_dataset("fortunes", "test")
  for s in (train, test):
    assert s.kind == "tokens" and s.data.dtype == np.int32 and s.data.ndim == 2
    assert s.shape == (128,) and s.num_classes is None and s.vocab == train.vocab
    assert s.data.min() >= 0 and s.data.max() < len(s.vocab)
  assert train.num_examples > 15000 and 500 < test.num_examples < 2000
  assert set(train.vocab) <= set(text.PRINTABLE) and "\n" in train.vocab
  assert not set(train.documents) & set(test.documents)
  assert len(test.documents) == max(1, round(0.05 * (len(train.documents) + len(test.documents))))
  chunk = train.data[123]
  assert train.tokenizer.encode(train.tokenizer.decode(chunk)).tolist() == chunk.tolist()
  again = data.get_dataset("fortunes", "train")
  np.testing.assert_array_equal(again.data, train.data)  # deterministic
  short = data.get_dataset("fortunes", "test", seq_length=32)
  assert short.shape == (32,) and short.documents == test.documents
  assert short.num_examples == test.num_chars // 32
  assert data.kind_of("fortunes", train.shape) == "tokens"
  with pytest.raises(ValueError, match="unknown split 'validation' for dataset 'fortunes'"):
    data.get_dataset("fortunes", "validation")
  with pytest.raises(ValueError, match="image_size resizes images; dataset 'fortunes' holds text"):
    data.get_dataset("fortunes", image_size=8)


def test_text_file_dataset(tmp_path):
  p = tmp_path / "book.txt"
  p.write_text("\n\n".join(_docs(50)) + "\n")
  name = f"text:{p}"
  train = data.get_dataset(name, "train", seq_length=24)
  test = data.get_dataset(name, "test", seq_length=24)
  assert (train.name, train.kind, train.shape, test.vocab) == (name, "tokens", (24,), train.vocab)
  assert len(test.documents) == 2 and data.kind_of(name, (24,)) == "tokens"
  with pytest.raises(ValueError, match="not found; pass an existing text file"):
    data.get_dataset(f"text:{tmp_path / 'nope.txt'}")
  with pytest.raises(ValueError, match="names no file"):
    data.get_dataset("text:")
  (tmp_path / "empty.txt").write_text("")
  with pytest.raises(ValueError, match="holds no text"):
    data.get_dataset(f"text:{tmp_path / 'empty.txt'}")


def test_seq_length_is_for_text_only():
  with pytest.raises(ValueError, match="seq_length sets the length of text examples; dataset "
                     "'mixture2d' holds image or vector data"):
    data.get_dataset("mixture2d", seq_length=64)
  with pytest.raises(ValueError, match="seq_length must be an integer >= 1"):
    data.get_dataset("fortunes", seq_length=0)


# --- the tokens kind in ArraySource and the pipeline ---------------------------------------------


def test_array_source_tokens():
  src = data.ArraySource(np.arange(12, dtype=np.int64).reshape(3, 4), np.zeros(3), name="t",
                         split="train", num_classes=None, kind="tokens", vocab="abcdefghijklm")
  assert src.kind == "tokens" and src.data.dtype == np.int32 and src.shape == (4,)
  assert src.vocab == "abcdefghijklm" and not src.is_image
  assert data.ArraySource(np.zeros((2, 2)), np.zeros(2), name="v", split="train",
                          num_classes=None).vocab is None
  assert "tokens" in data.KINDS


@pytest.mark.parametrize("make, vocab, match", [
    (lambda: np.zeros((3, 4), np.float32), None, r"token data for 'x' must be integer ids \[N, L\], "
     "got dtype float32"),
    (lambda: np.full((3, 4), -1), None, "must be ids >= 0"),
    (lambda: np.full((3, 4), 3), "abc", r"must be ids below len\(vocab\)=3"),
    (lambda: np.zeros((3, 4, 1), np.int32), None, r"tokens data must have shape int \[N, L\]"),
])
def test_array_source_tokens_bad_input(make, vocab, match):
  with pytest.raises(ValueError, match=match):
    data.ArraySource(make(), np.zeros(3), name="x", split="train", num_classes=None, kind="tokens",
                     vocab=vocab)


def test_vocab_needs_tokens():
  with pytest.raises(ValueError, match="vocab is for token data; 'x' holds vector data"):
    data.ArraySource(np.zeros((3, 4)), np.zeros(3), name="x", split="train", num_classes=None,
                     vocab="abc")


def test_pipeline_yields_tokens_as_int32():
  src = data.text_source(_docs(60), "train", 16, "toy")
  pipe = data.Pipeline(src, 8, seed=3, num_local_devices=2, process_index=0, process_count=1)
  b = pipe.batch_at(5)
  assert b["image"].dtype == np.int32 and b["image"].shape == (2, 4, 16)
  np.testing.assert_array_equal(b["image"].reshape(8, 16), src.data[pipe.global_indices(5)])
  assert pipe.shapes["image"] == (2, 4, 16)
  with pytest.raises(ValueError, match=r"random_flip needs an image dataset; 'toy' holds tokens "
                     r"data of shape \(16,\): pass random_flip=False"):
    data.Pipeline(src, 8, seed=0, random_flip=True, num_local_devices=1, process_index=0,
                  process_count=1)


# --- TFDS text datasets, through fakes (no TFDS, no network) -------------------------------------


class _FakeDataSource:
  """What ``tfds.data_source`` gives: ``len`` and records by index (``__getitems__`` batched)."""

  def __init__(self, records):
    self.records = records
    self.batched = 0

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    return self.records[i]

  def __getitems__(self, idx):
    self.batched += 1
    return [self.records[i] for i in idx]


_TEXTS = [b"Hello,\tworld!", "caf\u00e9 au lait".encode(), b"x" * 50, "already str"]


def test_tfds_text_source_with_a_fake_data_source():
  ds = _FakeDataSource([{"text": t} for t in _TEXTS])
  src = data.TfdsTextSource(ds, {"text": object()}, name="fake_lm", split="train", seq_length=16)
  assert (src.kind, src.shape, src.num_examples, src.num_classes) == ("tokens", (16,), 4, None)
  assert src.vocab == text.PRINTABLE and len(src.vocab) == 96
  tokens, labels = src.read(np.array([0, 1, 2, 3, 0]))
  assert tokens.dtype == np.int32 and tokens.shape == (5, 16) and (labels == 0).all()
  decoded = [src.tokenizer.decode(t) for t in tokens]
  assert decoded[0] == "Hello,  world!  " and decoded[1] == "cafe au lait    "
  assert decoded[2] == "x" * 16 and decoded[3] == "already str     " and decoded[4] == decoded[0]
  assert ds.batched == 1
  with pytest.raises(ValueError, match="has no feature 'body'; its features are text: pass text_key="):
    data.TfdsTextSource(ds, {"text": object()}, name="fake_lm", split="train", text_key="body")


def _fake_tfds(features, records):
  """A stand-in for the tensorflow_datasets module: a prepared builder over in-memory records."""

  class NotFound(Exception):
    pass

  class Builder:
    data_dir = "/fake"
    info = types.SimpleNamespace(features=features, splits={"train": None})

    def is_prepared(self):
      return True

    def as_data_source(self, split):
      return _FakeDataSource(records)

  return types.SimpleNamespace(builder=lambda name, **kw: Builder(),
                               core=types.SimpleNamespace(DatasetNotFoundError=NotFound))


def test_get_dataset_picks_the_text_source_for_a_tfds_text_dataset(monkeypatch):
  monkeypatch.setattr(sources, "_import_tfds",
                      lambda: _fake_tfds({"text": object()}, [{"text": t} for t in _TEXTS]))
  src = data.get_dataset("lm1b", "train", seq_length=8)
  assert isinstance(src, data.TfdsTextSource) and src.shape == (8,)
  assert src.tokenizer.decode(src.read([0])[0][0]) == "Hello,  "
  assert data.get_dataset("lm1b").shape == (128,)  # the default length
  with pytest.raises(ValueError, match="image_size resizes images; TFDS dataset 'lm1b' holds text"):
    data.get_dataset("lm1b", image_size=8)


def test_seq_length_for_a_tfds_image_dataset_is_an_error(monkeypatch):
  image = types.SimpleNamespace(shape=(4, 4, 1), np_dtype=np.uint8)
  monkeypatch.setattr(sources, "_import_tfds", lambda: _fake_tfds({"image": image}, []))
  assert isinstance(data.get_dataset("mnist"), data.TfdsSource)
  with pytest.raises(ValueError, match="seq_length sets the length of text examples; TFDS dataset "
                     "'mnist' has no text feature"):
    data.get_dataset("mnist", seq_length=8)
