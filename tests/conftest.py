"""Start JAX's backends once, before any test: the CLIs' automatic CPU device count
(``jdiff.utils.cli.set_cpu_devices``) then leaves this process on its one CPU device whichever test
runs first. Tests that need several devices run in subprocesses."""
import jax

jax.devices()
