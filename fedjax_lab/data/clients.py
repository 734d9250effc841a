"""Client partitions: a population's N client shards, N independent of M.

`client_partition` makes them (by_file, by_group, dirichlet, iid; see its
docstring); `file_ids` recovers which stdlib file each sequence came from,
for by_file.
"""

import os
from typing import List, Optional

from absl import logging
import numpy as np

from fedjax_lab.data import schemes
from fedjax_lab.data.heterogeneity import heterogeneity

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


def _check_client_args(method: str, num_clients: Optional[int],
                       min_examples: int, size_sigma: float) -> None:
  """`client_partition`'s arguments, each naming its config field."""
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


def _natural_clients(source, method: str, num_clients: Optional[int],
                     min_examples: int) -> List[np.ndarray]:
  """by_file / by_group: the source's files (groups) as clients."""
  if method == "by_file":
    units = file_ids(source)
  elif getattr(source, "groups", None) is None:
    raise ValueError("data.partition: by_group needs a source with .groups "
                     "(LM sources); for classification use dirichlet")
  else:
    units = np.asarray(source.groups)
  return _merge_units(units, num_clients, min_examples, method[3:])


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
  _check_client_args(method, num_clients, min_examples, size_sigma)
  rng = np.random.default_rng(seed)
  if method in ("by_file", "by_group"):
    shards = _natural_clients(source, method, num_clients, min_examples)
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
      shards = schemes.dirichlet(
          schemes.dirichlet_labels(source, "data.partition"), num_clients,
          alpha, rng, sizes)
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
