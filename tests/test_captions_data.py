"""Captioned data for text-to-image models (``jdiff.data.captions`` and the ``*_captions`` /
``*_pairs`` sources): the word tokenizer, the caption grammar and its inverse, the held-out class
pairs, the Fashion-MNIST datasets (pixel-exact against the image split) and integer extras through the
pipeline. MNIST goes through TFDS: it is tested on synthetic arrays and a fake TFDS reader only."""
import json

import numpy as np
import pytest

from _fmnist import needs_fmnist
from jdiff import data
from jdiff.data import captions
from jdiff.data import sources
from jdiff.data.captions import CAPTION_LENGTH, WordTokenizer



# --- the word tokenizer ----------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["fashion_mnist", "mnist"])
def test_tokenizer_round_trips_every_caption_of_the_grammar(dataset):
  tok = captions.caption_tokenizer(dataset)
  texts = captions.all_captions(dataset)
  assert len(texts) == len(set(texts)) == 4 * 10 + 4 * 100
  ids = tok.encode_batch(texts, CAPTION_LENGTH)
  assert ids.dtype == np.int32 and ids.shape == (len(texts), CAPTION_LENGTH)
  for text, row in zip(texts, ids):
    n = len(text.split())
    assert (row[:n] > 0).all() and (row[n:] == 0).all()  # words, then padding 0 (never a word)
    assert tok.decode(row) == text
    np.testing.assert_array_equal(tok.encode(text, CAPTION_LENGTH), row)
  assert captions.max_caption_words(dataset) <= CAPTION_LENGTH
  assert tok.vocab_size == len(tok.words) + 1 == ids.max() + 1  # every word is used
  assert list(tok.words) == sorted(tok.words)
  assert tok.decode(np.zeros(CAPTION_LENGTH, np.int64)) == ""  # the null caption


def test_tokenizer_normalises_and_fits_deterministically():
  tok = captions.caption_tokenizer()
  assert "t-shirt" in tok.words and "ankle" in tok.words and "boot" in tok.words
  np.testing.assert_array_equal(tok.encode("  A Photo, of a T-shirt. ", 8),
                                tok.encode("a photo of a t-shirt", 8))
  assert tok.decode(tok.encode("An ANKLE boot!", 4)) == "an ankle boot"
  texts = captions.all_captions()
  assert WordTokenizer.fit(texts[::-1]) == tok and WordTokenizer.fit("b a b").words == ("a", "b")
  assert WordTokenizer.fit("a b") != WordTokenizer.fit("a c")


def test_tokenizer_errors():
  tok = captions.caption_tokenizer()
  with pytest.raises(ValueError, match=r"unknown word 'sneakr' in prompt 'a sneakr': the model knows "
                     r"23 words; did you mean 'sneaker'\?"):
    tok.encode("a sneakr", 16)
  with pytest.raises(ValueError, match=r"unknown words 'xyzzy', 'qqq' .*knows 23 words; it knows a, "
                     r"an, and, "):
    tok.encode("xyzzy a qqq", 16)
  with pytest.raises(ValueError, match="prompt has 17 words but the model reads at most 16; shorten "
                     "it"):
    tok.encode(" ".join(["a"] * 17), 16)
  for empty in ("", " ,. !"):
    with pytest.raises(ValueError, match="is empty"):
      tok.encode(empty, 16)
  with pytest.raises(ValueError, match="length .* must be an integer >= 1"):
    tok.encode("a bag", 0)
  with pytest.raises(ValueError, match="list of prompts"):
    tok.encode_batch("a bag", 16)
  assert tok.encode_batch([], 5).shape == (0, 5)
  with pytest.raises(ValueError, match=r"token ids must lie in \[0, 24\)"):
    tok.decode([1, 24])
  with pytest.raises(ValueError, match="1-D integer array"):
    tok.decode(np.zeros((2, 3), np.int32))
  with pytest.raises(ValueError, match="not a normalised word"):
    WordTokenizer(["Bag"])
  with pytest.raises(ValueError, match=r"must be distinct; \['a'\] repeat"):
    WordTokenizer(["a", "b", "a"])
  with pytest.raises(ValueError, match="list of words"):
    WordTokenizer("a b")


def test_tokenizer_json_round_trip():
  tok = captions.caption_tokenizer()
  d = json.loads(json.dumps(tok.to_json()))  # a plain dict, as checkpoint metadata stores it
  back = WordTokenizer.from_json(d)
  assert back == tok and hash(back) == hash(tok) and back.vocab_size == tok.vocab_size
  np.testing.assert_array_equal(back.encode("a bag to the left of a sneaker", 16),
                                tok.encode("a bag to the left of a sneaker", 16))
  with pytest.raises(ValueError, match="WordTokenizer.to_json"):
    WordTokenizer.from_json({"chars": "abc"})


# --- the grammar -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["fashion_mnist", "mnist"])
def test_parse_caption_inverts_every_template(dataset):
  assert len(captions.SINGLE_TEMPLATES) >= 4 and len(captions.PAIR_TEMPLATES) >= 3
  for t in range(len(captions.SINGLE_TEMPLATES)):
    for c in range(10):
      assert captions.parse_caption(captions.caption((c,), t, dataset), dataset) == (c,)
  for t in range(len(captions.PAIR_TEMPLATES)):
    for left in range(10):
      for right in range(10):
        text = captions.caption((left, right), t, dataset)
        assert captions.parse_caption(text, dataset) == (left, right)
        assert {"left", "right"} & set(text.split())  # a pair caption names the places


def test_caption_wording():
  c = captions.caption
  assert c((9,), 0) == "an ankle boot" and c((0,), 2) == "a picture of a t-shirt"
  assert c((8,), 3) == "an image of a bag" and c((7,), 1) == "a photo of a sneaker"
  assert c((8, 7), 0) == "a bag to the left of a sneaker"
  assert c((8, 7), 1) == "a sneaker to the right of a bag"
  assert c((8, 7), 2) == "a bag on the left and a sneaker on the right"
  assert c((1, 4), 1) == "a coat to the right of a trouser"
  assert c((8,), 1, "mnist") == "a photo of an eight" and c((1,), 0, "mnist") == "a one"
  assert captions.parse_caption("A bag, to the LEFT of a sneaker!") == (8, 7)
  assert captions.parse_caption("an eight", "mnist") == (8,)
  np.testing.assert_array_equal(captions.caption_items(["a bag to the left of a sneaker",
                                                        "a coat to the right of a trouser"]),
                                [[8, 7], [1, 4]])
  with pytest.raises(ValueError, match="outside the fashion_mnist caption grammar; the closest "
                     "caption it knows is 'a bag to the left of a sneaker'"):
    captions.parse_caption("a bag left of a sneaker")
  with pytest.raises(ValueError, match="outside the fashion_mnist caption grammar"):
    captions.parse_caption("an sneaker")  # the article is part of the grammar
  with pytest.raises(ValueError, match="different numbers of places"):
    captions.caption_items(["a bag", "a bag to the left of a sneaker"])
  with pytest.raises(ValueError, match="no caption grammar for dataset 'cifar10'"):
    captions.get_grammar("cifar10")


def test_held_out_pairs():
  train, held = captions.pair_split(10)
  assert held.shape == (10, 2) and train.shape == (80, 2)
  assert (held[:, 0] != held[:, 1]).all() and (train[:, 0] != train[:, 1]).all()
  as_set = lambda p: {tuple(r) for r in p.tolist()}
  assert not as_set(train) & as_set(held)
  assert as_set(train) | as_set(held) == {(a, b) for a in range(10) for b in range(10) if a != b}
  assert sorted(held[:, 0]) == list(range(10)) and sorted(held[:, 1]) == list(range(10))
  assert {(b, a) for a, b in as_set(held)} <= as_set(train)  # each reverse arrangement is trained
  assert (3, 4) in as_set(held)  # "a dress to the left of a coat"
  with pytest.raises(ValueError, match="num_classes must be an integer >= 3"):
    captions.pair_split(2)


# --- datasets ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fmnist():
  return {split: data.get_dataset("fashion_mnist", split) for split in ("train", "test")}


@pytest.fixture(scope="module")
def pairs():
  return {split: data.get_dataset("fashion_mnist_pairs", split) for split in captions.PAIR_SPLITS}


def _by_pixels(src):
  """Image bytes -> the set of labels of the images with those pixels."""
  out = {}
  for img, label in zip(src.data, src.labels.tolist()):
    out.setdefault(img.tobytes(), set()).add(label)
  return out


@needs_fmnist
def test_caption_dataset(fmnist):
  tok = captions.caption_tokenizer()
  for split in ("train", "test"):
    src = data.get_dataset("fashion_mnist_captions", split)
    images = fmnist[split]
    n = images.num_examples
    assert isinstance(src, data.CaptionSource) and src.kind == "image" and src.num_classes == 10
    assert src.data.dtype == np.uint8 and src.shape == (28, 28, 1) and src.num_examples == n
    np.testing.assert_array_equal(src.data, images.data)  # example i is image i, label i
    np.testing.assert_array_equal(src.labels, images.labels)
    assert src.extras == ("caption",) and src.extra_shape("caption") == (CAPTION_LENGTH,)
    tokens = src.read_extras(np.arange(n))["caption"]
    assert tokens.dtype == np.int32 and src.extra_dtype("caption") == np.int32
    assert src.tokenizer == tok and len(src.captions) == n
    np.testing.assert_array_equal(src.items[:, 0], src.labels)
    parsed = np.array([captions.parse_caption(c) for c in src.captions])
    np.testing.assert_array_equal(parsed[:, 0], src.labels)
    for i in range(0, n, 997):
      assert tok.decode(tokens[i]) == src.captions[i]
    used = {c.replace(captions.get_grammar().phrase(l), "{0}") for c, l in
            zip(src.captions[:200], src.labels[:200])}
    assert used == set(captions.SINGLE_TEMPLATES)  # every template, drawn per example
  assert sources.kind_of("fashion_mnist_captions", src.shape) == "image"
  again = data.get_dataset("fashion_mnist_captions", "test")
  assert again.captions == src.captions
  train_captions = data.get_dataset("fashion_mnist_captions", "train").captions[:10000]
  assert train_captions != src.captions  # the splits draw their templates apart
  with pytest.raises(ValueError, match="unknown split 'heldout' for dataset 'fashion_mnist_captions'; "
                     "valid splits are: train, test"):
    data.get_dataset("fashion_mnist_captions", "heldout")


@needs_fmnist
def test_pair_dataset_shapes_labels_and_captions(pairs):
  train_pairs, held = captions.pair_split()
  tok = captions.caption_tokenizer()
  for split, src in pairs.items():
    n = captions.PAIR_SIZES[split]
    assert src.num_examples == n and src.shape == (28, 56, 1) and src.data.dtype == np.uint8
    assert src.kind == "image" and src.num_classes == 100 and src.labels.dtype == np.int32
    assert src.items.shape == (n, 2) and src.items.dtype == np.int32
    np.testing.assert_array_equal(src.labels, 10 * src.items[:, 0] + src.items[:, 1])
    tokens = src.read_extras(np.arange(n))["caption"]
    assert tokens.shape == (n, CAPTION_LENGTH) and tokens.dtype == np.int32
    assert src.tokenizer == tok and len(src.captions) == n
    parsed = np.array([captions.parse_caption(c) for c in src.captions], np.int32)
    np.testing.assert_array_equal(parsed, src.items)  # the caption of example i names its items
    for i in range(0, n, 1009):
      assert tok.decode(tokens[i]) == src.captions[i]
    seen = {tuple(p) for p in src.items.tolist()}
    want = {tuple(p) for p in (held if split == "heldout" else train_pairs).tolist()}
    assert seen == want  # heldout: only (and all) held-out pairs; train/test: none of them
    counts = np.unique(src.labels, return_counts=True)[1]
    assert counts.max() - counts.min() <= 1  # round-robin over the pairs
  assert len({c.split()[2] for c in pairs["test"].captions}) > 2  # several templates in use


@needs_fmnist
def test_pair_canvases_are_the_named_images(pairs, fmnist):
  for split, src in pairs.items():
    lookup = _by_pixels(fmnist[captions.PAIR_IMAGE_SPLIT[split]])
    idx = np.arange(0, src.num_examples, 7 if split == "train" else 1)
    canvases = src.data[idx]
    for place in (0, 1):
      halves = canvases[:, :, 28 * place:28 * (place + 1)]
      classes = src.items[idx, place].tolist()
      for half, c in zip(halves, classes):
        assert c in lookup.get(half.tobytes(), ())  # pixel-exactly an image of the named class
  # The test canvases come from test images, the train ones from training images.
  train_lookup = _by_pixels(fmnist["train"])
  hits = sum(h.tobytes() in train_lookup for h in pairs["heldout"].data[:200, :, :28])
  assert hits < 5  # (a few Fashion-MNIST test images duplicate training images)


@needs_fmnist
def test_pair_dataset_is_deterministic(pairs):
  again = data.get_dataset("fashion_mnist_pairs", "test")
  np.testing.assert_array_equal(again.data, pairs["test"].data)
  np.testing.assert_array_equal(again.read_extras(np.arange(100))["caption"],
                                pairs["test"].read_extras(np.arange(100))["caption"])
  assert again.captions == pairs["test"].captions
  other = sources.caption_dataset("fashion_mnist_pairs", "test", seed=1)
  assert (other.labels != pairs["test"].labels).mean() > 0.9


def test_pair_dataset_errors():
  with pytest.raises(ValueError, match="unknown split 'validation' for dataset 'fashion_mnist_pairs'; "
                     "valid splits are: train, test, heldout"):
    data.get_dataset("fashion_mnist_pairs", "validation")
  with pytest.raises(ValueError, match="image_size=32 must divide the 28x28 items.*leave data.image_size "
                     "at 0"):
    data.get_dataset("fashion_mnist_pairs", image_size=32)
  with pytest.raises(ValueError, match="_pairs datasets are not resized"):
    data.get_dataset("fashion_mnist_pairs", image_size=14)


def test_image_size_is_the_average_pool_of_a_cascade():
  """A 14x14 base of a cascade trains on the 2x2 average pool, the low-resolution input of the
  super-resolution stage (jdiff.conditions.LowRes), up to uint8 rounding."""
  full = data.get_dataset("fashion_mnist_captions", "test")
  half = data.get_dataset("fashion_mnist_captions", "test", image_size=14)
  assert half.shape == (14, 14, 1) and half.extras == ("caption",) and half.tokenizer == full.tokenizer
  x = full.read(np.arange(50))[0].astype(np.float64)
  pooled = x.reshape(50, 14, 2, 14, 2, 1).mean(axis=(2, 4))
  np.testing.assert_allclose(half.read(np.arange(50))[0], pooled, atol=0.5)
  np.testing.assert_array_equal(half.read_extras(np.arange(50))["caption"],
                                full.read_extras(np.arange(50))["caption"])
  with pytest.raises(ValueError, match="seq_length .*16-token captions: leave data.seq_length at 0"):
    data.get_dataset("fashion_mnist_captions", seq_length=16)
  names = data.dataset_names()
  for name in ("fashion_mnist_captions", "fashion_mnist_pairs", "mnist_captions", "mnist_pairs"):
    assert name in names
  with pytest.raises(ValueError, match="labels must lie in"):
    captions.single_arrays(np.zeros((2, 28, 28, 1), np.uint8), [0, 10])
  with pytest.raises(ValueError, match=r"classes \[9\] have none"):
    captions.pair_arrays(np.zeros((9, 28, 28, 1), np.uint8), np.arange(9), num=10)


def test_mnist_captions_on_synthetic_arrays(monkeypatch):
  """The MNIST datasets on a fake TFDS reader: names, splits and captions, no network."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (200, 28, 28, 1), dtype=np.uint8)
  labels = np.arange(200) % 10
  asked = []

  def fake_tfds(name, split, data_dir, download, **kwargs):
    del kwargs
    asked.append((name, split, data_dir, download))
    return sources.ArraySource(images, labels, name=name, split=split, num_classes=10)

  monkeypatch.setattr(sources, "tfds_source", fake_tfds)
  single = data.get_dataset("mnist_captions", "test", data_dir="/nowhere")
  assert asked == [("mnist", "test", "/nowhere", False)]
  assert single.tokenizer == captions.caption_tokenizer("mnist") and "eight" in single.tokenizer.words
  assert [captions.parse_caption(c, "mnist")[0] for c in single.captions] == labels.tolist()
  held = data.get_dataset("mnist_pairs", "heldout")
  assert asked[-1][:2] == ("mnist", "test") and held.num_examples == 10_000
  assert {tuple(p) for p in held.items.tolist()} == {(c, (c + 1) % 10) for c in range(10)}
  for i in range(0, 10_000, 499):
    assert captions.parse_caption(held.captions[i], "mnist") == tuple(held.items[i])
    assert labels[(images == held.data[i, :, 28:][None]).all(axis=(1, 2, 3))][0] == held.items[i, 1]


# --- integer extras through sources and the pipeline -------------------------------------------------


def test_integer_extras_stay_int32_and_float_ones_float32():
  x = np.zeros((6, 4, 4, 1), np.uint8)
  src = data.ArraySource(x, np.zeros(6), name="t", split="train", num_classes=None,
                         extras={"ids": np.arange(12, dtype=np.int64).reshape(6, 2),
                                 "noise": np.ones((6, 3), np.float64), "listed": [[1], [2]] * 3})
  assert src.extra_dtype("ids") == np.int32 and src.extra_dtype("listed") == np.int32
  assert src.extra_dtype("noise") == np.float32
  pipe = data.Pipeline(src, 4, 0, num_local_devices=2, process_index=0, process_count=1)
  b = pipe.batch_at(0)
  assert b["ids"].dtype == np.int32 and b["noise"].dtype == np.float32 and b["listed"].dtype == np.int32
  assert {k: b[k].shape for k in b} == pipe.shapes
  assert {k: b[k].dtype for k in b} == pipe.dtypes
  np.testing.assert_array_equal(b["ids"].reshape(4, 2),
                                np.arange(12).reshape(6, 2)[pipe.global_indices(0)[:4]])
  with pytest.raises(ValueError, match="holds integers outside int32"):
    data.ArraySource(x, np.zeros(6), name="t", split="train", num_classes=None,
                     extras={"ids": np.full((6,), 2 ** 40)})


@needs_fmnist
def test_pipeline_batches_carry_int32_captions():
  src = data.get_dataset("fashion_mnist_captions", "test")
  pipe = data.Pipeline(src, 8, 3, num_local_devices=2, process_index=1, process_count=2)
  b = pipe.batch_at(5)
  assert b["caption"].dtype == np.int32 and b["caption"].shape == (2, 2, CAPTION_LENGTH)
  assert pipe.shapes["caption"] == (2, 2, CAPTION_LENGTH) and pipe.dtypes["caption"] == np.int32
  assert b["image"].dtype == np.float32 and b["image"].shape == (2, 2, 28, 28, 1)
  idx = pipe.global_indices(5)[4:8]  # process 1 of 2 reads the second half of the global batch
  np.testing.assert_array_equal(b["caption"].reshape(4, CAPTION_LENGTH), src.read_extras(idx)["caption"])
  texts = [src.tokenizer.decode(row) for row in b["caption"].reshape(4, CAPTION_LENGTH)]
  assert [captions.parse_caption(t)[0] for t in texts] == b["label"].reshape(4).tolist()
