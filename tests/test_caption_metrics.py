"""Caption accuracy (``jdiff.eval.caption_metrics``): places split off canvases, per-place accuracy
against the items a caption asks for, per-place Fréchet distance, and the input checks.

The default run scores with an exact "oracle" classifier (it knows the class of every Fashion-MNIST test
image by its pixels), so the metric's bookkeeping is checked exactly: real canvases score 1, canvases
with swapped halves 0. The per-place FD runs through an untrained FashionCNN (its features are a
deterministic function of the pixels; the plumbing does not depend on the weights), as in
tests/test_evaluation.py. The project's trained classifier (``get_feature_net``: about a minute of
training on first use, cached) is the slow test, like tests/test_eval_metrics.py's training test."""
import numpy as np
import pytest

from _fmnist import needs_fmnist
from jdiff import data
from jdiff.eval import caption_metrics as cm
from jdiff.eval import features as features_lib



class OracleNet:
  """``predict`` of FeatureNet's interface that looks the class of each image up by its pixels."""

  def __init__(self, src):
    self.table = {img.tobytes(): int(c) for img, c in zip(src.data, src.labels)}
    self.calls = 0

  def predict(self, images):
    x = np.asarray(images)
    assert x.dtype == np.float32 and x.shape[1:] == (28, 28, 1) and np.abs(x).max() <= 1.0
    self.calls += 1
    back = np.round((x + 1.0) * 127.5).astype(np.uint8)
    return np.array([self.table.get(b.tobytes(), -1) for b in back], np.int32)


@pytest.fixture(scope="module")
def heldout():
  return data.get_dataset("fashion_mnist_pairs", "heldout")


@pytest.fixture(scope="module")
def oracle():
  return OracleNet(data.get_dataset("fashion_mnist", "test"))


def _swapped(canvases):
  return np.concatenate([canvases[:, :, 28:], canvases[:, :, :28]], axis=2)


def test_split_places():
  x = np.arange(2 * 28 * 84 * 1).reshape(2, 28, 84, 1)
  places = cm.split_places(x)
  assert len(places) == 3 and all(p.shape == (2, 28, 28, 1) for p in places)
  np.testing.assert_array_equal(places[2], x[:, :, 56:])
  np.testing.assert_array_equal(np.concatenate(cm.split_places(x, 3), axis=2), x)
  with pytest.raises(ValueError, match="have width 60, not a multiple of 28"):
    cm.split_places(np.zeros((2, 28, 60, 1)))
  with pytest.raises(ValueError, match="width 84 but 2 place.*need width 56.*pass num_places=3"):
    cm.split_places(x, 2)
  with pytest.raises(ValueError, match=r"must be canvases \[N, 28, 28 \* places, C\]"):
    cm.split_places(np.zeros((28, 56, 1)))


@needs_fmnist
def test_caption_accuracy_is_exact_with_an_oracle(heldout, oracle):
  canvases, items = heldout.data, heldout.items
  calls = oracle.calls
  r = cm.caption_accuracy(canvases, items, oracle)
  assert r == {"accuracy": 1.0, "per_place": [1.0, 1.0], "n": 10_000, "num_places": 2}
  assert oracle.calls == calls + 1  # all places of all canvases in one batch
  s = cm.caption_accuracy(_swapped(canvases), items, oracle)  # right classes, wrong places
  assert s["accuracy"] == 0.0 and s["per_place"] == [0.0, 0.0]
  mixed = canvases.copy()
  mixed[:2500, :, 28:] = canvases[2500:5000, :, 28:]  # another right item where its class differs
  differs = (items[:2500, 1] != items[2500:5000, 1]).mean()
  m = cm.caption_accuracy(mixed, items, oracle)
  assert m["per_place"][0] == 1.0 and m["per_place"][1] == pytest.approx(1 - 0.25 * differs)
  assert m["accuracy"] == m["per_place"][1]
  as_float = canvases[:300].astype(np.float32) / 127.5 - 1.0  # model units give the same answer
  np.testing.assert_array_equal(cm.predict_places(as_float, 2, oracle), items[:300])


@needs_fmnist
def test_caption_accuracy_single_items(oracle):
  src = data.get_dataset("fashion_mnist_captions", "test")
  r = cm.caption_accuracy(src.data[:500], src.labels[:500], oracle)  # items [N] for single items
  assert r["accuracy"] == 1.0 and r["num_places"] == 1
  wrong = (src.labels[:500] + 1) % 10
  assert cm.caption_accuracy(src.data[:500], wrong[:, None], oracle)["accuracy"] == 0.0


class _NeverCalled:
  def predict(self, images):
    raise AssertionError("bad inputs must be refused before the classifier runs")


def test_caption_accuracy_input_errors():
  oracle = _NeverCalled()
  x = np.zeros((4, 28, 56, 1), np.uint8)
  items = np.zeros((4, 2), np.int32)
  with pytest.raises(ValueError, match="have width 50, not a multiple of 28"):
    cm.caption_accuracy(np.zeros((4, 28, 50, 1), np.uint8), items, oracle)
  with pytest.raises(ValueError, match=r"items must be integers \[4, places\].*got int32 of shape "
                     r"\(3, 2\)"):
    cm.caption_accuracy(x, items[:3], oracle)
  with pytest.raises(ValueError, match=r"items name 3 place\(s\) per sample but the canvases of width "
                     r"56 hold 2"):
    cm.caption_accuracy(x, np.zeros((4, 3), np.int32), oracle)
  with pytest.raises(ValueError, match=r"items must be integers"):
    cm.caption_accuracy(x, items.astype(np.float32), oracle)
  with pytest.raises(ValueError, match=r"must be classes in \[0, 10\), got values in \[0, 10\]"):
    cm.caption_accuracy(x, items + np.array([[0, 10]]), oracle)
  with pytest.raises(ValueError, match="holds no images"):
    cm.caption_accuracy(np.zeros((0, 28, 56, 1), np.uint8), np.zeros((0, 2), np.int32), oracle)


@pytest.fixture(scope="module")
def untrained_net():
  """A FashionCNN with random weights (He-scaled normal kernels, zero biases) drawn in numpy from the
  parameter shapes: Flax's own init runs op by op and takes ~9 s on a busy 2-core machine."""
  import jax
  shapes = jax.eval_shape(features_lib.FashionCNN().init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 28, 28, 1), np.float32))
  rng = np.random.default_rng(0)

  def draw(s):
    if len(s.shape) == 1:
      return np.zeros(s.shape, np.float32)
    return (rng.standard_normal(s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1]))).astype(np.float32)

  return features_lib.FeatureNet(jax.tree_util.tree_map(draw, shapes))


@needs_fmnist
def test_fd_per_place_measures_each_place(heldout, untrained_net):
  real = heldout.data[:600]
  same = cm.fd_per_place(real, real, untrained_net)
  assert same["n"] == same["n_real"] == 600 and len(same["per_place"]) == 2
  assert max(same["per_place"]) < 1e-6 * max(1.0, abs(same["fd"])) + 1e-6
  blank = real.copy()
  blank[:, :, 28:] = 0  # the right place left empty, the left one untouched
  r = cm.fd_per_place(blank, real, untrained_net)
  assert r["per_place"][0] < 1e-6 and r["per_place"][1] > 1e-3
  assert r["fd"] == pytest.approx(np.mean(r["per_place"]))
  with pytest.raises(ValueError, match="must be canvases of the same shape"):
    cm.fd_per_place(real, real[:, :, :28], untrained_net)
  with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):  # the net's own check of floats
    cm.caption_accuracy(real.astype(np.float32), heldout.items[:600], untrained_net)


@pytest.mark.slow  # the project's classifier: trained (about a minute) and cached on first use
@needs_fmnist
def test_caption_accuracy_with_the_project_net(heldout):
  net = features_lib.get_feature_net("fashion_mnist")
  test = data.get_dataset("fashion_mnist_pairs", "test")
  for src in (test, heldout):
    r = cm.caption_accuracy(src.data, src.items, net)
    assert r["accuracy"] > 0.75 and min(r["per_place"]) > 0.85
    assert cm.caption_accuracy(_swapped(src.data), src.items, net)["accuracy"] < 0.05
  singles = data.get_dataset("fashion_mnist_captions", "test")
  r = cm.caption_accuracy(singles.data, singles.items, net)
  assert r["accuracy"] == pytest.approx(net.test_accuracy, abs=1e-9)
