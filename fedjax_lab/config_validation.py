"""Checks a run config before anything is built or written.

Every mistake a user can make in a config (an unknown field, a wrong type, an
unknown algorithm or compressor, a bad hyperparameter, a replica count that
does not divide the devices, a batch larger than the data) becomes ONE
`ConfigError` whose message names the field and what is allowed. The entry
points turn it into exit code 2 without a traceback.

The schema below is the library's; `configs/default.py` is one value of it
(with a comment on every field). Two groups are open: `outer.hparams` and
`comm.hparams` are checked by the registries they feed.
"""

import numbers
from typing import Any, Callable, Dict, Optional, Tuple

import ml_collections

from fedjax_lab import outer as outer_lib
from fedjax_lab.comm import compress as compress_lib


class ConfigError(ValueError):
  """A user mistake in the config: the message names the field."""


NONFINITE_POLICIES = ("drop", "stop")
MODEL_KINDS = ("lm", "classification")
CLASSIFIERS = ("mlp", "cnn")
DTYPES = ("float32", "bfloat16", "float16")
DECAYS = ("cosine", "linear", "constant")
PARTITIONS = ("iid", "by_source", "dirichlet")
STDLIB_SUBSETS = ("full", "no_tests", "small")
OPEN_GROUPS = ("outer.hparams", "comm.hparams")


# A field spec: (kind, check). kind is 'int', 'float', 'str', 'bool' or
# 'ints' (a tuple of ints); check(value) returns an error text or None.
def _range(lo=None, hi=None, *, lo_open=False, hi_open=False):
  def check(v):
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


POSITIVE = _range(1)
NONNEG = _range(0)

SCHEMA: Dict[str, Dict[str, Tuple[str, Callable[[Any], Optional[str]]]]] = {
    "model": {
        "kind": ("str", _one_of(MODEL_KINDS)),
        "d_model": ("int", POSITIVE),
        "num_layers": ("int", POSITIVE),
        "num_heads": ("int", POSITIVE),
        "mlp_ratio": ("int", POSITIVE),
        "seq_len": ("int", POSITIVE),
        "dtype": ("str", _one_of(DTYPES)),
        "dropout": ("float", _range(0.0, 1.0, hi_open=True)),
        "classifier": ("str", _one_of(CLASSIFIERS)),
        "hidden": ("ints", _any),
        "init_seed": ("int", NONNEG),
    },
    "data": {
        "dataset": ("str", _any),
        "subset": ("str", _one_of(STDLIB_SUBSETS)),
        "data_dir": ("str", _any),
        "partition": ("str", _one_of(PARTITIONS)),
        "alpha": ("float", _range(0.0, lo_open=True)),
        "eval_batch_size": ("int", POSITIVE),
        "eval_batches": ("int", NONNEG),
        "max_examples": ("int", NONNEG),
        "prefetch": ("int", NONNEG),
    },
    "inner": {
        "steps": ("int", POSITIVE),
        "batch_size": ("int", POSITIVE),
        "learning_rate": ("float", _range(0.0, lo_open=True)),
        "warmup_steps": ("int", NONNEG),
        "decay": ("str", _one_of(DECAYS)),
        "final_lr_fraction": ("float", _range(0.0, 1.0)),
        "b1": ("float", _range(0.0, 1.0, hi_open=True)),
        "b2": ("float", _range(0.0, 1.0, hi_open=True)),
        "eps": ("float", _range(0.0, lo_open=True)),
        "weight_decay": ("float", NONNEG),
        "grad_clip": ("float", NONNEG),
    },
    "outer": {
        "name": ("str", _one_of(outer_lib.names())),
        "hparams": ("open", _any),
    },
    "comm": {
        "compressor": ("str", _one_of(sorted(compress_lib._REGISTRY))),  # pylint: disable=protected-access
        "hparams": ("open", _any),
    },
    "train": {
        "num_replicas": ("int", POSITIVE),
        "rounds": ("int", POSITIVE),
        "eval_every": ("int", NONNEG),
        "checkpoint_every": ("int", NONNEG),
        "keep": ("int", POSITIVE),
        "log_every": ("int", POSITIVE),
        "seed": ("int", NONNEG),
        "nonfinite_policy": ("str", _one_of(NONFINITE_POLICIES)),
        "tensorboard": ("bool", _any),
        "fault": ("group", _any),
    },
    "train.fault": {
        "round": ("int", NONNEG),
        "replica": ("int", NONNEG),
    },
    "mesh": {
        "num_devices": ("int", _range(-1)),
    },
}

_KIND_TEXT = {"int": "an integer", "float": "a number", "str": "a string",
              "bool": "True or False", "ints": "a tuple of integers",
              "open": "a ConfigDict of hyperparameters",
              "group": "a ConfigDict"}


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
  if kind in ("open", "group"):
    return isinstance(value, (ml_collections.ConfigDict, dict))
  raise AssertionError(kind)


def _as_dict(group) -> Dict[str, Any]:
  if isinstance(group, ml_collections.ConfigDict):
    return {k: group[k] for k in group.keys()}
  return dict(group)


def check_schema(config: ml_collections.ConfigDict) -> None:
  """Unknown or missing fields and wrong types or ranges, anywhere.

  Raises:
    ConfigError: naming the first bad field and what is allowed there.
  """
  top = [k for k in SCHEMA if "." not in k]
  for group in _as_dict(config):
    if group not in top:
      raise ConfigError(f"{group}: unknown config group; known groups: "
                        f"{', '.join(top)}")
  for path, fields in SCHEMA.items():
    node = config
    for part in path.split("."):
      if part not in node:
        raise ConfigError(f"{path}: missing config group (start from "
                          "configs/default.py)")
      node = node[part]
    values = _as_dict(node)
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
                          f"{value!r} ({type(value).__name__})")
      problem = check(value)
      if problem:
        raise ConfigError(f"{path}.{name}: {problem}, got {value!r}")


def outer_hparams(config) -> Dict[str, Any]:
  """The outer hyperparameters that are set (None = the algorithm's default)."""
  return {k: v for k, v in _plain(config.outer.hparams).items()
          if v is not None}


def comm_hparams(config) -> Dict[str, Any]:
  return _plain(config.comm.hparams)


def _plain(group) -> Dict[str, Any]:
  out = {}
  for k, v in _as_dict(group).items():
    out[k] = _plain(v) if isinstance(v, (ml_collections.ConfigDict, dict)) else v
  return out


def check_registries(config) -> None:
  """The outer algorithm and compressor exist and accept their hparams."""
  name = config.outer.name
  allowed = outer_lib.hparams(name)
  hp = outer_hparams(config)
  for field in hp:
    if field not in allowed:
      raise ConfigError(
          f"outer.hparams.{field}: not a hyperparameter of outer algorithm "
          f"{name!r}; allowed: {', '.join(allowed) or 'none'} (defaults "
          f"{allowed}); each configs/<family>.py sets its own")
  try:
    outer_lib.get(name, **hp)
  except (ValueError, TypeError) as e:
    raise ConfigError(f"outer.hparams: {e}") from None
  try:
    compress_lib.get(config.comm.compressor, **comm_hparams(config))
  except (ValueError, TypeError) as e:
    raise ConfigError(f"comm.hparams: {e}") from None


def check_consistency(config, *, device_count: int) -> None:
  """Cross-field checks that need no data (devices, budgets, faults)."""
  m = config.train.num_replicas
  n = config.mesh.num_devices
  if n > device_count:
    raise ConfigError(f"mesh.num_devices: {n} devices asked for, this "
                      f"machine has {device_count}; allowed: 0 (no mesh), "
                      f"-1 (all) or 1..{device_count}")
  shards = device_count if n == -1 else n
  if shards > 0 and m % shards:
    raise ConfigError(
        f"train.num_replicas: {m} replicas do not divide over "
        f"mesh.num_devices={n} ({shards} devices); use a multiple of "
        f"{shards}, or set mesh.num_devices to a divisor of {m} or 0 (no mesh)")
  if config.model.kind == "lm" and config.model.d_model % config.model.num_heads:
    raise ConfigError(f"model.d_model: {config.model.d_model} is not divisible "
                      f"by model.num_heads={config.model.num_heads}")
  if config.model.kind == "lm" and (
      config.model.d_model // config.model.num_heads) % 2:
    raise ConfigError("model.num_heads: head size d_model / num_heads must be "
                      f"even (RoPE), got {config.model.d_model} / "
                      f"{config.model.num_heads}")
  if config.model.kind == "lm" and config.model.dropout > 0:
    pass  # Dropout keys come from the engine's per-step rng: fine.
  fault = config.train.fault
  if fault.round and fault.replica >= m:
    raise ConfigError(f"train.fault.replica: {fault.replica} is not a replica; "
                      f"allowed: 0..{m - 1}")
  if fault.round > config.train.rounds:
    raise ConfigError(f"train.fault.round: {fault.round} is after the last "
                      f"round (train.rounds={config.train.rounds})")


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
  """All checks that need no data, in order.

  Raises:
    ConfigError: the first problem found, naming its field.
  """
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"config must be an ml_collections.ConfigDict, got "
                      f"{type(config).__name__}")
  check_schema(config)
  check_registries(config)
  check_consistency(config, device_count=device_count)
