"""Populations: client sampler, E/B local work, PopulationLoader, client state.

(Over 400 lines on purpose: the population's pieces, tested together against
one sampler.)
"""

import json

import numpy as np
import pytest

from fedjax_lab import data


class _IndexSource:
  """Item i is {'idx': i + 1}: batches show which examples were read (0 = pad)."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def get_batch(self, indices):
    return {"idx": np.asarray(indices, np.int64) + 1}


def _read(batch):
  return batch["idx"] - 1  # -1 where the loader padded with zeros.


def _uneven_shards(sizes, seed=0):
  """Disjoint shards of the given sizes over a shuffled arange(sum(sizes))."""
  perm = np.random.default_rng(seed).permutation(sum(sizes))
  return [np.sort(s) for s in np.split(perm, np.cumsum(sizes)[:-1])]


# ---- ClientSampler ----


@pytest.mark.parametrize("kind", data.SAMPLING_KINDS)
def test_sampler_distinct_sorted_and_pure_in_seed_and_round(kind):
  sizes = np.arange(1, 31)
  sampler = data.ClientSampler(30, 7, kind=kind, sizes=sizes, seed=3)
  later = [sampler.sample(r) for r in (9, 2, 5)]
  fresh = data.ClientSampler(30, 7, kind=kind, sizes=sizes, seed=3)
  for r, ids in zip((9, 2, 5), later):
    assert ids.dtype == np.int64 and ids.shape == (7,)
    assert np.all(np.diff(ids) > 0)  # Sorted and without replacement.
    assert ids.min() >= 0 and ids.max() < 30
    np.testing.assert_array_equal(ids, fresh.sample(r))  # Call order is moot.
  other = data.ClientSampler(30, 7, kind=kind, sizes=sizes, seed=4)
  assert any(not np.array_equal(sampler.sample(r), other.sample(r))
             for r in range(5))
  assert any(not np.array_equal(sampler.sample(r), sampler.sample(r + 1))
             for r in range(5))


def test_uniform_sampler_reaches_everyone_evenly():
  n, m, rounds = 50, 5, 2000
  sampler = data.ClientSampler(n, m, seed=0)
  counts = np.zeros(n)
  first_all = None
  for r in range(rounds):
    counts[sampler.sample(r)] += 1
    if first_all is None and counts.min() > 0:
      first_all = r
  assert first_all is not None and first_all < 200
  # Each client is in a round with probability m / n = 0.1: 200 expected,
  # binomial sd 13.4; 5 sd either side.
  assert np.all(np.abs(counts - rounds * m / n) < 67)


def test_every_client_every_round_when_m_equals_n():
  sampler = data.ClientSampler(6, 6, seed=11)
  for r in range(4):
    np.testing.assert_array_equal(sampler.sample(r), np.arange(6))


def test_weighted_sampler_one_per_round_follows_sizes():
  sizes = np.array([1, 2, 3, 4])
  sampler = data.ClientSampler(4, 1, kind="weighted", sizes=sizes, seed=0)
  rounds = 4000
  counts = np.bincount(np.concatenate([sampler.sample(r) for r in range(rounds)]),
                       minlength=4)
  # p = [.1, .2, .3, .4]; binomial sd <= 31 in 4000 draws; 4 sd tolerance.
  np.testing.assert_allclose(counts / rounds, sizes / sizes.sum(), atol=0.031)


def test_weighted_sampler_without_replacement_inclusion_probabilities():
  # Successive sampling of 2 out of 4 with p = [.1, .2, .3, .4]: i is in the
  # round if drawn first, or second after some j:
  # P(i) = p_i + sum_{j != i} p_j · p_i / (1 - p_j), worked by hand below.
  p = np.array([0.1, 0.2, 0.3, 0.4])
  expected = np.array([
      p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(4) if j != i)
      for i in range(4)])
  assert expected.sum() == pytest.approx(2.0)
  sampler = data.ClientSampler(4, 2, kind="weighted", sizes=p * 10, seed=1)
  rounds = 4000
  counts = np.zeros(4)
  for r in range(rounds):
    ids = sampler.sample(r)
    assert len(set(ids.tolist())) == 2
    counts[ids] += 1
  np.testing.assert_allclose(counts / rounds, expected, atol=0.032)


def test_sampler_errors_name_the_field():
  with pytest.raises(ValueError, match="train.num_clients"):
    data.ClientSampler(0, 1)
  with pytest.raises(ValueError, match="train.clients_per_round"):
    data.ClientSampler(5, 6)
  with pytest.raises(ValueError, match="train.clients_per_round"):
    data.ClientSampler(5, 0)
  with pytest.raises(ValueError, match="train.sampling"):
    data.ClientSampler(5, 2, kind="stratified")
  with pytest.raises(ValueError, match="train.sampling"):
    data.ClientSampler(5, 2, kind="weighted")
  with pytest.raises(ValueError, match="train.sampling"):
    data.ClientSampler(3, 2, kind="weighted", sizes=[1, 0, 2])
  with pytest.raises(ValueError, match="train.sampling"):
    data.ClientSampler(3, 2, kind="weighted", sizes=[1, 2])
  with pytest.raises(ValueError, match="train.seed"):
    data.ClientSampler(5, 2, seed=-1)


# ---- E/B local work ----


def test_client_steps_is_ceil_n_over_b_times_e():
  # By hand, B = 8: n = 1 -> 1 batch, 7 -> 1, 8 -> 1, 9 -> 2, 17 -> 3.
  np.testing.assert_array_equal(
      data.client_steps(np.array([1, 7, 8, 9, 17]), 8, 3), [3, 3, 3, 6, 9])
  assert data.client_steps(0, 4, 2) == 0
  with pytest.raises(ValueError):
    data.client_steps(5, 0, 1)


# ---- PopulationLoader ----


def _stream_reference(shard, seed, client, start, length):
  """Client `client`'s stream positions, straight from the documented rule."""
  n = len(shard)
  epochs = range(start // n, (start + length - 1) // n + 1)
  stream = np.concatenate([
      shard[np.random.default_rng([seed, client, e]).permutation(n)]
      for e in epochs])
  offset = start - epochs[0] * n
  return stream[offset:offset + length]


@pytest.mark.parametrize("sizes,h,b", [([9, 20, 13, 40], 3, 4),
                                       ([2, 3, 1, 5], 4, 3)])
def test_full_participation_is_round_loader_bit_for_bit(sizes, h, b):
  source = data.LMSource(
      np.random.default_rng(0).integers(0, 256, (sum(sizes), 6)).astype(np.uint8),
      np.zeros(sum(sizes), np.int32), ["all"])
  shards = _uneven_shards(sizes)
  m = len(shards)
  for slots in (None, [3, 1]):
    rounds = data.RoundLoader(source, shards, batch_size=b, inner_steps=h,
                              seed=5, replica_ids=slots)
    pop = data.PopulationLoader(source, shards, data.ClientSampler(m, m, seed=2),
                                batch_size=b, inner_steps=h, seed=5,
                                slot_ids=slots)
    assert pop.inner_steps == h
    for _ in range(6):
      expected, got = next(rounds), next(pop)
      assert got.batch.keys() == expected.keys()
      assert got.batch["tokens"].dtype == expected["tokens"].dtype
      np.testing.assert_array_equal(got.batch["tokens"], expected["tokens"])
      np.testing.assert_array_equal(got.client_ids, np.arange(m))
      np.testing.assert_array_equal(got.num_steps, np.full(m, h))
      np.testing.assert_array_equal(got.num_examples, np.full(m, h * b))
    rounds.close()
    pop.close()


def test_sampled_clients_read_their_own_stream_at_the_round_clock():
  sizes = [5, 17, 8, 30, 11, 2, 9]
  shards = _uneven_shards(sizes, seed=1)
  source = _IndexSource(sum(sizes))
  sampler = data.ClientSampler(7, 3, seed=4)
  h, b, seed = 2, 4, 8
  with data.PopulationLoader(source, shards, sampler, batch_size=b,
                             inner_steps=h, seed=seed) as loader:
    for r in range(5):
      rnd = next(loader)
      assert rnd.round_index == r
      np.testing.assert_array_equal(rnd.client_ids, sampler.sample(r))
      assert rnd.batch["idx"].shape == (3, h, b)
      for slot, client in enumerate(rnd.client_ids):
        np.testing.assert_array_equal(
            _read(rnd.batch)[slot].ravel(),
            _stream_reference(shards[client], seed, client, r * h * b, h * b))


def test_local_epochs_take_ceil_n_over_b_times_e_steps():
  sizes = [1, 5, 8, 13]
  shards = _uneven_shards(sizes, seed=2)
  source = _IndexSource(sum(sizes))
  b, e, seed = 4, 2, 3
  with data.PopulationLoader(source, shards, data.ClientSampler(4, 4, seed=0),
                             batch_size=b, local_epochs=e, seed=seed,
                             prefetch=0) as loader:
    # By hand: ceil([1, 5, 8, 13] / 4) · 2 = [2, 4, 4, 8]; the step axis is 8.
    assert loader.inner_steps == 8
    # Padding: 1 - mean([2, 4, 4, 8]) / 8 = 1 - 4.5 / 8 = 43.75%.
    assert "steps 2/4/8, step axis H=8 (44% padding" in loader.describe()
    for r in range(3):
      rnd = next(loader)
      np.testing.assert_array_equal(rnd.num_steps, [2, 4, 4, 8])
      np.testing.assert_array_equal(rnd.num_examples, [8, 16, 16, 32])
      ids = _read(rnd.batch)
      for c, n in enumerate(sizes):
        steps = int(rnd.num_steps[c])
        assert np.all(ids[c, steps:] == -1)  # Padding steps are zeros.
        per_epoch = ids[c, :steps].reshape(e, -1)
        for k in range(e):
          # Epoch r·E + k: the client's permutation, filled up to a multiple
          # of B by repeating its first examples.
          order = shards[c][np.random.default_rng(
              [seed, c, r * e + k]).permutation(n)]
          filled = np.resize(order, len(per_epoch[k]))
          np.testing.assert_array_equal(per_epoch[k], filled)
          assert set(per_epoch[k]) == set(shards[c])


def test_local_epochs_equal_fixed_steps_when_b_divides_every_shard():
  shards = _uneven_shards([8, 8, 8], seed=5)
  source = _IndexSource(24)
  kwargs = dict(batch_size=4, seed=1, prefetch=0)
  epochs = data.PopulationLoader(source, shards, data.ClientSampler(3, 2, seed=6),
                                 local_epochs=3, **kwargs)
  fixed = data.PopulationLoader(source, shards, data.ClientSampler(3, 2, seed=6),
                                inner_steps=6, **kwargs)
  for _ in range(4):
    a, c = next(epochs), next(fixed)
    np.testing.assert_array_equal(a.batch["idx"], c.batch["idx"])
    np.testing.assert_array_equal(a.num_steps, c.num_steps)


def test_max_steps_caps_big_clients():
  shards = _uneven_shards([3, 40], seed=0)
  loader = data.PopulationLoader(
      _IndexSource(43), shards, data.ClientSampler(2, 2, seed=0), batch_size=4,
      local_epochs=1, max_steps=5, seed=0, prefetch=0)
  assert loader.inner_steps == 5
  rnd = next(loader)
  np.testing.assert_array_equal(rnd.num_steps, [1, 5])
  # The capped client reads the first 5 batches of its epoch.
  order = shards[1][np.random.default_rng([0, 1, 0]).permutation(40)]
  np.testing.assert_array_equal(_read(rnd.batch)[1].ravel(), order[:20])


def test_slots_split_over_processes_rebuild_the_whole_round():
  shards = _uneven_shards([6, 9, 4, 12, 7, 3])
  source = _IndexSource(41)
  sampler = data.ClientSampler(6, 4, kind="weighted", sizes=[6, 9, 4, 12, 7, 3],
                               seed=2)
  kwargs = dict(batch_size=2, local_epochs=1, seed=9, prefetch=0)
  whole = data.PopulationLoader(source, shards, sampler, **kwargs)
  halves = [data.PopulationLoader(source, shards, sampler, slot_ids=s, **kwargs)
            for s in ([0, 1], [2, 3])]
  for _ in range(3):
    rnd = next(whole)
    parts = [next(h) for h in halves]
    np.testing.assert_array_equal(
        np.concatenate([p.batch["idx"] for p in parts]), rnd.batch["idx"])
    for p in parts:  # Every process knows every slot's client and weights.
      np.testing.assert_array_equal(p.client_ids, rnd.client_ids)
      np.testing.assert_array_equal(p.num_steps, rnd.num_steps)


@pytest.mark.parametrize("kind,prefetch", [("uniform", 0), ("weighted", 2)])
def test_resume_mid_run_replays_bit_identically(kind, prefetch):
  sizes = [5, 9, 14, 3, 7, 11, 6, 2]
  shards = _uneven_shards(sizes, seed=3)
  source = _IndexSource(sum(sizes))

  def make(slots=None, prefetch=prefetch):
    sampler = data.ClientSampler(8, 3, kind=kind, sizes=sizes, seed=7)
    return data.PopulationLoader(source, shards, sampler, batch_size=3,
                                 local_epochs=2, seed=4, slot_ids=slots,
                                 prefetch=prefetch)

  with make() as straight:
    reference = [next(straight) for _ in range(7)]
  with make() as first:
    for _ in range(3):
      next(first)
    state = json.loads(json.dumps(first.get_state()))
  assert state["round"] == 3
  with make(slots=[2, 0], prefetch=2 - prefetch) as resumed:
    resumed.set_state(state)
    for expected in reference[3:]:
      got = next(resumed)
      assert got.round_index == expected.round_index
      np.testing.assert_array_equal(got.client_ids, expected.client_ids)
      np.testing.assert_array_equal(got.num_steps, expected.num_steps)
      np.testing.assert_array_equal(got.num_examples, expected.num_examples)
      np.testing.assert_array_equal(got.batch["idx"],
                                    expected.batch["idx"][[2, 0]])


def test_set_state_rejects_other_sampler_or_shards():
  shards = _uneven_shards([4, 4, 4])
  source = _IndexSource(12)

  def make(seed=0, shards=shards, kind="uniform"):
    return data.PopulationLoader(
        source, shards, data.ClientSampler(3, 2, kind=kind, sizes=[4, 4, 4],
                                           seed=seed),
        batch_size=2, inner_steps=1, seed=0, prefetch=0)

  state = make().get_state()
  with pytest.raises(ValueError, match="sampler"):
    make(seed=1).set_state(state)
  with pytest.raises(ValueError, match="sampler"):
    make(kind="weighted").set_state(state)
  with pytest.raises(ValueError, match="shards_crc32"):
    make(shards=_uneven_shards([4, 4, 4], seed=9)).set_state(state)
  with pytest.raises(ValueError, match="kind"):
    make().set_state({**state, "kind": None})


def test_loader_errors_name_the_field():
  shards = _uneven_shards([4, 4, 4])
  source = _IndexSource(12)
  sampler = data.ClientSampler(3, 2)
  with pytest.raises(ValueError, match="inner_steps"):
    data.PopulationLoader(source, shards, sampler, batch_size=2, seed=0)
  with pytest.raises(ValueError, match="inner_steps"):
    data.PopulationLoader(source, shards, sampler, batch_size=2, seed=0,
                          inner_steps=2, local_epochs=1)
  with pytest.raises(ValueError, match="train.num_clients"):
    data.PopulationLoader(source, shards[:2], sampler, batch_size=2, seed=0,
                          inner_steps=2)
  with pytest.raises(ValueError, match="inner.batch_size"):
    data.PopulationLoader(source, shards, sampler, batch_size=0, seed=0,
                          inner_steps=2)
  with pytest.raises(ValueError, match="train.local_epochs"):
    data.PopulationLoader(source, shards, sampler, batch_size=2, seed=0,
                          local_epochs=0)
  with pytest.raises(ValueError, match="slot_ids"):
    data.PopulationLoader(source, shards, sampler, batch_size=2, seed=0,
                          inner_steps=2, slot_ids=[2])


# ---- ClientStateStore ----


def _template():
  return {"c": np.zeros((2, 3), np.float32), "seen": np.int32(0)}


def _toy_update(state, client, round_index):
  """What a slot does to its client's state: depends on both, like c_i."""
  return {"c": state["c"] * np.float32(0.5) + np.float32(client + round_index),
          "seen": state["seen"] + np.int32(1)}


def test_store_state_after_kth_participation_matches_client_alone():
  n, m, rounds = 9, 4, 12
  sampler = data.ClientSampler(n, m, seed=1)
  masks = np.random.default_rng(0).random((rounds, m)) < 0.75
  store = data.ClientStateStore(_template(), n)
  history = {c: [] for c in range(n)}
  for r in range(rounds):
    ids = sampler.sample(r)
    slots = store.gather(ids)
    assert slots["c"].shape == (m, 2, 3) and slots["seen"].shape == (m,)
    new = {"c": slots["c"] * np.float32(0.5)
                + (ids + r).astype(np.float32)[:, None, None],
           "seen": slots["seen"] + np.int32(1)}
    store.scatter(ids, new, mask=masks[r])
    for k, c in enumerate(ids):
      if masks[r, k]:
        history[c].append(store.gather([c]))
  # Reference: each client on its own, through the rounds it took part in.
  for c in range(n):
    state = _template()
    taken = [r for r in range(rounds)
             if c in sampler.sample(r)
             and masks[r, list(sampler.sample(r)).index(c)]]
    assert len(taken) == len(history[c])
    for k, r in enumerate(taken):
      state = _toy_update(state, c, r)
      np.testing.assert_array_equal(history[c][k]["c"][0], state["c"])
      assert history[c][k]["seen"][0] == k + 1
    final = store.gather([c])
    np.testing.assert_array_equal(final["c"][0], state["c"])
    assert final["seen"][0] == len(taken)


def test_store_initialises_every_client_from_the_template_and_gathers_copies():
  template = {"c": np.arange(6, dtype=np.float32).reshape(2, 3),
              "seen": np.int32(4)}
  store = data.ClientStateStore(template, 5)
  got = store.gather([4, 0])
  np.testing.assert_array_equal(got["c"], np.stack([template["c"]] * 2))
  np.testing.assert_array_equal(got["seen"], [4, 4])
  got["c"][...] = -1  # A gathered copy, not a view.
  np.testing.assert_array_equal(store.gather([4])["c"][0], template["c"])
  # 5 clients × (6 float32 + 1 int32) = 5 × 28 bytes.
  assert store.nbytes == 140
  assert "5 clients" in store.memory_line() and "140 B" in store.memory_line()


def test_store_state_dict_round_trip_and_errors():
  store = data.ClientStateStore(_template(), 4)
  store.scatter([1, 3], {"c": np.ones((2, 2, 3), np.float32),
                         "seen": np.array([7, 8], np.int32)}, mask=[True, False])
  saved = store.state_dict()
  assert isinstance(saved["c"], np.ndarray) and saved["c"].shape == (4, 2, 3)
  np.testing.assert_array_equal(saved["seen"], [0, 7, 0, 0])
  other = data.ClientStateStore(_template(), 4)
  other.load_state_dict(saved)
  for key in saved:
    np.testing.assert_array_equal(other.state_dict()[key], saved[key])
  saved["seen"][0] = 99  # state_dict copies.
  assert store.gather([0])["seen"][0] == 0
  with pytest.raises(ValueError, match="distinct"):
    store.scatter([1, 1], store.gather([1, 1]))
  with pytest.raises(ValueError, match="mask"):
    store.scatter([1, 2], store.gather([1, 2]), mask=[True])
  with pytest.raises(ValueError, match="structure"):
    store.scatter([1], {"c": np.ones((1, 2, 3), np.float32)})
  with pytest.raises(ValueError, match="shape"):
    store.scatter([1], {"c": np.ones((1, 3, 2), np.float32),
                        "seen": np.zeros(1, np.int32)})
  with pytest.raises(ValueError, match=r"\[0, 4\)"):
    store.gather([4])
  with pytest.raises(ValueError, match="shape"):
    other.load_state_dict(data.ClientStateStore(_template(), 5).state_dict())
  with pytest.raises(ValueError, match="train.num_clients"):
    data.ClientStateStore(_template(), 0)


def test_store_takes_jax_leaves():
  jnp = pytest.importorskip("jax.numpy")
  store = data.ClientStateStore({"w": jnp.zeros((3,), jnp.bfloat16)}, 2)
  store.scatter([1], {"w": jnp.ones((1, 3), jnp.bfloat16)})
  got = store.gather([0, 1])["w"]
  assert got.dtype == jnp.bfloat16
  np.testing.assert_array_equal(got.astype(np.float32), [[0, 0, 0], [1, 1, 1]])
