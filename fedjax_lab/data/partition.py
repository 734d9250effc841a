"""Partitioners into M replica shards or N client shards; a heterogeneity figure.

Each partitioner returns M sorted int64 index arrays that are disjoint and
together cover every example exactly once.

* ``iid``: a random permutation cut into M shards whose sizes differ by at
  most one.
* ``by_source``: whole groups (`source.groups`, e.g. the stdlib's top-level
  packages) per replica, the natural heterogeneity of DiLoCo's non-iid C4
  clusters (Douillard et al., arXiv:2311.08105). Groups are dealt largest
  first to the replica with the fewest examples so far; one huge group (the
  stdlib's `test`) still makes its replica large.
* ``by_content``: feature skew for LM sources: the sequences clustered into
  M equal shards by their byte histograms (balanced k-means on the
  histograms' square roots, the Hellinger embedding), so each replica sees
  text of another kind (prose of docstrings and comments, indented code,
  string literals, ...). Deterministic (its k-means starts from a fixed
  seed: the same islands for every training seed). On the stdlib `small`
  subset at M = 4 its mean JSD is ~4× by_source's, near the most an
  equal-size partition of these bytes reaches (docs/results.md).
* ``dirichlet``: label skew after Hsu et al., "Measuring the Effects of
  Non-Identical Data Distribution for Federated Visual Classification"
  (arXiv:1909.06335): replica r draws its class mix q_r ~ Dir(alpha · 1) and
  fills an equal-size shard from it. Large alpha ≈ iid; small alpha ≈ one
  label per shard.

`client_partition` makes a population instead: N client shards with N
independent of M (natural ones: a stdlib source file or top-level package
per client; or Dirichlet label skew / iid over N clients), for the sampler
and loader in `population.py` and `loader.PopulationLoader`.

`heterogeneity` is the mean over shards of the Jensen–Shannon divergence
(base 2, in [0, 1]) between the shard's histogram (bytes for LM sources,
labels for classification) and the whole dataset's.
"""

import os
from typing import List, Optional, Sequence

from absl import logging
import numpy as np

METHODS = ("iid", "by_source", "by_content", "dirichlet")


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


def _by_content(tokens: np.ndarray, num_replicas: int, *, iters: int = 5,
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


def _dirichlet(labels: np.ndarray, num_replicas: int, alpha: float,
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


def _dirichlet_labels(source, field: str) -> np.ndarray:
  """What Dirichlet skew is over: the labels, or else the groups."""
  labels = getattr(source, "labels", None)
  if labels is None:
    labels = getattr(source, "groups", None)
  if labels is None:
    raise ValueError(f"{field}: dirichlet needs source.labels or .groups")
  return np.asarray(labels)


def partition(source, num_replicas: int, *, method: str = "iid",
              alpha: float = 0.5, seed: int = 0) -> List[np.ndarray]:
  """Splits `source` into `num_replicas` disjoint shards covering it.

  Logs the shard sizes and the heterogeneity figure (absl INFO).

  Args:
    source: a source with `__len__`; by_source needs `source.groups`,
      by_content `source.tokens`; dirichlet uses `source.labels`, or `source.groups` for LM sources.
    num_replicas: M, the number of shards.
    method: 'iid', 'by_source', 'by_content' or 'dirichlet'.
    alpha: Dirichlet concentration (dirichlet only); > 0.
    seed: seed for the random methods (by_source and by_content are
      deterministic).

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
  elif method == "by_content":
    if getattr(source, "tokens", None) is None:
      raise ValueError("partition: by_content clusters byte histograms of an "
                       "LM source (.tokens); for classification use dirichlet")
    shards = _by_content(source.tokens, num_replicas)
  elif method == "dirichlet":
    if not alpha > 0:
      raise ValueError(f"partition: dirichlet alpha must be > 0, got {alpha}")
    shards = _dirichlet(_dirichlet_labels(source, "partition"), num_replicas,
                        alpha, rng)
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


# ---- Populations: N client shards, N independent of the M replica slots. ----

CLIENT_METHODS = ("by_file", "by_group", "dirichlet", "iid")


def file_ids(source) -> np.ndarray:
  """Which source file each sequence of an LM source came from.

  A source that records it (an int array attribute `file_ids`) is used as is.
  For the built-in stdlib corpus cut without packing (`lm_sources`' default),
  the ids are re-derived from the interpreter's own files: sequences are laid
  out file after file in path order, `len(file) // (seq_len + 1)` per file.
  The derivation is checked against the source (same corpus fingerprint, same
  total, same groups, and every sequence equal to its file's bytes), so a
  packed or otherwise different source is refused, not mislabelled.

  Args:
    source: an `LMSource` (the stdlib corpus, split 'train' or 'validation').

  Returns:
    int64 [len(source)], file ids in path order (files too short for one
    sequence have no id).

  Raises:
    ValueError: naming `data.partition` when the ids cannot be had.
  """
  recorded = getattr(source, "file_ids", None)
  if recorded is not None:
    return np.asarray(recorded, np.int64)
  from fedjax_lab.data import stdlib_corpus  # pylint: disable=g-import-not-at-top
  info = getattr(source, "info", {}) or {}
  if info.get("dataset") != "stdlib":
    raise ValueError(
        "data.partition: by_file needs per-file ids, which only the built-in "
        f"stdlib corpus has; this source is {info.get('dataset')!r} (use "
        "by_group, dirichlet or iid)")
  subset, split = info.get("subset"), info.get("split")
  splits = stdlib_corpus.SPLITS
  if split not in splits:
    raise ValueError(f"data.partition: by_file derives file ids for the splits "
                     f"{splits} only, not {split!r}")
  stored = (info.get("fingerprint") or {}).get("sha256")
  if stored != stdlib_corpus.corpus_fingerprint(subset=subset)["sha256"]:
    raise ValueError("data.partition: by_file: this source was made from "
                     "another standard library than this interpreter's")
  paths = [p for p in stdlib_corpus.list_files(subset=subset)
           if stdlib_corpus.split_of(p) == split]
  root, width = stdlib_corpus.stdlib_root(), source.seq_len + 1
  full = [os.path.join(root, *p.split("/")) for p in paths]
  counts = np.array([os.path.getsize(f) // width for f in full], np.int64)
  ids = np.repeat(np.arange(len(paths), dtype=np.int64), counts)
  group_of = {name: g for g, name in enumerate(source.group_names)}
  groups = np.repeat([group_of.get(stdlib_corpus.source_name(p), -1)
                      for p in paths], counts)
  ok = len(ids) == len(source) and np.array_equal(groups, source.groups)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  for f, start, count in zip(full, starts, counts):
    if not ok:
      break
    if count:
      with open(f, "rb") as fh:
        rows = np.frombuffer(fh.read(count * width), np.uint8)
      ok = np.array_equal(rows.reshape(count, width),
                          source.tokens[start:start + count])
  if not ok:
    raise ValueError("data.partition: by_file cannot recover file ids: the "
                     "source is not the stdlib corpus cut file by file "
                     "(was it made with packing=True?)")
  return ids


def _merge_units(unit_of: np.ndarray, num_clients: Optional[int],
                 min_examples: int, what: str) -> List[np.ndarray]:
  """Natural units (files, groups) as clients, merged down to `num_clients`.

  Units with fewer than `min_examples` examples are dropped (their examples go
  to no client, as small users are filtered from Stack Overflow). When fewer
  clients than units are asked for, the units (in id order, i.e. path order)
  are cut into `num_clients` runs of consecutive units whose counts differ by
  at most one: neighbouring files of one package stay together, and clients
  keep the natural spread of sizes.
  """
  ids, inverse, sizes = np.unique(unit_of, return_inverse=True,
                                  return_counts=True)
  kept = np.flatnonzero(sizes >= min_examples)
  if num_clients is None:
    num_clients = len(kept)
  if not 1 <= num_clients <= len(kept):
    raise ValueError(
        f"train.num_clients: {what} gives {len(kept)} clients with at least "
        f"{min_examples} examples (of {len(ids)} {what}s); got "
        f"num_clients={num_clients}")
  client_of_unit = np.full(len(ids), -1, np.int64)
  for c, run in enumerate(np.array_split(kept, num_clients)):
    client_of_unit[run] = c
  client_of = client_of_unit[inverse]
  order = np.argsort(client_of, kind="stable")
  bounds = np.searchsorted(client_of[order], np.arange(num_clients + 1))
  return [order[bounds[c]:bounds[c + 1]] for c in range(num_clients)]


def _client_sizes(n: int, num_clients: int, sigma: float, min_examples: int,
                  rng: np.random.Generator) -> np.ndarray:
  """Sizes summing to n, each >= min_examples: equal, or lognormal(0, sigma)."""
  if sigma == 0:
    return np.array([len(s) for s in np.array_split(np.arange(n), num_clients)])
  spare = n - num_clients * min_examples
  raw = rng.lognormal(0.0, sigma, num_clients)
  raw = raw / raw.sum() * spare
  sizes = np.floor(raw).astype(np.int64)
  # Largest remainders first, so the sizes sum to exactly n.
  sizes[np.argsort(sizes - raw, kind="stable")[:spare - sizes.sum()]] += 1
  return sizes + min_examples


def client_partition(source, num_clients: Optional[int] = None,
                     method: str = "by_file", *, alpha: float = 0.5,
                     seed: int = 0, min_examples: int = 1,
                     size_sigma: float = 0.0) -> List[np.ndarray]:
  """Splits `source` into N disjoint client shards, N independent of M.

  Methods:

  * ``by_file``: a source file is a client (as a user is in Stack Overflow;
    stdlib corpus only, see `file_ids`). Deterministic.
  * ``by_group``: a group (`source.groups`: the stdlib's top-level package or
    module) is a client. Deterministic.
  * ``dirichlet``: label skew (Hsu et al., arXiv:1909.06335) over N clients:
    client i draws its class mix from Dir(alpha · 1). Sizes are equal
    (differing by at most one, as in Hsu et al.) when `size_sigma` is 0; with
    `size_sigma` > 0 they are proportional to lognormal(0, size_sigma) draws
    (quantity skew) on top of `min_examples` each. Covers every example.
  * ``iid``: a random permutation cut into N equal shards. Covers every example.

  For the natural methods, `num_clients=None` takes every file (group) with at
  least `min_examples` examples as a client; a smaller `num_clients` merges
  consecutive files (groups) in path order, see `_merge_units`. Files (groups)
  below `min_examples` are left out, so those shards cover all but them.

  Args:
    source: a source with `__len__`; by_group needs `.groups`, dirichlet
      `.labels` (or `.groups` for LM sources).
    num_clients: N; None only for by_file / by_group (all natural clients).
    method: one of `CLIENT_METHODS`.
    alpha: Dirichlet concentration (> 0).
    seed: seed of the random methods.
    min_examples: the fewest examples a client may have (>= 1).
    size_sigma: lognormal spread of dirichlet / iid client sizes (>= 0).

  Returns:
    N sorted int64 index arrays, disjoint, each with >= min_examples indices.

  Raises:
    ValueError: naming the config field at fault (`data.partition`,
      `train.num_clients`, `data.alpha`, ...).
  """
  n = len(source)
  if method not in CLIENT_METHODS:
    raise ValueError(f"data.partition: unknown client partition {method!r}; "
                     f"known: {CLIENT_METHODS}")
  if int(min_examples) != min_examples or min_examples < 1:
    raise ValueError(f"data.min_client_examples: must be an int >= 1, got "
                     f"{min_examples}")
  if num_clients is not None and (int(num_clients) != num_clients
                                  or num_clients < 1):
    raise ValueError(f"train.num_clients: must be an int >= 1, got "
                     f"{num_clients}")
  if not size_sigma >= 0:
    raise ValueError(f"data.size_sigma: must be >= 0, got {size_sigma}")
  rng = np.random.default_rng(seed)
  if method in ("by_file", "by_group"):
    if method == "by_file":
      units = file_ids(source)
    elif getattr(source, "groups", None) is None:
      raise ValueError("data.partition: by_group needs a source with .groups "
                       "(LM sources); for classification use dirichlet")
    else:
      units = np.asarray(source.groups)
    shards = _merge_units(units, num_clients, min_examples, method[3:])
  else:
    if num_clients is None or num_clients * min_examples > n:
      raise ValueError(
          f"train.num_clients: {method} needs num_clients with num_clients × "
          f"min_examples <= {n} examples, got num_clients={num_clients}, "
          f"min_examples={min_examples}")
    sizes = _client_sizes(n, num_clients, size_sigma, min_examples, rng)
    if method == "iid":
      shards = np.split(rng.permutation(n), np.cumsum(sizes)[:-1])
    else:
      if not alpha > 0:
        raise ValueError(f"data.alpha: dirichlet alpha must be > 0, got {alpha}")
      shards = _dirichlet(_dirichlet_labels(source, "data.partition"),
                          num_clients, alpha, rng, sizes)
  shards = [np.sort(s).astype(np.int64) for s in shards]
  sizes = np.array([len(s) for s in shards])
  logging.info("client_partition %s: %d clients covering %d of %d examples; "
               "sizes min %d median %d max %d", method, len(shards),
               sizes.sum(), n, sizes.min(), int(np.median(sizes)), sizes.max())
  try:
    logging.info("client_partition %s: heterogeneity (mean JSD) %.5f", method,
                 heterogeneity(source, shards))
  except ValueError:
    pass  # A plain source without histogram or labels: nothing to compare.
  return shards
