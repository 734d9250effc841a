"""How unlike the whole a partition's shards are: the mean Jensen–Shannon
divergence of each shard's histogram (bytes for LM sources, labels for
classification) from the whole dataset's (`heterogeneity`)."""

from typing import Sequence

import numpy as np


def _histogram(source, indices=None) -> np.ndarray:
  """The distribution `heterogeneity` compares: bytes or labels."""
  if hasattr(source, "histogram"):
    return np.asarray(source.histogram(indices), np.float64)
  if hasattr(source, "labels"):
    labels = np.asarray(source.labels)
    return np.bincount(labels if indices is None else labels[indices],
                       minlength=int(labels.max()) + 1).astype(np.float64)
  raise ValueError("heterogeneity: source needs a histogram(indices) method "
                   "or a labels array")


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
  """Jensen–Shannon divergence (base 2) between two count vectors."""
  p = p / p.sum()
  q = q / q.sum()
  m = 0.5 * (p + q)

  def kl(a):
    nz = a > 0  # 0 · log 0 = 0; m > 0 wherever a > 0.
    return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

  return 0.5 * kl(p) + 0.5 * kl(q)


def heterogeneity(source, shards: Sequence[np.ndarray]) -> float:
  """Mean Jensen–Shannon divergence of each shard's histogram from the whole.

  Args:
    source: an LM source (byte histogram) or a labelled source (label
      histogram); see `_histogram`.
    shards: index arrays, one per replica.

  Returns:
    The mean JSD in [0, 1]: 0 when every shard looks like the whole.
  """
  whole = _histogram(source)
  return float(np.mean([jensen_shannon(_histogram(source, s), whole)
                        for s in shards]))
