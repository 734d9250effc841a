"""TFDS datasets end to end, offline: mock data and a locally built dataset."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from fedjax_lab import data


def test_mnist_through_image_sources_partition_and_loader(tmp_path):
  with tfds.testing.mock_data(num_examples=64):
    train, evals = data.image_sources(dataset="mnist", data_dir=str(tmp_path))
  assert train.num_classes == 10
  assert train.images.shape == (64, 28, 28, 1)
  assert evals.info["split"] == "test"
  shards = data.partition(train, 4, method="dirichlet", alpha=0.5)
  with data.RoundLoader(train, shards, batch_size=5, inner_steps=2,
                        seed=0) as loader:
    batch = next(loader)
  assert batch["image"].shape == (4, 2, 5, 28, 28, 1)
  assert batch["image"].dtype == np.float32
  assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  assert batch["label"].shape == (4, 2, 5) and batch["label"].dtype == np.int32
  (first,) = data.eval_batches(evals, batch_size=8, num_batches=1)
  np.testing.assert_allclose(first["image"], evals.images[:8] / 255.0,
                             rtol=1e-6)


def test_tiny_shakespeare_through_lm_sources(tmp_path):
  with tfds.testing.mock_data(num_examples=10):
    train, evals = data.lm_sources(dataset="tiny_shakespeare",
                                   data_dir=str(tmp_path), seq_len=8,
                                   eval_split="validation")
    source = tfds.data_source("tiny_shakespeare", split="train")
    texts = [source[i]["text"] for i in range(len(source))]
  # Packed: texts joined by newlines, cut into 9-byte windows, tail dropped.
  stream = "\n".join(texts).encode()
  expected = np.frombuffer(stream[:len(stream) // 9 * 9], np.uint8).reshape(-1, 9)
  np.testing.assert_array_equal(train.tokens, expected)
  assert evals.info["split"] == "validation" and len(evals)
  shards = data.partition(train, 2)
  with data.RoundLoader(train, shards, batch_size=3, inner_steps=2,
                        seed=1) as loader:
    assert next(loader)["tokens"].shape == (2, 2, 3, 9)


@pytest.mark.parametrize("dataset", ["mnist", "lm1b"])
def test_absent_dataset_is_a_clear_error(tmp_path, dataset):
  load = data.image_sources if dataset == "mnist" else data.lm_sources
  kwargs = {} if dataset == "mnist" else {"seq_len": 8}
  with pytest.raises(ValueError) as error:
    load(dataset=dataset, data_dir=str(tmp_path / "absent"), **kwargs)
  message = str(error.value)
  assert str(tmp_path / "absent") in message
  assert "stdlib" in message
  assert not (tmp_path / "absent").exists()  # Nothing downloaded or written.


class TinyDigits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A 3-class image dataset written as real array_record.

  Images are a uint8 Tensor feature: encoding a tfds Image (PNG) needs
  TensorFlow, decoding one does not.
  """

  VERSION = tfds.core.Version("1.0.0")
  code_path = None  # See StdlibPy: TFDS would import a missing backport.

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(6, 6, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=3),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(30, 0),
            "test": self._generate_examples(9, 1)}

  def _generate_examples(self, n, seed):
    rng = np.random.default_rng(seed)
    for i in range(n):
      yield i, {"image": rng.integers(0, 256, (6, 6, 1), dtype=np.uint8),
                "label": i % 3}


def test_locally_prepared_dataset_by_name(tmp_path):
  TinyDigits(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  train, evals = data.image_sources(dataset="tiny_digits", data_dir=str(tmp_path))
  assert (len(train), len(evals), train.num_classes) == (30, 9, 3)
  np.testing.assert_array_equal(np.bincount(train.labels), [10, 10, 10])
  raw = tfds.data_source("tiny_digits", split="train", data_dir=str(tmp_path))
  np.testing.assert_array_equal(train.images[4], raw[4]["image"])
  shards = data.partition(train, 3, method="dirichlet", alpha=0.01)
  assert data.heterogeneity(train, shards) > 0.3
