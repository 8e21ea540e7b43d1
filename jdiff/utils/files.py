"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Every file jdiff writes outside orbax goes to a temporary file in the target directory first and is
renamed onto its path (``os.replace`` is atomic on POSIX), with the usual ``0666 & ~umask``
permissions. ``write_all`` does that for several files at once and renames only when all are complete.
``FileLock``: an exclusive lock file that records its owner and tells a stale lock from a held one.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from typing import Mapping

import numpy as np


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _write_temp(path: str, data: bytes) -> str:
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
  except BaseException:
    os.remove(tmp)
    raise
  return tmp


def write_all(files: Mapping[str, bytes]) -> None:
  """Write every ``{path: bytes}`` atomically; the renames happen only once all temporary files are
  complete, so an error leaves none of them changed."""
  temps = {}
  try:
    for path, data in files.items():
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      temps[path] = _write_temp(path, data)
    for path, tmp in temps.items():
      os.replace(tmp, path)
  finally:
    for tmp in temps.values():
      if os.path.exists(tmp):
        os.remove(tmp)


def write_bytes(path: str, data: bytes) -> str:
  write_all({os.fspath(path): data})
  return os.fspath(path)


def write_text(path: str, text: str) -> str:
  return write_bytes(path, text.encode())


def write_json(path: str, obj, indent: int = 1) -> str:
  return write_text(path, json.dumps(obj, indent=indent) + "\n")


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  return buf.getvalue()


def write_npz(path: str, arrays: Mapping[str, np.ndarray]) -> str:
  return write_bytes(path, npz_bytes(arrays))


def sha256(path: str) -> str:
  """The SHA-256 hex digest of a file, read in 1 MiB blocks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


class LockHeld(Exception):
  """``FileLock.acquire`` found the lock held; ``owner`` is the holder's record (or None)."""

  def __init__(self, path: str, owner):
    super().__init__(f"{path} is locked by {owner}")
    self.path, self.owner = path, owner


class FileLock:
  """An exclusive advisory lock (``flock``) on ``path``, held until ``release()`` or until the process
  ends, however it ends (the kernel drops a dead process's locks). While held, the file holds the
  owner's record (JSON); ``release`` empties it, so a non-empty file that nobody locks was left by a
  process that died holding it: a stale lock, which ``acquire`` takes over and reports."""

  def __init__(self, path: str):
    self.path = os.fspath(path)
    self._fd = None

  def _read_owner(self, fd: int):
    try:
      text = os.pread(fd, 1 << 16, 0).decode(errors="replace").strip()
    except OSError:
      return None
    if not text:
      return None
    try:
      owner = json.loads(text)
    except ValueError:
      return {"record": text[:200]}
    return owner if isinstance(owner, dict) else {"record": text[:200]}

  def acquire(self, owner: dict):
    """Take the lock without waiting and record ``owner`` in the file. Returns the record of a stale
    owner found there (None if the lock was free and clean). Raises ``LockHeld`` if another process
    (or another ``FileLock`` of this process) holds it, and ``OSError`` if the filesystem cannot lock."""
    import fcntl
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # less the umask
    try:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        raise LockHeld(self.path, self._read_owner(fd)) from None
      stale = self._read_owner(fd)
      os.ftruncate(fd, 0)
      os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
      os.fsync(fd)
    except BaseException:
      os.close(fd)
      raise
    self._fd = fd
    return stale

  def release(self) -> None:
    if self._fd is None:
      return
    import fcntl
    try:
      os.ftruncate(self._fd, 0)  # clean release: an empty file is a free lock
      fcntl.flock(self._fd, fcntl.LOCK_UN)
    finally:
      os.close(self._fd)
      self._fd = None
