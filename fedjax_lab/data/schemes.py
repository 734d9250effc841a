"""The partition schemes: how each cuts a dataset's indices into shards.

`iid`, `by_source`, `by_content` and `dirichlet` make `partition`'s M replica
shards (`fedjax_lab.data.partition`'s docstring describes each); `dirichlet`
with `sizes` also makes `client_partition`'s N Dirichlet clients. They return
unsorted index arrays (the callers sort them).
"""

from typing import List, Optional

import numpy as np


def iid(n: int, num_replicas: int, rng: np.random.Generator) -> List[np.ndarray]:
  return np.array_split(rng.permutation(n), num_replicas)


def by_source(groups: np.ndarray, num_replicas: int) -> List[np.ndarray]:
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


def _byte_features(tokens: np.ndarray, chunk: int = 8192) -> np.ndarray:
  """float32 [n, 256]: the square root of each sequence's byte frequencies."""
  tokens = np.asarray(tokens).reshape(len(tokens), -1)
  out = np.empty((len(tokens), 256), np.float32)
  for start in range(0, len(tokens), chunk):
    t = tokens[start:start + chunk].astype(np.int64)
    rows = np.arange(len(t))[:, None] * 256
    counts = np.bincount((rows + t).ravel(), minlength=len(t) * 256)
    out[start:start + len(t)] = np.sqrt(
        counts.reshape(len(t), 256) / t.shape[1])
  return out


def _sq_distances(x: np.ndarray, xx: np.ndarray,
                  centres: np.ndarray) -> np.ndarray:
  return xx[:, None] - 2.0 * (x @ centres.T) + (centres * centres).sum(1)[None]


def by_content(tokens: np.ndarray, num_replicas: int, *, iters: int = 5,
               seed: int = 0) -> List[np.ndarray]:
  """M equal shards of sequences with alike byte histograms.

  k-means (k-means++ start from `seed`, at most `iters` Lloyd steps: more
  tighten the clusters but do not raise the JSD on the stdlib corpus) on
  `_byte_features`, then a balanced assignment: sequences in order of how
  clearly they belong (the margin between their nearest and second-nearest
  centre) each take their nearest centre that still has room; the shards'
  sizes are `np.array_split`'s (differing by at most one).
  """
  x = _byte_features(tokens)
  xx = (x * x).sum(1)
  n, k = len(x), num_replicas
  rng = np.random.default_rng(seed)
  centres = x[[rng.integers(n)]]
  for _ in range(1, k):  # k-means++.
    d = _sq_distances(x, xx, centres).min(1).clip(0).astype(np.float64)
    pick = rng.choice(n, p=d / d.sum()) if d.sum() > 0 else rng.integers(n)
    centres = np.concatenate([centres, x[[pick]]])
  label = None
  for _ in range(iters):
    new = _sq_distances(x, xx, centres).argmin(1)
    if label is not None and np.array_equal(new, label):
      break
    label = new
    counts = np.bincount(label, minlength=k)
    sums = np.eye(k, dtype=np.float32)[label].T @ x
    centres = np.where(counts[:, None] > 0,
                       sums / np.maximum(counts, 1)[:, None], centres)
  d = _sq_distances(x, xx, centres)
  ranked = np.argsort(d, axis=1, kind="stable")
  nearest = np.take_along_axis(d, ranked, 1)
  margin = nearest[:, 0] - nearest[:, min(1, k - 1)]
  room = [len(s) for s in np.array_split(np.arange(n), k)]
  owner = np.empty(n, np.int64)
  ranked_rows = ranked.tolist()
  for i in np.argsort(margin, kind="stable").tolist():  # Clearest first.
    for c in ranked_rows[i]:
      if room[c]:
        owner[i] = c
        room[c] -= 1
        break
  return [np.flatnonzero(owner == c) for c in range(k)]


def dirichlet(labels: np.ndarray, num_replicas: int, alpha: float,
              rng: np.random.Generator,
              sizes: Optional[np.ndarray] = None) -> List[np.ndarray]:
  """Label-skewed shards; `sizes` (summing to len(labels)) default equal."""
  classes, counts = np.unique(labels, return_counts=True)
  mix = rng.dirichlet(np.full(len(classes), alpha), size=num_replicas)
  if sizes is None:
    need = np.array([len(s) for s in np.array_split(np.arange(len(labels)),
                                                    num_replicas)])
  else:
    need = np.array(sizes, np.int64)
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


def dirichlet_labels(source, field: str) -> np.ndarray:
  """What Dirichlet skew is over: the labels, or else the groups."""
  labels = getattr(source, "labels", None)
  if labels is None:
    labels = getattr(source, "groups", None)
  if labels is None:
    raise ValueError(f"{field}: dirichlet needs source.labels or .groups")
  return np.asarray(labels)
