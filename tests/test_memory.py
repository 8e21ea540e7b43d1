"""release_free_memory gives freed heap back to the OS (what keeps a long training run's RSS flat)."""
import pytest

from jdiff.utils import memory


def _rss_mib():
  with open("/proc/self/status") as f:
    return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024.0


def test_release_free_memory_returns_freed_heap_to_the_os():
  if not memory.release_free_memory():
    pytest.skip("no glibc malloc_trim here")
  # 200 MiB in 100 KB blocks (below malloc's mmap threshold: they live in the heap), then one block on
  # top that stays, so free() cannot shrink the heap by itself.
  blocks = [bytes(100_000) + b"x" for _ in range(2000)]
  top = bytes(100_000) + b"y"
  before = _rss_mib()
  del blocks
  held = _rss_mib()
  assert held > before - 50, (before, held)  # glibc kept the freed memory
  assert memory.release_free_memory()
  after = _rss_mib()
  assert after < held - 100, (held, after)
  assert top.endswith(b"y")


def test_fix_mmap_threshold():
  if not memory.release_free_memory():
    pytest.skip("no glibc here")
  assert memory.fix_mmap_threshold(1 << 20)
  # Blocks of 2 MiB are now mmapped: freeing them returns the memory at once, with no trim.
  blocks = [bytes(2 << 20) + b"x" for _ in range(100)]
  held = _rss_mib()
  del blocks
  assert _rss_mib() < held - 150
