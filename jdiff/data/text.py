"""Character-level text corpora for discrete diffusion: reading, normalizing, a character tokenizer,
a held-out split by document, and fixed-length chunks.

A corpus is a list of *documents* (strings):

- :func:`read_fortunes`: the Debian package ``fortunes`` (``apt-get install fortunes``; files under
  ``/usr/share/games/fortunes`` holding fortunes separated by lines that hold only ``%``): each fortune
  is a document, files in sorted name order. 15,134 distinct documents, about 2.7M characters once
  normalized (fortunes-mod 1:1.99.1).
- :func:`read_text_file`: a user's own corpus, one UTF-8 text file whose documents are the paragraphs
  separated by blank lines.

Every document goes through :func:`normalize_text` (printable ASCII and ``"\\n"`` only; see there).
:func:`split_documents` assigns whole documents to ``train`` or ``test`` (5% of the distinct documents,
at least 1, by a fixed permutation of seed 0), so the split does not depend on the chunk length.
:func:`encode_split` joins a split's documents with :data:`SEPARATOR` (a blank line) into one stream,
encodes it with a :class:`CharTokenizer` fitted on the *training* documents only (test characters
outside it are dropped and counted) and cuts it into non-overlapping chunks of ``length`` tokens (the
last partial chunk is dropped). ``jdiff.data.sources.text_source`` wraps the chunks as a source of
kind ``tokens``.

numpy only.
"""
from __future__ import annotations

import functools
import os
import re
import unicodedata
from typing import Iterable, Optional, Sequence

import numpy as np

FORTUNES_DIR = "/usr/share/games/fortunes"
SPLITS = ("train", "test")
DEFAULT_LENGTH = 128
TEST_FRACTION = 0.05
SPLIT_SEED = 0
SEPARATOR = "\n\n"  # between documents in a split's stream: one blank line
TAB_WIDTH = 8  # tabs become spaces up to the next multiple of 8 columns (as a terminal shows them)
# Every printable ASCII character (32..126) and the newline: the fixed vocabulary of text read without
# a pass over the data (TFDS text datasets), sorted by code point ("\n" is token 0).
PRINTABLE = "\n" + "".join(chr(c) for c in range(32, 127))

_INSTALL_HINT = ("install the Debian package fortunes (apt-get install fortunes) or pass a text file "
                 "(dataset name 'text:/path/to/file.txt')")
# Non-ASCII characters with a close ASCII spelling (others are decomposed and stripped of accents by
# NFKD, or dropped).
_ASCII_EQUIVALENTS = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "\u00b4": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"', "\u00ab": '"',
    "\u00bb": '"', "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "--",
    "\u2015": "--", "\u2212": "-", "\u2026": "...", "\u00a0": " ", "\u00df": "ss", "\u00e6": "ae",
    "\u00c6": "AE", "\u0153": "oe", "\u0152": "OE", "\u00f8": "o", "\u00d8": "O", "\u00a3": "GBP",
    "\u20ac": "EUR", "\u00a9": "(c)", "\u00ae": "(R)", "\u2122": "(TM)", "\u00d7": "x",
    "\u00f7": "/", "\u2022": "*", "\u2217": "*", "\u00b7": ".",
}
_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")
_CONTROL = re.compile(r"[^\n\x20-\x7e]")


# ---------------------------------------------------------------------------------------------------
# Normalization.


def _repair_mojibake(run: str) -> str:
  """Undo UTF-8 text decoded as Latin-1 (``'donÃ¢ÂÂt'`` -> ``'don't'``), repeatedly, when it
  decodes cleanly; else the run unchanged."""
  for _ in range(3):
    try:
      fixed = run.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
      return run
    if fixed == run:
      return run
    run = fixed
  return run


def _ascii_of(ch: str) -> str:
  if ch in _ASCII_EQUIVALENTS:
    return _ASCII_EQUIVALENTS[ch]
  decomposed = unicodedata.normalize("NFKD", ch)
  return "".join(c for c in decomposed if " " <= c <= "~")


def _overstrike(line: str) -> str:
  """Resolve backspace overstrikes (``'_\\bx'`` underlines, ``'x\\bx'`` bolds, ``"e\\b'"`` accents):
  the printed character wins over ``_`` and a repeated one; the line is rendered as a terminal would."""
  if "\b" not in line:
    return line
  cells, col = [], 0
  for ch in line:
    if ch == "\b":
      col = max(col - 1, 0)
      continue
    if col < len(cells):
      old = cells[col]
      if ch != "_" and (old in "_ " or not old.isalnum()):
        cells[col] = ch
      # else: keep the letter (an underline or an accent struck over it)
    else:
      cells.append(ch)
    col += 1
  return "".join(cells)


def normalize_text(text: str) -> str:
  """Text reduced to printable ASCII (32..126) and ``"\\n"``.

  In order: CRLF and lone CR become LF; backspace overstrikes (underlining and bold in old fortune
  files) are resolved to the printed character; UTF-8 mis-decoded as Latin-1 is repaired; non-ASCII
  characters become a close ASCII spelling (curly quotes -> straight quotes, dashes -> ``-``, accented
  letters -> the bare letter, ``ß`` -> ``ss``, ...) or are dropped; tabs become spaces up to the next
  multiple of :data:`TAB_WIDTH` columns; other control characters (bell, form feed, ...) are dropped;
  trailing spaces are stripped from every line. Idempotent.
  """
  if not isinstance(text, str):
    raise ValueError(f"text must be a str, got {type(text).__name__}; decode bytes first")
  text = text.replace("\r\n", "\n").replace("\r", "\n")
  if "\b" in text:
    text = "\n".join(_overstrike(line) for line in text.split("\n"))
  if not text.isascii():
    text = _NON_ASCII_RUN.sub(lambda m: "".join(_ascii_of(c) for c in _repair_mojibake(m.group())),
                              text)
  if "\t" in text:
    text = "\n".join(line.expandtabs(TAB_WIDTH) for line in text.split("\n"))
  text = _CONTROL.sub("", text)
  return "\n".join(line.rstrip(" ") for line in text.split("\n"))


def _document(text: str) -> str:
  """A normalized document without leading or trailing blank lines ("" when nothing is left)."""
  return normalize_text(text).strip("\n")


# ---------------------------------------------------------------------------------------------------
# Reading corpora.


@functools.lru_cache(maxsize=4)
def _read_fortunes(directory: str) -> tuple:
  if not os.path.isdir(directory):
    raise ValueError(f"fortunes directory {directory} not found; {_INSTALL_HINT}")
  docs = []
  for fname in sorted(os.listdir(directory)):
    path = os.path.join(directory, fname)
    if (fname.startswith(".") or fname.endswith((".dat", ".u8")) or os.path.islink(path)
        or not os.path.isfile(path)):
      continue
    with open(path, "rb") as f:
      raw = f.read().decode("utf-8", errors="replace")
    raw = raw.replace("\r\n", "\n")
    for fortune in re.split(r"^%[ \t]*$", raw, flags=re.MULTILINE):
      doc = _document(fortune)
      if doc.strip():
        docs.append(doc)
  if not docs:
    raise ValueError(f"no fortunes in {directory} (files of fortunes separated by lines holding "
                     f"only '%'); {_INSTALL_HINT}")
  return tuple(docs)


def read_fortunes(directory: str = FORTUNES_DIR) -> list:
  """Every fortune in ``directory`` as one normalized document (:func:`normalize_text`; leading and
  trailing blank lines removed, empty fortunes skipped), files in sorted name order.

  Fortune files hold fortunes separated by lines holding only ``%``; the ``*.dat`` index files, the
  ``*.u8`` symbolic links and hidden files are skipped. Read once per directory and cached.

  Raises:
    ValueError: the directory does not exist or holds no fortunes.
  """
  return list(_read_fortunes(os.path.abspath(os.fspath(directory))))


def read_text_file(path: str) -> list:
  """The documents of a UTF-8 text file (undecodable bytes are read as Latin-1): its paragraphs,
  separated by blank lines (lines holding only spaces or tabs count as blank), each normalized
  (:func:`normalize_text`) with leading and trailing blank lines removed.

  Raises:
    ValueError: the file does not exist, or holds no text.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"text file {path} not found; pass an existing text file as 'text:{path}' "
                     f"(paragraphs separated by blank lines), or for the offline dataset 'fortunes' "
                     f"install the Debian package fortunes (apt-get install fortunes)")
  with open(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError:
    text = raw.decode("latin-1")
  text = normalize_text(text)
  docs = [d.strip("\n") for d in re.split(r"\n[ ]*\n", text)]
  docs = [d for d in docs if d.strip()]
  if not docs:
    raise ValueError(f"text file {path} holds no text (after keeping printable ASCII); pass a file "
                     f"with at least two paragraphs separated by a blank line")
  return docs


# ---------------------------------------------------------------------------------------------------
# The tokenizer.


def decode_rows(vocab: str, tokens) -> list:
  """The texts of token rows ``[N, L]`` (or ``[N, ...]``, flattened per row) under the character
  vocabulary ``vocab``: token ``k`` is the character ``vocab[k]`` (a model's vocabulary is saved in its
  checkpoint; :meth:`CharTokenizer.decode` is the one-row case).

  Raises:
    ValueError: a token id lies outside ``[0, len(vocab))``.
  """
  tokens = np.asarray(tokens)
  if tokens.size and (tokens.min() < 0 or tokens.max() >= len(vocab)):
    raise ValueError(f"token ids must lie in [0, {len(vocab)}) for this vocabulary, got values in "
                     f"[{tokens.min()}, {tokens.max()}]")
  table = np.asarray(list(vocab) or [""])
  rows = table[tokens.reshape(len(tokens), int(np.prod(tokens.shape[1:]))).astype(np.int64)]
  return ["".join(row.tolist()) for row in rows]


class CharTokenizer:
  """Characters <-> token ids: token ``k`` is the character ``chars[k]``.

  Args:
    chars: the vocabulary, a string of distinct characters (any order; :meth:`fit` sorts them).

  Attributes:
    chars: the vocabulary string.
    vocab_size: ``len(chars)``.
  """

  def __init__(self, chars: str):
    if not isinstance(chars, str) or not chars:
      raise ValueError(f"a CharTokenizer needs a non-empty string of characters, got {chars!r}")
    if len(set(chars)) != len(chars):
      dup = sorted({c for c in chars if chars.count(c) > 1})
      raise ValueError(f"the characters of a CharTokenizer must be distinct; {dup!r} repeat: pass "
                       f"''.join(sorted(set(chars)))")
    self.chars = chars
    codes = np.array([ord(c) for c in chars], np.int64)
    self._table = np.full(int(codes.max()) + 1, -1, np.int32)
    self._table[codes] = np.arange(len(chars), dtype=np.int32)
    self._chars = np.array(list(chars))

  @classmethod
  def fit(cls, texts: Iterable[str]) -> "CharTokenizer":
    """The tokenizer of the sorted set of characters in ``texts`` (a string or strings)."""
    if isinstance(texts, str):
      texts = [texts]
    seen = set()
    for t in texts:
      seen.update(t)
    if not seen:
      raise ValueError("cannot fit a CharTokenizer on empty texts; pass at least one character")
    return cls("".join(sorted(seen)))

  @property
  def vocab_size(self) -> int:
    return len(self.chars)

  def _codes(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), np.uint32).astype(np.int64)

  def unknown(self, text: str) -> str:
    """The sorted distinct characters of ``text`` outside the vocabulary."""
    codes = self._codes(text)
    bad = codes >= self._table.size
    bad[~bad] = self._table[codes[~bad]] < 0
    return "".join(sorted({chr(c) for c in np.unique(codes[bad])}))

  def encode(self, text: str) -> np.ndarray:
    """``int32 [len(text)]`` token ids of ``text``.

    Raises:
      ValueError: ``text`` holds characters outside the vocabulary.
    """
    if not isinstance(text, str):
      raise ValueError(f"encode takes a str, got {type(text).__name__}")
    codes = self._codes(text)
    inside = codes < self._table.size
    ids = np.full(codes.shape, -1, np.int32)
    ids[inside] = self._table[codes[inside]]
    if (ids < 0).any():
      bad = self.unknown(text)
      shown = ", ".join(repr(c) for c in bad[:10]) + (", ..." if len(bad) > 10 else "")
      raise ValueError(f"text holds {len(bad)} character(s) outside the vocabulary ({shown}): the "
                       f"model's vocabulary of {self.vocab_size} characters cannot represent them; "
                       f"remove or replace them (normalize_text keeps printable ASCII)")
    return ids

  def decode(self, ids) -> str:
    """The text of token ids ``[n]`` (any integer dtype).

    Raises:
      ValueError: ``ids`` is not a 1-D integer array or holds ids outside ``[0, vocab_size)``.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
      raise ValueError(f"decode takes a 1-D integer array of token ids, got {ids.dtype} of shape "
                       f"{ids.shape}; decode rows one by one")
    return decode_rows(self.chars, ids[None])[0]

  def to_json(self) -> dict:
    """``{"chars": chars}``: enough to rebuild the tokenizer with :meth:`from_json`."""
    return {"chars": self.chars}

  @classmethod
  def from_json(cls, d: dict) -> "CharTokenizer":
    if not isinstance(d, dict) or not isinstance(d.get("chars"), str):
      raise ValueError(f"a CharTokenizer's JSON must be a dict with a string 'chars' (from "
                       f"CharTokenizer.to_json()), got {d!r}")
    return cls(d["chars"])

  def __eq__(self, other) -> bool:
    return isinstance(other, CharTokenizer) and other.chars == self.chars

  def __hash__(self) -> int:
    return hash(self.chars)

  def __repr__(self) -> str:
    return f"CharTokenizer(vocab_size={self.vocab_size}, chars={self.chars!r})"


# ---------------------------------------------------------------------------------------------------
# Splits and chunks.


def split_documents(documents: Sequence[str], test_fraction: float = TEST_FRACTION,
                    seed: int = SPLIT_SEED) -> tuple[list, list]:
  """``(train, test)`` documents: exact duplicates are removed first (the first occurrence is kept,
  so no test document appears verbatim in train); then ``max(1, round(test_fraction * n))`` of the
  ``n`` distinct documents, chosen by a fixed permutation (``numpy.random.default_rng(seed)``), go to
  test; both lists keep the corpus order.

  Raises:
    ValueError: fewer than 2 distinct documents, or ``test_fraction`` outside (0, 1).
  """
  if isinstance(documents, str) or not all(isinstance(d, str) for d in documents):
    raise ValueError("documents must be a list of strings (one per document); wrap a single text "
                     "in a list or split it into paragraphs")
  if not 0.0 < float(test_fraction) < 1.0:
    raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
  docs = list(dict.fromkeys(documents))
  if len(docs) < 2:
    raise ValueError(f"a train/test split needs at least 2 distinct documents, got {len(docs)}; pass "
                     f"a text with more paragraphs (separated by blank lines)")
  n_test = min(len(docs) - 1, max(1, int(round(test_fraction * len(docs)))))
  is_test = np.zeros(len(docs), bool)
  is_test[np.random.default_rng(seed).permutation(len(docs))[:n_test]] = True
  return ([d for d, t in zip(docs, is_test) if not t], [d for d, t in zip(docs, is_test) if t])


def chunk(ids: np.ndarray, length: int) -> np.ndarray:
  """``int32 [len(ids) // length, length]``: non-overlapping chunks, the last partial one dropped."""
  ids = np.asarray(ids, np.int32)
  n = ids.shape[0] // length
  return ids[:n * length].reshape(n, length)


class EncodedSplit:
  """One split of a corpus, encoded (:func:`encode_split`).

  Attributes:
    split: ``train`` or ``test``.
    documents: the split's documents (normalized; test ones with dropped characters removed).
    tokenizer: the :class:`CharTokenizer` fitted on the training documents.
    chunks: ``int32 [N, length]``.
    dropped_chars: characters of the split's documents outside the tokenizer (0 for train).
    num_chars: characters in the split's stream (documents joined by :data:`SEPARATOR`).
  """

  def __init__(self, split, documents, tokenizer, chunks, dropped_chars, num_chars):
    self.split, self.documents, self.tokenizer = split, documents, tokenizer
    self.chunks, self.dropped_chars, self.num_chars = chunks, dropped_chars, num_chars


def encode_split(documents: Sequence[str], split: str = "train", length: int = DEFAULT_LENGTH, *,
                 test_fraction: float = TEST_FRACTION,
                 tokenizer: Optional[CharTokenizer] = None) -> EncodedSplit:
  """Split ``documents`` (:func:`split_documents`), join the ``split``'s documents with
  :data:`SEPARATOR` into one stream, encode it and cut it into chunks of ``length`` tokens.

  The tokenizer is fitted on the training documents (or is ``tokenizer``, e.g. a trained model's);
  characters of the split outside it are dropped and counted in ``dropped_chars``.

  Raises:
    ValueError: an unknown split, ``length < 1``, or a split shorter than one chunk.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r} for a text dataset; valid splits are: "
                     f"{', '.join(SPLITS)}")
  if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
    raise ValueError(f"the chunk length (seq_length) must be an integer >= 1, got {length!r}")
  train, test = split_documents(documents, test_fraction)
  if tokenizer is None:  # fitted on the training stream: its documents and the separator
    tokenizer = CharTokenizer.fit(train + [SEPARATOR])
  docs = train if split == "train" else test
  dropped = 0
  kept = []
  for d in docs:
    bad = tokenizer.unknown(d)
    if bad:
      clean = "".join(c for c in d if c not in bad)
      dropped += len(d) - len(clean)
      d = clean
    kept.append(d)
  stream = SEPARATOR.join(kept)
  bad_sep = tokenizer.unknown(SEPARATOR)
  if bad_sep:
    stream = "".join(c for c in stream if c not in bad_sep)
  chunks = chunk(tokenizer.encode(stream), int(length))
  if chunks.shape[0] == 0:
    raise ValueError(f"the {split} split has {len(stream)} characters, fewer than one chunk of "
                     f"seq_length={length}; pass a smaller seq_length or a larger corpus")
  return EncodedSplit(split, kept, tokenizer, chunks, dropped, len(stream))


__all__ = ["DEFAULT_LENGTH", "FORTUNES_DIR", "PRINTABLE", "SEPARATOR", "SPLITS", "TAB_WIDTH",
           "TEST_FRACTION", "CharTokenizer", "EncodedSplit", "chunk", "encode_split", "normalize_text",
           "read_fortunes", "read_text_file", "split_documents"]
