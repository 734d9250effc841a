"""Partitioners and the heterogeneity figure."""

import numpy as np
import pytest

from fedjax_lab import data


@pytest.fixture(scope="module")
def lm_train(tmp_path_factory):
  train, _ = data.lm_sources(dataset="stdlib",
                             data_dir=str(tmp_path_factory.mktemp("tfds")),
                             seq_len=64, subset="small")
  return train


def _labelled(num_classes=10, per_class=200, seed=0):
  labels = np.repeat(np.arange(num_classes), per_class)
  labels = np.random.default_rng(seed).permutation(labels)
  images = np.zeros((len(labels), 2, 2, 1), np.uint8)
  return data.ImageSource(images, labels, num_classes=num_classes)


def _assert_cover(shards, n):
  everything = np.concatenate(shards)
  assert len(everything) == n
  np.testing.assert_array_equal(np.sort(everything), np.arange(n))
  for shard in shards:
    assert shard.dtype == np.int64
    assert np.all(np.diff(shard) > 0)  # Sorted, no repeats.


@pytest.mark.parametrize("num_replicas", [1, 3, 8])
def test_iid_equal_disjoint_cover(lm_train, num_replicas):
  shards = data.partition(lm_train, num_replicas, method="iid", seed=1)
  _assert_cover(shards, len(lm_train))
  sizes = [len(s) for s in shards]
  assert max(sizes) - min(sizes) <= 1
  again = data.partition(lm_train, num_replicas, method="iid", seed=1)
  assert all(np.array_equal(a, b) for a, b in zip(shards, again))


def test_by_source_whole_groups_balanced_and_more_heterogeneous(lm_train):
  shards = data.partition(lm_train, 4, method="by_source")
  _assert_cover(shards, len(lm_train))
  owned = [set(np.unique(lm_train.groups[s])) for s in shards]
  for i in range(4):
    for j in range(i + 1, 4):
      assert not owned[i] & owned[j]  # Each group lives on one replica.
  # Greedy balancing: no replica is more than the largest group above the mean.
  sizes = np.array([len(s) for s in shards])
  largest_group = np.bincount(lm_train.groups).max()
  assert sizes.max() - sizes.min() <= largest_group
  iid = data.partition(lm_train, 4, method="iid")
  assert data.heterogeneity(lm_train, shards) > 10 * data.heterogeneity(
      lm_train, iid)


def test_by_content_equal_deterministic_and_4x_by_source(lm_train):
  shards = data.partition(lm_train, 4, method="by_content")
  _assert_cover(shards, len(lm_train))
  sizes = [len(s) for s in shards]
  assert max(sizes) - min(sizes) <= 1
  # The training seed does not move the islands (k-means from a fixed seed).
  again = data.partition(lm_train, 4, method="by_content", seed=7)
  assert all(np.array_equal(a, b) for a, b in zip(shards, again))
  by_source = data.partition(lm_train, 4, method="by_source")
  jsd = data.heterogeneity(lm_train, shards)
  assert jsd > 4 * data.heterogeneity(lm_train, by_source)
  assert jsd == pytest.approx(0.0200, abs=0.0002)  # docs/results.md.
  with pytest.raises(ValueError, match="by_content"):
    data.partition(_labelled(), 2, method="by_content")


def test_by_source_needs_enough_groups(lm_train):
  with pytest.raises(ValueError, match="groups"):
    data.partition(lm_train, len(lm_train.group_names) + 1, method="by_source")
  with pytest.raises(ValueError, match="groups"):
    data.partition(_labelled(), 2, method="by_source")


@pytest.mark.parametrize("alpha", [0.01, 1.0, 1000.0])
def test_dirichlet_assigns_each_index_once_in_equal_shards(alpha):
  source = _labelled()
  shards = data.partition(source, 10, method="dirichlet", alpha=alpha, seed=3)
  _assert_cover(shards, len(source))
  assert {len(s) for s in shards} == {200}


def test_dirichlet_alpha_controls_label_skew():
  source = _labelled()

  def dominant_share(alpha):
    shards = data.partition(source, 10, method="dirichlet", alpha=alpha, seed=0)
    return np.mean([np.bincount(source.labels[s]).max() / len(s) for s in shards])

  # Small alpha: about one label per shard. Large alpha: about 1/10 each.
  assert dominant_share(0.001) > 0.8
  assert dominant_share(1000.0) < 0.2
  small = data.partition(source, 10, method="dirichlet", alpha=0.001)
  large = data.partition(source, 10, method="dirichlet", alpha=1000.0)
  iid = data.partition(source, 10, method="iid")
  assert data.heterogeneity(source, small) > 0.5
  assert data.heterogeneity(source, large) < 0.05
  assert abs(data.heterogeneity(source, large)
             - data.heterogeneity(source, iid)) < 0.02


def test_heterogeneity_matches_hand_computed_jsd():
  labels = np.array([0, 0, 1, 1])
  source = data.ImageSource(np.zeros((4, 1, 1, 1), np.uint8), labels)
  # Shard [0, 0] vs whole [1/2, 1/2]: m = [3/4, 1/4];
  # JSD = 1/2 · log2(4/3) + 1/2 · (1/2 log2(2/3) + 1/2 log2(2)).
  jsd = 0.5 * np.log2(4 / 3) + 0.5 * (0.5 * np.log2(2 / 3) + 0.5)
  shards = [np.array([0, 1]), np.array([2, 3])]
  assert data.heterogeneity(source, shards) == pytest.approx(jsd)
  assert data.heterogeneity(source, [np.array([0, 2]), np.array([1, 3])]) == 0.0


def test_unknown_method_and_bad_args(lm_train):
  with pytest.raises(ValueError, match="unknown method"):
    data.partition(lm_train, 2, method="random")
  with pytest.raises(ValueError, match="alpha"):
    data.partition(_labelled(), 2, method="dirichlet", alpha=0.0)
  with pytest.raises(ValueError, match="num_replicas"):
    data.partition(_labelled(num_classes=1, per_class=2), 3)


# ---- client_partition: N client shards ----


def _assert_disjoint_sorted(shards):
  everything = np.concatenate(shards)
  assert len(np.unique(everything)) == len(everything)
  for shard in shards:
    assert shard.dtype == np.int64 and len(shard)
    assert np.all(np.diff(shard) > 0)


def _stdlib_train_files():
  """path -> bytes of the `small` subset's training files, read here."""
  import os  # pylint: disable=g-import-not-at-top

  from fedjax_lab.data import stdlib_corpus  # pylint: disable=g-import-not-at-top
  out = {}
  for path in stdlib_corpus.list_files(subset="small"):
    if stdlib_corpus.split_of(path) == "train":
      with open(os.path.join(stdlib_corpus.stdlib_root(), path), "rb") as f:
        out[path] = f.read()
  return out


def test_by_file_makes_one_client_per_file(lm_train):
  shards = data.client_partition(lm_train, None, method="by_file")
  _assert_cover(shards, len(lm_train))
  files = _stdlib_train_files()
  width = lm_train.seq_len + 1
  # Independent of the derivation: files long enough for one sequence.
  assert len(shards) == sum(len(t) >= width for t in files.values())
  for shard in shards:
    assert len(np.unique(lm_train.groups[shard])) == 1
    # A client's sequences, in order, are the whole of one file (all but its
    # tail shorter than a sequence).
    blob = lm_train.tokens[shard].tobytes()
    assert any(t.startswith(blob) and len(t) // width == len(shard)
               for t in files.values())
  sizes = np.array([len(s) for s in shards])
  assert sizes.max() > 20 * np.median(sizes) / 2  # Natural, uneven sizes.
  np.testing.assert_array_equal(
      data.client_partition(lm_train, None, method="by_file")[7], shards[7])


def test_by_file_min_examples_and_merging(lm_train):
  natural = data.client_partition(lm_train, None, method="by_file")
  big = data.client_partition(lm_train, None, method="by_file", min_examples=30)
  _assert_disjoint_sorted(big)
  assert len(big) == sum(len(s) >= 30 for s in natural)
  assert min(len(s) for s in big) >= 30
  merged = data.client_partition(lm_train, 10, method="by_file")
  _assert_cover(merged, len(lm_train))
  assert len(merged) == 10
  # Consecutive files: each merged client is a run of natural clients.
  starts = {int(s[0]): k for k, s in enumerate(natural)}
  for client in merged:
    k = starts[int(client[0])]
    run = []
    while len(run) < len(client):
      run.extend(natural[k])
      k += 1
    np.testing.assert_array_equal(client, run)
  with pytest.raises(ValueError, match="train.num_clients"):
    data.client_partition(lm_train, len(natural) + 1, method="by_file")


def test_by_file_refuses_sources_without_files(lm_train, tmp_path):
  with pytest.raises(ValueError, match="data.partition"):
    data.client_partition(_labelled(), 3, method="by_file")
  packed, _ = data.lm_sources(dataset="stdlib", data_dir=str(tmp_path),
                              seq_len=64, subset="small", packing=True)
  with pytest.raises(ValueError, match="data.partition.*packing"):
    data.client_partition(packed, None, method="by_file")
  recorded = data.LMSource(lm_train.tokens[:6], lm_train.groups[:6],
                           lm_train.group_names)
  recorded.file_ids = np.array([0, 0, 3, 3, 3, 9])
  shards = data.client_partition(recorded, None, method="by_file")
  assert [s.tolist() for s in shards] == [[0, 1], [2, 3, 4], [5]]


def test_by_group_one_client_per_group(lm_train):
  shards = data.client_partition(lm_train, None, method="by_group")
  _assert_cover(shards, len(lm_train))
  assert len(shards) == len(np.unique(lm_train.groups))
  for shard, g in zip(shards, np.unique(lm_train.groups)):
    np.testing.assert_array_equal(shard, np.flatnonzero(lm_train.groups == g))
  with pytest.raises(ValueError, match="train.num_clients"):
    data.client_partition(lm_train, len(shards) + 1, method="by_group")
  with pytest.raises(ValueError, match="data.partition"):
    data.client_partition(_labelled(), 2, method="by_group")


@pytest.mark.parametrize("alpha", [0.05, 100.0])
def test_dirichlet_many_clients_equal_sizes_cover(alpha):
  source = _labelled()  # 2000 examples, 10 classes.
  shards = data.client_partition(source, 100, method="dirichlet", alpha=alpha,
                                 seed=1)
  _assert_cover(shards, len(source))
  assert {len(s) for s in shards} == {20}
  share = np.mean([np.bincount(source.labels[s]).max() / len(s) for s in shards])
  assert share > 0.7 if alpha < 1 else share < 0.45


def test_dirichlet_and_iid_lognormal_sizes():
  source = _labelled()
  for method in ("dirichlet", "iid"):
    shards = data.client_partition(source, 50, method=method, size_sigma=1.0,
                                   min_examples=5, seed=2)
    _assert_cover(shards, len(source))
    sizes = np.array([len(s) for s in shards])
    assert sizes.min() >= 5
    assert sizes.max() > 3 * np.median(sizes)  # Quantity skew.
  # A tiny spread rounds to sizes within one of each other (largest remainder).
  near = data.client_partition(source, 7, method="iid", size_sigma=1e-6, seed=0)
  assert max(map(len, near)) - min(map(len, near)) <= 1
  equal = data.client_partition(source, 7, method="iid", seed=0)
  _assert_cover(equal, len(source))
  assert max(map(len, equal)) - min(map(len, equal)) <= 1


def test_client_partition_errors_name_the_field(lm_train):
  with pytest.raises(ValueError, match="data.partition"):
    data.client_partition(lm_train, 3, method="by_source")
  with pytest.raises(ValueError, match="train.num_clients"):
    data.client_partition(lm_train, 0, method="iid")
  with pytest.raises(ValueError, match="train.num_clients"):
    data.client_partition(lm_train, None, method="iid")
  with pytest.raises(ValueError, match="train.num_clients"):
    data.client_partition(_labelled(per_class=2), 11, method="iid",
                          min_examples=2)
  with pytest.raises(ValueError, match="data.alpha"):
    data.client_partition(_labelled(), 5, method="dirichlet", alpha=0.0)
  with pytest.raises(ValueError, match="min_client_examples"):
    data.client_partition(_labelled(), 5, method="iid", min_examples=0)
  with pytest.raises(ValueError, match="size_sigma"):
    data.client_partition(_labelled(), 5, method="iid", size_sigma=-1.0)
