"""Data: the built-in stdlib corpus, TFDS sources, partitioners, round loader.

Typical use:

  train, evals = data.lm_sources(dataset='stdlib', data_dir=d, seq_len=128)
  shards = data.partition(train, 4, method='by_source')
  loader = data.RoundLoader(train, shards, batch_size=8, inner_steps=10, seed=0)
  round_batch = next(loader)  # {'tokens': int32 [4, 10, 8, 129]}
"""

from fedjax_lab.data.loader import RoundLoader
from fedjax_lab.data.partition import heterogeneity
from fedjax_lab.data.partition import jensen_shannon
from fedjax_lab.data.partition import METHODS as PARTITION_METHODS
from fedjax_lab.data.partition import partition
from fedjax_lab.data.sources import eval_batches
from fedjax_lab.data.sources import gather
from fedjax_lab.data.sources import image_sources
from fedjax_lab.data.sources import ImageSource
from fedjax_lab.data.sources import lm_sources
from fedjax_lab.data.sources import LMSource
from fedjax_lab.data.sources import tfds_source
from fedjax_lab.data.stdlib_corpus import corpus_fingerprint
from fedjax_lab.data.stdlib_corpus import prepare_stdlib_corpus
from fedjax_lab.data.stdlib_corpus import StdlibPy
from fedjax_lab.data.stdlib_corpus import SUBSETS as STDLIB_SUBSETS

__all__ = [
    "PARTITION_METHODS",
    "STDLIB_SUBSETS",
    "ImageSource",
    "LMSource",
    "RoundLoader",
    "StdlibPy",
    "corpus_fingerprint",
    "eval_batches",
    "gather",
    "heterogeneity",
    "image_sources",
    "jensen_shannon",
    "lm_sources",
    "partition",
    "prepare_stdlib_corpus",
    "tfds_source",
]
