"""Dependency-free progress bars on one line (stderr): training steps (step, loss, images/s, ETA) and
sampling batches (samples, images/s, ETA)."""
from __future__ import annotations

import sys
import time


def _fmt_time(s: float) -> str:
  s = int(max(s, 0))
  h, r = divmod(s, 3600)
  m, s = divmod(r, 60)
  return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
  def __init__(self, total: int, initial: int = 0, enabled: bool = True, stream=None,
               min_interval: float = 0.5):
    self.total, self.enabled = total, enabled
    self.stream = stream or sys.stderr
    self.tty = getattr(self.stream, "isatty", lambda: False)()
    self.start_step, self.t0 = initial, None
    self.last_print = 0.0
    self.min_interval = min_interval if self.tty else 10.0

  def rate(self, batch_size: int) -> float:
    """Examples per second since the first step of this run (excludes the first step's compile)."""
    if self.t0 is None or self._step <= self._first:
      return 0.0
    return (self._step - self._first) * batch_size / max(time.time() - self.t0, 1e-9)

  def update(self, step: int, loss: float, batch_size: int) -> None:
    if self.t0 is None:  # start timing after the first (compiling) step
      self.t0, self._first = time.time(), step
    self._step = step
    now = time.time()
    if not self.enabled or (now - self.last_print < self.min_interval and step != self.total):
      return
    self.last_print = now
    r = self.rate(batch_size)
    steps_per_s = r / batch_size if r else 0.0
    eta = (self.total - step) / steps_per_s if steps_per_s else float("nan")
    width = 24
    filled = int(width * step / max(self.total, 1))
    bar = "#" * filled + "-" * (width - filled)
    line = (f"[{bar}] step {step}/{self.total} | loss {loss:.4f} | {r:7.1f} img/s | "
            f"ETA {_fmt_time(eta) if eta == eta else '--:--'}")
    self.stream.write(("\r" + line) if self.tty else (line + "\n"))
    self.stream.flush()

  def close(self) -> None:
    if self.enabled and self.tty:
      self.stream.write("\n")
      self.stream.flush()


class BatchProgress:
  """A one-line progress bar over batches on stderr (images/s and ETA exclude compilation)."""

  def __init__(self, total: int, num: int, enabled: bool = True, stream=None):
    self.total, self.num, self.enabled = total, num, enabled
    self.stream = stream or sys.stderr
    self.tty = getattr(self.stream, "isatty", lambda: False)()
    self.t0 = time.perf_counter()

  def update(self, done: int, samples_done: int) -> None:
    if not self.enabled:
      return
    dt = time.perf_counter() - self.t0
    rate = samples_done / dt if dt > 0 else 0.0
    eta = (self.num - samples_done) / rate if rate else float("nan")
    width = 24
    bar = "#" * int(width * done / self.total) + "-" * (width - int(width * done / self.total))
    eta_s = f"{int(eta) // 60:02d}:{int(eta) % 60:02d}" if eta == eta else "--:--"
    line = (f"[{bar}] batch {done}/{self.total} | {samples_done}/{self.num} samples | "
            f"{rate:7.1f} img/s | ETA {eta_s}")
    self.stream.write(("\r" + line) if self.tty else (line + "\n"))
    if self.tty and done == self.total:
      self.stream.write("\n")
    self.stream.flush()
