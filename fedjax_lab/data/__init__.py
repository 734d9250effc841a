"""Data: the built-in stdlib corpus, TFDS sources, partitioners, round loader.

Typical use:

  train, evals = data.lm_sources(dataset='stdlib', data_dir=d, seq_len=128)
  shards = data.partition(train, 4, method='by_source')
  loader = data.RoundLoader(train, shards, batch_size=8, inner_steps=10, seed=0)
  round_batch = next(loader)  # {'tokens': int32 [4, 10, 8, 129]}

A population (N clients, M sampled per round):

  clients = data.client_partition(train, None, method='by_file')  # N files
  sampler = data.ClientSampler(len(clients), 10, seed=0)
  loader = data.PopulationLoader(train, clients, sampler, batch_size=8,
                                 local_epochs=1, seed=0)
  rnd = next(loader)  # rnd.batch [10, H_max, 8, 129], rnd.num_steps [10], ...
  store = data.ClientStateStore(zeros_like_params, len(clients))
"""

from fedjax_lab.data.client_state import ClientStateStore
from fedjax_lab.data.loader import RoundLoader
from fedjax_lab.data.partition import CLIENT_METHODS as CLIENT_PARTITION_METHODS
from fedjax_lab.data.partition import client_partition
from fedjax_lab.data.partition import file_ids
from fedjax_lab.data.partition import heterogeneity
from fedjax_lab.data.partition import jensen_shannon
from fedjax_lab.data.partition import METHODS as PARTITION_METHODS
from fedjax_lab.data.partition import partition
from fedjax_lab.data.population import client_steps
from fedjax_lab.data.population import ClientSampler
from fedjax_lab.data.population import PopulationLoader
from fedjax_lab.data.population import PopulationRound
from fedjax_lab.data.population import SAMPLING_KINDS
from fedjax_lab.data.sources import eval_batches
from fedjax_lab.data.sources import eval_plan
from fedjax_lab.data.sources import gather
from fedjax_lab.data.sources import image_sources
from fedjax_lab.data.sources import ImageSource
from fedjax_lab.data.sources import lm_sources
from fedjax_lab.data.sources import LMSource
from fedjax_lab.data.sources import stratified_sample
from fedjax_lab.data.sources import tfds_source
from fedjax_lab.data.stdlib_corpus import corpus_fingerprint
from fedjax_lab.data.stdlib_corpus import prepare_stdlib_corpus
from fedjax_lab.data.stdlib_corpus import StdlibPy
from fedjax_lab.data.stdlib_corpus import SUBSETS as STDLIB_SUBSETS

__all__ = [
    "CLIENT_PARTITION_METHODS",
    "PARTITION_METHODS",
    "SAMPLING_KINDS",
    "STDLIB_SUBSETS",
    "ClientSampler",
    "ClientStateStore",
    "ImageSource",
    "LMSource",
    "PopulationLoader",
    "PopulationRound",
    "RoundLoader",
    "StdlibPy",
    "client_partition",
    "client_steps",
    "corpus_fingerprint",
    "eval_batches",
    "eval_plan",
    "file_ids",
    "gather",
    "heterogeneity",
    "image_sources",
    "jensen_shannon",
    "lm_sources",
    "partition",
    "prepare_stdlib_corpus",
    "stratified_sample",
    "tfds_source",
]
