"""Tests for jdiff.data: sources (IDX, digits, mixture, TFDS array_record) and the pipeline.

Nothing here reaches the network: TFDS is only ever asked for data already on disk (download=False),
and the TFDS test builds its own tiny array_record dataset (no TensorFlow needed).
"""
import gzip
import io
import json
import os

import numpy as np
import pytest

from jdiff import data

FMNIST = data.FASHION_MNIST_DIR
HAVE_FMNIST = all(
    os.path.isfile(os.path.join(FMNIST, f"{p}-{k}-ubyte.gz"))
    for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1"))


def _idx_bytes(arr: np.ndarray, code: int) -> bytes:
  """Encode an array in the IDX format (independent of the parser under test)."""
  dt = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[code]
  header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
  return header + arr.astype(dt).tobytes()


def _index_source(n: int, num_classes: int = 7) -> data.ArraySource:
  """Vectors whose single value is the example's index: batches reveal exactly what was read."""
  x = np.arange(n, dtype=np.float32)[:, None]
  return data.ArraySource(x, np.arange(n) % num_classes, name="index", split="train",
                          num_classes=num_classes)


def _image_source(n: int = 50, h: int = 4, w: int = 5, c: int = 3) -> data.ArraySource:
  rng = np.random.default_rng(123)
  imgs = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
  return data.ArraySource(imgs, np.arange(n) % 10, name="img", split="train", num_classes=10)


def _pipe(src, b, seed=0, **kw):
  kw.setdefault("num_local_devices", 1)
  kw.setdefault("process_index", 0)
  kw.setdefault("process_count", 1)
  return data.Pipeline(src, b, seed, **kw)


def _take(pipe, n):
  return [next(pipe) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


# --- sources -----------------------------------------------------------------------------------------


def test_parse_idx_roundtrip_and_errors(tmp_path):
  rng = np.random.default_rng(0)
  imgs = rng.integers(0, 256, (3, 4, 5), dtype=np.uint8)
  np.testing.assert_array_equal(data.parse_idx(_idx_bytes(imgs, 0x08)), imgs)
  ints = rng.integers(-1000, 1000, (6,)).astype(np.int32)
  out = data.parse_idx(_idx_bytes(ints, 0x0C))
  assert out.dtype == np.int32 and out.dtype.isnative
  np.testing.assert_array_equal(out, ints)
  path = tmp_path / "x-idx3-ubyte.gz"
  with gzip.open(path, "wb") as f:
    f.write(_idx_bytes(imgs, 0x08))
  np.testing.assert_array_equal(data.read_idx(str(path)), imgs)
  with pytest.raises(ValueError, match="two zero bytes"):
    data.parse_idx(b"\x01\x00\x08\x01" + bytes(8))
  with pytest.raises(ValueError, match="unknown type code"):
    data.parse_idx(b"\x00\x00\x07\x01" + bytes(8))
  with pytest.raises(ValueError, match="does not match its header"):
    data.parse_idx(_idx_bytes(imgs, 0x08)[:-1])


@pytest.mark.skipif(not HAVE_FMNIST, reason=f"Fashion-MNIST IDX files not in {FMNIST} "
                    "(apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_debian_files():
  for split, n in (("train", 60_000), ("test", 10_000)):
    src = data.get_dataset("fashion_mnist", split)
    assert isinstance(src, data.ArraySource)
    assert (src.num_examples, src.shape, src.num_classes, src.is_image) == (n, (28, 28, 1), 10, True)
    assert src.data.dtype == np.uint8 and src.data.shape == (n, 28, 28, 1)
    assert src.labels.dtype == np.int32
    # Fashion-MNIST is exactly class-balanced (Xiao et al. 2017): n / 10 of each of the 10 labels.
    np.testing.assert_array_equal(np.bincount(src.labels, minlength=10), np.full(10, n // 10))
    assert src.data.max() == 255 and src.data.min() == 0


def test_fashion_mnist_local_dir_override(tmp_path):
  rng = np.random.default_rng(1)
  imgs = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, (12,)).astype(np.uint8)
  for name, arr in (("t10k-images-idx3-ubyte.gz", imgs), ("t10k-labels-idx1-ubyte.gz", labels)):
    with gzip.open(tmp_path / name, "wb") as f:
      f.write(_idx_bytes(arr, 0x08))
  src = data.get_dataset("fashion_mnist", "test", local_dir=str(tmp_path))
  images, labs = src.read(np.arange(12))
  np.testing.assert_array_equal(images, imgs[..., None])
  np.testing.assert_array_equal(labs, labels.astype(np.int32))


def test_fashion_mnist_missing_everywhere_names_both_fixes(tmp_path):
  empty_local, empty_tfds = tmp_path / "local", tmp_path / "tfds"
  empty_local.mkdir()
  empty_tfds.mkdir()
  with pytest.raises(ValueError) as e:
    data.get_dataset("fashion_mnist", "train", data_dir=str(empty_tfds), local_dir=str(empty_local))
  msg = str(e.value)
  assert "apt-get install dataset-fashion-mnist" in msg
  assert "tfds build fashion_mnist --file_format=array_record" in msg
  assert str(empty_local) in msg and "\n" not in msg


def test_digits():
  from sklearn.datasets import load_digits
  train, test = data.get_dataset("digits", "train"), data.get_dataset("digits", "test")
  assert (train.num_examples, test.num_examples) == (1500, 297)
  assert train.shape == (8, 8, 1) and train.num_classes == 10 and train.is_image
  both = np.concatenate([train.data, test.data])
  both_labels = np.concatenate([train.labels, test.labels])
  assert both.dtype == np.uint8 and both.min() == 0 and both.max() == 255  # 0..16 -> 0..255
  ref = load_digits()
  ref_imgs = np.round(ref.images * 255 / 16).astype(np.uint8)[..., None]
  # The split is a permutation of all 1,797 images (nothing lost, nothing shared), labels kept.
  key = lambda imgs, labs: sorted(zip([r.tobytes() for r in imgs], labs.tolist()))
  assert key(both, both_labels) == key(ref_imgs, ref.target)
  # Deterministic: a second load gives the same split.
  np.testing.assert_array_equal(data.get_dataset("digits", "test").data, test.data)


@pytest.fixture(scope="module")
def mixture_train():
  return data.get_dataset("mixture2d", "train")


def test_mixture2d(mixture_train):
  src = mixture_train
  from jdiff import toy
  mix = toy.default_mixture()
  assert (src.num_examples, src.shape, src.num_classes, src.is_image) == (100_000, (2,), 3, False)
  x, labels = src.read(np.arange(src.num_examples))
  assert x.dtype == np.float32 and labels.dtype == np.int32
  frac = np.bincount(labels, minlength=3) / labels.size
  # Binomial std of a fraction with n=1e5 is <= 0.0016; 0.01 is > 6 std.
  np.testing.assert_allclose(frac, np.asarray(mix.weights), atol=0.01)
  for k in range(3):  # not rescaled: per-component means match the mixture means
    np.testing.assert_allclose(x[labels == k].mean(0), np.asarray(mix.means[k]), atol=0.02)
  test = data.get_dataset("mixture2d", "test")
  assert test.num_examples == 10_000 and not np.array_equal(test.read(np.arange(10))[0],
                                                            x[:10])


# --- pipeline ---------------------------------------------------------------------------------------


def test_order_is_grains_per_epoch_shuffle_and_drops_remainder():
  import grain
  n, b, seed = 103, 10, 7
  pipe = _pipe(_index_source(n), b, seed)
  assert pipe.steps_per_epoch == 10
  batches = _take(pipe, 20)  # two epochs
  shuffled = grain.MapDataset.range(n).seed(seed).shuffle()  # the documented order
  epochs = []
  for epoch in range(2):
    perm = np.array([shuffled[epoch * n + i] for i in range(n)])
    got = np.concatenate([bt["image"].reshape(-1) for bt in batches[epoch * 10:(epoch + 1) * 10]])
    np.testing.assert_array_equal(got.astype(np.int64), perm[:100])  # the last 3 are dropped
    assert len(set(got.tolist())) == 100  # each example at most once per epoch
    np.testing.assert_array_equal(np.concatenate([pipe.global_indices(epoch * 10 + j)
                                                  for j in range(10)]), perm[:100])
    epochs.append(perm)
  np.testing.assert_array_equal(np.sort(epochs[0]), np.arange(n))
  assert not np.array_equal(epochs[0], epochs[1])  # a fresh shuffle each epoch
  bt = batches[0]
  np.testing.assert_array_equal(bt["label"], (bt["image"][..., 0].astype(np.int64) % 7))
  np.testing.assert_array_equal(bt["index"], np.arange(b)[None])
  assert pipe.epoch == 2 and pipe.step == 20
  _assert_batches_equal(batches[8:12], [pipe.batch_at(k) for k in range(8, 12)])  # iteration


def test_determinism_by_seed():
  src = _image_source()
  a, b, c = (_take(_pipe(src, 8, s), 12) for s in (3, 3, 4))
  _assert_batches_equal(a, b)
  assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))
  # Nearby seeds give unrelated orders: seed 4's epoch 0 is not seed 3's epoch 1 (grain shuffles
  # epoch e with its shuffle seed + e, so seeds must not be passed to shuffle() as they are).
  idx = lambda seed, steps: np.concatenate([_pipe(src, 8, seed).global_indices(s) for s in steps])
  assert not np.array_equal(idx(3, range(6, 12)), idx(4, range(0, 6)))


def test_images_scaled_to_unit_interval():
  src = _image_source()
  bt = _pipe(src, 10).batch_at(0)
  raw, labels = src.read(_pipe(src, 10).global_indices(0))
  assert bt["image"].dtype == np.float32
  np.testing.assert_allclose(bt["image"][0], raw / 127.5 - 1.0, atol=1e-6)
  np.testing.assert_array_equal(bt["label"][0], labels)
  full = data.ArraySource(np.array([[[[0]]], [[[255]]]], np.uint8), np.zeros(2), name="e",
                          split="train", num_classes=1)
  np.testing.assert_array_equal(np.sort(_pipe(full, 2).batch_at(0)["image"].ravel()), [-1, 1])


@pytest.mark.parametrize("ndev", [1, 2])
def test_batch_shapes_per_local_device(ndev):
  src = _image_source()
  pipe = _pipe(src, 8, 0, num_local_devices=ndev)
  bt = next(pipe)
  assert bt["image"].shape == (ndev, 8 // ndev, 4, 5, 3) == pipe.shapes["image"]
  assert bt["label"].shape == bt["index"].shape == (ndev, 8 // ndev)
  assert bt["label"].dtype == bt["index"].dtype == np.int32
  one = _pipe(src, 8, 0, num_local_devices=1).batch_at(0)
  for k in bt:  # the device axis only splits the same host batch
    np.testing.assert_array_equal(bt[k].reshape(one[k].shape), one[k])
  vec = next(_pipe(_index_source(40), 8, 0, num_local_devices=ndev))
  assert vec["image"].shape == (ndev, 8 // ndev, 1)


@pytest.mark.parametrize("nproc,ndev", [(2, 1), (2, 2), (4, 1)])
@pytest.mark.parametrize("flip", [False, True])
def test_process_shards_union_equals_single_process_batch(nproc, ndev, flip):
  src = _image_source(n=64)
  single = _pipe(src, 16, 5, random_flip=flip)
  shards = [_pipe(src, 16, 5, num_local_devices=ndev, process_index=p, process_count=nproc,
                  random_flip=flip) for p in range(nproc)]
  for step in range(6):  # crosses the epoch boundary at step 4
    ref = next(single)
    parts = [next(s) for s in shards]
    for k in ref:
      joined = np.concatenate([p[k].reshape((-1,) + p[k].shape[2:]) for p in parts])
      np.testing.assert_array_equal(joined, ref[k][0])


@pytest.mark.parametrize("prefetch", [0, 3])
@pytest.mark.parametrize("taken", [3, 5])  # mid-epoch; exactly at the epoch boundary
def test_state_save_restore_gives_identical_batches(prefetch, taken):
  src = _image_source(n=45)  # 5 steps per epoch, 5 examples dropped per epoch
  pipe = _pipe(src, 8, 11, random_flip=True, prefetch=prefetch)
  _take(pipe, taken)
  state = json.loads(json.dumps(pipe.get_state()))  # JSON-serializable
  assert state["step"] == taken and state["seed"] == 11
  expected = _take(pipe, 6)  # crosses into the next epoch
  resumed = _pipe(src, 8, 0, random_flip=True, prefetch=prefetch)  # other seed: state wins
  _take(resumed, 2)
  resumed.set_state(state)
  assert resumed.seed == 11 and resumed.step == taken
  _assert_batches_equal(_take(resumed, 6), expected)
  pipe.set_state(state)  # rewinding the same (prefetching) pipeline works as well
  _assert_batches_equal(_take(pipe, 6), expected)
  pipe.close()
  resumed.close()


def test_two_processes_read_disjoint_shards_and_resume_any_layout():
  n, b = 50, 8
  single = _pipe(_index_source(n), b, 4)
  procs = [_pipe(_index_source(n), b, 4, process_index=p, process_count=2) for p in range(2)]
  for step in range(8):  # crosses the epoch boundary at step 6
    ids = [set(next(p)["image"].ravel().astype(int).tolist()) for p in procs]
    assert not ids[0] & ids[1]
    assert ids[0] | ids[1] == set(next(single)["image"].ravel().astype(int).tolist()) == \
        set(single.global_indices(step).tolist())
    assert len(ids[0]) == len(ids[1]) == b // 2
  # The state does not depend on the layout: a 1-process state resumes 2 processes, and back.
  expected = _take(single, 3)
  for p in procs:
    p.set_state(single.get_state() | {"step": 8})
  parts = [_take(p, 3) for p in procs]
  for step in range(3):
    joined = np.concatenate([parts[p][step]["image"] for p in range(2)], axis=1)
    np.testing.assert_array_equal(joined, expected[step]["image"])
  single.set_state(procs[1].get_state())
  assert single.step == 11
  _assert_batches_equal(_take(single, 2), [_pipe(_index_source(n), b, 4).batch_at(k)
                                           for k in (11, 12)])


def test_prefetch_does_not_change_batches_and_no_workers():
  import multiprocessing
  import threading
  src = _image_source()
  threads = threading.active_count()
  p0 = _pipe(src, 8, 2, prefetch=0)
  plain = _take(p0, 9)
  assert threading.active_count() <= threads  # prefetch=0 reads in the calling thread
  with _pipe(src, 8, 2, prefetch=4) as p4:
    _assert_batches_equal(plain, _take(p4, 9))
    assert threading.active_count() <= threads + 1  # one prefetch thread
  assert not multiprocessing.active_children()  # never worker processes


def test_flips_deterministic_and_mirror_images():
  src = _image_source(n=200)
  plain = _pipe(src, 200, 9).batch_at(3)["image"][0]
  flipped = _pipe(src, 200, 9, random_flip=True).batch_at(3)["image"][0]
  again = _pipe(src, 200, 9, random_flip=True).batch_at(3)["image"][0]
  np.testing.assert_array_equal(flipped, again)
  mask = data.flip_mask(9, 3, 200)
  np.testing.assert_array_equal(flipped[mask], plain[mask][:, :, ::-1])
  np.testing.assert_array_equal(flipped[~mask], plain[~mask])
  assert 60 < mask.sum() < 140  # Binomial(200, 1/2): mean 100, std ~7
  assert not np.array_equal(mask, data.flip_mask(9, 4, 200))
  assert not np.array_equal(mask, data.flip_mask(10, 3, 200))


def test_default_device_and_process_counts_come_from_jax():
  import jax
  pipe = data.Pipeline(_index_source(40), 4 * jax.local_device_count(), 0)
  assert (pipe.num_local_devices, pipe.process_index, pipe.process_count) == (
      jax.local_device_count(), jax.process_index(), jax.process_count())


def test_make_pipeline():
  pipe = data.make_pipeline("digits", 30, 1, split="test", num_local_devices=3, process_index=0,
                            process_count=1)
  bt = next(pipe)
  assert bt["image"].shape == (3, 10, 8, 8, 1) and pipe.steps_per_epoch == 297 // 30


# --- errors -----------------------------------------------------------------------------------------


def test_errors():
  src = _image_source(n=50)
  with pytest.raises(ValueError, match=r"divisible by process_count \* num_local_devices = 2 \* 4 "
                     r"= 8; use a multiple of 8 such as 8 or 16"):
    _pipe(src, 12, num_local_devices=4, process_index=1, process_count=2)
  with pytest.raises(ValueError, match="has 50 examples, fewer than global_batch_size=64"):
    _pipe(src, 64)
  with pytest.raises(ValueError, match="unknown dataset 'no_such_data'; valid names are digits, "
                     "fashion_mnist, mixture2d"):
    data.get_dataset("no_such_data")
  with pytest.raises(ValueError, match="unknown split 'validation'.*train, test"):
    data.get_dataset("digits", "validation")
  with pytest.raises(ValueError, match="random_flip needs an image dataset"):
    _pipe(_index_source(20), 4, random_flip=True)
  with pytest.raises(ValueError, match=r"process_index must lie in \[0, process_count=2\)"):
    _pipe(src, 8, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="global_batch_size must be an integer >= 1"):
    _pipe(src, 0)
  with pytest.raises(ValueError, match="seed must be an integer >= 0"):
    _pipe(src, 8, -1)
  with pytest.raises(ValueError, match="source must be a jdiff.data.Source"):
    data.Pipeline(np.zeros((10, 2)), 2, 0, num_local_devices=1, process_index=0, process_count=1)
  pipe = _pipe(src, 10)
  state = pipe.get_state()
  with pytest.raises(ValueError, match="saved with global_batch_size=5 but this pipeline has "
                     "global_batch_size=10"):
    pipe.set_state(state | {"global_batch_size": 5})
  other = _pipe(_image_source(n=60), 10).get_state()  # another dataset of the same name
  with pytest.raises(ValueError, match="saved with num_examples=60 but this pipeline has "
                     "num_examples=50; resume with the same dataset"):
    pipe.set_state(other)
  with pytest.raises(ValueError, match="saved with dataset='index/train' but this pipeline has "
                     "dataset='img/train'") as e:
    pipe.set_state(_pipe(_index_source(50), 10).get_state())
  assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="keys 'step' and 'seed'"):
    pipe.set_state({"step": 1})
  with pytest.raises(ValueError, match=r"state\['step'\] must be an integer >= 0"):
    pipe.set_state(state | {"step": -1})
  pipe.set_state({"step": 3, "seed": 2, "global_batch_size": 10, "num_examples": 50})  # older form
  assert (pipe.step, pipe.seed) == (3, 2)
  with pytest.raises(ValueError, match="image_size must be an integer >= 1"):
    data.get_dataset("digits", image_size=0)


# --- TFDS array_record (built here without TensorFlow) ---------------------------------------------

_TINY = "jdiff_tiny_test"


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
  """A 2-split TFDS dataset in array_record format, written by a GeneratorBasedBuilder fed PNG
  bytes (TensorFlow is not needed for PNG bytes; numpy image arrays would need it)."""
  tfds = pytest.importorskip("tensorflow_datasets")
  from PIL import Image
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  rng = np.random.default_rng(42)
  rgb = rng.integers(0, 256, (14, 6, 5, 3), dtype=np.uint8)
  gray = rng.integers(0, 256, (14, 6, 5, 1), dtype=np.uint8)
  labels = np.arange(14) % 4

  def png(a):
    buf = io.BytesIO()
    Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(buf, format="PNG")
    return buf.getvalue()

  with tfds.core.registered.skip_registration():  # keep the global registry clean; read from files

    class JdiffTinyTest(tfds.core.GeneratorBasedBuilder):
      VERSION = tfds.core.Version("1.0.0")

      def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(6, 5, 3)),
            "gray": tfds.features.Image(shape=(6, 5, 1)),
            "label": tfds.features.ClassLabel(num_classes=4)}))

      def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 10), "test": self._generate_examples(10, 14)}

      def _generate_examples(self, lo, hi):
        for i in range(lo, hi):
          yield i, {"image": png(rgb[i]), "gray": png(gray[i]), "label": int(labels[i])}

    builder = JdiffTinyTest(data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
  assert builder.name == _TINY
  return data_dir, rgb, gray, labels


def _match_rows(read_images, ref_images):
  """For each read image, the index of the identical reference image (TFDS shuffles records)."""
  flat = {ref_images[i].tobytes(): i for i in range(len(ref_images))}
  return np.array([flat[img.tobytes()] for img in read_images])


def test_tfds_array_record_source(tiny_tfds):
  data_dir, rgb, gray, labels = tiny_tfds
  src = data.get_dataset(_TINY, "train", data_dir=data_dir)
  assert isinstance(src, data.TfdsSource)
  assert (src.num_examples, src.shape, src.num_classes, src.is_image) == (10, (6, 5, 3), 4, True)
  images, labs = src.read(np.arange(10))
  assert images.dtype == np.uint8 and labs.dtype == np.int32
  rows = _match_rows(images, rgb)
  np.testing.assert_array_equal(np.sort(rows), np.arange(10))  # the whole train split, losslessly
  np.testing.assert_array_equal(labs, labels[rows])
  again, _ = src.read(np.array([3, 3, 0]))  # random access, repeats allowed
  np.testing.assert_array_equal(again, images[[3, 3, 0]])

  test = data.get_dataset(_TINY, "test", data_dir=data_dir, image_key="gray")
  timgs, tlabs = test.read(np.arange(4))
  assert test.shape == (6, 5, 1) and timgs.shape == (4, 6, 5, 1)
  rows = _match_rows(timgs, gray)
  np.testing.assert_array_equal(np.sort(rows), np.arange(10, 14))
  np.testing.assert_array_equal(tlabs, labels[rows])

  nolabel = data.get_dataset(_TINY, "test", data_dir=data_dir, label_key=None)
  assert nolabel.num_classes is None
  np.testing.assert_array_equal(nolabel.read(np.arange(4))[1], np.zeros(4))

  small = data.get_dataset(_TINY, "train", data_dir=data_dir, image_size=4)
  simgs, _ = small.read(np.arange(2))
  assert small.shape == (4, 4, 3) and simgs.shape == (2, 4, 4, 3)
  np.testing.assert_array_equal(data.center_crop_resize(images[0], 5), images[0][0:5])

  pipe = data.make_pipeline(_TINY, 4, 0, data_dir=data_dir, num_local_devices=2, process_index=0,
                            process_count=1, random_flip=True)
  bts = _take(pipe, 3)
  pipe.close()
  ref = _pipe(data.ArraySource(images, labs, name="ref", split="train", num_classes=4), 4, 0,
              num_local_devices=2, random_flip=True)
  _assert_batches_equal(bts, _take(ref, 3))  # same stream as the same data held in memory


def test_tfds_errors(tiny_tfds, tmp_path):
  data_dir = tiny_tfds[0]
  with pytest.raises(ValueError, match="image_key"):
    data.get_dataset(_TINY, "train", data_dir=data_dir, image_key="photo")
  with pytest.raises(ValueError, match=r"split 'validation' .*its splits are test, train"):
    data.get_dataset(_TINY, "validation", data_dir=data_dir)
  # A registered TFDS dataset that is not on disk: a clear error with the prepare command; never
  # a download (download=False is the default).
  with pytest.raises(ValueError, match=r"TFDS dataset 'mnist' is not prepared.*tfds build mnist "
                     r"--file_format=array_record"):
    data.get_dataset("mnist", data_dir=str(tmp_path))
