"""Train a diffusion model.

  python train.py --config=configs/fashion_mnist.py --workdir=runs/fashion_mnist \
      [--config.training.num_steps=2000 ...]

With no flags it trains the default config (Fashion-MNIST) into runs/<config name>. A workdir that
already holds a checkpoint is resumed. Multi-host: --multihost (or JAX_COORDINATOR_ADDRESS, or
--coordinator_address/--num_processes/--process_id).
"""
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(_HERE, "configs", "fashion_mnist.py"), "Training config file.",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory (default: runs/<config name>).")
flags.DEFINE_bool("debug", False, "Show the full traceback of user errors.")
flags.DEFINE_integer("cpu_devices", None, "CPU-only hosts: split the CPU into N JAX devices for pmap "
                     "(default: automatic, the count recorded in the workdir when resuming; 1: one "
                     "device; README: Training).")
flags.DEFINE_bool("allow_device_change", False, "Resume a workdir on another device count than it was "
                  "trained on (the run continues, but no longer bit-exactly).")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (cluster auto-detection).")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0, for explicit multi-process.")
flags.DEFINE_integer("num_processes", 1, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", 0, "This process's index (with --coordinator_address).")
FLAGS = flags.FLAGS


def _main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}; flags look like --config.training.num_steps=10")
  from jdiff.utils import cli
  workdir = FLAGS.workdir
  if not workdir:
    name = os.path.splitext(os.path.basename(config_flags.get_config_filename(FLAGS["config"])))[0]
    workdir = os.path.join("runs", name)
  try:
    config = _CONFIG.value
    config.get("data")  # ml_collections defers the error of an unloadable --config file to a first use
  except OSError as e:
    why = [l.strip() for l in str(e).splitlines() if l.strip()][-1]
    raise ValueError(f"cannot load --config={config_flags.get_config_filename(FLAGS['config'])} "
                     f"({why}); pass a config file such as configs/toy2d.py") from None
  # Before anything starts JAX's backends: the per-process batch must split over the devices.
  per_process = config.data.batch_size // max(FLAGS.num_processes, 1)
  from jdiff.experiment import config as config_lib
  # An explicit FSDP mesh (data, fsdp) in one process needs data * fsdp devices.
  fsdp_devices = config_lib.explicit_mesh_devices(config) if FLAGS.num_processes <= 1 else None
  cli.set_cpu_devices(FLAGS.cpu_devices, batch_size=per_process, workdir=os.path.abspath(workdir),
                      needed=fsdp_devices)
  cli.maybe_initialize_distributed(FLAGS.multihost, FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id)
  from jdiff.training import loop
  loop.train(config, workdir, allow_device_change=FLAGS.allow_device_change)


def main(argv):
  from jdiff.utils import cli
  sys.exit(cli.run_main(_main, argv, FLAGS.debug))


if __name__ == "__main__":
  from jdiff.utils.cli import flags_parser
  app.run(main, flags_parser=flags_parser)
