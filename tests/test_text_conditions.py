"""jdiff.conditions for text-to-image: captions as token ids, precomputed embeddings with a mask, and a
super-resolution stage's low-resolution image with its noise-conditioning augmentation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import conditions, guidance, schedules


def _caption_kind():
  table = {"a": 1, "bag": 2, "sneaker": 3}

  def encode(texts):
    rows = np.zeros((len(texts), 4), np.int32)
    for r, t in enumerate(texts):
      ids = [table[w] for w in t.split()]
      rows[r, :len(ids)] = ids
    return rows

  return conditions.Caption(4, 4, encode, defaults=["a bag"],
                            decode=lambda ids: " ".join({v: k for k, v in table.items()}[int(i)]
                                                        for i in ids if i))


def test_caption_kind_prompts_cycle_by_global_index_and_the_null_is_the_empty_caption():
  k = _caption_kind()
  assert int(k.null()) == 0
  rows = k.for_indices(np.array([5, 2, 7]), ["a bag", "a sneaker"])
  np.testing.assert_array_equal(rows, [[1, 3, 0, 0], [1, 2, 0, 0], [1, 3, 0, 0]])  # prompt i % 2
  np.testing.assert_array_equal(k.for_indices(np.arange(2)), [[1, 2, 0, 0]] * 2)  # the defaults
  assert k.decode(rows[0]) == "a sneaker"
  np.testing.assert_array_equal(conditions.Caption(4, 4).for_indices(np.arange(2)), np.zeros((2, 4)))
  k.check(np.zeros((2, 4), np.int32), 2)
  with pytest.raises(ValueError, match="caption token id 4 is out of range"):
    k.check(np.full((2, 4), 4, np.int32), 2)
  with pytest.raises(ValueError, match=r"must have shape \[2, 4\]"):
    k.check(np.zeros((2, 5), np.int32), 2)
  with pytest.raises(ValueError, match="must be integers"):
    k.check(np.zeros((2, 4), np.float32), 2)
  with pytest.raises(ValueError, match="prompts is empty"):
    k.for_indices(np.arange(2), np.zeros((0, 4), np.int32))
  with pytest.raises(ValueError, match="no tokenizer"):
    conditions.Caption(4, 4).for_indices(np.arange(2), ["a bag"])


def test_caption_dropout_rate_and_null_like_keeps_what_is_never_dropped():
  k = _caption_kind()
  lr = conditions.LowRes((2, 2, 1), 2, schedules.get_schedule("flow"), 0.5)
  c = conditions.Conditions([k, lr, conditions.LowResLevel(0.1)])
  n = 4096
  cond = {"caption": jnp.tile(jnp.array([[1, 2, 0, 0]], jnp.int32), (n, 1)),
          "low_res": jnp.ones((n, 2, 2, 1)), "low_res_t": jnp.full((n,), 0.3)}
  out = c.drop(cond, jax.random.PRNGKey(0), jnp.arange(n), 0.1)
  dropped = np.all(np.asarray(out["caption"]) == 0, axis=1)
  assert abs(dropped.mean() - 0.1) < 4 * np.sqrt(0.1 * 0.9 / n)  # the caption dropout rate
  np.testing.assert_array_equal(out["low_res"], cond["low_res"])  # never dropped
  null = c.null_like(cond)
  assert not np.asarray(null["caption"]).any()
  np.testing.assert_array_equal(null["low_res"], cond["low_res"])
  np.testing.assert_array_equal(null["low_res_t"], cond["low_res_t"])
  assert c.droppable and not conditions.Conditions([lr]).droppable


def test_guidance_with_a_callable_null_contrasts_the_caption_only():
  seen = []

  def model(params, x, t, cond):
    seen.append(cond)
    return x * 0 + cond["caption"][:, :1].astype(jnp.float32) + cond["low_res"][:, 0, 0]

  lr = conditions.LowRes((1, 1, 1), 2, schedules.get_schedule("flow"), 0.5)
  c = conditions.Conditions([_caption_kind(), lr, conditions.LowResLevel(0.1)])
  cond = {"caption": jnp.array([[2, 0, 0, 0]], jnp.int32), "low_res": jnp.full((1, 1, 1, 1), 5.0),
          "low_res_t": jnp.zeros((1,))}
  guided = guidance.classifier_free(model, c.null_like)
  out = guided(None, jnp.zeros((1, 1)), 0.5, cond, 0.0)
  np.testing.assert_allclose(out, [[7.0]])  # w = 0: the conditional model
  np.testing.assert_allclose(guided(None, jnp.zeros((1, 1)), 0.5, cond, 2.0), [[7.0 + 2 * 2.0]])
  np.testing.assert_array_equal(seen[-1]["low_res"][:, 0, 0, 0], [5.0, 5.0])


def test_text_embedding_and_mask_kinds():
  c = conditions.for_model(0, {"length": 3, "dim": 2})
  assert sorted(c.kinds) == ["text_emb", "text_mask"]
  emb = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
  rows = c.for_indices(np.array([3, 4]), {"text_emb": emb, "text_mask": np.array([[1, 1, 0]])})
  np.testing.assert_array_equal(rows["text_emb"], emb[[1, 0]])
  np.testing.assert_array_equal(rows["text_mask"], [[1, 1, 0], [1, 1, 0]])
  null = c.for_indices(np.arange(2))  # nothing given: the null (no text)
  assert not null["text_emb"].any() and not null["text_mask"].any()
  with pytest.raises(ValueError, match=r"shape \[n, 3, 2\]"):
    c.for_indices(np.arange(2), {"text_emb": np.zeros((1, 3, 5))})
  with pytest.raises(ValueError, match="0 \\(padding\\) and 1 \\(token\\) only"):
    c.check({"text_emb": emb, "text_mask": np.full((2, 3), 2, np.int32)}, 2)


def test_low_res_is_the_average_pool_and_its_augmentation_is_the_forward_process():
  sched = schedules.get_schedule("flow")
  kind = conditions.LowRes((2, 2, 1), 2, sched, 0.5)
  c = conditions.Conditions([kind, conditions.LowResLevel(0.25)])
  image = jnp.arange(32, dtype=jnp.float32).reshape(2, 4, 4, 1)
  batch = {"image": image, "index": jnp.array([10, 11])}
  lr = c.from_batch(batch)["low_res"]
  np.testing.assert_allclose(lr[0, 0, 0, 0], np.mean([0, 1, 4, 5]))
  key = jax.random.PRNGKey(1)
  cond = c.for_training(batch, key, batch["index"], 0.0)
  s = np.asarray(cond["low_res_t"])
  assert s.shape == (2,) and np.all((s >= 0) & (s <= 0.5)) and s[0] != s[1]
  # sampling: the given level, and z = alpha(s) low_res + sigma(s) eps exactly (eps ~ N(0, 1) per index)
  given = c.for_indices(np.array([10, 11]), {"low_res": np.asarray(lr), "low_res_t": 0.25})
  z = c.noised(given, key, jnp.array([10, 11]), train=False)
  eps = (np.asarray(z["low_res"]) - 0.75 * np.asarray(lr)) / 0.25
  assert np.all(np.abs(eps) < 6) and np.std(eps) > 0.2
  z1 = c.noised({k: v[1:] for k, v in given.items()}, key, jnp.array([11]), train=False)
  np.testing.assert_allclose(z1["low_res"][0], z["low_res"][1], rtol=1e-6)  # per global index
  with pytest.raises(ValueError, match="needs the low-resolution images it refines"):
    kind.for_indices(np.arange(2))
  with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
    conditions.LowResLevel(1.5)
