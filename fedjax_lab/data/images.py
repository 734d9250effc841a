"""Labelled image sources: `ImageSource` and `image_sources` (a TFDS image
classification dataset)."""

from typing import Dict, Optional, Tuple

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from fedjax_lab.data.tfds_io import default_eval_split
from fedjax_lab.data.tfds_io import read_all
from fedjax_lab.data.tfds_io import splits_to_read
from fedjax_lab.data.tfds_io import tfds_source
from fedjax_lab.data.tfds_io import with_test


class ImageSource:
  """Labelled images: items {'image': float32 [H, W, C] in [0, 1], 'label': int32}.

  Attributes:
    images: uint8 [N, H, W, C].
    labels: int32 [N].
    num_classes: number of classes.
    info: dict describing where the data came from.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, *,
               num_classes: Optional[int] = None, info: Optional[Dict] = None):
    if images.ndim != 4:
      raise ValueError(f"ImageSource: images must be [N, H, W, C], got "
                       f"{list(images.shape)}")
    if labels.shape != images.shape[:1]:
      raise ValueError(f"ImageSource: labels {labels.shape} do not match "
                       f"images {images.shape}")
    self.images = images
    self.labels = labels.astype(np.int32)
    if num_classes is None:
      num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0
    self.num_classes = int(num_classes)
    self.info = dict(info or {})

  def __len__(self) -> int:
    return self.images.shape[0]

  def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
    return self.get_batch(np.asarray(index))

  def get_batch(self, indices: np.ndarray) -> Dict[str, np.ndarray]:
    """{'image': float32 [*indices.shape, H, W, C], 'label': int32 [*indices.shape]}."""
    images = self.images[indices]
    if images.dtype == np.uint8:
      images = images.astype(np.float32) * np.float32(1 / 255)
    return {"image": images.astype(np.float32, copy=False),
            "label": self.labels[indices]}

  def histogram(self, indices: Optional[np.ndarray] = None) -> np.ndarray:
    """Label counts (num_classes bins) at `indices` (all if None)."""
    labels = self.labels if indices is None else self.labels[indices]
    return np.bincount(labels, minlength=self.num_classes)


def image_sources(*, dataset: str, data_dir: Optional[str] = None,
                  train_split: str = "train", eval_split: Optional[str] = None,
                  max_examples: Optional[int] = None, image_key: str = "image",
                  label_key: str = "label", test_split: Optional[str] = None
                  ) -> Tuple[ImageSource, ...]:
  """Image classification train and eval (and test) sources from a TFDS dataset.

  Args:
    dataset: TFDS name ('mnist', 'emnist/balanced', 'cifar10', ...), already
      prepared as array_record in `data_dir`.
    data_dir: TFDS data directory; None means TFDS's default.
    train_split: the training split.
    eval_split: the evaluation split; None means 'validation' when the
      dataset has one, else 'test'.
    max_examples: read at most this many examples per split.
    image_key: the image feature.
    label_key: the label feature (a ClassLabel).
    test_split: as in `lm_sources`.

  Returns:
    (train_source, eval_source), or with `test_split` (train, eval, test or
    None), `ImageSource`s.

  Raises:
    ValueError: when the dataset is absent from `data_dir`.
  """
  eval_split = eval_split or default_eval_split(dataset, data_dir)
  try:
    num_classes = tfds.builder(dataset, data_dir=data_dir).info.features[
        label_key].num_classes
  except Exception:  # pylint: disable=broad-except
    num_classes = None  # Not a ClassLabel or unknown: inferred from the labels.
  out = []
  for split in splits_to_read(train_split, eval_split, test_split):
    data_source = tfds_source(dataset, split=split, data_dir=data_dir)
    images, labels = [], []
    for ex in read_all(data_source, max_examples):
      images.append(np.asarray(ex[image_key]))
      labels.append(int(ex[label_key]))
    if not images:
      raise ValueError(f"image_sources: split {split!r} of {dataset!r} is empty")
    source = ImageSource(np.stack(images), np.array(labels, np.int32),
                         num_classes=num_classes,
                         info={"dataset": dataset, "split": split})
    logging.info("image_sources: %s split=%s: %d images %s, %d classes",
                 dataset, split, len(source), source.images.shape[1:],
                 source.num_classes)
    out.append(source)
  num_classes = max(source.num_classes for source in out)
  for source in out:
    source.num_classes = num_classes
  return with_test(out, eval_split, test_split)
