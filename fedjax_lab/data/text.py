"""Byte-level LM sources: `LMSource` and `lm_sources` (the built-in stdlib
corpus or any TFDS text dataset), sequences of seq_len + 1 bytes."""

from typing import Dict, List, Optional, Sequence, Tuple

from absl import logging
import numpy as np

from fedjax_lab.data import stdlib_corpus
from fedjax_lab.data.tfds_io import as_bytes
from fedjax_lab.data.tfds_io import default_eval_split
from fedjax_lab.data.tfds_io import read_all
from fedjax_lab.data.tfds_io import splits_to_read
from fedjax_lab.data.tfds_io import STDLIB
from fedjax_lab.data.tfds_io import tfds_source
from fedjax_lab.data.tfds_io import with_test


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


def _stdlib_lm_source(data_source, *, split: str, seq_len: int, packing: bool,
                      info: Dict) -> LMSource:
  examples = list(read_all(data_source, None))
  # Path order, not TFDS's (hash-shuffled) storage order, so sequences are
  # laid out the same whatever writes the files.
  examples.sort(key=lambda ex: as_bytes(ex["path"]))
  sources = [as_bytes(ex["source"]).decode("utf-8") for ex in examples]
  names = sorted(set(sources))
  ids = {name: i for i, name in enumerate(names)}
  tokens, groups = _chunk([as_bytes(ex["text"]) for ex in examples],
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
    for split in splits_to_read(train_split, eval_split, test_split):
      data_source = tfds_source(name, split=split, data_dir=data_dir)
      out.append(_stdlib_lm_source(data_source, split=split, seq_len=seq_len,
                                   packing=packing, info=info))
  else:
    eval_split = eval_split or default_eval_split(dataset, data_dir)
    packing = True if packing is None else packing
    out = []
    for split in splits_to_read(train_split, eval_split, test_split):
      data_source = tfds_source(dataset, split=split, data_dir=data_dir)
      texts = [as_bytes(ex[text_key])
               for ex in read_all(data_source, max_examples)]
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
  return with_test(out, eval_split, test_split)
