"""`config.data`: which dataset, how it is split over replicas, how it is evaluated."""

import dataclasses

from fedjax_lab import spec
from fedjax_lab.data.partition import CLIENT_METHODS
from fedjax_lab.data.partition import METHODS
from fedjax_lab.data.stdlib_corpus import SUBSETS
from fedjax_lab.spec import field

# Every partition a config may name: M replica shards (METHODS) or, with a
# population (train.num_clients > 0), its clients (CLIENT_METHODS).
ALL_PARTITIONS = METHODS + tuple(p for p in CLIENT_METHODS if p not in METHODS)


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """The data group (fedjax_lab.data)."""
  dataset: str = field("stdlib")  # 'stdlib' (built-in, offline) or a prepared TFDS name.
  subset: str = field("small", spec.one_of(SUBSETS))  # stdlib subset.
  data_dir: str = field("")  # TFDS data dir; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets.
  # Replica shards: 'iid', 'by_source', 'by_content' or 'dirichlet'; with
  # train.num_clients > 0, client shards: 'by_file', 'by_group',
  # 'dirichlet' or 'iid'.
  partition: str = field("by_source", spec.one_of(ALL_PARTITIONS))
  alpha: float = field(0.5, spec.in_range(0.0, lo_open=True))  # Dirichlet concentration.
  eval_batch_size: int = field(64, spec.POSITIVE)  # Sequences per eval batch.
  # Evaluations during training: a fixed shuffled sample of this many
  # batches of each split, stratified by group; 0 = the whole split.
  eval_batches: int = field(16, spec.NONNEG)
  # The final evaluation of a completed run: batches of each split; 0 = all.
  final_eval_batches: int = field(0, spec.NONNEG)
  # The validation split, for choosing hyperparameters; '' = 'validation'
  # (else 'test' for TFDS datasets without one).
  eval_split: str = field("")
  # The split reported numbers come from (never used to choose anything);
  # '' = none.
  test_split: str = field("test")
  max_examples: int = field(0, spec.NONNEG)  # TFDS datasets: read at most this many; 0 = all.
  prefetch: int = field(2, spec.NONNEG)  # Rounds the loader prepares ahead (0 = none).
