"""Partitioners of a source into M replica shards, and a heterogeneity figure.

Each partitioner returns M sorted int64 index arrays that are disjoint and
together cover every example exactly once.

* ``iid``: a random permutation cut into M shards whose sizes differ by at
  most one.
* ``by_source``: whole groups (`source.groups`, e.g. the stdlib's top-level
  packages) per replica, the natural heterogeneity of DiLoCo's non-iid C4
  clusters (Douillard et al., arXiv:2311.08105). Groups are dealt largest
  first to the replica with the fewest examples so far; one huge group (the
  stdlib's `test`) still makes its replica large.
* ``dirichlet``: label skew after Hsu et al., "Measuring the Effects of
  Non-Identical Data Distribution for Federated Visual Classification"
  (arXiv:1909.06335): replica r draws its class mix q_r ~ Dir(alpha · 1) and
  fills an equal-size shard from it. Large alpha ≈ iid; small alpha ≈ one
  label per shard.

`heterogeneity` is the mean over shards of the Jensen–Shannon divergence
(base 2, in [0, 1]) between the shard's histogram (bytes for LM sources,
labels for classification) and the whole dataset's.
"""

from typing import List, Sequence

from absl import logging
import numpy as np

METHODS = ("iid", "by_source", "dirichlet")


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


def _iid(n: int, num_replicas: int, rng: np.random.Generator) -> List[np.ndarray]:
  return np.array_split(rng.permutation(n), num_replicas)


def _by_source(groups: np.ndarray, num_replicas: int) -> List[np.ndarray]:
  ids, sizes = np.unique(groups, return_counts=True)
  if len(ids) < num_replicas:
    raise ValueError(f"partition: by_source needs at least {num_replicas} "
                     f"groups, the source has {len(ids)}")
  loads = np.zeros(num_replicas, np.int64)
  owner = {}
  # Largest first, ties by group id: deterministic, no seed needed.
  for k in sorted(range(len(ids)), key=lambda k: (-sizes[k], ids[k])):
    r = int(np.argmin(loads))
    owner[ids[k]] = r
    loads[r] += sizes[k]
  replica_of = np.array([owner[g] for g in ids])[np.searchsorted(ids, groups)]
  return [np.flatnonzero(replica_of == r) for r in range(num_replicas)]


def _dirichlet(labels: np.ndarray, num_replicas: int, alpha: float,
               rng: np.random.Generator) -> List[np.ndarray]:
  classes, counts = np.unique(labels, return_counts=True)
  mix = rng.dirichlet(np.full(len(classes), alpha), size=num_replicas)
  need = np.array([len(s) for s in np.array_split(np.arange(len(labels)),
                                                  num_replicas)])
  avail = counts.copy()
  take = np.zeros((num_replicas, len(classes)), np.int64)
  # Each pass, every replica still short draws its remaining need from its
  # own mix restricted to classes not yet used up; contested classes go to
  # whoever comes first in a fresh random order. Every draw that lands takes
  # at least one example, so the loop ends (total need == total available).
  while need.any():
    for r in rng.permutation(num_replicas):
      if not need[r]:
        continue
      p = np.where(avail > 0, mix[r], 0.0)
      if p.sum() <= 0:  # Its mix sits on exhausted classes: fall back to what is left.
        p = avail.astype(np.float64)
      draw = np.minimum(rng.multinomial(need[r], p / p.sum()), avail)
      take[r] += draw
      avail -= draw
      need[r] -= draw.sum()
  pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
  starts = np.concatenate([np.zeros((1, len(classes)), np.int64),
                           np.cumsum(take, axis=0)])
  return [np.concatenate([pools[c][starts[r, c]:starts[r + 1, c]]
                          for c in range(len(classes))])
          for r in range(num_replicas)]


def partition(source, num_replicas: int, *, method: str = "iid",
              alpha: float = 0.5, seed: int = 0) -> List[np.ndarray]:
  """Splits `source` into `num_replicas` disjoint shards covering it.

  Logs the shard sizes and the heterogeneity figure (absl INFO).

  Args:
    source: a source with `__len__`; by_source needs `source.groups`;
      dirichlet uses `source.labels`, or `source.groups` for LM sources.
    num_replicas: M, the number of shards.
    method: 'iid', 'by_source' or 'dirichlet'.
    alpha: Dirichlet concentration (dirichlet only); > 0.
    seed: seed for the random methods (by_source is deterministic).

  Returns:
    A list of M sorted int64 index arrays.

  Raises:
    ValueError: for an unknown method, a bad alpha or M, too few groups, or
      fewer examples than replicas.
  """
  n = len(source)
  if num_replicas < 1 or n < num_replicas:
    raise ValueError(f"partition: need 1 <= num_replicas <= len(source), got "
                     f"num_replicas={num_replicas}, len(source)={n}")
  rng = np.random.default_rng(seed)
  if method == "iid":
    shards = _iid(n, num_replicas, rng)
  elif method == "by_source":
    if not hasattr(source, "groups"):
      raise ValueError("partition: by_source needs a source with .groups "
                       "(LM sources); for classification use dirichlet")
    shards = _by_source(np.asarray(source.groups), num_replicas)
  elif method == "dirichlet":
    if not alpha > 0:
      raise ValueError(f"partition: dirichlet alpha must be > 0, got {alpha}")
    labels = getattr(source, "labels", None)
    if labels is None:
      labels = getattr(source, "groups", None)
    if labels is None:
      raise ValueError("partition: dirichlet needs source.labels or .groups")
    shards = _dirichlet(np.asarray(labels), num_replicas, alpha, rng)
  else:
    raise ValueError(f"partition: unknown method {method!r}; known: {METHODS}")
  shards = [np.sort(s).astype(np.int64) for s in shards]
  sizes = [len(s) for s in shards]
  logging.info("partition %s (alpha=%s, seed=%d): %d replicas, sizes min %d "
               "max %d: %s", method, alpha, seed, num_replicas, min(sizes),
               max(sizes), sizes)
  try:
    logging.info("partition %s: heterogeneity (mean JSD) %.5f", method,
                 heterogeneity(source, shards))
  except ValueError:
    pass  # A plain source without histogram or labels: nothing to compare.
  return shards
