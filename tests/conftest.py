"""Start JAX's backends once, before any test: the CLIs' automatic CPU device count
(``jdiff.utils.cli.set_cpu_devices``) then leaves this process on its one CPU device whichever test
runs first. Tests that need several devices run in subprocesses.

The subprocesses (``train.py``, ``sample.py``, workers) share one persistent JAX compilation cache in a
directory of this test session, removed at its end: many of them compile the same tiny programs, and a
cache hit turns a ~9 s train-step compile into a load (measured: the default ``train.py`` end-to-end run
of ``test_train_cli`` 24.8 s cold, 11.3 s warm). The variables are set after ``import jax``, so this
process itself does not use the cache (``test_sample_repro`` counts its compilations).

The test command runs the files on two worker processes (pytest-xdist, ``-n auto --dist loadfile`` in
pyproject.toml; a file's tests stay on one worker, so its module fixtures are built once): on 2 cores
the default run took 12:16 instead of ~16 min, since compilation is single-threaded. Workers inherit the
cache directory from the controller process, which removes it at the end. The heaviest files are
handed out first (``_HEAVY_FIRST``, from ``--durations``), so no long file starts last."""
import os
import shutil
import tempfile

import jax

jax.devices()

_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="jdiff_tests_jax_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


# Files by measured total time, heaviest first (summed from `pytest --durations=100`, December 2026); the rest follow in
# their usual order.
_HEAVY_FIRST = ("test_beyond_images", "test_distillation", "test_reflow", "test_text_diffusion",
                "test_train_cli", "test_unet1d", "test_sample_repro", "test_consistency", "test_samplers",
                "test_dit", "test_sharded", "test_training", "test_conditional", "test_sample_cli",
                "test_models", "test_grid_fit", "test_distributed", "test_evaluation", "test_reliability",
                "test_flow", "test_bad_input", "test_categorical", "test_token_transformer")


def pytest_xdist_auto_num_workers(config):
  """``-n auto``: one worker per core, at most 4 (each worker holds its own JAX runtime, 1-4 GB)."""
  del config
  return max(1, min(os.cpu_count() or 1, 4))


def pytest_collection_modifyitems(session, config, items):
  del session, config
  rank = {name: i for i, name in enumerate(_HEAVY_FIRST)}
  key = lambda item: rank.get(item.module.__name__.rpartition(".")[2], len(rank))
  items[:] = sorted(items, key=key)  # stable: a file's tests keep their order


def pytest_sessionfinish(session, exitstatus):
  if _CACHE is not None:
    shutil.rmtree(_CACHE, ignore_errors=True)
