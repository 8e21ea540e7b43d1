"""Start JAX's backends once, before any test: the CLIs' automatic CPU device count
(``jdiff.utils.cli.set_cpu_devices``) then leaves this process on its one CPU device whichever test
runs first. Tests that need several devices run in subprocesses.

The subprocesses (``train.py``, ``sample.py``, workers) share one persistent JAX compilation cache,
``.pytest_cache/jax_compilation_cache`` under the checkout (ignored by git; delete it to reclaim the
space): many of them compile the same tiny programs, and a cache hit turns a ~9 s train-step compile
into a load (measured: the default ``train.py`` end-to-end run of ``test_train_cli`` 24.8 s cold,
11.3 s warm). It is kept between runs, so the slow-marked run after the default one (``.ci/run``)
starts warm; entries are keyed by the program, jax version and flags, so a stale entry is never used.
``JAX_COMPILATION_CACHE_DIR`` set by the caller wins.

The test command runs the files on two worker processes (pytest-xdist, ``-n auto --dist loadfile`` in
pyproject.toml; a file's tests stay on one worker, so its module fixtures are built once): compilation
is single-threaded, so two workers use both cores (measured on this 2-core machine, fresh clone, cold
cache, in ``.ci/run``, stop 28: 14:47 for 1,114 tests). Workers inherit the cache directory from the
controller process. The heaviest files are handed out first (``_HEAVY_FIRST``, from ``--durations``),
so no long file starts last."""
import os

import jax

jax.devices()

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache",
                        "jax_compilation_cache")
  os.makedirs(_CACHE, exist_ok=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# The test processes themselves use it too: tests build the same tiny programs again from new Python
# closures (a train step per test, a sampler per restored workdir), which the in-memory jit caches miss
# and the persistent one hits (measured: four files, 185 s -> 168 s cold); the slow run then finds the
# default run's programs. test_sample_repro turns it off for its compilation counts.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")))


# Files by measured total time, heaviest first (summed from `pytest --durations=100`, December 2026); the rest follow in
# their usual order.
_HEAVY_FIRST = ("test_samplers", "test_text_to_image", "test_reflow", "test_distillation", "test_sample_cli",
                "test_beyond_images", "test_dit", "test_conditional", "test_sampling", "test_sample_repro",
                "test_consistency", "test_train_cli", "test_likelihood", "test_unet1d", "test_flow",
                "test_models", "test_text_diffusion", "test_grids", "test_text_models", "test_bad_input",
                "test_sampler_errors", "test_training", "test_evaluation", "test_grid_fit", "test_sharded",
                "test_point_clouds", "test_losses", "test_editing", "test_reliability")


def pytest_xdist_auto_num_workers(config):
  """``-n auto``: one worker per core, at most 4 (each worker holds its own JAX runtime, 1-4 GB)."""
  del config
  return max(1, min(os.cpu_count() or 1, 4))


def pytest_collection_modifyitems(session, config, items):
  del session, config
  rank = {name: i for i, name in enumerate(_HEAVY_FIRST)}
  key = lambda item: rank.get(item.module.__name__.rpartition(".")[2], len(rank))
  items[:] = sorted(items, key=key)  # stable: a file's tests keep their order
