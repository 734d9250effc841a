"""Reading TFDS datasets offline: the data source, its examples, its splits.

`tfds_source` opens a prepared array_record dataset and never downloads; the
helpers read its examples, pick the default eval split and assemble the
(train, eval[, test]) tuple that `lm_sources` and `image_sources` return.
"""

import os
from typing import Any, Iterator, List, Optional

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

STDLIB = "stdlib"


def _resolved_data_dir(data_dir: Optional[str]) -> str:
  """The directory TFDS will look in, for error messages."""
  if data_dir is not None:
    return str(data_dir)
  return os.environ.get("TFDS_DATA_DIR",
                        os.path.expanduser("~/tensorflow_datasets"))


def tfds_source(name: str, *, split: str, data_dir: Optional[str] = None):
  """`tfds.data_source(name, split=..., data_dir=...)` that never downloads.

  Args:
    name: TFDS name, optionally with config and version ('emnist/letters').
    split: split name or TFDS slice ('train[:10%]').
    data_dir: TFDS data directory; None means TFDS's default.

  Returns:
    The random-access data source (array_record).

  Raises:
    ValueError: when the dataset is not prepared as array_record in
      `data_dir` (naming that directory and the offline alternative).
  """
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  # TFDS reports absent data in several ways: DatasetNotFoundError (a
  # ValueError) for unknown names, NotImplementedError when no array_record
  # files exist, AssertionError / OSError for partial directories, KeyError
  # for a prepared directory whose dataset_info lists no such split.
  except (ValueError, NotImplementedError, AssertionError, OSError,
          KeyError) as e:
    raise ValueError(
        f"TFDS dataset {name!r} split {split!r} is not available as "
        f"array_record in data_dir={_resolved_data_dir(data_dir)!r} and this "
        "library never downloads. Prepare it on a machine with network access "
        f"(`tfds build {name} --file_format=array_record --data_dir=...`) and "
        "copy it there, or use the built-in offline corpus: "
        f"lm_sources(dataset={STDLIB!r}, ...). Cause: "
        f"{type(e).__name__}: {str(e)[:300]}") from e


def read_all(data_source, max_examples: Optional[int]) -> Iterator[Any]:
  """Yields the first `max_examples` (all if None) examples in index order."""
  n = len(data_source)
  if max_examples is not None:
    n = min(n, max_examples)
  for i in range(n):
    yield data_source[i]


def as_bytes(value) -> bytes:
  """A text feature as bytes: TFDS decodes to bytes, its mock data to str."""
  if isinstance(value, np.ndarray):
    value = value.item()
  if isinstance(value, str):
    return value.encode("utf-8")
  return bytes(value)


def default_eval_split(name: str, data_dir: Optional[str]) -> str:
  """'validation' when the dataset has one, else 'test'."""
  try:
    splits = tfds.builder(name, data_dir=data_dir).info.splits
  except Exception:  # pylint: disable=broad-except
    # Only a guess for the default; tfds_source reports real absence clearly.
    return "test"
  return "validation" if "validation" in splits else "test"


def splits_to_read(train_split: str, eval_split: str,
                   test_split: Optional[str]) -> List[str]:
  """The splits to read: train, eval, and test unless absent or = eval."""
  out = [train_split, eval_split]
  if test_split and test_split != eval_split:
    out.append(test_split)
  return out


def with_test(out: List[Any], eval_split: str, test_split: Optional[str]):
  """(train, eval), or (train, eval, test or None) when a test split was asked."""
  if test_split is None:
    return out[0], out[1]
  if len(out) == 2:
    if test_split:
      logging.warning("test split %r is the eval split: no separate test "
                      "split (reported numbers are on the tuning split)",
                      test_split)
    return out[0], out[1], None
  return out[0], out[1], out[2]
