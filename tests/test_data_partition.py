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
