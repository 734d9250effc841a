"""Random-access sources: byte-level LM sequences and labelled images.

A source is anything with `__len__` and `__getitem__(i) -> dict of numpy
arrays`. The sources here also have `get_batch(indices)`, a vectorised
gather that the round loader prefers, and `histogram(indices)`, the
distribution the heterogeneity figure compares.

Both kinds are read once from a TFDS data source (array_record, no
TensorFlow) and kept in host memory as uint8 (1 byte per token or pixel):
31.5 MB for the stdlib corpus, 47 MB for MNIST, 150 MB for CIFAR-10. For
datasets larger than memory (lm1b: about 4 GB of text) pass `max_examples`.
"""

import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from fedjax_lab.data import stdlib_corpus

STDLIB = "stdlib"


class LMSource:
  """Byte-level LM sequences: each item is {'tokens': int32[seq_len + 1]}.

  Inputs are tokens[:-1], targets tokens[1:]. Every sequence comes from one
  group (for the stdlib corpus, the top-level package or module of its file),
  recorded in `groups` for by_source partitioning.

  Attributes:
    tokens: uint8 [N, seq_len + 1], the sequences.
    groups: int32 [N], index into `group_names` of each sequence's group.
    group_names: list of group names.
    seq_len: model sequence length (tokens has seq_len + 1 columns).
    info: dict describing where the data came from (dataset, split, and for
      the stdlib corpus its fingerprint).
  """

  def __init__(self, tokens: np.ndarray, groups: np.ndarray,
               group_names: Sequence[str], *, info: Optional[Dict] = None):
    if tokens.ndim != 2 or tokens.dtype != np.uint8:
      raise ValueError(f"LMSource: tokens must be uint8 [N, L+1], got "
                       f"{tokens.dtype}{list(tokens.shape)}")
    if groups.shape != tokens.shape[:1]:
      raise ValueError(f"LMSource: groups {groups.shape} do not match tokens "
                       f"{tokens.shape}")
    self.tokens = tokens
    self.groups = groups.astype(np.int32)
    self.group_names = list(group_names)
    self.seq_len = tokens.shape[1] - 1
    self.info = dict(info or {})

  def __len__(self) -> int:
    return self.tokens.shape[0]

  def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
    return {"tokens": self.tokens[index].astype(np.int32)}

  def get_batch(self, indices: np.ndarray) -> Dict[str, np.ndarray]:
    """{'tokens': int32 [*indices.shape, seq_len + 1]}."""
    return {"tokens": self.tokens[indices].astype(np.int32)}

  def histogram(self, indices: Optional[np.ndarray] = None) -> np.ndarray:
    """Byte counts (256 bins) over the sequences at `indices` (all if None)."""
    tokens = self.tokens if indices is None else self.tokens[indices]
    return np.bincount(tokens.ravel(), minlength=256)


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


def _read_all(data_source, max_examples: Optional[int]) -> Iterator[Any]:
  """Yields the first `max_examples` (all if None) examples in index order."""
  n = len(data_source)
  if max_examples is not None:
    n = min(n, max_examples)
  for i in range(n):
    yield data_source[i]


def _as_bytes(value) -> bytes:
  """A text feature as bytes: TFDS decodes to bytes, its mock data to str."""
  if isinstance(value, np.ndarray):
    value = value.item()
  if isinstance(value, str):
    return value.encode("utf-8")
  return bytes(value)


def _chunk(texts: List[bytes], text_groups: np.ndarray, seq_len: int,
           packing: bool) -> Tuple[np.ndarray, np.ndarray]:
  """Cuts texts into non-overlapping windows of seq_len + 1 bytes.

  Without packing each text is cut on its own and its tail (fewer than
  seq_len + 1 bytes) is dropped, so a sequence never spans two texts. With
  packing, the texts of each group are joined with b'\\n' and the joined
  stream is cut (only the stream's tail is dropped), so short texts are kept.

  Returns:
    tokens uint8 [N, seq_len + 1] and groups int32 [N].
  """
  width = seq_len + 1
  if packing:
    ids = np.unique(text_groups)
    texts = [b"\n".join(t for t, g in zip(texts, text_groups) if g == gid)
             for gid in ids]
    text_groups = ids
  pieces, groups = [], []
  for text, group in zip(texts, text_groups):
    n = len(text) // width
    if n:
      pieces.append(np.frombuffer(text, np.uint8, count=n * width).reshape(n, width))
      groups.append(np.full(n, group, np.int32))
  if not pieces:
    return np.zeros((0, width), np.uint8), np.zeros((0,), np.int32)
  return np.concatenate(pieces), np.concatenate(groups)


def _default_eval_split(name: str, data_dir: Optional[str]) -> str:
  """'validation' when the dataset has one, else 'test'."""
  try:
    splits = tfds.builder(name, data_dir=data_dir).info.splits
  except Exception:  # pylint: disable=broad-except
    # Only a guess for the default; tfds_source reports real absence clearly.
    return "test"
  return "validation" if "validation" in splits else "test"


def _stdlib_lm_source(data_source, *, split: str, seq_len: int, packing: bool,
                      info: Dict) -> LMSource:
  examples = list(_read_all(data_source, None))
  # Path order, not TFDS's (hash-shuffled) storage order, so sequences are
  # laid out the same whatever writes the files.
  examples.sort(key=lambda ex: _as_bytes(ex["path"]))
  sources = [_as_bytes(ex["source"]).decode("utf-8") for ex in examples]
  names = sorted(set(sources))
  ids = {name: i for i, name in enumerate(names)}
  tokens, groups = _chunk([_as_bytes(ex["text"]) for ex in examples],
                          np.array([ids[s] for s in sources], np.int32),
                          seq_len, packing)
  info = dict(info, split=split, num_files=len(examples))
  return LMSource(tokens, groups, names, info=info)


def lm_sources(*, dataset: str = STDLIB, data_dir: Optional[str] = None,
               seq_len: int, subset: str = "full", train_split: str = "train",
               eval_split: Optional[str] = None, packing: Optional[bool] = None,
               max_examples: Optional[int] = None, text_key: str = "text",
               test_split: Optional[str] = None) -> Tuple[LMSource, ...]:
  """Byte-level LM train and eval (and test) sources.

  Args:
    dataset: 'stdlib' (the built-in corpus, prepared into `data_dir` on first
      use) or any TFDS dataset with a text feature ('tiny_shakespeare',
      'lm1b'), which must already be prepared as array_record in `data_dir`.
    data_dir: TFDS data directory; None means TFDS's default.
    seq_len: model sequence length; sequences hold seq_len + 1 bytes.
    subset: stdlib subset ('full', 'no_tests', 'small'); ignored otherwise.
    train_split: the training split.
    eval_split: the evaluation split; None means 'validation' for the stdlib
      corpus and for TFDS datasets that have one, else 'test'.
    packing: None means False for the stdlib corpus (each file cut on its own,
      so every sequence has one source) and True for TFDS datasets (lm1b's
      sentences are mostly shorter than a sequence). See `_chunk`.
    max_examples: read at most this many examples per split (for datasets
      larger than memory, e.g. lm1b).
    text_key: the text feature of a TFDS dataset.
    test_split: with a split name, a third source is returned: the split
      reported numbers come from ('test' for the stdlib corpus). A name equal
      to the eval split (a TFDS dataset without 'validation') gives None
      there: no split is held out from both tuning and reporting.

  Returns:
    (train_source, eval_source), or with `test_split` (train, eval, test),
    `LMSource`s.

  Raises:
    ValueError: when a TFDS dataset is absent from `data_dir`.
  """
  if seq_len < 1:
    raise ValueError(f"lm_sources: seq_len must be >= 1, got {seq_len}")
  if dataset == STDLIB:
    builder = stdlib_corpus.prepare_stdlib_corpus(data_dir=data_dir, subset=subset)
    eval_split = eval_split or stdlib_corpus.EVAL_SPLIT
    packing = False if packing is None else packing
    name = f"{stdlib_corpus.DATASET_NAME}/{subset}"
    info = {"dataset": STDLIB, "subset": subset,
            "fingerprint": dict(builder.info.metadata["fingerprint"])}
    out = []
    for split in _splits(train_split, eval_split, test_split):
      data_source = tfds_source(name, split=split, data_dir=data_dir)
      out.append(_stdlib_lm_source(data_source, split=split, seq_len=seq_len,
                                   packing=packing, info=info))
  else:
    eval_split = eval_split or _default_eval_split(dataset, data_dir)
    packing = True if packing is None else packing
    out = []
    for split in _splits(train_split, eval_split, test_split):
      data_source = tfds_source(dataset, split=split, data_dir=data_dir)
      texts = [_as_bytes(ex[text_key])
               for ex in _read_all(data_source, max_examples)]
      tokens, groups = _chunk(texts, np.zeros(len(texts), np.int32), seq_len,
                              packing)
      out.append(LMSource(tokens, groups, [dataset], info={
          "dataset": dataset, "split": split, "num_texts": len(texts)}))
  for source in out:
    if not len(source):
      raise ValueError(
          f"lm_sources: split {source.info['split']!r} of {dataset!r} has no "
          f"sequence of {seq_len + 1} bytes; use a smaller seq_len or packing.")
    logging.info("lm_sources: %s split=%s: %d sequences of %d bytes, %d groups",
                 dataset, source.info["split"], len(source), seq_len + 1,
                 len(source.group_names))
  return _with_test(out, eval_split, test_split)


def _splits(train_split: str, eval_split: str,
            test_split: Optional[str]) -> List[str]:
  """The splits to read: train, eval, and test unless absent or = eval."""
  out = [train_split, eval_split]
  if test_split and test_split != eval_split:
    out.append(test_split)
  return out


def _with_test(out: List[Any], eval_split: str, test_split: Optional[str]):
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
  eval_split = eval_split or _default_eval_split(dataset, data_dir)
  try:
    num_classes = tfds.builder(dataset, data_dir=data_dir).info.features[
        label_key].num_classes
  except Exception:  # pylint: disable=broad-except
    num_classes = None  # Not a ClassLabel or unknown: inferred from the labels.
  out = []
  for split in _splits(train_split, eval_split, test_split):
    data_source = tfds_source(dataset, split=split, data_dir=data_dir)
    images, labels = [], []
    for ex in _read_all(data_source, max_examples):
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
  return _with_test(out, eval_split, test_split)


def eval_batches(source, *, batch_size: int,
                 num_batches: Optional[int] = None) -> Iterator[Dict[str, np.ndarray]]:
  """The first `num_batches` full batches of `source`, in index order.

  The last partial batch is dropped so every batch has the same shape (one
  compiled eval step). Evaluation uses `eval_plan` instead.

  Args:
    source: a source (uses `get_batch` when it has one).
    batch_size: examples per batch.
    num_batches: how many batches; None means every full batch. Fewer are
      yielded when the source is too small.

  Yields:
    Dicts of numpy arrays with leading axis [batch_size].
  """
  available = len(source) // batch_size
  n = available if num_batches is None else min(num_batches, available)
  for b in range(n):
    yield gather(source, np.arange(b * batch_size, (b + 1) * batch_size))


def strata(source) -> Optional[np.ndarray]:
  """Each example's stratum: its group (LM sources) or label (images)."""
  for name in ("groups", "labels"):
    values = getattr(source, name, None)
    if values is not None:
      return np.asarray(values)
  return None


def stratified_sample(source, size: int, *, seed: int = 0) -> np.ndarray:
  """A fixed, shuffled sample of `size` indices, stratified by `strata`.

  Each stratum gets its share of `size` (largest remainders break ties),
  drawn without replacement; the union is shuffled. A pure function of
  (the source's strata, size, seed): every arm and every process evaluates
  on the same examples.

  Args:
    source: a source; without strata the sample is a plain shuffled one.
    size: examples to draw, at most len(source).
    seed: the sample's seed (not the run's: all runs share one sample).

  Returns:
    int64 [size] indices.
  """
  n = len(source)
  if not 0 < size <= n:
    raise ValueError(f"stratified_sample: size must be in [1, {n}], got {size}")
  rng = np.random.default_rng([seed, n, size])
  labels = strata(source)
  if labels is None:
    return rng.permutation(n)[:size].astype(np.int64)
  values, counts = np.unique(labels, return_counts=True)
  share = counts * (size / n)
  take = np.floor(share).astype(np.int64)
  rest = size - int(take.sum())
  take[np.argsort(-(share - take), kind="stable")[:rest]] += 1
  picked = [rng.permutation(np.flatnonzero(labels == v))[:k]
            for v, k in zip(values, take)]
  out = np.concatenate(picked).astype(np.int64)
  return out[rng.permutation(size)]


def eval_plan(source, *, batch_size: int,
              num_batches: Optional[int] = None) -> List[np.ndarray]:
  """The index batches an evaluation runs over.

  Args:
    source: the split to evaluate.
    batch_size: examples per batch.
    num_batches: None (or at least the split's size): the whole split, in
      index order, its last batch smaller (a second compiled shape; callers
      weight batch means by batch size). Otherwise a fixed shuffled sample of
      num_batches × batch_size examples stratified by group/label
      (`stratified_sample`), in full batches.

  Returns:
    A list of int64 index arrays.
  """
  n = len(source)
  if num_batches is None or num_batches * batch_size >= n:
    return [np.arange(i, min(i + batch_size, n), dtype=np.int64)
            for i in range(0, n, batch_size)]
  idx = stratified_sample(source, num_batches * batch_size)
  return list(idx.reshape(num_batches, batch_size))


def gather(source, indices: np.ndarray) -> Dict[str, np.ndarray]:
  """source[indices] as a dict of stacked arrays shaped [*indices.shape, ...]."""
  if hasattr(source, "get_batch"):
    return source.get_batch(indices)
  flat = [source[int(i)] for i in indices.ravel()]
  return {k: np.stack([np.asarray(ex[k]) for ex in flat]).reshape(
      indices.shape + np.shape(flat[0][k])) for k in flat[0]}
