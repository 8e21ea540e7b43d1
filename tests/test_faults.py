"""Faults injected into a checkpoint save: a full disk (ENOSPC) while orbax writes the step, or while jdiff
writes its checksums, ends training with one clear error, and the previous checkpoint stays intact and
restorable."""
import errno
import os
import re

import pytest

from jdiff.experiment import checkpoint as ckpt_lib
from jdiff.training import loop
from jdiff.utils import cli, files
from test_reliability import _config, check_checkpoints


def _enospc(path):
  return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))


def _in_step_4(path):
  """A path inside checkpoint step 4, its temporary directory or the committed one."""
  return re.search(r"[/\\]checkpoints[/\\]4(\.orbax-checkpoint-tmp)?[/\\]", os.fspath(path)) is not None


@pytest.mark.parametrize("where", ["orbax", "checksums"])
def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys, where):
  if where == "orbax":  # orbax's JSON items and metadata, written through etils.epath
    from etils.epath import gpath
    real = gpath._GPath.write_text

    def write_text(self, *a, **k):
      if _in_step_4(self):
        raise _enospc(self)
      return real(self, *a, **k)

    monkeypatch.setattr(gpath._GPath, "write_text", write_text)
  else:  # jdiff's checksums of the step
    real = files.write_json

    def write_json(path, *a, **k):
      if _in_step_4(path) and path.endswith(ckpt_lib.CHECKSUMS):
        raise _enospc(path)
      return real(path, *a, **k)

    monkeypatch.setattr(files, "write_json", write_json)

  wd = str(tmp_path / "w")
  # As train.py runs it: one "error:" line, exit status 2.
  status = cli.run_main(lambda argv: loop.train(_config(4, ckpt_every=2), wd, log=print), ["train.py"],
                        False)
  err = capsys.readouterr().err.strip().splitlines()
  assert status == 2, err[-20:]
  assert re.match(r"error: could not save checkpoint step 4 in .* \(No space left on device\); free "
                  r"some space; the previous checkpoint \(step 2\) is intact", err[-1]), err[-1]
  monkeypatch.undo()

  assert check_checkpoints(wd) == [2]  # step 4 was not committed; step 2 verifies
  assert open(os.path.join(wd, loop.LOCK_FILE)).read() == ""  # the lock was released
  exp = loop.Experiment(_config(4, ckpt_every=2))
  ck = ckpt_lib.Checkpointer(wd)
  step, state, data_state, _ = ck.restore_latest(exp.init_state(), exp.meta(exp.init_state()))
  ck.close()
  assert step == 2 and int(state.step) == 2 and data_state == exp.pipeline.get_state() | {"step": 2}
