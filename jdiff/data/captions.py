"""Captioned images for text-to-image diffusion (the GLIDE/Imagen line) at the scale of a 10-class
dataset: a small closed caption grammar, the word tokenizer that covers it, two-item compositions with
held-out class pairs, and the arrays of the captioned datasets (``fashion_mnist_captions``,
``fashion_mnist_pairs``, ``mnist_captions``, ``mnist_pairs``; :func:`jdiff.data.get_dataset` wraps them
as sources).

Why a grammar and not free text: with a closed grammar every caption names exactly what the image
shows, so a classifier can check a generated image against its prompt (:func:`parse_caption` gives the
classes a caption asks for, place by place; :mod:`jdiff.eval.caption_metrics` scores them), and a
prompt outside what the model was taught fails loudly instead of producing something arbitrary.

- **Single items** (``*_captions``): each image of the class dataset with one caption of
  :data:`SINGLE_TEMPLATES` ("a sneaker", "a photo of a sneaker", "a picture of an ankle boot", "an
  image of a bag"), the template drawn per example.
- **Pairs** (``*_pairs``): two items side by side on a 28x56 canvas, the *left* item in columns 0-27,
  the *right* one in columns 28-55, with a caption of :data:`PAIR_TEMPLATES` that names both items and
  their places ("a bag to the left of a sneaker", "a sneaker to the right of a bag", "a bag on the left
  and a sneaker on the right", "a sneaker on the right and a bag on the left"). The label is
  ``10 * left + right``. Of the 90 ordered pairs of two different classes, 10 are never shown in
  training (:func:`pair_split`): ``(c, c + 1 mod 10)`` for each class ``c`` ("a dress to the left of a
  coat", "an ankle boot to the left of a t-shirt", ...), so every class is held out once on the left
  and once on the right, and the reverse arrangement of every held-out pair is trained: the held-out
  split asks for a new *arrangement* of two classes the model has seen together, the compositional
  test. Splits: ``train`` (60,000 canvases of the 80 training pairs from training images), ``test``
  (10,000 of the training pairs from test images), ``heldout`` (10,000 of the held-out pairs from test
  images). Each split draws its pairs round-robin (each pair equally often, in a shuffled order), and
  each place an image of its class uniformly, from a numpy generator seeded by ``(seed, split)``: the
  same arrays on every build, nothing cached on disk.

Class names: Fashion-MNIST's labels ("T-shirt/top" is "t-shirt", "Trouser" is "trouser"), MNIST's
digits as number words ("a seven", "an eight"), with the right article for each (:class:`Grammar`).

Tokens: :class:`WordTokenizer` over the words of the whole grammar (every template with every class
and every ordered pair, so held-out captions are representable), ``int32 [CAPTION_LENGTH]`` per caption,
id 0 padding. numpy only.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Iterable, Optional, Sequence

import numpy as np

CAPTION_LENGTH = 16  # tokens per caption; the longest caption of the grammar has 13 words
PAD_ID = 0
PLACES = ("left", "right")  # place k of a pair canvas is columns [28 k, 28 (k + 1))
# ``{k}`` is the noun phrase ("a sneaker", "an ankle boot") of the item at place k (0 = left).
SINGLE_TEMPLATES = ("{0}", "a photo of {0}", "a picture of {0}", "an image of {0}")
PAIR_TEMPLATES = ("{0} to the left of {1}", "{1} to the right of {0}",
                  "{0} on the left and {1} on the right", "{1} on the right and {0} on the left")
HELDOUT_SHIFT = 1  # held-out pairs: (c, (c + HELDOUT_SHIFT) mod num_classes)
PAIR_SPLITS = ("train", "test", "heldout")
SINGLE_SPLITS = ("train", "test")
PAIR_SIZES = {"train": 60_000, "test": 10_000, "heldout": 10_000}
# The image split each pair split draws its items from.
PAIR_IMAGE_SPLIT = {"train": "train", "test": "test", "heldout": "test"}
DATA_SEED = 0
# Dataset name -> (image dataset, "single" or "pairs").
DATASETS = {"fashion_mnist_captions": ("fashion_mnist", "single"),
            "fashion_mnist_pairs": ("fashion_mnist", "pairs"),
            "mnist_captions": ("mnist", "single"),
            "mnist_pairs": ("mnist", "pairs")}

_WORD = re.compile(r"[a-z0-9-]+")
_SPLIT_STREAM = {"train": 0, "test": 1, "heldout": 2}  # seeds the per-split generators apart
_LAYOUT_STREAM = {"single": 0, "pairs": 1}


def words_of(text: str) -> list:
  """The normalised words of ``text``: lowercase runs of ``[a-z0-9-]`` ("t-shirt" is one word); any
  other character separates words and is dropped."""
  if not isinstance(text, str):
    raise ValueError(f"a caption must be a str, got {type(text).__name__}")
  return _WORD.findall(text.lower())


# ---------------------------------------------------------------------------------------------------
# The word tokenizer.


class WordTokenizer:
  """Words <-> token ids: word ``words[k]`` is id ``k + 1``; id 0 is padding, never a word.

  Why words, not characters or bytes: captions come from a small closed grammar, so a vocabulary of a
  few dozen words gives sequences of at most ~12 tokens (against ~45 bytes), which keeps the text
  encoder and the image-to-text attention cheap, and a word the model never saw is reported as an
  unknown word (with the closest known one) instead of silently becoming a new token sequence.

  Normalisation (:func:`words_of`): lowercase; words are runs of ``[a-z0-9-]``; other characters
  (spaces, punctuation) separate words and are dropped. Encoding never truncates: a prompt with more
  words than the model reads is an error.

  Args:
    words: the vocabulary, distinct normalised words (any order; :meth:`fit` sorts them).

  Attributes:
    words: the vocabulary, a tuple.
    vocab_size: ``len(words) + 1`` (with the padding id).
  """

  def __init__(self, words: Sequence[str]):
    if isinstance(words, str) or not isinstance(words, Iterable):
      raise ValueError(f"a WordTokenizer needs a list of words, got {type(words).__name__}; pass "
                       f"WordTokenizer.fit(captions) or a list such as ['a', 'bag']")
    words = tuple(words)
    if not words:
      raise ValueError("a WordTokenizer needs at least one word; pass WordTokenizer.fit(captions)")
    for w in words:
      if not isinstance(w, str) or not _WORD.fullmatch(w):
        raise ValueError(f"{w!r} is not a normalised word (lowercase [a-z0-9-]+); build the "
                         f"vocabulary with WordTokenizer.fit(captions)")
    if len(set(words)) != len(words):
      dup = sorted({w for w in words if words.count(w) > 1})
      raise ValueError(f"the words of a WordTokenizer must be distinct; {dup} repeat: pass "
                       f"sorted(set(words))")
    self.words = words
    self._ids = {w: i + 1 for i, w in enumerate(words)}

  @classmethod
  def fit(cls, texts) -> "WordTokenizer":
    """The tokenizer of the sorted set of words in ``texts`` (a string or strings)."""
    if isinstance(texts, str):
      texts = [texts]
    seen = set()
    for t in texts:
      seen.update(words_of(t))
    if not seen:
      raise ValueError("cannot fit a WordTokenizer on texts without words; pass captions")
    return cls(sorted(seen))

  @property
  def vocab_size(self) -> int:
    return len(self.words) + 1

  def ids(self, text: str) -> list:
    """The token ids of ``text``'s words, unpadded.

    Raises:
      ValueError: ``text`` has no words, or words outside the vocabulary.
    """
    words = words_of(text)
    if not words:
      raise ValueError(f"prompt {text!r} is empty (no words); give a caption such as "
                       f"{self._example()!r}")
    unknown = list(dict.fromkeys(w for w in words if w not in self._ids))
    if unknown:
      close = difflib.get_close_matches(unknown[0], self.words, n=1)
      hint = (f"did you mean {close[0]!r}?" if close else
              f"it knows {', '.join(self.words[:12])}{', ...' if len(self.words) > 12 else ''}")
      named = ", ".join(repr(w) for w in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
      raise ValueError(f"unknown word{'s' if len(unknown) > 1 else ''} {named} in prompt {text!r}: "
                       f"the model knows {len(self.words)} words; {hint}")
    return [self._ids[w] for w in words]

  def _example(self) -> str:
    return " ".join(self.words[:2])

  def encode(self, text: str, length: int) -> np.ndarray:
    """``int32 [length]``: the ids of ``text``'s words, then padding (0).

    Raises:
      ValueError: an empty prompt, an unknown word (named, with the closest known word), or more
        words than ``length``.
    """
    length = _length(length)
    ids = self.ids(text)
    if len(ids) > length:
      raise ValueError(f"prompt has {len(ids)} words but the model reads at most {length}; shorten "
                       f"it")
    out = np.zeros((length,), np.int32)
    out[:len(ids)] = ids
    return out

  def encode_batch(self, texts: Sequence[str], length: int) -> np.ndarray:
    """``int32 [n, length]``: :meth:`encode` of each of ``texts``."""
    if isinstance(texts, str):
      raise ValueError("encode_batch takes a list of prompts, got one str; pass [prompt] or use "
                       "encode")
    length = _length(length)
    texts = list(texts)
    out = np.zeros((len(texts), length), np.int32)
    for i, t in enumerate(texts):
      out[i] = self.encode(t, length)
    return out

  def decode(self, ids) -> str:
    """The words of token ids ``[n]`` (any integer dtype) joined by spaces; padding is dropped (an
    all-padding row, the null caption, gives ``""``).

    Raises:
      ValueError: ``ids`` is not a 1-D integer array or holds ids outside ``[0, vocab_size)``.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
      raise ValueError(f"decode takes a 1-D integer array of token ids, got {ids.dtype} of shape "
                       f"{ids.shape}; decode rows one by one")
    ids = ids.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
      raise ValueError(f"token ids must lie in [0, {self.vocab_size}) (0 is padding), got values in "
                       f"[{ids.min()}, {ids.max()}]; decode with the tokenizer they were encoded with")
    return " ".join(self.words[i - 1] for i in ids.tolist() if i != PAD_ID)

  def to_json(self) -> dict:
    """``{"words": [...]}``, a plain dict: enough to rebuild the tokenizer with :meth:`from_json`."""
    return {"words": list(self.words)}

  @classmethod
  def from_json(cls, d: dict) -> "WordTokenizer":
    if (not isinstance(d, dict) or not isinstance(d.get("words"), (list, tuple))
        or not all(isinstance(w, str) for w in d["words"])):
      raise ValueError(f"a WordTokenizer's JSON must be a dict with a list of strings 'words' (from "
                       f"WordTokenizer.to_json()), got {d!r}")
    return cls(d["words"])

  def __eq__(self, other) -> bool:
    return isinstance(other, WordTokenizer) and other.words == self.words

  def __hash__(self) -> int:
    return hash(self.words)

  def __repr__(self) -> str:
    return f"WordTokenizer(vocab_size={self.vocab_size}, words={list(self.words)!r})"


def _length(length) -> int:
  if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
    raise ValueError(f"length (tokens per caption) must be an integer >= 1, got {length!r}")
  return int(length)


# ---------------------------------------------------------------------------------------------------
# The caption grammar.


@dataclasses.dataclass(frozen=True)
class Grammar:
  """The class names of an image dataset: class ``k`` is ``articles[k] + " " + nouns[k]``.

  Attributes:
    dataset: the image dataset (:func:`jdiff.data.get_dataset` name) whose labels the nouns name.
    nouns: the noun of each class (normalised words; may be two words, "ankle boot").
    articles: "a" or "an" for each class (by sound: "an ankle boot", "a one", "an eight").
  """
  dataset: str
  nouns: tuple
  articles: tuple

  @property
  def num_classes(self) -> int:
    return len(self.nouns)

  def phrase(self, k: int) -> str:
    return f"{self.articles[k]} {self.nouns[k]}"


FASHION_MNIST = Grammar("fashion_mnist",
                        ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                         "sneaker", "bag", "ankle boot"),
                        ("a",) * 9 + ("an",))
MNIST = Grammar("mnist",
                ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
                ("a",) * 8 + ("an", "a"))
GRAMMARS = {g.dataset: g for g in (FASHION_MNIST, MNIST)}


def get_grammar(dataset: str = "fashion_mnist") -> Grammar:
  """The :class:`Grammar` of image dataset ``dataset`` (``fashion_mnist`` or ``mnist``) or of a
  captioned dataset name (``fashion_mnist_pairs``, ...)."""
  if isinstance(dataset, str) and dataset in DATASETS:
    dataset = DATASETS[dataset][0]
  if dataset not in GRAMMARS:
    raise ValueError(f"no caption grammar for dataset {dataset!r}; captions exist for "
                     f"{', '.join(GRAMMARS)}: pass one of those")
  return GRAMMARS[dataset]


def caption(classes: Sequence[int], template: int = 0, dataset: str = "fashion_mnist") -> str:
  """The caption of ``classes`` (one class, or ``(left, right)`` for a pair canvas) with template
  number ``template`` of :data:`SINGLE_TEMPLATES` or :data:`PAIR_TEMPLATES`."""
  g = get_grammar(dataset)
  classes = tuple(int(c) for c in classes)
  templates = {1: SINGLE_TEMPLATES, 2: PAIR_TEMPLATES}.get(len(classes))
  if templates is None:
    raise ValueError(f"a caption names 1 item or 2 (left, right), got {len(classes)} classes")
  if any(not 0 <= c < g.num_classes for c in classes):
    raise ValueError(f"classes must lie in [0, {g.num_classes}), got {classes}")
  if not 0 <= int(template) < len(templates):
    raise ValueError(f"template must lie in [0, {len(templates)}) for {len(classes)} item(s), got "
                     f"{template}")
  return templates[int(template)].format(*(g.phrase(c) for c in classes))


def _grammar_table(dataset: str) -> dict:
  """Every caption of the grammar (normalised) -> its classes, left to right: all single templates
  with all classes, all pair templates with all ordered pairs (same-class pairs included)."""
  g = get_grammar(dataset)
  table = {}
  for t in range(len(SINGLE_TEMPLATES)):
    for c in range(g.num_classes):
      table[caption((c,), t, g.dataset)] = (c,)
  for t in range(len(PAIR_TEMPLATES)):
    for left in range(g.num_classes):
      for right in range(g.num_classes):
        table[caption((left, right), t, g.dataset)] = (left, right)
  return table


_TABLES: dict = {}


def _table(dataset: str) -> dict:
  key = get_grammar(dataset).dataset
  if key not in _TABLES:
    _TABLES[key] = _grammar_table(key)
  return _TABLES[key]


def all_captions(dataset: str = "fashion_mnist") -> list:
  """Every caption of ``dataset``'s grammar, singles first (template-major), then pairs."""
  return list(_table(dataset))


def parse_caption(text: str, dataset: str = "fashion_mnist") -> tuple:
  """The classes a caption asks for, one per place, left to right: ``(c,)`` for a single item,
  ``(left, right)`` for a pair; the inverse of the grammar (after :func:`words_of` normalisation, so
  case and punctuation do not matter).

  Raises:
    ValueError: ``text`` is outside the grammar (with the closest caption of the grammar).
  """
  table = _table(dataset)
  key = " ".join(words_of(text))
  if key not in table:
    close = difflib.get_close_matches(key, list(table), n=1, cutoff=0.0)
    raise ValueError(f"caption {text!r} is outside the {get_grammar(dataset).dataset} caption grammar; "
                     f"the closest caption it knows is {close[0]!r}")
  return table[key]


def caption_items(texts: Sequence[str], dataset: str = "fashion_mnist") -> np.ndarray:
  """``int32 [n, places]``: :func:`parse_caption` of each of ``texts``, which must all name the same
  number of places (what :func:`jdiff.eval.caption_metrics.caption_accuracy` takes as ``items``)."""
  if isinstance(texts, str):
    raise ValueError("caption_items takes a list of captions, got one str; pass [caption]")
  items = [parse_caption(t, dataset) for t in texts]
  if not items:
    raise ValueError("caption_items needs at least one caption")
  sizes = sorted({len(i) for i in items})
  if len(sizes) > 1:
    raise ValueError(f"the captions name different numbers of places ({sizes}); score single items "
                     f"and pairs separately")
  return np.asarray(items, np.int32)


def caption_tokenizer(dataset: str = "fashion_mnist") -> WordTokenizer:
  """The tokenizer of ``dataset``'s whole grammar (every template, class and ordered pair), shared by
  its single-item and pair datasets: any caption of the grammar, held-out pairs included, encodes."""
  return WordTokenizer.fit(all_captions(dataset))


def max_caption_words(dataset: str = "fashion_mnist") -> int:
  """Words in the longest caption of ``dataset``'s grammar (at most :data:`CAPTION_LENGTH`)."""
  return max(len(words_of(c)) for c in all_captions(dataset))


# ---------------------------------------------------------------------------------------------------
# Held-out pairs.


def pair_split(num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
  """``(train_pairs int32 [P - K, 2], heldout_pairs int32 [K, 2])`` of the ``P = K (K - 1)`` ordered
  pairs ``(left, right)`` of ``K = num_classes`` classes with ``left != right``, each sorted.

  Held out: ``(c, (c + 1) mod K)`` for every class ``c`` (a cyclic derangement): every class is
  held out exactly once on the left and once on the right, and the reverse of every held-out pair,
  ``(c + 1, c)``, is trained. For Fashion-MNIST: t-shirt|trouser, trouser|pullover, pullover|dress,
  dress|coat, coat|sandal, sandal|shirt, shirt|sneaker, sneaker|bag, bag|ankle boot,
  ankle boot|t-shirt (left|right)."""
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 3:
    raise ValueError(f"num_classes must be an integer >= 3 (held-out pairs need their reverse in "
                     f"training), got {num_classes!r}")
  k = int(num_classes)
  left, right = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
  pairs = np.stack([left.ravel(), right.ravel()], axis=1).astype(np.int32)
  pairs = pairs[pairs[:, 0] != pairs[:, 1]]
  held = pairs[:, 1] == (pairs[:, 0] + HELDOUT_SHIFT) % k
  return pairs[~held], pairs[held]


# ---------------------------------------------------------------------------------------------------
# Dataset arrays.


@dataclasses.dataclass
class CaptionedArrays:
  """The arrays of a captioned split.

  Attributes:
    images: ``uint8 [N, H, W, C]`` (pairs: ``[N, H, 2 W, C]``, left item in the first ``W`` columns).
    labels: ``int32 [N]``: the class (pairs: ``num_classes * left + right``).
    items: ``int32 [N, places]``: the class at each place, left to right.
    templates: ``int32 [N]``: the template of each caption.
    captions: the caption strings, a list of ``N``.
    tokens: ``int32 [N, CAPTION_LENGTH]``: the captions encoded with ``tokenizer``.
    tokenizer: :func:`caption_tokenizer` of the grammar.
    sources: ``int64 [N, places]``: the index in the image split of each place's image.
  """
  images: np.ndarray
  labels: np.ndarray
  items: np.ndarray
  templates: np.ndarray
  captions: list
  tokens: np.ndarray
  tokenizer: WordTokenizer
  sources: np.ndarray


def _rng(seed: int, split: str, layout: str) -> np.random.Generator:
  return np.random.default_rng([int(seed), _SPLIT_STREAM[split], _LAYOUT_STREAM[layout]])


def _check_images(images, labels, grammar: Grammar) -> tuple[np.ndarray, np.ndarray]:
  images, labels = np.asarray(images), np.asarray(labels)
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} of shape {images.shape}")
  if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers [{images.shape[0]}] (one class per image), got "
                     f"{labels.dtype} of shape {labels.shape}")
  if labels.size and (labels.min() < 0 or labels.max() >= grammar.num_classes):
    raise ValueError(f"labels must lie in [0, {grammar.num_classes}) for the {grammar.dataset} "
                     f"grammar, got values in [{labels.min()}, {labels.max()}]")
  return images, labels.astype(np.int32)


def _encoded(texts: list, tokenizer: WordTokenizer) -> np.ndarray:
  return tokenizer.encode_batch(texts, CAPTION_LENGTH)


def single_arrays(images, labels, split: str = "train", *, dataset: str = "fashion_mnist",
                  seed: int = DATA_SEED) -> CaptionedArrays:
  """Each of ``images`` (``uint8 [N, H, W, C]``, classes ``labels``) with a caption of
  :data:`SINGLE_TEMPLATES`, the template of example ``i`` drawn uniformly by a generator seeded by
  ``(seed, split)``."""
  g = get_grammar(dataset)
  images, labels = _check_images(images, labels, g)
  if split not in SINGLE_SPLITS:
    raise ValueError(f"unknown split {split!r} for single-item captions; valid splits are: "
                     f"{', '.join(SINGLE_SPLITS)}")
  n, nt = labels.shape[0], len(SINGLE_TEMPLATES)
  templates = _rng(seed, split, "single").integers(0, nt, n).astype(np.int32)
  tokenizer = caption_tokenizer(g.dataset)
  texts = np.array([[caption((c,), t, g.dataset) for c in range(g.num_classes)] for t in range(nt)],
                   dtype=object)  # [template, class]
  table = _encoded(list(texts.ravel()), tokenizer).reshape(nt, g.num_classes, CAPTION_LENGTH)
  return CaptionedArrays(images=images, labels=labels, items=labels[:, None].copy(),
                         templates=templates, captions=texts[templates, labels].tolist(),
                         tokens=table[templates, labels], tokenizer=tokenizer,
                         sources=np.arange(n, dtype=np.int64)[:, None])


def pair_arrays(images, labels, split: str = "train", *, dataset: str = "fashion_mnist",
                num: Optional[int] = None, seed: int = DATA_SEED) -> CaptionedArrays:
  """``num`` (default :data:`PAIR_SIZES` ``[split]``) two-item canvases from ``images`` (``uint8
  [N, H, W, C]`` of classes ``labels``): ``split`` ``train`` and ``test`` use the training pairs of
  :func:`pair_split`, ``heldout`` the held-out ones; the images should come from the image split
  :data:`PAIR_IMAGE_SPLIT` ``[split]``.

  The pairs go round-robin in a shuffled order (each equally often, up to one), each place gets an
  image of its class drawn uniformly, and each caption a template of :data:`PAIR_TEMPLATES` drawn
  uniformly, all from one generator seeded by ``(seed, split)``. Vectorised: 60,000 canvases take a
  fraction of a second.
  """
  g = get_grammar(dataset)
  images, labels = _check_images(images, labels, g)
  if split not in PAIR_SPLITS:
    raise ValueError(f"unknown split {split!r} for pair captions; valid splits are: "
                     f"{', '.join(PAIR_SPLITS)}")
  num = PAIR_SIZES[split] if num is None else num
  if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
    raise ValueError(f"num (canvases) must be an integer >= 1, got {num!r}")
  k = g.num_classes
  counts = np.bincount(labels, minlength=k)
  if (counts == 0).any():
    raise ValueError(f"every class needs at least one image to build pairs; classes "
                     f"{np.flatnonzero(counts == 0).tolist()} have none")
  train_pairs, held_pairs = pair_split(k)
  pairs = held_pairs if split == "heldout" else train_pairs
  rng = _rng(seed, split, "pairs")
  which = rng.permutation(np.resize(np.arange(pairs.shape[0]), num))  # round-robin, shuffled
  items = pairs[which]  # [num, 2]
  # An image of each place's class, uniformly: positions into the images sorted by class.
  order = np.argsort(labels, kind="stable")
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  u = rng.random(items.shape)
  pick = np.minimum((u * counts[items]).astype(np.int64), counts[items] - 1)
  sources = order[starts[items] + pick]  # [num, 2]
  canvases = np.concatenate([images[sources[:, 0]], images[sources[:, 1]]], axis=2)
  nt = len(PAIR_TEMPLATES)
  templates = rng.integers(0, nt, num).astype(np.int32)
  tokenizer = caption_tokenizer(g.dataset)
  texts = np.array([[[caption((a, b), t, g.dataset) for b in range(k)] for a in range(k)]
                    for t in range(nt)], dtype=object)  # [template, left, right]
  table = _encoded(list(texts.ravel()), tokenizer).reshape(nt, k, k, CAPTION_LENGTH)
  left, right = items[:, 0], items[:, 1]
  return CaptionedArrays(images=canvases, labels=(k * left + right).astype(np.int32),
                         items=items.astype(np.int32), templates=templates,
                         captions=texts[templates, left, right].tolist(),
                         tokens=table[templates, left, right], tokenizer=tokenizer, sources=sources)


__all__ = ["CAPTION_LENGTH", "DATASETS", "DATA_SEED", "FASHION_MNIST", "GRAMMARS", "Grammar",
           "HELDOUT_SHIFT", "MNIST", "PAD_ID", "PAIR_IMAGE_SPLIT", "PAIR_SIZES", "PAIR_SPLITS",
           "PAIR_TEMPLATES", "PLACES", "SINGLE_SPLITS", "SINGLE_TEMPLATES", "CaptionedArrays",
           "WordTokenizer", "all_captions", "caption", "caption_items", "caption_tokenizer",
           "get_grammar", "max_caption_words", "pair_arrays", "pair_split", "parse_caption",
           "single_arrays", "words_of"]
