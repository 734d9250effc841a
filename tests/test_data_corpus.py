"""The built-in stdlib corpus: offline TFDS builder, split, fingerprint."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from fedjax_lab import data
from fedjax_lab.data import stdlib_corpus


def _paths(builder, split):
  source = builder.as_data_source(split=split)
  return sorted(source[i]["path"].decode() for i in range(len(source)))


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  data.prepare_stdlib_corpus(data_dir=data_dir, subset="small")
  return data_dir


def test_builds_offline_and_reads_back_by_name(small_dir):
  source = tfds.data_source("stdlib_py/small", split="train", data_dir=small_dir,
                            download=False)
  example = source[0]
  assert isinstance(example["text"], bytes) and example["text"]
  path = example["path"].decode()
  assert path.endswith(".py")
  assert example["source"].decode() == path.split("/")[0].removesuffix(".py")
  # The stored text is the file, byte for byte.
  with open(os.path.join(stdlib_corpus.stdlib_root(), path), "rb") as f:
    assert f.read() == example["text"]


def test_split_is_by_file_deterministic_and_disjoint(small_dir, tmp_path):
  first = data.prepare_stdlib_corpus(data_dir=small_dir, subset="small")
  second = data.prepare_stdlib_corpus(data_dir=str(tmp_path), subset="small")
  splits = {s: _paths(first, s) for s in ("train", "validation", "test")}
  for split, paths in splits.items():  # Deterministic: a second prepare agrees.
    assert paths == _paths(second, split), split
    assert paths and all(stdlib_corpus.split_of(p) == split for p in paths)
  train, evals, test = splits["train"], splits["validation"], splits["test"]
  # Disjoint, and together the whole subset.
  assert not (set(train) & set(evals) or set(train) & set(test)
              or set(evals) & set(test))
  assert sorted(train + evals + test) == stdlib_corpus.list_files(subset="small")
  assert all(stdlib_corpus.is_eval_path(p) for p in evals)
  for held_out in (evals, test):
    assert 0.01 < len(held_out) / len(stdlib_corpus.list_files(subset="small")) < 0.15


def test_prepare_is_idempotent(small_dir):
  version_dir = os.path.join(small_dir, "stdlib_py", "small", "1.1.0")
  before = {f: os.stat(os.path.join(version_dir, f)).st_mtime_ns
            for f in os.listdir(version_dir)}
  data.prepare_stdlib_corpus(data_dir=small_dir, subset="small")
  after = {f: os.stat(os.path.join(version_dir, f)).st_mtime_ns
           for f in os.listdir(version_dir)}
  assert before == after


def test_fingerprint_is_stored_and_checked(tmp_path):
  builder = data.prepare_stdlib_corpus(data_dir=str(tmp_path), subset="small")
  fingerprint = data.corpus_fingerprint(subset="small")
  assert builder.info.metadata["fingerprint"] == fingerprint
  assert fingerprint == data.corpus_fingerprint(subset="small")
  json.dumps(fingerprint)
  assert fingerprint["num_files"] == len(stdlib_corpus.list_files(subset="small"))
  assert fingerprint["num_bytes"] > 1_000_000
  assert len(fingerprint["sha256"]) == 64
  # A directory made by another Python is refused, not silently reused.
  metadata = os.path.join(tmp_path, "stdlib_py", "small", "1.1.0", "metadata.json")
  with open(metadata) as f:
    stored = json.load(f)
  stored["fingerprint"]["sha256"] = "0" * 64
  with open(metadata, "w") as f:
    json.dump(stored, f)
  with pytest.raises(ValueError, match="different standard library"):
    data.prepare_stdlib_corpus(data_dir=str(tmp_path), subset="small")


def test_subsets_nest():
  full = set(stdlib_corpus.list_files(subset="full"))
  no_tests = set(stdlib_corpus.list_files(subset="no_tests"))
  small = set(stdlib_corpus.list_files(subset="small"))
  assert small < no_tests < full
  assert not any(p.startswith(("test/", "idlelib/")) or "/test/" in p
                 for p in no_tests)
  assert any(p.startswith("test/") for p in full)
  assert not any("site-packages" in p or "__pycache__" in p for p in full)
  assert {stdlib_corpus.source_name(p) for p in small} == set(
      stdlib_corpus.SMALL_PACKAGES)
  with pytest.raises(ValueError, match="unknown subset"):
    stdlib_corpus.list_files(subset="tiny")


def test_lm_sources_chunk_files_into_windows(small_dir):
  seq_len = 63
  train, evals = data.lm_sources(dataset="stdlib", data_dir=small_dir,
                                 seq_len=seq_len, subset="small")
  assert train[0]["tokens"].shape == (seq_len + 1,)
  assert train[0]["tokens"].dtype == np.int32
  assert train.info["fingerprint"] == data.corpus_fingerprint(subset="small")
  # Per-file windows with the tail dropped, as an independent recount.
  root = stdlib_corpus.stdlib_root()
  expected = 0
  first = {}
  for path in stdlib_corpus.list_files(subset="small"):
    if stdlib_corpus.split_of(path) != "train":
      continue
    with open(os.path.join(root, path), "rb") as f:
      text = f.read()
    expected += len(text) // (seq_len + 1)
    first.setdefault(stdlib_corpus.source_name(path), text[:seq_len + 1])
  assert len(train) == expected
  # Files are laid out in path order: the first window of the first file.
  assert bytes(train.tokens[0]) == first[train.group_names[0]]
  assert sorted(train.group_names) == train.group_names
  assert set(np.unique(train.groups)) == set(range(len(train.group_names)))
  assert len(evals) > 0
