"""jdiff.conditions: the condition pytree, its nulls, dropout and per-sample values."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import conditions, guidance


def test_label_kind_values_and_null():
  k = conditions.Label(5)
  assert int(k.null()) == 5
  np.testing.assert_array_equal(k.for_indices(np.arange(12)), np.arange(12) % 5)
  np.testing.assert_array_equal(k.for_indices(np.array([7, 3, 4]), (2, 0)), [0, 0, 2])  # i % len
  with pytest.raises(ValueError, match="label 5 is out of range: the model has 5 classes"):
    k.for_indices(np.arange(3), (1, 5))
  with pytest.raises(ValueError, match="labels is empty"):
    k.for_indices(np.arange(3), ())
  k.check(np.array([0, 5], np.int32), 2)  # the null label is a valid input
  with pytest.raises(ValueError, match="must be integer class labels"):
    k.check(np.zeros(2, np.float32), 2)
  with pytest.raises(ValueError, match=r"shape \[batch\]=\(3,\)"):
    k.check(np.zeros(2, np.int32), 3)


def test_conditions_pytree_from_batch_null_and_check():
  c = conditions.for_model(3)
  assert not conditions.for_model(0) and conditions.for_model(0).from_batch({}) is None
  batch = {"image": np.zeros((4, 2)), "label": np.array([0, 1, 2, 0], np.int32), "index": np.arange(4)}
  cond = c.from_batch(batch)
  assert set(cond) == {"label"} and cond["label"] is batch["label"]
  assert {k: int(v) for k, v in c.null().items()} == {"label": 3}
  c.check(cond, 4)
  with pytest.raises(ValueError, match=r"keys \['label'\]"):
    c.check({"text": cond["label"]}, 4)
  with pytest.raises(ValueError, match="is unconditional"):
    conditions.for_model(0).check(cond, 4)
  with pytest.raises(ValueError, match="no field 'label'"):
    c.from_batch({"image": batch["image"]})
  with pytest.raises(ValueError, match="share a name"):
    conditions.Conditions([conditions.Label(2), conditions.Label(3)])


def test_dropout_is_per_global_index_and_all_or_nothing():
  c = conditions.for_model(4)
  idx = jnp.arange(4096)
  cond = {"label": idx % 4}
  key = jax.random.PRNGKey(3)
  out = np.asarray(c.drop(cond, key, idx, 0.25)["label"])
  dropped = out == 4
  assert abs(dropped.mean() - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 4096)
  np.testing.assert_array_equal(out[~dropped], np.asarray(idx % 4)[~dropped])
  # The decision for example i depends on i only (any split or order of the batch drops the same ones).
  perm = np.random.default_rng(0).permutation(4096)
  again = np.asarray(c.drop({"label": (idx % 4)[perm]}, key, idx[perm], 0.25)["label"])
  np.testing.assert_array_equal(again == 4, dropped[perm])


def test_null_pytree_drives_classifier_free_guidance():
  """guidance.classifier_free contrasts cond with the kinds' nulls: w = 0 is the conditional model, and
  the unconditional branch sees exactly the null label."""
  seen = []

  def model(params, x, t, cond):
    seen.append(cond)
    return x * 0 + cond["label"][:, None].astype(jnp.float32)

  c = conditions.for_model(7)
  guided = guidance.classifier_free(model, c.null())
  x = jnp.zeros((3, 2))
  cond = {"label": jnp.array([1, 2, 3], jnp.int32)}
  np.testing.assert_allclose(guided(None, x, 0.5, cond, 0.0), np.array([[1, 1], [2, 2], [3, 3]]))
  np.testing.assert_array_equal(seen[-1]["label"], [1, 2, 3, 7, 7, 7])
  np.testing.assert_allclose(guided(None, x, 0.5, cond, 1.0)[:, 0], 2 * np.array([1, 2, 3]) - 7)
