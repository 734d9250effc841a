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

The schemes themselves are in `fedjax_lab.data.schemes`, `client_partition`
in `fedjax_lab.data.clients` and `heterogeneity` in
`fedjax_lab.data.heterogeneity`; all are importable from here.
"""

from typing import List

from absl import logging
import numpy as np

from fedjax_lab.data import schemes
from fedjax_lab.data.clients import CLIENT_METHODS  # noqa: F401 (re-exported)
from fedjax_lab.data.clients import client_partition  # noqa: F401 (re-exported)
from fedjax_lab.data.clients import file_ids  # noqa: F401 (re-exported)
from fedjax_lab.data.heterogeneity import heterogeneity
from fedjax_lab.data.heterogeneity import jensen_shannon  # noqa: F401 (re-exported)

METHODS = ("iid", "by_source", "by_content", "dirichlet")

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
    shards = schemes.iid(n, num_replicas, rng)
  elif method == "by_source":
    if not hasattr(source, "groups"):
      raise ValueError("partition: by_source needs a source with .groups "
                       "(LM sources); for classification use dirichlet")
    shards = schemes.by_source(np.asarray(source.groups), num_replicas)
  elif method == "by_content":
    if getattr(source, "tokens", None) is None:
      raise ValueError("partition: by_content clusters byte histograms of an "
                       "LM source (.tokens); for classification use dirichlet")
    shards = schemes.by_content(source.tokens, num_replicas)
  elif method == "dirichlet":
    if not alpha > 0:
      raise ValueError(f"partition: dirichlet alpha must be > 0, got {alpha}")
    shards = schemes.dirichlet(schemes.dirichlet_labels(source, "partition"),
                               num_replicas, alpha, rng)
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
