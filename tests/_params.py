"""Test helpers shared by the model tests: parameters of a model's shapes drawn with numpy, and a
relative difference."""
import jax
import jax.numpy as jnp
import numpy as np


def random_params(init, *args, seed=0):
  """Parameters with the shapes ``init`` would give, drawn with numpy (no init compilation).

  Kernels ~ N(0, 1/fan_in) (fan_in: all axes but the last), norm scales ~ 1 + N(0, 0.1^2), biases ~
  N(0, 0.1^2), embeddings ~ N(0, 1).
  """
  shapes = jax.eval_shape(init, jax.random.PRNGKey(0), *args)
  rng = np.random.default_rng(seed)

  def draw(path, s):
    name = str(path[-1].key)
    z = rng.standard_normal(s.shape)
    if name == "kernel":
      z = z / np.sqrt(np.prod(s.shape[:-1]))
    elif name == "scale":
      z = 1.0 + 0.1 * z
    elif name == "bias":
      z = 0.1 * z
    return jnp.asarray(z, s.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def rel_diff(a, b):
  """``max |a - b| / max |b|``."""
  return float(jnp.abs(a - b).max() / jnp.abs(b).max())
