"""Checks a run config before anything is built or written.

Every mistake a user can make in a config (an unknown field, a wrong type, a
value out of range or not finite, an unknown algorithm or compressor, a bad
hyperparameter, a replica count that does not divide the devices, a seed
beyond uint32, a batch larger than the data) becomes ONE `ConfigError` whose
message names the field and what is allowed. The entry points turn it into
exit code 2 without a traceback.

The schema below is the library's; `configs/default.py` is one value of it
(with a comment on every field). Two groups are open: `outer.hparams` and
`comm.hparams` hold a typed, unset (None) field for every hyperparameter any
registry entry takes (`registry_hparams`), and the chosen entry's own list
(`fedjax_lab.outer.hparams(name)`, the compressor factory's signature)
decides which of them may be set.
"""

import inspect
import math
import numbers
import re
import typing
from typing import Any, Callable, Dict, Optional, Tuple

import ml_collections
from ml_collections import config_dict

from fedjax_lab import clock as clock_lib
from fedjax_lab import outer as outer_lib
from fedjax_lab.comm import compress as compress_lib
from fedjax_lab.models import tasks as tasks_lib
from fedjax_lab.outer import async_rules


class ConfigError(ValueError):
  """A user mistake in the config: the message names the field."""


NONFINITE_POLICIES = ("drop", "stop")
CLASSIFIERS = ("mlp", "cnn")
DTYPES = ("float32", "bfloat16", "float16")
DECAYS = ("cosine", "linear", "constant")
PARTITIONS = ("iid", "by_source", "by_content", "dirichlet")
# data.partition values that make a population's clients (train.num_clients > 0).
CLIENT_PARTITIONS = ("by_file", "by_group", "dirichlet", "iid")
SAMPLING_KINDS = ("uniform", "weighted")
STDLIB_SUBSETS = ("full", "no_tests", "small")
REPLICA_MODES = ("auto", "vmap", "sequential")
INNER_OPTIMIZERS = ("adamw", "sgd", "muon")
UINT32_MAX = 2**32 - 1


def show(value, limit: int = 80) -> str:
  """repr(value), cut to `limit` characters (a message stays one short line)."""
  text = repr(value)
  if len(text) > limit:
    text = f"{text[:limit]}... ({len(text)} characters)"
  return text


# A field spec: (kind, check). kind is 'int', 'float', 'str', 'bool', 'ints'
# (a tuple of ints), 'floats' (a tuple of numbers) or 'open'; check(value)
# returns an error text or None.
def _range(lo=None, hi=None, *, lo_open=False, hi_open=False):
  def check(v):
    if isinstance(v, float) and not math.isfinite(v):
      return "must be a finite number"
    if lo is not None and (v <= lo if lo_open else v < lo):
      return f"must be {'>' if lo_open else '>='} {lo}"
    if hi is not None and (v >= hi if hi_open else v > hi):
      return f"must be {'<' if hi_open else '<='} {hi}"
    return None
  return check


def _one_of(options):
  def check(v):
    return None if v in options else f"must be one of {list(options)}"
  return check


def _any(v):
  del v
  return None


def _all_positive(values):
  for v in values:
    if not math.isfinite(v) or v <= 0:
      return f"every entry must be a finite number > 0 (got {v!r})"
  return None


POSITIVE = _range(1)
NONNEG = _range(0)
SEED = _range(0, UINT32_MAX)

SCHEMA: Dict[str, Dict[str, Tuple[str, Callable[[Any], Optional[str]]]]] = {
    "model": {
        "kind": ("str", _one_of(sorted(tasks_lib.KINDS))),
        "d_model": ("int", POSITIVE),
        "num_layers": ("int", POSITIVE),
        "num_heads": ("int", POSITIVE),
        "mlp_ratio": ("int", POSITIVE),
        "seq_len": ("int", POSITIVE),
        "dtype": ("str", _one_of(DTYPES)),
        "dropout": ("float", _range(0.0, 1.0, hi_open=True)),
        "remat": ("bool", _any),
        "classifier": ("str", _one_of(CLASSIFIERS)),
        "hidden": ("ints", _any),
        "init_seed": ("int", SEED),
    },
    "data": {
        "dataset": ("str", _any),
        "subset": ("str", _one_of(STDLIB_SUBSETS)),
        "data_dir": ("str", _any),
        "partition": ("str", _one_of(
            PARTITIONS + tuple(p for p in CLIENT_PARTITIONS
                               if p not in PARTITIONS))),
        "alpha": ("float", _range(0.0, lo_open=True)),
        "eval_batch_size": ("int", POSITIVE),
        "eval_batches": ("int", NONNEG),
        "final_eval_batches": ("int", NONNEG),
        "eval_split": ("str", _any),
        "test_split": ("str", _any),
        "max_examples": ("int", NONNEG),
        "prefetch": ("int", NONNEG),
    },
    "inner": {
        "optimizer": ("str", _one_of(INNER_OPTIMIZERS)),
        "steps": ("int", POSITIVE),
        "batch_size": ("int", POSITIVE),
        "learning_rate": ("float", _range(0.0, lo_open=True)),
        "warmup_steps": ("int", NONNEG),
        "decay": ("str", _one_of(DECAYS)),
        "final_lr_fraction": ("float", _range(0.0, 1.0)),
        "schedule_steps": ("int", NONNEG),
        "b1": ("float", _range(0.0, 1.0, hi_open=True)),
        "b2": ("float", _range(0.0, 1.0, hi_open=True)),
        "eps": ("float", _range(0.0, lo_open=True)),
        "weight_decay": ("float", NONNEG),
        "grad_clip": ("float", NONNEG),
        "momentum": ("float", _range(0.0, 1.0, hi_open=True)),
    },
    "outer": {
        "name": ("str", _one_of(outer_lib.names())),
        "hparams": ("open", _any),
    },
    "comm": {
        "compressor": ("str", _one_of(sorted(compress_lib._REGISTRY))),  # pylint: disable=protected-access
        "hparams": ("open", _any),
    },
    "engine": {
        "replica_mode": ("str", _one_of(REPLICA_MODES)),
        "num_fragments": ("int", POSITIVE),
        "overlap_steps": ("int", NONNEG),
        "merge_alpha": ("float", _range(0.0, 1.0)),
    },
    "train": {
        "num_replicas": ("int", POSITIVE),
        "rounds": ("int", POSITIVE),
        "eval_every": ("int", NONNEG),
        "checkpoint_every": ("int", NONNEG),
        "keep": ("int", POSITIVE),
        "log_every": ("int", POSITIVE),
        "seed": ("int", SEED),
        "nonfinite_policy": ("str", _one_of(NONFINITE_POLICIES)),
        "max_empty_rounds": ("int", NONNEG),
        "tensorboard": ("bool", _any),
        "num_clients": ("int", NONNEG),
        "clients_per_round": ("int", NONNEG),
        "sampling": ("str", _one_of(SAMPLING_KINDS)),
        "local_epochs": ("int", NONNEG),
        "max_local_steps": ("int", NONNEG),
        "target_eval_loss": ("float", NONNEG),
        "outer_drop_prob": ("float", _range(0.0, 1.0, hi_open=True)),
    },
    "clock": {
        "policy": ("str", _one_of(clock_lib.POLICIES)),
        "step_seconds": ("float", NONNEG),
        "device_flops": ("float", _range(0.0, lo_open=True)),
        "speeds": ("floats", _all_positive),
        "lognormal_sigma": ("float", NONNEG),
        "straggler_prob": ("float", _range(0.0, 1.0)),
        "straggler_factor": ("float", _range(1.0)),
        "bandwidth_gbps": ("float", _range(0.0, lo_open=True)),
        "latency_s": ("float", NONNEG),
        "deadline_quantile": ("float", _range(0.0, 1.0, lo_open=True)),
        "deadline_seconds": ("float", NONNEG),
        "deadline_mode": ("str", _one_of(clock_lib.DEADLINE_MODES)),
        "dylu_min_steps": ("int", POSITIVE),
        "async_rule": ("str", _one_of(sorted(async_rules.SERVER_RULES))),
        "async_learning_rate": ("float", NONNEG),
        "async_momentum": ("float", _range(0.0, 1.0, hi_open=True)),
        "async_delay": ("int", NONNEG),
        "async_grace": ("float", NONNEG),
        "async_dylu": ("bool", _any),
    },
    "mesh": {
        "num_devices": ("int", _range(-1)),
        "model_devices": ("int", _range(1)),
        "min_shard_size": ("int", POSITIVE),
    },
}

_KIND_TEXT = {"int": "an integer", "float": "a number", "str": "a string",
              "bool": "True or False", "ints": "a tuple of integers",
              "floats": "a tuple of numbers",
              "open": "a ConfigDict of hyperparameters"}


def _type_ok(kind: str, value) -> bool:
  if kind == "int":
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
  if kind == "float":
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
  if kind == "str":
    return isinstance(value, str)
  if kind == "bool":
    return isinstance(value, bool)
  if kind == "ints":
    return isinstance(value, (tuple, list)) and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool)
        for v in value)
  if kind == "floats":
    return isinstance(value, (tuple, list)) and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
  if kind == "open":
    return isinstance(value, (ml_collections.ConfigDict, dict))
  raise AssertionError(kind)


def _as_dict(group) -> Dict[str, Any]:
  if isinstance(group, ml_collections.ConfigDict):
    return {k: group[k] for k in group.keys()}
  return dict(group)


def check_schema(config: ml_collections.ConfigDict) -> None:
  """Unknown or missing fields and wrong types, ranges or non-finite values.

  Raises:
    ConfigError: naming the first bad field and what is allowed there.
  """
  for group in _as_dict(config):
    if group not in SCHEMA:
      raise ConfigError(f"{group}: unknown config group; known groups: "
                        f"{', '.join(SCHEMA)}")
  for path, fields in SCHEMA.items():
    if path not in config:
      raise ConfigError(f"{path}: missing config group (start from "
                        "configs/default.py)")
    values = _as_dict(config[path])
    for name in values:
      if name not in fields:
        raise ConfigError(f"{path}.{name}: unknown field; known fields of "
                          f"{path}: {', '.join(sorted(fields))}")
    for name, (kind, check) in fields.items():
      if name not in values:
        raise ConfigError(f"{path}.{name}: missing field (start from "
                          "configs/default.py)")
      value = values[name]
      if not _type_ok(kind, value):
        raise ConfigError(f"{path}.{name}: must be {_KIND_TEXT[kind]}, got "
                          f"{show(value)} ({type(value).__name__})")
      problem = check(value)
      if problem:
        raise ConfigError(f"{path}.{name}: {problem}, got {show(value)}")


# ----------------------------------------------------------------------------
# The open hparams groups.


def _scalar_type(parameter: inspect.Parameter):
  """int/float/bool/str of a factory parameter, or None (not a config field)."""
  annotation = parameter.annotation
  if typing.get_origin(annotation) is typing.Union:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    annotation = args[0] if len(args) == 1 else None
  if annotation in (int, float, bool, str):
    return annotation
  default = parameter.default
  if isinstance(default, (int, float, bool, str)):
    return type(default)
  return None


def _factory_params(factory) -> Dict[str, inspect.Parameter]:
  return {k: p for k, p in inspect.signature(factory).parameters.items()
          if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _compressor_params(name: str) -> Dict[str, inspect.Parameter]:
  params = _factory_params(compress_lib._REGISTRY[name])  # pylint: disable=protected-access
  params["ef"] = inspect.Parameter("ef", inspect.Parameter.KEYWORD_ONLY,
                                   default=False, annotation=bool)
  return params


def registry_hparams(group: str) -> Dict[str, type]:
  """{hparam: type} over every entry of the 'outer' or 'comm' registry."""
  if group == "outer":
    factories = [_factory_params(outer_lib.REGISTRY[n]) for n in outer_lib.names()]
  else:
    factories = [_compressor_params(n) for n in sorted(compress_lib._REGISTRY)]  # pylint: disable=protected-access
  out = {}
  for params in factories:
    for field, p in params.items():
      kind = _scalar_type(p)
      if kind is None:
        continue
      previous = out.get(field)
      if previous is None:
        out[field] = kind
      elif {previous, kind} == {int, float}:
        out[field] = float  # An int is a valid float, not the reverse.
  return out


def add_unset_hparams(hparams: ml_collections.ConfigDict, group: str) -> None:
  """Adds a typed unset field for every registry hparam `hparams` lacks.

  So that `--config.outer.hparams.<any>=v` and `--config.comm.hparams.ef=True`
  work on a locked config whatever the algorithm or compressor.
  """
  for field, kind in sorted(registry_hparams(group).items()):
    if field not in hparams:
      hparams[field] = config_dict.placeholder(kind)


def _plain(group) -> Dict[str, Any]:
  out = {}
  for k, v in _as_dict(group).items():
    out[k] = _plain(v) if isinstance(v, (ml_collections.ConfigDict, dict)) else v
  return out


def outer_hparams(config) -> Dict[str, Any]:
  """The outer hyperparameters that are set (None = the algorithm's default)."""
  return {k: v for k, v in _plain(config.outer.hparams).items()
          if v is not None}


def comm_hparams(config) -> Dict[str, Any]:
  """The compressor hyperparameters that are set (None = its default)."""
  return {k: v for k, v in _plain(config.comm.hparams).items()
          if v is not None}


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
  comp_allowed = _compressor_params(comp)
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
