"""Reproducibility and compilation of sampling from a checkpoint (jdiff.generation, sample.py).

Sample i must be the same whatever the batch size, the device count (1 or 2 forced host devices, in a
subprocess) or how a run is split with start_index: the noise bit-identical; the sample bit-identical
for the same per-device batch layout, otherwise equal up to float32 rounding. Measured on the tiny UNet
below (samples up to ~2.6 in magnitude; DDPM, 3 steps, classifier-free guidance): batch 1 vs batch 64
differ by at most 1.4e-6 (XLA's CPU convolutions sum in another order at batch 1); rows shifted inside a
batch of 64 (split runs) by at most 1.3e-6 (measured with jaxlib 0.10.2); the same
rows of the same batch and 2 devices x 1 vs 1 device x 1 are bit-identical.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import _sample_models as sm
from jdiff import grids, guidance, sampling
from jdiff import generation as gen
from jdiff.generation import restore

REPO = sm.REPO
BASE = dict(sampler="ddpm", steps=3, guidance=1.0, seed=5, save_noise=True)
# Float32 rounding of a few UNet evaluations at another batch size (measured max 1.4e-6 on samples of
# magnitude up to ~2.6); 2e-5 leaves margin for other CPUs' kernels.
ATOL = 2e-5


@pytest.fixture(scope="module")
def restored(tmp_path_factory):
  wd = sm.write_workdir(str(tmp_path_factory.mktemp("repro") / "wd"), sm.unet_config(), (28, 28, 1), 10)
  return restore.restore(wd)


@pytest.fixture(scope="module")
def reference(restored):
  """64 samples in one batch of 64 on one device."""
  return gen.generate(restored, gen.Settings(num=64, batch_size=64, **BASE), progress=False)


def _run(restored, **kw):
  return gen.generate(restored, gen.Settings(**{**BASE, **kw}), progress=False)


def test_batch_size_one_vs_64(restored, reference):
  one = _run(restored, num=3, start_index=30, batch_size=1)
  np.testing.assert_array_equal(one.x_init, reference.x_init[30:33])  # the noise: bit-identical
  np.testing.assert_array_equal(one.indices, [30, 31, 32])
  np.testing.assert_array_equal(one.labels, reference.labels[30:33])
  diff = float(np.max(np.abs(one.samples - reference.samples[30:33])))
  print(f"batch 1 vs 64: max |diff| {diff:.3g} (samples up to {np.abs(reference.samples).max():.2f})")
  assert diff <= ATOL
  assert float(np.max(np.abs(reference.samples[30] - reference.samples[31]))) > 0.1


def test_split_runs_and_shifted_rows(restored, reference):
  """--start_index splits: the same batch size (64), rows at other positions. The noise is bit-identical;
  the samples equal up to float32 rounding (jaxlib 0.10.2's CPU convolutions round the last rows of a
  batch differently: the row that is last in one run and inside the batch in the other differs by 1.3e-6,
  the others are bit-identical)."""
  a = _run(restored, num=30, start_index=0, batch_size=64)
  b = _run(restored, num=34, start_index=30, batch_size=64)
  np.testing.assert_array_equal(np.concatenate([a.x_init, b.x_init]), reference.x_init)
  np.testing.assert_array_equal(b.indices, np.arange(30, 64))
  samples = np.concatenate([a.samples, b.samples])
  diff = float(np.max(np.abs(samples - reference.samples)))
  print(f"split runs vs one run: max |diff| {diff:.3g}")
  assert diff <= ATOL
  np.testing.assert_array_equal(samples[:30], reference.samples[:30])  # the same rows of the same batch


def test_two_devices(restored, reference, tmp_path):
  """2 forced host devices: 32 per device vs 64 on one; 1 per device vs batch 1 on one device."""
  runs = [dict(BASE, num=64, batch_size=64), dict(BASE, num=3, start_index=30, batch_size=2)]
  out = str(tmp_path / "two.npz")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  r = subprocess.run(["timeout", "-k", "5", "240", sys.executable,
                      os.path.join(REPO, "tests", "_sample_repro_worker.py"), REPO,
                      restored.workdir, out, json.dumps(runs)],
                     capture_output=True, text=True, env=env, cwd=REPO)
  assert r.returncode == 0, r.stderr[-3000:]
  assert json.loads(r.stdout.strip().splitlines()[-1])["devices"] == 2
  two = np.load(out, allow_pickle=False)
  np.testing.assert_array_equal(two["init_0"], reference.x_init)
  np.testing.assert_array_equal(two["init_1"], reference.x_init[30:33])
  d64 = float(np.max(np.abs(two["x_0"] - reference.samples)))
  one = _run(restored, num=3, start_index=30, batch_size=1)
  d1 = float(np.max(np.abs(two["x_1"] - one.samples)))
  print(f"2 devices x 32 vs 1 x 64: max |diff| {d64:.3g}; 2 x 1 vs 1 x 1: {d1:.3g}")
  assert d64 <= ATOL
  assert d1 == 0.0  # the same per-device layout (one sample per device): bit-identical


class _CompileCounter:
  """Records the XLA backend compilations (jax.monitoring; the event carries the compiled function's
  name) while active."""

  def __init__(self):
    self.active, self.names = False, []
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event, duration, **kwargs):
    if self.active and event == "/jax/core/compile/backend_compile_duration":
      self.names.append(kwargs.get("fun_name"))

  @property
  def count(self):
    return len(self.names)

  def __enter__(self):
    self.active, self.names = True, []
    return self

  def __exit__(self, *exc):
    self.active = False


_compiles = _CompileCounter()  # one listener for the module (registered listeners stay registered)


@pytest.fixture(scope="module", autouse=True)
def _no_persistent_cache():
  """A program loaded from the persistent compilation cache (tests/conftest.py) is not a backend
  compilation, so the counts below would miss it: this module compiles everything itself. (JAX
  decides once per process whether the cache is used; ``reset_cache`` makes it decide again.)"""
  from jax._src import compilation_cache  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_enable_compilation_cache", False)
  compilation_cache.reset_cache()
  yield
  jax.config.update("jax_enable_compilation_cache", True)
  compilation_cache.reset_cache()


def test_no_recompilation_when_values_change(restored):
  """Seed, guidance scale, eta, grid values (grid name, SDEdit strength) are arguments of the compiled
  program: changing them compiles nothing and changes the samples. The time grids are built inside the
  counted window too (each generate() call builds its own); they are new values of the grid kinds and
  step count warmed up before. In the same window one recompilation is forced (a new batch shape): the
  counter must see exactly that one, so a counter that sees nothing cannot pass."""
  counter = _compiles
  schedule = restored.schedule
  base = dict(num=4, batch_size=4, sampler="ddim", steps=4, guidance=1.0, seed=0,
              hparams={"eta": 0.0}, grid="uniform_t")
  variants = [dict(seed=1), dict(guidance=3.0), dict(hparams={"eta": 0.8}), dict(grid="karras"),
              dict(grid="uniform_logsnr")]
  settings = [gen.Settings(**{**base, **v}) for v in [{}] + variants]
  # Building a grid runs eager jnp ops (the schedule's logsnr / t_of_sigma_tilde), which compile small
  # kernels once per op and shape: warm them for every grid kind at this step count with other values
  # (t_max=0.5) than the grids built in the window (t_max=1; SDEdit's t_max=0.3 and 0.7).
  # test_grid_construction_compiles_once_per_kind_and_step_count counts those kernels.
  for name in grids.GRIDS:
    grids.get_grid(name, schedule, 4, t_max=0.5)
  first = gen.generate(restored, settings[0], progress=False)
  x_in = np.asarray(first.samples[:1])
  edit = [gen.Settings(num=4, batch_size=4, sampler="ddpm", steps=4, seed=0, strength=s)
          for s in (0.3, 0.7)]
  e0 = gen.generate(restored, edit[0], x_in, progress=False)
  assert first.compile_seconds > 0 and e0.compile_seconds > 0

  per_run = []
  with counter:
    outs = []
    for s in settings[1:]:
      outs.append(gen.generate(restored, s, progress=False))
      per_run.append(counter.count)
    e1 = gen.generate(restored, edit[1], x_in, progress=False)
    per_run.append(counter.count)
    # The instrument: a new batch shape must recompile the program, once.
    forced = gen.generate(restored, gen.Settings(**{**base, "num": 2, "batch_size": 2}),
                          progress=False)
    per_run.append(counter.count)
  assert per_run == [0] * (len(variants) + 1) + [1], (per_run, counter.names)
  assert forced.compile_seconds > 0
  assert all(o.compile_seconds == 0 for o in outs + [e1])
  for v, o in zip(variants, outs):
    assert float(np.max(np.abs(o.samples - first.samples))) > 1e-3, v
  assert float(np.max(np.abs(e1.samples - e0.samples))) > 1e-3
  # Same seed and indices at another batch size: the same samples (the forced run did run).
  np.testing.assert_allclose(forced.samples, first.samples[:2], atol=ATOL)


def test_grid_construction_compiles_once_per_kind_and_step_count(restored):
  """Grids are built on the host with eager jnp ops (jdiff.grids: the schedule's logsnr,
  t_of_logsnr, sigma_tilde, t_of_sigma_tilde; jnp.asarray of the result). Those compile small kernels,
  once per op and shape: a step count never built before compiles some, new values of a kind and step
  count already built compile none."""
  counter = _compiles
  schedule = restored.schedule
  steps = 37  # a step count no other test builds grids for (eager kernels are cached per process)
  with counter:
    first = {name: grids.get_grid(name, schedule, steps) for name in grids.GRIDS}
  compiled = list(counter.names)
  with counter:
    again = {name: grids.get_grid(name, schedule, steps, t_max=0.61) for name in grids.GRIDS}
  print(f"grids for a new step count: {len(compiled)} kernels {sorted(set(compiled))}")
  assert compiled  # measured: 22 in a fresh process (linear schedule; most are scalar ops)
  assert counter.count == 0, counter.names
  for name in grids.GRIDS:
    assert float(first[name][0]) == 1.0 and float(again[name][0]) == pytest.approx(0.61)


def test_matches_the_library_sampler(restored):
  """sample.py's program computes what jdiff.sampling.make_sample_fn computes for the same seed,
  indices, labels and guided model (Ho & Salimans 2022 with the null label num_classes)."""
  s = gen.Settings(num=4, batch_size=4, sampler="ddim", steps=4, guidance=1.0, seed=0,
                   hparams={"eta": 0.5}, grid="uniform_t", start_index=10, clip_x0=False)
  got = gen.generate(restored, s, progress=False)  # (x0 clipping: tests/test_sample_cli.py)
  guided = guidance.classifier_free(restored.model_fn, restored.num_classes)
  model = lambda p, x, t, c: guided(p, x, t, c, 1.0)
  fn = sampling.make_sample_fn(model, restored.schedule, restored.parametrization, "ddim", 4)
  idx = np.arange(10, 14, dtype=np.int32)
  want = fn(restored.params, (4, 28, 28, 1), grids.uniform_t(4), jax.random.PRNGKey(0),
            np.asarray(idx % 10, np.int32), indices=idx, eta=0.5)
  np.testing.assert_allclose(got.samples, np.asarray(want.x), atol=ATOL)
  assert got.nfe_per_batch == int(want.nfe) == 4
