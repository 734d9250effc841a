"""Building a run from a config: everything, once, before anything is written.

`build_run(config, workdir)` validates the config, checks the workdir and data
dir, estimates the memory the run needs (refusing one that cannot fit, with
the field to change), loads the data, builds the task, the inner optimizer,
the outer algorithm, the compressor and the engine, and compares the config
with the one a workdir was started with. The memory checks are in
`fedjax_lab.run.memory` (importable from here). A mistake anywhere is one
`ConfigError` naming the field, and the workdir is left untouched.

With `train.num_clients` = N > 0 the run is a federated population: N
client shards (`data.client_partition`), a `ClientSampler` choosing
M = `train.num_replicas` of them per round, and, for an algorithm with
per-client state (SCAFFOLD's c_i), a host `ClientStateStore` for all N
clients, which the loop gathers into the replica slots before each round
and scatters back after it. Inner optimizer state is never per client: an
algorithm that keeps it across rounds (reset_inner_state=False) is refused
under sampling (config_validation.check_population).
"""

import copy
import dataclasses
import functools
import os
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

import jax
import ml_collections
import numpy as np

from fedjax_lab import config_validation
from fedjax_lab import data as data_lib
from fedjax_lab import distributed
from fedjax_lab import inner_opt as inner_opt_lib
from fedjax_lab.config_schema import Parts
from fedjax_lab.config_validation import ConfigError
from fedjax_lab.engine import Engine
from fedjax_lab.engine import replica_mesh
from fedjax_lab.fragments import FragmentSchedule
from fedjax_lab.models import tasks as tasks_lib
from fedjax_lab.run import async_rounds
from fedjax_lab.run import progress
from fedjax_lab.run import simclock
from fedjax_lab.run import workdir as workdir_lib
from fedjax_lab.run.memory import available_bytes  # noqa: F401 (re-exported)
from fedjax_lab.run.memory import check_compiled_memory
from fedjax_lab.run.memory import check_memory
from fedjax_lab.run.memory import GIB


class Run(NamedTuple):
  """A run, built: what the loop needs and nothing it has to work out."""
  config: ml_collections.ConfigDict  # As given (config.json; resume compares it).
  parts: Parts  # The config read once: what everything reads.
  workdir: str
  task: tasks_lib.Task
  train_src: Any
  eval_src: Any  # The validation split (data.eval_split): tuning, curves.
  test_src: Any  # The test split (data.test_split): reported numbers; or None.
  shards: List[Any]
  engine: Engine
  params: Any
  replica_ids: List[int]
  schedule_steps: int
  comm: Dict[str, float]
  tokens_per_round: int
  started_with: Optional[Dict[str, Any]]  # config.json of a resumed workdir.
  # The round's step axis H: inner.steps, or a population's most local steps
  # (train.local_epochs); the one H the loop, summary and clock read.
  inner_steps: int
  population: Optional["Population"] = None  # train.num_clients > 0 only.
  clock: Any = None  # The simulated clock (fedjax_lab.clock.Clock).
  # clock.policy='async': the `AsyncSimulator` the loop's rounds run on.
  async_sim: Any = None

  @property
  def counts_own_tokens(self) -> bool:
    """Whether the loop counts tokens as the work happens (async arrivals'
    own steps, clients' own epochs), not as rounds × tokens_per_round."""
    return self.async_sim is not None or (
        self.population is not None and bool(self.population.local_epochs))


class Population(NamedTuple):
  """A run's federated population: N clients, M sampled per round.

  Attributes:
    sampler: the `ClientSampler` (M of N per round, a function of the round).
    store: per-client algorithm state [N, ...] in host memory
      (`ClientStateStore`), or None for algorithms without (FedAvg, FedOpt).
    local_epochs: E (0 = a fixed inner.steps per client).
    max_steps: the cap on a client's local steps (local_epochs only), or None.
  """
  sampler: Any
  store: Any
  local_epochs: int
  max_steps: Optional[int]


@functools.lru_cache(maxsize=4)
def _sources(data, model: tasks_lib.ModelSpec):
  """(train, eval, test) sources, cached per process (comparison arms share them)."""
  return tasks_lib.kind(model.kind).sources(data, model)


def load_sources(parts: Parts):
  """The task kind's (train, eval, test) sources; data mistakes as ConfigError."""
  try:
    return _sources(parts.data, parts.model)
  except (ValueError, KeyError) as e:
    raise ConfigError(f"data.dataset: {e}") from None
  except OSError as e:
    raise ConfigError(f"data.data_dir: {e}") from None


def _check_dirs(parts: Parts, workdir: str) -> None:
  workdir_lib.check_path("--workdir", workdir, write=True)
  data_dir = parts.data.data_dir or os.environ.get(
      "TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))
  # The built-in corpus is prepared (under a lock file) in the data dir.
  workdir_lib.check_path("data.data_dir", data_dir, depth=0,
                         write=parts.data.dataset == "stdlib")


def _engine(parts: Parts, task, schedule_steps: int, loss_fn,
            inner_steps: int) -> Engine:
  mesh = None
  if parts.mesh.num_devices:
    mesh = replica_mesh(None if parts.mesh.num_devices == -1
                        else parts.mesh.num_devices,
                        model_devices=parts.mesh.model_devices)
  ec = parts.engine
  try:
    return Engine(
        loss_fn or task.loss_fn,
        inner_opt=inner_opt_lib.make_inner_opt(parts.inner, schedule_steps),
        outer=parts.algorithm, num_replicas=parts.train.num_replicas,
        inner_steps=inner_steps, mesh=mesh, compressor=parts.compressor,
        replica_mode=ec.replica_mode,
        fragments=FragmentSchedule(ec.num_fragments, ec.overlap_steps,
                                   ec.merge_alpha),
        min_shard_size=parts.mesh.min_shard_size)
  except (ValueError, TypeError) as e:
    raise ConfigError(engine_error(e)) from None


# Where the engine's and the algorithms' refusals come from in the config.
_ENGINE_FIELDS = {"num_fragments": "engine.num_fragments",
                  "overlap_steps": "engine.overlap_steps",
                  "merge_alpha": "engine.merge_alpha",
                  "outer": "outer.name", "compressor": "comm.compressor",
                  "group_size": "outer.hparams.group_size",
                  "inner.optimizer": "inner.optimizer"}


def engine_error(error: Exception) -> str:
  """An engine or algorithm refusal, under the config field it is about."""
  text = " ".join(str(error).split())
  head, _, rest = text.partition(" ")
  for key, field in _ENGINE_FIELDS.items():
    if head.rstrip(":") == key:
      return f"{field}: {rest}" if head.endswith(":") else f"{field}: {text}"
  return f"engine: {text}"


def build_run(config: ml_collections.ConfigDict, workdir: str, *,
          replica_ids: Optional[Sequence[int]] = None,
          wrap_loss: Optional[Callable[[Callable], Callable]] = None) -> Run:
  """Validates `config` and builds the run; writes nothing.

  Args:
    config: a run config (configs/default.py documents every field).
    workdir: the run's directory (may not exist yet).
    replica_ids: the replicas this process feeds (default: those on its
      devices).
    wrap_loss: loss_fn -> loss_fn, applied to the task's loss (tests inject
      faults with it).

  Raises:
    ConfigError: the first mistake found, naming its field.
  """
  config = copy.deepcopy(config)
  parts = config_validation.validate(config, device_count=jax.device_count())
  _check_dirs(parts, workdir)
  if jax.process_index() == 0:
    workdir_lib.probe_lock(workdir)
  check_memory(parts)
  train_src, eval_src, test_src = load_sources(parts)
  try:
    task = parts.task_kind.build(parts.model, train_src)
  except ValueError as e:
    raise ConfigError(f"model.hidden: {e}") from None
  estimate = check_memory(parts, task.num_params)
  progress.say("memory estimate: %s of %.3g GiB available",
               ", ".join(f"{k} {v / GIB:.3g} GiB" for k, v in estimate.items()
                         if k != "limit"), estimate["limit"] / GIB)
  shards, inner_steps, sampler = _shards(parts, train_src, eval_src)
  # The parts as the memory estimate and lr schedule see them: H is the step
  # axis (local epochs' most steps with train.local_epochs).
  sized = parts
  if inner_steps != parts.inner.steps:
    sized = parts._replace(inner=dataclasses.replace(parts.inner,
                                                     steps=inner_steps))
    check_memory(sized, task.num_params)
  started_with = workdir_lib.check_resumable(workdir, config)
  schedule_steps, origin = workdir_lib.schedule_horizon(sized, started_with)
  if started_with is not None and not parts.inner.schedule_steps:
    progress.say("lr schedule: decays over %d steps (%s)", schedule_steps,
                 origin)
  loss_fn = wrap_loss(task.loss_fn) if wrap_loss else None
  engine = _engine(parts, task, schedule_steps, loss_fn, inner_steps)
  if replica_ids is None:
    replica_ids = distributed.local_replica_ids(
        engine.mesh, engine.num_replicas, engine.axis_name if engine.mesh
        else None)
  params = task.init(jax.random.PRNGKey(parts.model.init_seed))
  try:
    engine.check(params)
  except ValueError as e:
    raise ConfigError(engine_error(e)) from None
  check_compiled_memory(parts, engine, params,
                        train_src.get_batch(np.zeros(
                            [parts.inner.batch_size], np.int64)),
                        len(replica_ids), inner_steps)
  population = None
  if parts.train.num_clients:
    population = _population(parts, sized, task, engine, params, sampler)
  clock = simclock.build_clock(parts, task, engine, params)
  async_sim = None
  if parts.clock.policy == "async":
    async_sim = async_rounds.build_simulator(parts, engine, clock, params)
  m, b = parts.train.num_replicas, parts.inner.batch_size
  return Run(config=config, parts=parts, workdir=workdir, task=task,
             train_src=train_src, eval_src=eval_src, test_src=test_src,
             shards=list(shards), engine=engine,
             params=params, replica_ids=[int(r) for r in replica_ids],
             schedule_steps=schedule_steps, comm=engine.comm_bytes(params),
             tokens_per_round=m * inner_steps * b * parts.task_kind.example_units(
                 parts.model),
             started_with=started_with, inner_steps=inner_steps,
             population=population, clock=clock, async_sim=async_sim)


def _shards(parts: Parts, train_src, eval_src):
  """(replica or client shards, the round's step axis H, sampler or None)."""
  if parts.train.num_clients:
    shards, inner_steps, sampler = _population_data(parts, train_src)
    # A client smaller than B is filled up by repeating its examples.
    config_validation.check_data(parts, train_src, eval_src,
                                 [np.arange(len(train_src))])
    return shards, inner_steps, sampler
  try:
    shards = data_lib.partition(train_src, parts.train.num_replicas,
                                method=parts.data.partition,
                                alpha=parts.data.alpha,
                                seed=parts.train.seed)
  except ValueError as e:
    raise ConfigError(f"data.partition: {e}") from None
  config_validation.check_data(parts, train_src, eval_src, shards)
  return shards, parts.inner.steps, None


def _population(parts: Parts, sized, task, engine, params, sampler) -> Population:
  """The population's sampler and client store (its memory checked first).

  `sized` is the parts as the memory estimate sees it (H the step axis).
  """
  abstract = engine.abstract_state(params)
  _check_sampling_state(parts, abstract)
  client_template = jax.tree.map(
      lambda x: np.zeros(x.shape[1:], x.dtype), abstract.client_state)
  store = None
  if jax.tree.leaves(client_template):
    per_client = sum(x.nbytes for x in jax.tree.leaves(client_template))
    check_memory(sized, task.num_params,
                 client_state_bytes=per_client * parts.train.num_clients)
    store = data_lib.ClientStateStore(client_template,
                                      parts.train.num_clients)
    progress.say("%s", store.memory_line())
  tc = parts.train
  return Population(
      sampler=sampler, store=store, local_epochs=tc.local_epochs,
      max_steps=(tc.max_local_steps or None) if tc.local_epochs else None)


def _population_data(parts: Parts, train_src):
  """(client shards, the round's step axis H, sampler) of a population."""
  tc, b = parts.train, parts.inner.batch_size
  try:
    shards = data_lib.client_partition(
        train_src, tc.num_clients, method=parts.data.partition,
        alpha=parts.data.alpha, seed=tc.seed)
  except ValueError as e:
    raise ConfigError(_named(e, "data.partition")) from None
  sizes = np.array([len(s) for s in shards], np.int64)
  if tc.local_epochs:
    most = int(data_lib.client_steps(sizes, b, tc.local_epochs).max())
    inner_steps = tc.max_local_steps or most
  else:
    inner_steps = parts.inner.steps
  try:
    sampler = data_lib.ClientSampler(
        tc.num_clients, tc.num_replicas, kind=tc.sampling, sizes=sizes,
        seed=tc.seed)
  except ValueError as e:
    raise ConfigError(_named(e, "train.sampling")) from None
  return shards, inner_steps, sampler


def _named(error: Exception, default_field: str) -> str:
  """The data layer's message, which names its field; else `default_field`."""
  text = " ".join(str(error).split())
  head = text.split(":", 1)[0]
  if "." in head and " " not in head:
    return text
  return f"{default_field}: {text}"


def _check_sampling_state(parts: Parts, abstract_state) -> None:
  """Under sampling (N > M), no replica slot may carry state between clients.

  Per-client algorithm state goes through the client store; the compressor's
  per-replica state (error feedback) would not, so it is refused here, where
  the engine says whether it has any.
  """
  if parts.train.num_clients <= parts.train.num_replicas:
    return
  if jax.tree.leaves(abstract_state.comm_state):
    field = ("comm.hparams.ef" if parts.comm.hparams.get("ef")
             else "comm.compressor")
    raise ConfigError(
        f"{field}: compressor {parts.comm.name!r} keeps per-replica "
        f"state (error feedback) across rounds, which under client sampling "
        f"(train.num_clients={parts.train.num_clients} > train.num_replicas="
        f"{parts.train.num_replicas}) would pass from one client to another; "
        "use a compressor without it (or ef=False)")
