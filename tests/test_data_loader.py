"""RoundLoader: shapes, per-replica orders, epochs, saving and restoring."""

import gc
import json
import zlib

import numpy as np
import pytest

from fedjax_lab import data


def _index_source(n=50):
  """Item i has tokens [i, i]: batches show which examples were read."""
  return data.LMSource(
      np.arange(n, dtype=np.uint8)[:, None].repeat(2, axis=1),
      np.zeros(n, np.int32), ["all"])


def _ids(batch):
  return batch["tokens"][..., 0]


def _loader(source, shards, **kwargs):
  kwargs = {"batch_size": 4, "inner_steps": 3, "seed": 7, **kwargs}
  return data.RoundLoader(source, shards, **kwargs)


def test_shapes_and_shards():
  source = _index_source()
  shards = data.partition(source, 4, method="iid")
  with _loader(source, shards) as loader:
    for _ in range(3):
      batch = next(loader)
      assert batch["tokens"].shape == (4, 3, 4, 2)
      assert batch["tokens"].dtype == np.int32
      for r in range(4):
        assert set(_ids(batch)[r].ravel()) <= set(shards[r])


def test_each_epoch_reads_the_shard_once_in_a_new_order():
  source = _index_source(24)
  shards = data.partition(source, 2, method="iid")  # 12 per replica.
  with _loader(source, shards, batch_size=2, inner_steps=3) as loader:
    ids = np.concatenate([_ids(next(loader)).reshape(2, -1) for _ in range(4)],
                         axis=1)  # 24 = two epochs per replica.
  for r in range(2):
    first, second = ids[r, :12], ids[r, 12:]
    np.testing.assert_array_equal(np.sort(first), shards[r])
    np.testing.assert_array_equal(np.sort(second), shards[r])
    assert not np.array_equal(first, second)
  assert not np.array_equal(np.argsort(ids[0, :12]), np.argsort(ids[1, :12]))


def test_tiny_shard_wraps_many_epochs():
  source = _index_source(5)
  shards = [np.array([0, 1]), np.array([2, 3, 4])]
  with _loader(source, shards, batch_size=5, inner_steps=2) as loader:
    ids = _ids(next(loader)).reshape(2, -1)
  assert np.bincount(ids[0], minlength=5)[:2].tolist() == [5, 5]
  assert set(ids[1]) == {2, 3, 4}


@pytest.mark.parametrize("prefetch", [0, 2])
def test_restore_in_new_loader_gives_same_next_batches(prefetch):
  source = _index_source()
  shards = data.partition(source, 3, method="iid")
  with _loader(source, shards, prefetch=prefetch) as loader:
    for _ in range(5):
      next(loader)
    state = json.loads(json.dumps(loader.get_state()))
    expected = [next(loader) for _ in range(6)]
  with _loader(source, shards, prefetch=prefetch) as fresh:
    next(fresh)  # A position to be overwritten.
    fresh.set_state(state)
    for want in expected:
      np.testing.assert_array_equal(next(fresh)["tokens"], want["tokens"])
  assert state["round"] == 5


def test_prefetch_does_not_change_the_stream():
  source = _index_source()
  shards = data.partition(source, 2, method="iid")
  with _loader(source, shards, prefetch=0) as a, _loader(source, shards,
                                                         prefetch=3) as b:
    for _ in range(4):
      np.testing.assert_array_equal(next(a)["tokens"], next(b)["tokens"])
    assert a.get_state() == b.get_state()
    assert a.data_seconds > 0 and b.data_seconds > 0


def test_replica_ids_slice_the_same_stream_and_share_state():
  source = _index_source()
  shards = data.partition(source, 4, method="iid")
  with _loader(source, shards) as everyone, _loader(
      source, shards, replica_ids=[3, 1]) as mine:
    for _ in range(2):
      full, part = next(everyone), next(mine)
      np.testing.assert_array_equal(part["tokens"], full["tokens"][[3, 1]])
    state = everyone.get_state()
  with _loader(source, shards, replica_ids=[2]) as other:
    other.set_state(state)
    np.testing.assert_array_equal(next(other)["tokens"][0],
                                  _round(source, shards, 2)["tokens"][2])


def _round(source, shards, k):
  """Round k of a fresh loader over all replicas."""
  with _loader(source, shards, prefetch=0) as loader:
    for _ in range(k):
      next(loader)
    return next(loader)


def test_set_state_rejects_other_settings():
  source = _index_source()
  shards = data.partition(source, 2, method="iid")
  with _loader(source, shards) as loader:
    state = loader.get_state()
  with _loader(source, shards, seed=8) as other, pytest.raises(ValueError,
                                                               match="seed"):
    other.set_state(state)
  reshuffled = data.partition(source, 2, method="iid", seed=5)
  with _loader(source, reshuffled) as other, pytest.raises(ValueError,
                                                           match="shards"):
    other.set_state(state)


def test_bad_arguments():
  source = _index_source()
  with pytest.raises(ValueError, match="non-empty"):
    _loader(source, [np.arange(3), np.array([], np.int64)])
  with pytest.raises(ValueError, match="replica_ids"):
    _loader(source, [np.arange(3)], replica_ids=[1])


def test_producer_errors_reach_the_caller():
  source = _index_source(5)
  with _loader(source, [np.array([0, 99])]) as loader, pytest.raises(IndexError):
    next(loader)


def test_unclosed_loader_is_collected_and_its_thread_ends():
  source = _index_source()
  loader = _loader(source, data.partition(source, 2))
  next(loader)
  thread = loader._thread  # pylint: disable=protected-access
  del loader
  gc.collect()
  thread.join(timeout=5)
  assert not thread.is_alive()


def test_eval_batches_first_n_in_order():
  source = _index_source(10)
  batches = list(data.eval_batches(source, batch_size=3))
  assert len(batches) == 3  # The partial fourth batch is dropped.
  np.testing.assert_array_equal(_ids(batches[1]), [3, 4, 5])
  assert len(list(data.eval_batches(source, batch_size=3, num_batches=2))) == 2


def test_stream_and_state_match_the_documented_rule():
  # RoundLoader's per-replica order, from its docstring alone: epoch e of
  # replica r is shard_r[default_rng([seed, r, e]).permutation(n_r)], the
  # epochs laid end to end, H·B per round. PopulationLoader relies on it too.
  source = _index_source(23)
  shards = [np.array([0, 3, 4, 9, 11, 20, 22]), np.arange(12, 20),
            np.array([1, 2])]
  h, b, seed = 3, 2, 7
  stream = [np.concatenate([s[np.random.default_rng([seed, r, e]).permutation(
      len(s))] for e in range(40)]) for r, s in enumerate(shards)]
  with _loader(source, shards, batch_size=b, inner_steps=h, seed=seed,
               replica_ids=[2, 0]) as loader:
    for k in range(6):
      got = _ids(next(loader))
      for slot, r in enumerate([2, 0]):
        np.testing.assert_array_equal(
            got[slot].ravel(), stream[r][k * h * b:(k + 1) * h * b])
    assert loader.get_state() == {
        "version": 1, "round": 6, "seed": seed, "batch_size": b,
        "inner_steps": h, "num_replicas": 3,
        "shards_crc32": zlib.crc32(b"".join(s.astype(np.int64).tobytes()
                                            for s in shards))}
