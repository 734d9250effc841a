"""The run config's schema: its groups, fields, types and ranges.

`SCHEMA` lists every field of every group with its type and its check;
`check_schema` turns an unknown or missing field, a wrong type, a value out of
range or not finite into ONE `ConfigError` naming the field and what is
allowed. `configs/default.py` is one value of the schema (with a comment on
every field). Two groups are open: `outer.hparams` and `comm.hparams` hold a
typed, unset (None) field for every hyperparameter any registry entry takes
(`registry_hparams`, `add_unset_hparams`); `outer_hparams` and `comm_hparams`
read back the ones that are set. The checks across fields (and which open
hparams the chosen entry takes) are in `fedjax_lab.config_validation`.
"""

import inspect
import math
import numbers
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


def _all_nonnegative(values):
  for v in values:
    if not math.isfinite(v) or v < 0:
      return f"every entry must be a finite number >= 0 (got {v!r})"
  return None


POSITIVE = _range(1)
NONNEG = _range(0)
SEED = _range(0, UINT32_MAX)

SCHEMA: Dict[str, Dict[str, Tuple[str, Callable[[Any], Optional[str]]]]] = {
    "model": {
        "kind": ("str", _one_of(tasks_lib.KINDS.names())),
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
        "compressor": ("str", _one_of(compress_lib.names())),
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
        "bandwidths_gbps": ("floats", _all_positive),
        "latencies_s": ("floats", _all_nonnegative),
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


def registry_hparams(group: str) -> Dict[str, type]:
  """{hparam: type} over every entry of the 'outer' or 'comm' registry."""
  registry = outer_lib.REGISTRY if group == "outer" else compress_lib.REGISTRY
  out = {}
  for params in map(registry.parameters, registry.names()):
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
