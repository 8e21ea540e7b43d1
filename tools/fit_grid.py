#!/usr/bin/env python
"""Fit a K-step time grid through the sampler (``jdiff.grid_fit``) and write it as a grid file.

  python tools/fit_grid.py --workdir=runs/fashion_mnist --steps=5   # -> <workdir>/grids/dpmpp_2m_5.json
  python sample.py --workdir=runs/fashion_mnist --grid=runs/fashion_mnist/grids/dpmpp_2m_5.json
  python tools/fit_grid.py --toy=cosine --steps=10 --out=/tmp/grid.json      # the exact mixture denoiser

Draws ``--num_train`` and ``--num_heldout`` starting noises (seed ``--seed``, not sample.py's default 0),
solves the probability-flow ODE from each once (adaptive, ``--rtol``/``--atol``), measures every built-in
grid, then runs ``--iters`` Adam steps on the grid (minibatches of ``--batch_size`` noises) from the best
built-in grid (``--init``). The file holds the times, the sampler, steps, the schedule, the SHA-256 of the
parameters it was fit for (EMA unless ``--raw``) and the train / held-out distances; sample.py and eval.py
refuse it for any other parameters. ``--toy=SCHEDULE`` fits for ``jdiff.toy.default_mixture()`` under
that schedule (for the API and benchmarks: no workdir takes it).
"""
import os
import sys

from absl import app, flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
  sys.path.insert(0, _REPO)

from jdiff.utils import cli  # pylint: disable=wrong-import-position

flags.DEFINE_string("workdir", None, "A train.py workdir (its newest checkpoint).")
flags.DEFINE_string("checkpoint", None, "A checkpoint directory <workdir>/checkpoints/<step>.")
flags.DEFINE_bool("raw", False, "Fit for the raw parameters instead of their EMA.")
flags.DEFINE_string("toy", None, "Instead of a workdir: the exact Gaussian-mixture denoiser "
                    "(jdiff.toy.default_mixture) under this schedule (linear, cosine, edm, ...).")
flags.DEFINE_list("steps", None, "Steps K of the grid (required); several (5,10) fit one grid each "
                  "from the same ODE solutions.")
flags.DEFINE_string("sampler", "dpmpp_2m", "Deterministic sampler the grid is fit through.")
flags.DEFINE_string("init", "best", "Starting grid: uniform_t, uniform_logsnr, karras or best (the "
                    "built-in grid closest to the ODE solutions on the training noises).")
flags.DEFINE_integer("num_train", 64, "Training noises.")
flags.DEFINE_integer("num_heldout", 32, "Held-out noises (only measured).")
flags.DEFINE_integer("batch_size", 16, "Noises per Adam step and per compiled call.")
flags.DEFINE_integer("iters", 40, "Adam steps.")
flags.DEFINE_float("lr", 0.1, "Adam learning rate (cosine-decayed to a tenth).")
flags.DEFINE_integer("seed", 1, "Noise seed (noise i from fold_in(PRNGKey(seed), i), as sample.py).")
flags.DEFINE_float("rtol", 1e-4, "Relative tolerance of the reference ODE solve.")
flags.DEFINE_float("atol", 1e-4, "Absolute tolerance of the reference ODE solve.")
flags.DEFINE_bool("clip_x0", None, "Clip x0_hat as sampling does (default: as sample.py resolves it).")
flags.DEFINE_string("out", None, "Output grid file (default <workdir>/grids/<sampler>_<steps>.json); "
                    "with several --steps it must contain {steps}.")
flags.DEFINE_bool("debug", False, "Show the full traceback of user errors.")
FLAGS = flags.FLAGS


def _toy_records(steps, log):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import jdiff  # pylint: disable=import-outside-toplevel
  from jdiff import grid_fit, sampling  # pylint: disable=import-outside-toplevel
  schedule = jdiff.get_schedule(FLAGS.toy)
  mixture = jdiff.toy.default_mixture()
  model_fn = mixture.model_fn(schedule)
  key = jax.random.PRNGKey(FLAGS.seed)
  n, m = FLAGS.num_train, FLAGS.num_heldout
  x_train = sampling.initial_noise(key, jnp.arange(n), (mixture.dim,), schedule)
  x_held = sampling.initial_noise(key, jnp.arange(n, n + m), (mixture.dim,), schedule) if m else None
  records, refs = [], None
  for k in steps:
    g = grid_fit.fit_grid(lambda p: jdiff.make_denoiser(model_fn, p, schedule, "x0"), mixture, schedule,
                          x_train, x_held, steps=k, sampler=FLAGS.sampler, init=FLAGS.init,
                          iters=FLAGS.iters, lr=FLAGS.lr, batch_size=FLAGS.batch_size, seed=FLAGS.seed,
                          rtol=FLAGS.rtol, atol=FLAGS.atol, references=refs, log=log)
    refs = g.references
    records.append(grid_fit.make_record(g, schedule, grid_fit.params_hash(mixture),
                                        {"toy": "jdiff.toy.default_mixture()", "noise_seed": FLAGS.seed}))
  return records


def _main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}; flags look like --steps=5")
  if not FLAGS.steps:
    raise ValueError("--steps is required (the number of steps of the grid to fit, or several: 5,10)")
  try:
    steps = [int(v) for v in FLAGS.steps]
  except ValueError:
    raise ValueError(f"--steps must be integers such as 5 or 5,10, got {','.join(FLAGS.steps)}") from None
  if bool(FLAGS.toy) == bool(FLAGS.workdir or FLAGS.checkpoint):
    raise ValueError("pass a model: --workdir (or --checkpoint), or --toy=SCHEDULE")
  if FLAGS.toy and not FLAGS.out:
    raise ValueError("--toy needs --out=FILE.json")
  if FLAGS.out and len(steps) > 1 and "{steps}" not in FLAGS.out:
    raise ValueError("with several --steps, --out must contain {steps} (one file per step count)")
  cli.set_cpu_devices(1)  # one jitted program on one device (XLA's intra-op threads use the cores)
  from jdiff.generation import flags as gflags  # pylint: disable=import-outside-toplevel
  from jdiff.generation import grid_fit as gen_grid_fit  # pylint: disable=import-outside-toplevel
  from jdiff.generation import restore  # pylint: disable=import-outside-toplevel

  def log(msg):
    print(msg, flush=True)

  if FLAGS.toy:
    outs = [gflags.writable_output(FLAGS.out.format(steps=k)) for k in steps]
    records = _toy_records(steps, log)
  else:
    restored = restore.restore(FLAGS.workdir, FLAGS.checkpoint, use_ema=not FLAGS.raw)
    pattern = FLAGS.out or os.path.join(restored.workdir, "grids", FLAGS.sampler + "_{steps}.json")
    outs = [gflags.writable_output(pattern.format(steps=k)) for k in steps]
    log(f"{restored.which} parameters of step {restored.step} from {restored.checkpoint_dir}")
    records = gen_grid_fit.fit_model(
        restored, steps=steps, sampler=FLAGS.sampler, init=FLAGS.init, num_train=FLAGS.num_train,
        num_heldout=FLAGS.num_heldout, batch_size=FLAGS.batch_size, iters=FLAGS.iters, lr=FLAGS.lr,
        seed=FLAGS.seed, rtol=FLAGS.rtol, atol=FLAGS.atol, clip_x0=FLAGS.clip_x0, log=log)
  for out, record in zip(outs, records):
    record["command"] = " ".join(["python", "tools/fit_grid.py"] + sys.argv[1:])
    gen_grid_fit.write(out, record)
    d = record["distance"]
    log(f"{record['steps']} steps: grid {', '.join(f'{t:.4g}' for t in record['ts'])}")
    held = (f"; held-out {d['init']['heldout']:.4g} -> {d['heldout']:.4g}" if d["heldout"] is not None
            else "")
    log(f"  distance to the ODE solution: train {d['init']['train']:.4g} -> {d['train']:.4g}{held} "
        f"(from {d['init']['grid']})")
    log(f"  wrote {out}")


def main(argv):
  sys.exit(cli.run_main(_main, argv, FLAGS.debug))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser)
