"""Runs ``python train.py FLAGS...`` in this process (absl ``app.run`` with jdiff's flags parser, as
train.py's ``__main__`` does) and records what this process's input pipeline read, for
tests/test_distributed.py.

  python tests/_distributed_train_worker.py RECORD.json [train.py flags...]

The real pipeline is observed, not re-computed: ``jdiff.data.Pipeline.batch_at`` (the one source of
training batches) is wrapped so that each call records the dataset indices it passes to
``Source.read``, with the pipeline's own ``process_index`` / ``process_count`` and the positions in the
global batch it returns. After training, RECORD.json also gets ``jax.process_index()``,
``jax.process_count()`` and the device counts as this process saw them, and train.py's exit status.
"""
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
  record_path, flags = sys.argv[1], sys.argv[2:]
  os.chdir(REPO)  # --config=configs/... is relative to the repository, as in the README
  sys.path.insert(0, REPO)
  sys.argv = ["train.py", *flags]  # ml_collections reads --config.* overrides from sys.argv
  import numpy as np  # pylint: disable=g-import-not-at-top
  from absl import app  # pylint: disable=g-import-not-at-top

  import train  # pylint: disable=g-import-not-at-top
  from jdiff.data import pipeline  # pylint: disable=g-import-not-at-top
  from jdiff.utils import cli  # pylint: disable=g-import-not-at-top

  reads = []
  real_batch_at = pipeline.Pipeline.batch_at

  def batch_at(self, step):
    seen = []
    real_read = self.source.read
    self.source.read = lambda indices: (seen.append(np.asarray(indices).tolist()),
                                        real_read(indices))[1]
    try:
      batch = real_batch_at(self, step)
    finally:
      del self.source.read  # the instance attribute; the class's read is back
    reads.append({"step": int(step), "read": seen, "positions": batch["index"].reshape(-1).tolist(),
                  "process_index": self.process_index, "process_count": self.process_count})
    return batch

  pipeline.Pipeline.batch_at = batch_at

  def run(argv):
    code = 0
    try:
      train.main(argv)
    except SystemExit as e:
      code = e.code
    import jax  # pylint: disable=g-import-not-at-top
    record = {"exit": code, "process_index": jax.process_index(),
              "process_count": jax.process_count(), "device_count": jax.device_count(),
              "local_device_count": jax.local_device_count(), "reads": reads}
    with open(record_path, "w") as f:
      json.dump(record, f)
    print(json.dumps({k: v for k, v in record.items() if k != "reads"}), flush=True)
    sys.exit(code)

  app.run(run, flags_parser=cli.flags_parser)


if __name__ == "__main__":
  main()
