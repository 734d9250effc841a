"""Checks a run config before anything is built or written.

Every mistake a user can make in a config (an unknown field, a wrong type, a
value out of range or not finite, an unknown algorithm or compressor, a bad
hyperparameter, a replica count that does not divide the devices, a seed
beyond uint32, a batch larger than the data) becomes ONE `ConfigError` whose
message names the field and what is allowed. The entry points turn it into
exit code 2 without a traceback.

Each group's fields are checked where they are defined, when
`fedjax_lab.config_schema.read` reads the config into its typed `Parts` (it
also builds the outer algorithm and the compressor, whose factories decide
which hyperparameters they take); this module holds the checks across groups
on those parts: the devices, the clock, the population and the data.
`validate` reads and checks, and returns the parts a run is built from.
"""

from typing import Optional

import ml_collections

from fedjax_lab import config_schema
from fedjax_lab.config_schema import ConfigError
from fedjax_lab.config_schema import Parts
from fedjax_lab.data.partition import CLIENT_METHODS as CLIENT_PARTITIONS
from fedjax_lab.data.partition import METHODS as PARTITIONS
from fedjax_lab.outer import async_rules
from fedjax_lab.spec import show


def check_consistency(parts: Parts, *, device_count: Optional[int]) -> None:
  """Cross-group checks that need no data (devices, the algorithm).

  `device_count` None: before the devices are known (a CLI checks the config
  before it starts JAX's runtime); the mesh checks that need the count wait
  for the call with it.
  """
  if parts.train.outer_drop_prob and parts.algorithm.every_step:
    raise ConfigError(
        f"train.outer_drop_prob: {parts.outer.name!r} synchronises every "
        "step (it has no outer gradient to drop); allowed: 0 for it, or an "
        "algorithm with an outer step")
  if device_count is None:
    return  # The mesh checks: with the count (the first is against it).
  n = parts.mesh.num_devices
  if n > device_count:
    raise ConfigError(f"mesh.num_devices: {n} devices asked for, this "
                      f"machine has {device_count}; allowed: 0 (no mesh), "
                      f"-1 (all) or 1..{device_count}")
  _check_mesh(parts, device_count if n == -1 else n)


def _check_mesh(parts: Parts, devices: int) -> None:
  """The replicas and the model axis fit a mesh of `devices` devices."""
  m, n = parts.train.num_replicas, parts.mesh.num_devices
  k = parts.mesh.model_devices
  if k > 1 and devices == 0:
    raise ConfigError(f"mesh.model_devices: {k} needs a mesh; set "
                      f"mesh.num_devices to -1 (all) or a multiple of {k}")
  if k > 1 and devices % k:
    raise ConfigError(
        f"mesh.model_devices: {k} must divide the mesh's {devices} devices "
        f"(mesh.num_devices={n}); allowed: 1 or a divisor of {devices}")
  shards = devices // k if devices > 0 else 0
  if shards > 0 and m % shards:
    raise ConfigError(
        f"train.num_replicas: {m} replicas do not divide over "
        f"mesh.num_devices={n} ({shards} replica slots); use a multiple of "
        f"{shards}, or set mesh.num_devices to a divisor of {m} or 0 (no mesh)")


def check_clock(parts: Parts) -> None:
  """The clock's profile fits the run (the deadline's check needs the task:
  `build`)."""
  ck, m = parts.clock, parts.train.num_replicas
  if len(ck.speeds) not in (0, m):
    raise ConfigError(f"clock.speeds: needs one speed per replica "
                      f"(train.num_replicas={m}) or () for all 1, got "
                      f"{len(ck.speeds)}: {show(tuple(ck.speeds))}")
  for field, uniform in (("bandwidths_gbps", "bandwidth_gbps"),
                         ("latencies_s", "latency_s")):
    values = getattr(ck, field)
    if len(values) not in (0, m):
      raise ConfigError(
          f"clock.{field}: needs one value per replica (train.num_replicas="
          f"{m}) or () for all clock.{uniform}, got {len(values)}: "
          f"{show(tuple(values))}")
  if ck.policy != "wait_all" and parts.algorithm.every_step:
    raise ConfigError(
        f"clock.policy: {ck.policy!r} changes how many local steps replicas "
        f"take, and {parts.outer.name!r} synchronises every step (no local "
        "steps); allowed: 'wait_all'")
  if ck.policy != "wait_all" and parts.train.num_clients:
    raise ConfigError(
        f"clock.policy: {ck.policy!r} with a population of clients "
        f"(train.num_clients={parts.train.num_clients}) is not supported "
        "yet (each client's examples would need rescaling); allowed: "
        "'wait_all'")
  if ck.policy == "async":
    check_async(parts)
  dylu = ck.policy == "dylu" or (ck.policy == "async" and ck.async_dylu)
  if dylu and ck.dylu_min_steps > parts.inner.steps:
    raise ConfigError(f"clock.dylu_min_steps: must be <= inner.steps="
                      f"{parts.inner.steps}, got {ck.dylu_min_steps}")


def check_async(parts: Parts) -> None:
  """clock.policy='async' (the engine's own refusals, `why_not_async`, come
  in build, where the engine is)."""
  ck, tc = parts.clock, parts.train
  if ck.straggler_prob:
    raise ConfigError(
        f"clock.straggler_prob: {show(ck.straggler_prob)} draws stragglers per "
        "round, and clock.policy='async' has no rounds to draw them in; "
        "allowed: 0 (give slow replicas through clock.speeds)")
  if tc.outer_drop_prob:
    raise ConfigError(
        f"train.outer_drop_prob: {show(tc.outer_drop_prob)} drops outer "
        "gradients per round, and clock.policy='async' applies each one as it "
        "arrives; allowed: 0")
  if ck.async_delay and "delay" not in async_rules.rule_hparams(ck.async_rule):
    raise ConfigError(
        f"clock.async_delay: {ck.async_delay} is Delayed Nesterov's N, and "
        f"clock.async_rule is {ck.async_rule!r}; allowed: 0")


def check_population(parts: Parts) -> None:
  """The population fields (train.num_clients ...) agree with each other.

  With train.num_clients = 0 (no population) they must keep their defaults;
  with N > 0, M = train.num_replicas clients fill the slots each round, and
  under sampling (N > M) only algorithms whose replica slots carry nothing
  from one round to the next (or carry it per client, SCAFFOLD's c_i, in
  the run's client store) are allowed.
  """
  tc = parts.train
  n, m = tc.num_clients, tc.num_replicas
  partition = parts.data.partition
  if not n:
    for field, default in (("clients_per_round", 0), ("local_epochs", 0),
                           ("max_local_steps", 0), ("sampling", "uniform")):
      if getattr(tc, field) != default:
        raise ConfigError(
            f"train.{field}: is for a population of clients; set "
            f"train.num_clients > 0, or leave it at {default!r} (got "
            f"{show(getattr(tc, field))})")
    if partition not in PARTITIONS:
      raise ConfigError(
          f"data.partition: {partition!r} makes clients, for a population "
          f"only: set train.num_clients > 0, or use one of {list(PARTITIONS)} "
          "for M replica shards")
    return
  if tc.clients_per_round not in (0, m):
    raise ConfigError(
        f"train.clients_per_round: must equal train.num_replicas={m} (the "
        f"replica slots the sampled clients fill) or be 0 (the same), got "
        f"{tc.clients_per_round}; set train.num_replicas instead")
  if n < m:
    raise ConfigError(f"train.num_clients: must be >= train.num_replicas={m} "
                      f"(clients sampled per round), got {n}")
  if partition not in CLIENT_PARTITIONS:
    raise ConfigError(
        f"data.partition: with train.num_clients > 0 the clients are made by "
        f"one of {list(CLIENT_PARTITIONS)}, got {partition!r} ('by_group' "
        "makes by_source's units clients)")
  if tc.max_local_steps and not tc.local_epochs:
    raise ConfigError(f"train.max_local_steps: caps train.local_epochs' "
                      f"steps; set local_epochs > 0 or leave it 0 (got "
                      f"{tc.max_local_steps})")
  outer, name = parts.algorithm, parts.outer.name
  if tc.local_epochs and outer.every_step:
    raise ConfigError(
        f"train.local_epochs: {name!r} is data-parallel (no local "
        f"steps to vary); use train.local_epochs=0 (inner.steps per round)")
  if n == m:
    return  # Every client every round: slot m is always client m.
  if not outer.restarts_replicas:
    raise ConfigError(
        f"outer.name: {name!r} keeps each replica's parameters across rounds, "
        f"which under client sampling (train.num_clients={n} > "
        f"train.num_replicas={m}) would pass one client's model to another; "
        "use train.num_clients=0 or = train.num_replicas")
  if not outer.every_step and not outer.reset_inner_state:
    raise ConfigError(
        f"outer.hparams.reset_inner_state: {name!r} keeps each replica slot's "
        f"inner optimizer state across rounds, which under client sampling "
        f"(train.num_clients={n} > train.num_replicas={m}) would pass one "
        "client's optimizer state to another; set it to True")


def check_data(parts: Parts, train_source, eval_source, shards) -> None:
  """The batch fits the data: every shard and the eval split."""
  b = parts.inner.batch_size
  smallest = min(len(s) for s in shards)
  if b > smallest:
    raise ConfigError(
        f"inner.batch_size: {b} is larger than the smallest replica shard "
        f"({smallest} examples of {len(train_source)}, "
        f"data.partition={parts.data.partition!r}); allowed: 1..{smallest}")
  if parts.data.eval_batch_size > len(eval_source):
    raise ConfigError(
        f"data.eval_batch_size: {parts.data.eval_batch_size} is larger than "
        f"the eval split ({len(eval_source)} examples); allowed: "
        f"1..{len(eval_source)}")


def validate(config: ml_collections.ConfigDict, *,
             device_count: Optional[int]) -> Parts:
  """Reads the config into its parts and runs every check that needs no data
  and no files, in order (those that need the device count only when it is
  given).

  Returns:
    The config's `Parts` (read once: build the run from them).

  Raises:
    ConfigError: the first problem found, naming its field.
  """
  parts = config_schema.read(config)
  check_consistency(parts, device_count=device_count)
  check_clock(parts)
  check_population(parts)
  return parts
