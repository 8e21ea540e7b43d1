"""The MNIST-1D feature net and ``report(..., dataset="mnist1d")``: the same training, cache and
FeatureNet code as the Fashion-MNIST net (tests/test_eval_metrics.py), with a 1-D CNN.

The net trains in seconds (800 steps on 4,000 signals), so it is trained for real, into a temporary
cache directory. Held-out real signals must score like the floor; noise, time-scrambled signals and
requested labels that the signals do not show must score far from it.
"""
import os

import numpy as np
import pytest

from jdiff import eval as jeval
from jdiff.data import mnist1d
from jdiff.eval import evaluate
from jdiff.eval import features as features_lib


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  cache = str(tmp_path_factory.mktemp("jdiff_cache"))
  net = jeval.load_feature_net(cache_dir=cache, verbose=False, dataset="mnist1d")  # trains: no file
  return cache, net


def test_mnist1d_data():
  x, y = mnist1d.load_mnist1d("train")
  xt, yt = mnist1d.load_mnist1d("test")
  assert x.shape == (4000, 40, 1) and x.dtype == np.float32 and y.shape == (4000,) and y.dtype == np.int32
  assert xt.shape == (1000, 40, 1) and set(np.unique(yt)) == set(range(10))
  assert abs(float(np.concatenate([x, xt]).std()) - 1.0) < 1e-3  # standardised over the whole set
  np.random.seed(123)
  mnist1d._make.cache_clear()  # rebuilding re-seeds numpy's global generator inside mnist1d ...
  x2, _ = mnist1d.load_mnist1d("train")
  np.testing.assert_array_equal(x2, x)
  assert np.random.rand() == np.random.RandomState(123).rand()  # ... and the state comes back
  with pytest.raises(ValueError, match="read-only"):
    x2[0, 0, 0] = 1.0
  with pytest.raises(ValueError, match=r"splits \('train', 'test'\), got split='valid'"):
    mnist1d.load_mnist1d("valid")


def test_mnist1d_feature_net_trains_fast_and_caches(trained):
  cache, net = trained
  x, y = mnist1d.load_mnist1d("test")
  assert net.dataset == "mnist1d" and net.test_accuracy >= 0.90  # this seed gives 94.6%
  assert net.train_seconds < 60
  assert net.accuracy(x, y) == pytest.approx(net.test_accuracy, abs=1e-12)
  assert net.features(x[:7]).shape == (7, 128) and net.logits(x[:7]).shape == (7, 10)
  path = features_lib.cache_path(cache, "mnist1d")
  assert net.path == path and os.listdir(cache) == ["mnist1d_classifier_v1.npz"]
  with np.load(path, allow_pickle=False) as f:
    assert str(f["__meta__/architecture"]) == features_lib.SPECS["mnist1d"].architecture
    assert f["params/Conv_0/kernel"].shape == (3, 1, 32)
  loaded = jeval.load_feature_net(cache_dir=cache, train_if_missing=False, dataset="mnist1d")
  np.testing.assert_array_equal(loaded.logits(x[:100]), net.logits(x[:100]))
  assert loaded.test_accuracy == net.test_accuracy
  with pytest.raises(FileNotFoundError, match=r"no usable Fashion-MNIST feature net .* does not exist"):
    jeval.load_feature_net(cache_dir=cache, train_if_missing=False)  # the other dataset's file


def test_report_mnist1d_floor_is_small_next_to_bad_generators(trained):
  _, net = trained
  x, y = mnist1d.load_mnist1d("test")
  n, rng = 500, np.random.default_rng(0)
  fast = {"net": net, "kid_num_subsets": 20, "dataset": "mnist1d"}
  good = jeval.report(x[:n], y[:n], **fast)  # held-out real signals: a perfect generator
  noise = jeval.report(rng.standard_normal((n, 40, 1)).astype(np.float32), **fast)
  scrambled = jeval.report(x[:n][:, rng.permutation(40)], y[:n], **fast)  # right values, wrong order
  shuffled = jeval.report(x[:n], rng.permutation(y[:n]), **fast)  # labels the signals do not show
  floor = good["floor"]
  assert floor["num_samples"] == n and good["reference"] == "mnist1d train (500 signals, seed 0)"
  for r in (noise, scrambled, shuffled):
    assert r["floor"] == floor
  assert floor["accuracy"] >= 0.9 and good["accuracy"] == pytest.approx(floor["accuracy"], abs=0.04)
  assert good["fd"] < 1.5 * floor["fd"]
  assert noise["fd"] > 20 * floor["fd"] and scrambled["fd"] > 20 * floor["fd"]
  kid_floor = abs(floor["kid"]) + 3 * floor["kid_std"]
  assert good["kid"] < kid_floor and noise["kid"] > 10 * kid_floor and scrambled["kid"] > 10 * kid_floor
  assert noise["recall"] < 0.5 * floor["recall"] and scrambled["accuracy"] < 0.5
  assert shuffled["accuracy"] < 0.2 and shuffled["fd"] == good["fd"]
  assert good["noisy"] is None and floor["noisy"] is None and noise["accuracy"] is None
  text = jeval.format_report(good)
  assert "floor" in text and f"N={n}" in text and "accuracy" in text and "noisy" not in text


def test_report_mnist1d_bad_input(trained, tmp_path):
  _, net = trained
  with pytest.raises(ValueError, match=r"must have shape \[N, 40, 1\] \(MNIST-1D, channels last"):
    jeval.report(np.zeros((8, 28, 28, 1), np.float32), dataset="mnist1d", net=net)
  with pytest.raises(ValueError, match="contains NaN or Inf"):
    jeval.report(np.full((8, 40, 1), np.nan, np.float32), dataset="mnist1d", net=net)
  with pytest.raises(ValueError, match="must be a floating-point array"):
    jeval.report(np.zeros((8, 40, 1), np.int32), dataset="mnist1d", net=net)
  with pytest.raises(ValueError, match=r"net is the MNIST-1D feature net but dataset='fashion_mnist'; "
                     r"pass dataset='mnist1d'"):
    jeval.report(np.zeros((8, 28, 28, 1), np.float32), net=net)
  with pytest.raises(ValueError, match=r"no feature net for dataset 'mnist'; .* fashion_mnist, mnist1d"):
    jeval.report(np.zeros((8, 40, 1), np.float32), dataset="mnist")
  with pytest.raises(FileNotFoundError, match=r"load_feature_net\(train_if_missing=True, "
                     r"dataset='mnist1d'\)"):
    jeval.load_feature_net(cache_dir=str(tmp_path), train_if_missing=False, dataset="mnist1d")
