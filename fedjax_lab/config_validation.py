"""Checks a run config before anything is built or written.

Every mistake a user can make in a config (an unknown field, a wrong type, a
value out of range or not finite, an unknown algorithm or compressor, a bad
hyperparameter, a replica count that does not divide the devices, a seed
beyond uint32, a batch larger than the data) becomes ONE `ConfigError` whose
message names the field and what is allowed. The entry points turn it into
exit code 2 without a traceback.

The schema (each field's type and range, the open hparams groups) is in
`fedjax_lab.config_schema`; this module holds the checks across fields: the
chosen outer algorithm and compressor accept their hparams (the entry's own
list, `fedjax_lab.outer.hparams(name)` or `fedjax_lab.comm.compress.hparams`,
decides which may be set), the devices and the model's shape, the clock, the
population and the data. `validate` runs them all in order.
"""

import inspect
import math
import re
from typing import Any, Dict

import ml_collections

from fedjax_lab import outer as outer_lib
from fedjax_lab.comm import compress as compress_lib
from fedjax_lab.config_schema import add_unset_hparams  # noqa: F401 (re-exported)
from fedjax_lab.config_schema import check_schema
from fedjax_lab.config_schema import CLIENT_PARTITIONS
from fedjax_lab.config_schema import comm_hparams
from fedjax_lab.config_schema import ConfigError
from fedjax_lab.config_schema import outer_hparams
from fedjax_lab.config_schema import PARTITIONS
from fedjax_lab.config_schema import registry_hparams  # noqa: F401 (re-exported)
from fedjax_lab.config_schema import SCHEMA  # noqa: F401 (re-exported)
from fedjax_lab.config_schema import show
from fedjax_lab.models import tasks as tasks_lib
from fedjax_lab.outer import async_rules


def _check_open(prefix: str, owner: str, hp: Dict[str, Any], allowed) -> None:
  for field, value in hp.items():
    if field not in allowed:
      raise ConfigError(
          f"{prefix}.{field}: not a hyperparameter of {owner}; allowed: "
          f"{', '.join(sorted(allowed)) or 'none'}")
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f"{prefix}.{field}: must be a finite number, got "
                        f"{show(value)}")


def _registry_error(prefix: str, allowed, error: Exception) -> str:
  """A factory's refusal, under the name of the hparam it is about."""
  text = " ".join(str(error).split())
  words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
  named = [k for k in allowed if k in words]
  field = f"{prefix}.{named[0]}" if len(named) == 1 else prefix
  return f"{field}: {text}"


def check_registries(config) -> None:
  """The outer algorithm and compressor exist and accept their hparams."""
  name = config.outer.name
  hp = outer_hparams(config)
  allowed = outer_lib.hparams(name)
  _check_open("outer.hparams", f"outer algorithm {name!r}", hp, allowed)
  check_inner_for_outer(config)
  try:
    outer_lib.get(name, **hp)
  except (ValueError, TypeError) as e:
    raise ConfigError(_registry_error("outer.hparams", allowed, e)) from None
  comp = config.comm.compressor
  chp = comm_hparams(config)
  comp_allowed = compress_lib.hparams(comp)
  _check_open("comm.hparams", f"compressor {comp!r}", chp, comp_allowed)
  try:
    compress_lib.get(comp, **chp)
  except (ValueError, TypeError) as e:
    raise ConfigError(_registry_error("comm.hparams", comp_allowed, e)) from None


def check_inner_for_outer(config) -> None:
  """The outer algorithm's own demands on the inner optimizer, if it has any.

  An algorithm that needs them exports `check_<name>_inner` from
  fedjax_lab.outer (e.g. SCAFFOLD's option II needs plain constant-lr SGD);
  it receives the `inner.*` fields and set outer hparams its signature names.
  """
  checker = getattr(outer_lib, f"check_{config.outer.name}_inner", None)
  if checker is None:
    return
  values = {k: config.inner[k] for k in config.inner.keys()}
  values.update(outer_hparams(config))
  wanted = inspect.signature(checker).parameters
  try:
    checker(**{k: values[k] for k in wanted if k in values})
  except ValueError as e:
    raise ConfigError(" ".join(str(e).split())) from None


def check_consistency(config, *, device_count: int) -> None:
  """Cross-field checks that need no data (devices, the model's shape)."""
  m = config.train.num_replicas
  n = config.mesh.num_devices
  if n > device_count:
    raise ConfigError(f"mesh.num_devices: {n} devices asked for, this "
                      f"machine has {device_count}; allowed: 0 (no mesh), "
                      f"-1 (all) or 1..{device_count}")
  devices = device_count if n == -1 else n
  k = config.mesh.get("model_devices", 1)
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
  problem = tasks_lib.kind(config.model.kind).check(config.model)
  if problem:
    raise ConfigError(f"model.{problem[0]}: {problem[1]}")
  if config.inner.optimizer not in ("sgd", "muon") and config.inner.momentum:
    raise ConfigError(f"inner.momentum: only inner.optimizer='sgd' or 'muon' "
                      f"takes it, got {show(config.inner.momentum)} with "
                      f"{config.inner.optimizer!r}; set it to 0")
  drop = config.train.get("outer_drop_prob", 0.0)
  if drop and outer_lib.get(config.outer.name,
                            **outer_hparams(config)).every_step:
    raise ConfigError(
        f"train.outer_drop_prob: {config.outer.name!r} synchronises every "
        "step (it has no outer gradient to drop); allowed: 0 for it, or an "
        "algorithm with an outer step")


def check_clock(config) -> None:
  """The clock's profile fits the run (the deadline's check needs the task:
  `build`)."""
  ck, m = config.clock, config.train.num_replicas
  if len(ck.speeds) not in (0, m):
    raise ConfigError(f"clock.speeds: needs one speed per replica "
                      f"(train.num_replicas={m}) or () for all 1, got "
                      f"{len(ck.speeds)}: {show(tuple(ck.speeds))}")
  for field, uniform in (("bandwidths_gbps", "bandwidth_gbps"),
                         ("latencies_s", "latency_s")):
    if len(ck[field]) not in (0, m):
      raise ConfigError(
          f"clock.{field}: needs one value per replica (train.num_replicas="
          f"{m}) or () for all clock.{uniform}, got {len(ck[field])}: "
          f"{show(tuple(ck[field]))}")
  if ck.policy != "wait_all" and outer_lib.get(
      config.outer.name, **outer_hparams(config)).every_step:
    raise ConfigError(
        f"clock.policy: {ck.policy!r} changes how many local steps replicas "
        f"take, and {config.outer.name!r} synchronises every step (no local "
        "steps); allowed: 'wait_all'")
  if ck.policy != "wait_all" and config.train.num_clients:
    raise ConfigError(
        f"clock.policy: {ck.policy!r} with a population of clients "
        f"(train.num_clients={config.train.num_clients}) is not supported "
        "yet (each client's examples would need rescaling); allowed: "
        "'wait_all'")
  if ck.policy == "async":
    check_async(config)
  dylu = ck.policy == "dylu" or (ck.policy == "async" and ck.async_dylu)
  if dylu and ck.dylu_min_steps > config.inner.steps:
    raise ConfigError(f"clock.dylu_min_steps: must be <= inner.steps="
                      f"{config.inner.steps}, got {ck.dylu_min_steps}")


def check_async(config) -> None:
  """clock.policy='async' (the engine's own refusals, `why_not_async`, come
  in build, where the engine is)."""
  ck, tc = config.clock, config.train
  if ck.straggler_prob:
    raise ConfigError(
        f"clock.straggler_prob: {show(ck.straggler_prob)} draws stragglers per "
        "round, and clock.policy='async' has no rounds to draw them in; "
        "allowed: 0 (give slow replicas through clock.speeds)")
  if tc.get("outer_drop_prob"):
    raise ConfigError(
        f"train.outer_drop_prob: {show(tc.outer_drop_prob)} drops outer "
        "gradients per round, and clock.policy='async' applies each one as it "
        "arrives; allowed: 0")
  if ck.async_delay and "delay" not in async_rules.rule_hparams(ck.async_rule):
    raise ConfigError(
        f"clock.async_delay: {ck.async_delay} is Delayed Nesterov's N, and "
        f"clock.async_rule is {ck.async_rule!r}; allowed: 0")


def check_population(config) -> None:
  """The population fields (train.num_clients ...) agree with each other.

  With train.num_clients = 0 (no population) they must keep their defaults;
  with N > 0, M = train.num_replicas clients fill the slots each round, and
  under sampling (N > M) only algorithms whose replica slots carry nothing
  from one round to the next (or carry it per client, SCAFFOLD's c_i, in
  the run's client store) are allowed.
  """
  tc = config.train
  n, m = tc.num_clients, tc.num_replicas
  partition = config.data.partition
  if not n:
    for field, default in (("clients_per_round", 0), ("local_epochs", 0),
                           ("max_local_steps", 0), ("sampling", "uniform")):
      if tc[field] != default:
        raise ConfigError(
            f"train.{field}: is for a population of clients; set "
            f"train.num_clients > 0, or leave it at {default!r} (got "
            f"{show(tc[field])})")
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
  outer = outer_lib.get(config.outer.name, **outer_hparams(config))
  if tc.local_epochs and outer.every_step:
    raise ConfigError(
        f"train.local_epochs: {config.outer.name!r} is data-parallel (no local "
        f"steps to vary); use train.local_epochs=0 (inner.steps per round)")
  if n == m:
    return  # Every client every round: slot m is always client m.
  name = config.outer.name
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


def check_data(config, train_source, eval_source, shards) -> None:
  """The batch fits the data: every shard and the eval split."""
  b = config.inner.batch_size
  smallest = min(len(s) for s in shards)
  if b > smallest:
    raise ConfigError(
        f"inner.batch_size: {b} is larger than the smallest replica shard "
        f"({smallest} examples of {len(train_source)}, "
        f"data.partition={config.data.partition!r}); allowed: 1..{smallest}")
  if config.data.eval_batch_size > len(eval_source):
    raise ConfigError(
        f"data.eval_batch_size: {config.data.eval_batch_size} is larger than "
        f"the eval split ({len(eval_source)} examples); allowed: "
        f"1..{len(eval_source)}")


def validate(config, *, device_count: int) -> None:
  """All checks that need no data and no files, in order.

  Raises:
    ConfigError: the first problem found, naming its field.
  """
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"config must be an ml_collections.ConfigDict, got "
                      f"{type(config).__name__}")
  check_schema(config)
  check_registries(config)
  check_consistency(config, device_count=device_count)
  check_clock(config)
  check_population(config)
