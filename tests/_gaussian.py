"""What the few-step tests share: the exact denoiser of Gaussian data, and CLI runners."""
import contextlib
import io
import json
import os
import subprocess
import sys
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def exact_x0(schedule, s: float):
  """E[x0 | x_t] for N(0, s^2 I) data on any schedule, as an x0 model ``fn(params, x, t, cond)``."""
  def fn(params, x, t, cond):
    del params, cond
    a, sig = schedule.alpha_sigma(t)
    return x * (a * s * s / (a * a * s * s + sig * sig))[:, None]
  return fn


def cli(script, args):
  """``python SCRIPT ARGS`` in the repository, on the CPU."""
  return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, cwd=REPO,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)


def start_train_cases(cases, tmp_dir, timeout=240):
  """Starts ``train.py ARGS`` for each ``(id, args)`` of ``cases``, in order, in ONE background process
  (``tests/_bad_input_train_worker.py``: the flags re-parsed per case as ``app.run`` would): one JAX
  start-up and one compilation cache for all of them, instead of a process each. Returns ``collect()``:
  it waits for the process (once) and returns ``{id: result}`` with ``returncode``, ``stdout`` and
  ``stderr`` like :func:`cli`'s; ``collect.stop()`` kills the process if nobody collected."""
  spec = os.path.join(str(tmp_dir), "train_cases.json")
  with open(spec, "w") as f:
    json.dump([{"id": i, "args": list(a)} for i, a in cases], f)
  proc = subprocess.Popen(["timeout", "-k", "5", str(timeout), sys.executable,
                           os.path.join(REPO, "tests", "_bad_input_train_worker.py"), spec],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  out = {}

  def collect():
    if not out:
      stdout, stderr = proc.communicate(timeout=timeout + 10)
      for line in stdout.splitlines():
        if line.startswith("{"):
          d = json.loads(line)
          out[d["id"]] = types.SimpleNamespace(returncode=d["code"], stdout=d["out"], stderr=d["err"])
      assert proc.returncode == 0 and len(out) == len(cases), (proc.returncode, stderr[-3000:])
    return out

  def stop():
    if proc.poll() is None:
      proc.kill()
      proc.communicate()

  collect.stop = stop
  return collect


def train_cases(cases, tmp_dir, timeout=240):
  """:func:`start_train_cases`, waiting for the results: ``{id: result}``."""
  return start_train_cases(cases, tmp_dir, timeout)()


def sample_in_process(args):
  """sample.py's main in this process (absl flags re-parsed; no JAX start-up, so seconds faster than
  :func:`cli`): a result with ``returncode``, ``stdout`` and ``stderr`` like :func:`cli`'s."""
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  import sample  # pylint: disable=g-import-not-at-top
  from jdiff.utils import cli as jcli  # pylint: disable=g-import-not-at-top
  sample.FLAGS.unparse_flags()
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    sample.FLAGS(["sample.py", "--noprogress", *args])
    status = jcli.run_main(sample._main, ["sample.py"], False)  # pylint: disable=protected-access
  return types.SimpleNamespace(returncode=status, stdout=out.getvalue(), stderr=err.getvalue())


def one_error_line(r):
  """The one ``error:`` line of a CLI run that failed with exit status 2 (asserts there is exactly one)."""
  lines = [l for l in r.stderr.strip().splitlines() if l.startswith("error:")]
  assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
  return lines[0]


def logged_losses(workdir):
  """The losses a train.py run logged in ``<workdir>/metrics.jsonl``."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l)["loss"] for l in f]
