"""Runs train.py's command-line entry point in-process over a list of cases (tests/test_bad_input.py).

train.py and sample.py define the same absl flags (``--workdir``, ``--debug``), so they cannot both be
imported in one process; this worker runs train.py's cases in its own process, re-parsing the flags for
each case exactly as ``app.run`` would (``jdiff.utils.cli.flags_parser``, then ``train.main``), and
prints one JSON line per case: the exit status and what the case wrote to stdout and stderr.

  python tests/_bad_input_train_worker.py CASES.json   # [{"id": ..., "args": [...]}, ...]
"""
import contextlib
import io
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(path):
  os.chdir(REPO)  # --config=configs/... paths are relative to the repository, as in the README
  sys.path.insert(0, REPO)
  import train  # pylint: disable=g-import-not-at-top
  from jdiff.utils import cli  # pylint: disable=g-import-not-at-top
  with open(path) as f:
    cases = json.load(f)
  for case in cases:
    train.FLAGS.unparse_flags()
    for name in [n for n in train.FLAGS if n.startswith("config.")]:
      delattr(train.FLAGS, name)  # --config.* overrides are defined anew by each parse
    sys.argv = ["train.py", *case["args"]]  # ml_collections reads --config.* overrides from sys.argv
    out, err = io.StringIO(), io.StringIO()
    code = "returned"  # train.main always ends with sys.exit
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      try:
        argv = cli.flags_parser(list(sys.argv))
        train.main(argv)
      except SystemExit as e:
        code = e.code
      except BaseException as e:  # pylint: disable=broad-except
        code = f"uncaught {type(e).__name__}: {e}"
    print(json.dumps({"id": case["id"], "code": code, "out": out.getvalue(), "err": err.getvalue()}),
          flush=True)


if __name__ == "__main__":
  main(sys.argv[1])
