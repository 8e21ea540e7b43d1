"""Start JAX's backends once, before any test: the CLIs' automatic CPU device count
(``jdiff.utils.cli.set_cpu_devices``) then leaves this process on its one CPU device whichever test
runs first. Tests that need several devices run in subprocesses.

The subprocesses (``train.py``, ``sample.py``, workers) share one persistent JAX compilation cache in a
directory of this test session, removed at its end: many of them compile the same tiny programs, and a
cache hit turns a ~9 s train-step compile into a load (measured: the default ``train.py`` end-to-end run
of ``test_train_cli`` 24.8 s cold, 11.3 s warm). The variables are set after ``import jax``, so this
process itself does not use the cache (``test_sample_repro`` counts its compilations)."""
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


def pytest_sessionfinish(session, exitstatus):
  if _CACHE is not None:
    shutil.rmtree(_CACHE, ignore_errors=True)
