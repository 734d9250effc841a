"""Random-access sources: byte-level LM sequences and labelled images.

A source is anything with `__len__` and `__getitem__(i) -> dict of numpy
arrays`. The sources here also have `get_batch(indices)`, a vectorised
gather that the round loader prefers, and `histogram(indices)`, the
distribution the heterogeneity figure compares.

Both kinds are read once from a TFDS data source (array_record, no
TensorFlow) and kept in host memory as uint8 (1 byte per token or pixel):
31.5 MB for the stdlib corpus, 47 MB for MNIST, 150 MB for CIFAR-10. For
datasets larger than memory (lm1b: about 4 GB of text) pass `max_examples`.

The LM sources are in `fedjax_lab.data.text`, the image sources in
`fedjax_lab.data.images` and the TFDS reading in `fedjax_lab.data.tfds_io`;
all are importable from here. This module holds what works on any source:
`gather` and the evaluation batches (`eval_plan`, `stratified_sample`).
"""

from typing import Dict, Iterator, List, Optional

import numpy as np

from fedjax_lab.data.images import image_sources  # noqa: F401 (re-exported)
from fedjax_lab.data.images import ImageSource  # noqa: F401 (re-exported)
from fedjax_lab.data.text import lm_sources  # noqa: F401 (re-exported)
from fedjax_lab.data.text import LMSource  # noqa: F401 (re-exported)
from fedjax_lab.data.tfds_io import STDLIB  # noqa: F401 (re-exported)
from fedjax_lab.data.tfds_io import tfds_source  # noqa: F401 (re-exported)


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
