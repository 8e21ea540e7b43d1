"""release_free_memory gives freed heap back to the OS (what keeps a long training run's RSS flat).

Each check runs in a fresh interpreter: in the test process the heap is already gigabytes with free chunks
of every size (a CI run failed on that), and glibc serves a new block from a free chunk before it grows the
heap or mmaps, so what the checks measure would depend on every test that ran before.
"""
import os
import subprocess
import sys
import textwrap

import pytest

from jdiff.utils import memory

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PRELUDE = """
from jdiff.utils import memory
def rss():
  with open("/proc/self/status") as f:
    return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024.0
"""


def _run(body: str):
  if not memory.release_free_memory():
    pytest.skip("no glibc malloc_trim here")
  code = _PRELUDE + textwrap.dedent(body)
  r = subprocess.run([sys.executable, "-c", code], cwd=_REPO, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]


def test_release_free_memory_returns_freed_heap_to_the_os():
  # 200 MiB in 100 KB blocks (below malloc's mmap threshold: they live in the heap), then one block on
  # top that stays, so free() cannot shrink the heap by itself.
  _run("""
    blocks = [bytes(100_000) + b"x" for _ in range(2000)]
    top = bytes(100_000) + b"y"
    before = rss()
    del blocks
    held = rss()
    assert held > before - 50, (before, held)  # glibc kept the freed memory
    assert memory.release_free_memory()
    after = rss()
    assert after < held - 100, (held, after)
    assert top.endswith(b"y")
  """)


def test_fix_mmap_threshold():
  # Blocks of 2 MiB are mmapped once the threshold is pinned at 1 MiB, so freeing them returns the memory
  # at once, with no trim. Without the pin, glibc's dynamic threshold rises to 2 MiB after the first free
  # and the next round of blocks stays in the heap
  # under the newest block, which is still in use (measured: 0-2 MiB returned without the pin).
  _run("""
    assert memory.fix_mmap_threshold(1 << 20)
    keep = []
    for _ in range(2):
      blocks = [bytes(2 << 20) + b"x" for _ in range(100)]
      keep.append(blocks.pop())  # the newest block stays: in the heap, free() alone could not shrink it
      held = rss()
      del blocks
      dropped = held - rss()
    assert dropped > 150, dropped
  """)
