"""The run config read once into typed parts.

Each config group is a frozen dataclass that the component using it defines
(`fedjax_lab.spec`): `model` is the task kind's own (models/tasks.py: LMSpec,
ClassifierSpec), `data` data/data_spec.DataSpec, `inner` inner_opt.InnerSpec,
`engine` and `mesh` layout.EngineSpec and MeshSpec, `clock`
clock.ClockSpec, `train` `TrainSpec` below (the run loop's own). `outer` and
`comm` name a registry entry; their hyperparameters are that entry's
factory's signature: the `hparams` groups hold a typed, unset (None) field
for every hyperparameter any entry takes (`add_unset_hparams`), and those
that are set must be the chosen entry's.

`read(config)` reads every group and builds the outer algorithm and the
compressor, once: a run passes the `Parts` down instead of the ConfigDict.
Every mistake is ONE `ConfigError` naming the `--config.` field. The checks
across groups are in `fedjax_lab.config_validation`.
"""

import dataclasses
import inspect
import math
import re
import typing
from typing import Any, Dict, NamedTuple

import ml_collections
from ml_collections import config_dict

from fedjax_lab import clock as clock_lib
from fedjax_lab import layout
from fedjax_lab import outer as outer_lib
from fedjax_lab import spec
from fedjax_lab.comm import compress as compress_lib
from fedjax_lab.data.data_spec import DataSpec
from fedjax_lab.data.population import SAMPLING_KINDS
from fedjax_lab.inner_opt import InnerSpec
from fedjax_lab.models import tasks as tasks_lib
from fedjax_lab.spec import ConfigError  # noqa: F401 (re-exported)
from fedjax_lab.spec import field
from fedjax_lab.spec import show  # noqa: F401 (re-exported)


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """`config.train`: the training loop (fedjax_lab.run)."""
  num_replicas: int = field(4, spec.POSITIVE)  # M: replicas (workers, clients).
  rounds: int = field(40, spec.POSITIVE)  # Token budget: rounds × M × H × B × seq_len.
  # Evaluate every this many rounds (and at the end); 0 = end only.
  eval_every: int = field(4, spec.NONNEG)
  # Checkpoint every this many rounds (and at the end); 0 = never.
  checkpoint_every: int = field(10, spec.NONNEG)
  keep: int = field(3, spec.POSITIVE)  # Checkpoints kept (the latest ones).
  # Fetch metrics from the device and log every this many rounds.
  log_every: int = field(4, spec.POSITIVE)
  seed: int = field(0, spec.SEED)  # Seed of data order, partition and per-step rngs.
  # A diverged replica: 'drop' (count, warn) or 'stop' (error).
  nonfinite_policy: str = field("drop", spec.one_of(("drop", "stop")))
  # This many rounds in a row with no replica left (all non-finite) end the
  # run as 'diverged'; 0 = never.
  max_empty_rounds: int = field(3, spec.NONNEG)
  tensorboard: bool = field(True)  # Write TensorBoard event files to the workdir.
  # A federated population (README, "Federated populations"): M =
  # num_replicas of N clients sampled into the replica slots each round.
  # N: clients in the population; 0 = none (M fixed replica shards).
  num_clients: int = field(0, spec.NONNEG)
  # Clients sampled per round; 0 = train.num_replicas (else must equal it).
  clients_per_round: int = field(0, spec.NONNEG)
  # Which clients per round: 'uniform' or 'weighted' (by client size).
  sampling: str = field("uniform", spec.one_of(SAMPLING_KINDS))
  # E: local epochs per sampled client (ceil(n_i/B)·E steps); 0 = inner.steps.
  local_epochs: int = field(0, spec.NONNEG)
  # With local_epochs: cap on a client's local steps; 0 = no cap.
  max_local_steps: int = field(0, spec.NONNEG)
  # Comparison reports: rounds to the first eval with loss <= this; 0 = none.
  target_eval_loss: float = field(0.0, spec.NONNEG)
  # Each round, drop each replica's outer gradient with this probability (a
  # lossy network, DiLoCo's ablation); the replica restarts from the new
  # global model.
  outer_drop_prob: float = field(0.0, spec.UNIT_OPEN)


# The closed groups and their specs ('model' is read by its kind's spec).
GROUPS = {"data": DataSpec, "inner": InnerSpec, "train": TrainSpec,
          "engine": layout.EngineSpec, "clock": clock_lib.ClockSpec,
          "mesh": layout.MeshSpec}
ORDER = ("model", "data", "inner", "outer", "comm", "train", "engine",
         "clock", "mesh")  # configs/default.py's order.


class Choice(NamedTuple):
  """An open group: the registry entry's name and the hparams that are set."""
  name: str
  hparams: Dict[str, Any]


class Parts(NamedTuple):
  """The run config, read once: one typed part per group, plus what the
  `outer` and `comm` groups build (the algorithm and the compressor)."""
  model: tasks_lib.ModelSpec
  data: DataSpec
  inner: InnerSpec
  outer: Choice
  comm: Choice
  train: TrainSpec
  engine: layout.EngineSpec
  clock: clock_lib.ClockSpec
  mesh: layout.MeshSpec
  algorithm: Any  # outer.base.OuterAlgorithm
  compressor: Any  # comm.compress.Compressor

  @property
  def task_kind(self) -> tasks_lib.TaskKind:
    return tasks_lib.kind(self.model.kind)


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


def _registry(group: str):
  return outer_lib.REGISTRY if group == "outer" else compress_lib.REGISTRY


def registry_hparams(group: str) -> Dict[str, type]:
  """{hparam: type} over every entry of the 'outer' or 'comm' registry."""
  registry = _registry(group)
  out = {}
  for params in map(registry.parameters, registry.names()):
    for name, p in params.items():
      kind = _scalar_type(p)
      if kind is None:
        continue
      previous = out.get(name)
      if previous is None:
        out[name] = kind
      elif {previous, kind} == {int, float}:
        out[name] = float  # An int is a valid float, not the reverse.
  return out


def add_unset_hparams(hparams: ml_collections.ConfigDict, group: str) -> None:
  """Adds a typed unset field for every registry hparam `hparams` lacks.

  So that `--config.outer.hparams.<any>=v` and `--config.comm.hparams.ef=True`
  work on a locked config whatever the algorithm or compressor.
  """
  for name, kind in sorted(registry_hparams(group).items()):
    if name not in hparams:
      hparams[name] = config_dict.placeholder(kind)


def _set(group) -> Dict[str, Any]:
  return {k: v for k, v in spec.plain(group).items() if v is not None}


def _refusal(prefix: str, allowed, error: Exception) -> str:
  """A factory's refusal, under the name of the hparam it is about."""
  text = " ".join(str(error).split())
  words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
  named = [k for k in allowed if k in words]
  name = f"{prefix}.{named[0]}" if len(named) == 1 else prefix
  return f"{name}: {text}"


def _choice(config, group: str, entry_field: str):
  """(Choice, built entry) of open group `group` ('outer' or 'comm')."""
  registry = _registry(group)
  known = (entry_field, "hparams")
  for name in config[group].keys():
    if name not in known:
      raise ConfigError(f"{group}.{name}: unknown field; known fields of "
                        f"{group}: {', '.join(known)}")
  for name in known:
    if name not in config[group]:
      raise ConfigError(f"{group}.{name}: missing field (start from "
                        "configs/default.py)")
  entry = config[group][entry_field]
  if not isinstance(entry, str):
    raise ConfigError(f"{group}.{entry_field}: must be a string, got "
                      f"{show(entry)} ({type(entry).__name__})")
  if entry not in registry:
    raise ConfigError(f"{group}.{entry_field}: must be one of "
                      f"{registry.names()}, got {show(entry)}")
  hparams = config[group].hparams
  if not isinstance(hparams, (ml_collections.ConfigDict, dict)):
    raise ConfigError(f"{group}.hparams: must be a ConfigDict of "
                      f"hyperparameters, got {show(hparams)}")
  hp = _set(hparams)
  allowed = registry.hparams(entry)
  prefix = f"{group}.hparams"
  for name, value in hp.items():
    if name not in allowed:
      raise ConfigError(
          f"{prefix}.{name}: not a hyperparameter of {registry.what} "
          f"{entry!r}; allowed: {', '.join(sorted(allowed)) or 'none'}")
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f"{prefix}.{name}: must be a finite number, got "
                        f"{show(value)}")
  return Choice(entry, hp), allowed


def _build(registry, choice: Choice, allowed, prefix: str, **more):
  try:
    return registry.get(choice.name, **choice.hparams, **more)
  except (ValueError, TypeError) as e:
    raise ConfigError(_refusal(prefix, allowed, e)) from None


# ----------------------------------------------------------------------------
# Reading the whole config.


def read(config: ml_collections.ConfigDict) -> Parts:
  """Every group of `config` read into its part; algorithm and compressor built.

  Raises:
    ConfigError: the first bad group or field, naming it.
  """
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"config must be an ml_collections.ConfigDict, got "
                      f"{type(config).__name__}")
  for group in config.keys():
    if group not in ORDER:
      raise ConfigError(f"{group}: unknown config group; known groups: "
                        f"{', '.join(ORDER)}")
  for group in ORDER:
    if group not in config:
      raise ConfigError(f"{group}: missing config group (start from "
                        "configs/default.py)")
  parts = {g: spec.read(cls, config[g], g) for g, cls in GROUPS.items()}
  parts["model"] = tasks_lib.read_model(config.model)
  parts["outer"], outer_allowed = _choice(config, "outer", "name")
  parts["comm"], comm_allowed = _choice(config, "comm", "compressor")
  _check_inner_for_outer(parts["outer"], parts["inner"])
  more = {}
  n = parts["train"].num_clients
  if n and "num_clients" in outer_allowed:
    # SCAFFOLD's c moves by |S|/N with N the population, not the M slots.
    if parts["outer"].hparams.get("num_clients") not in (None, n):
      raise ConfigError(f"outer.hparams.num_clients: must be train."
                        f"num_clients={n} (or unset), got "
                        f"{parts['outer'].hparams['num_clients']}")
    more["num_clients"] = n
  algorithm = _build(outer_lib.REGISTRY, parts["outer"], outer_allowed,
                     "outer.hparams", **{k: v for k, v in more.items()
                                         if k not in parts["outer"].hparams})
  compressor = _build(compress_lib.REGISTRY, parts["comm"], comm_allowed,
                      "comm.hparams")
  return Parts(algorithm=algorithm, compressor=compressor, **parts)


def _check_inner_for_outer(outer: Choice, inner: InnerSpec) -> None:
  """The outer algorithm's own demands on the inner optimizer, if it has any.

  An algorithm that needs them exports `check_<name>_inner` from
  fedjax_lab.outer (e.g. SCAFFOLD's option II needs plain constant-lr SGD);
  it receives the `inner.*` fields and set outer hparams its signature names.
  """
  checker = getattr(outer_lib, f"check_{outer.name}_inner", None)
  if checker is None:
    return
  values = {**dataclasses.asdict(inner), **outer.hparams}
  wanted = inspect.signature(checker).parameters
  try:
    checker(**{k: values[k] for k in wanted if k in values})
  except ValueError as e:
    raise ConfigError(" ".join(str(e).split())) from None


def default_groups() -> Dict[str, ml_collections.ConfigDict]:
  """Every closed group at its spec's defaults (configs/default.py's start)."""
  out = {g: spec.defaults(cls) for g, cls in GROUPS.items()}
  out["model"] = spec.defaults(*(tasks_lib.KINDS[k].spec
                                 for k in tasks_lib.KINDS.names()))
  out["model"].kind = "lm"
  return out

