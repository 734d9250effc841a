"""The config read once into typed parts (fedjax_lab.spec, config_schema.read).

Each group's spec is owned by its component; these tests hold the specs to
what configs/default.py promised by hand before: every field documented,
every mistake one `ConfigError` naming the `--config.` field, the model kind
choosing its own fields, and the algorithm, compressor and task kind built
once per run.
"""

import dataclasses
import inspect

import ml_collections
import pytest

from configs import default as default_config
from fedjax_lab import config_schema
from fedjax_lab import config_validation
from fedjax_lab import outer as outer_lib
from fedjax_lab import spec
from fedjax_lab.models import tasks as tasks_lib
from fedjax_lab.spec import ConfigError

SPECS = [*config_schema.GROUPS.values(),
         *(tasks_lib.KINDS[k].spec for k in tasks_lib.KINDS.names())]


def _override(**fields):
  """The default config with group__field=value set, any type (a new group:
  a ConfigDict keeps each field's type, and the read must see the mistake)."""
  config = default_config.get_config()
  for dotted, value in fields.items():
    group, name = dotted.split("__")
    values = config[group].to_dict()
    values[name] = value
    config[group] = ml_collections.ConfigDict(values)
  return config


@pytest.mark.parametrize("cls", SPECS, ids=lambda c: c.__name__)
def test_every_spec_field_has_a_comment(cls):
  """Each field says what it is: a comment on its line or just above it."""
  source, _ = inspect.getsourcelines(cls)
  for f in dataclasses.fields(cls):
    if f.name not in cls.__annotations__:
      continue  # Inherited: checked with its own class.
    at = next(i for i, line in enumerate(source)
              if line.strip().startswith(f"{f.name}:"))
    above = source[at - 1].strip()
    assert "#" in source[at] or above.startswith("#"), (cls.__name__, f.name)


def test_the_default_config_is_every_spec_at_its_defaults():
  parts = config_schema.read(default_config.get_config())
  for group, cls in config_schema.GROUPS.items():
    assert getattr(parts, group) == cls(), group
  assert parts.model == tasks_lib.LMSpec()
  assert parts.outer == config_schema.Choice("diloco", {})
  assert parts.comm == config_schema.Choice("none", {})
  assert parts.algorithm.name == "diloco"


@pytest.mark.parametrize("fields, message", [
    ({"inner__steps": 0}, "inner.steps: must be >= 1, got 0"),
    ({"inner__learning_rate": "big"}, "inner.learning_rate: must be a number"),
    ({"inner__b1": 1.0}, "inner.b1: must be < 1.0, got 1.0"),
    ({"clock__speeds": (1.0, -2.0)}, "clock.speeds: every value must be > 0.0"),
    ({"clock__policy": "fast"}, "clock.policy: must be one of"),
    ({"train__seed": 2**32}, "train.seed: must be <= 4294967295"),
    ({"train__tensorboard": 1}, "train.tensorboard: must be True or False"),
    ({"mesh__num_devices": -2}, "mesh.num_devices: must be >= -1"),
    ({"engine__replica_mode": "gpu"}, "engine.replica_mode: must be one of"),
    ({"data__partition": "random"}, "data.partition: must be one of"),
    ({"model__num_heads": 3}, "model.d_model: 64 is not divisible by"),
    ({"model__hidden": (8,)}, "model.hidden: not a field of model.kind='lm'"),
    ({"model__kind": "video"}, "model.kind: must be one of"),
    ({"inner__momentum": 0.5}, "inner.momentum: only inner.optimizer='sgd'"),
])
def test_a_bad_field_is_one_error_naming_it(fields, message):
  with pytest.raises(ConfigError) as e:
    config_schema.read(_override(**fields))
  assert str(e.value).startswith(message), str(e.value)
  assert "\n" not in str(e.value)


def test_an_unknown_or_missing_field_or_group_is_named():
  config = default_config.get_config()
  with config.unlocked():
    config.inner.stpes = 3
  with pytest.raises(ConfigError, match=r"^inner\.stpes: unknown field"):
    config_schema.read(config)
  config = default_config.get_config()
  with config.unlocked():
    del config.clock["policy"]
  with pytest.raises(ConfigError, match=r"^clock\.policy: missing field"):
    config_schema.read(config)
  config = default_config.get_config()
  with config.unlocked():
    del config["mesh"]
  with pytest.raises(ConfigError, match=r"^mesh: missing config group"):
    config_schema.read(config)


def test_the_model_kind_chooses_its_fields():
  config = _override(model__kind="classification", model__classifier="cnn",
                     model__hidden=(32, 16))
  model = config_schema.read(config).model
  assert type(model) is tasks_lib.ClassifierSpec
  assert (model.classifier, model.hidden) == ("cnn", (32, 16))
  assert not hasattr(model, "d_model")
  with pytest.raises(ConfigError, match=r"^model\.seq_len: not a field of "
                     r"model\.kind='classification'"):
    config_schema.read(_override(model__kind="classification",
                                 model__seq_len=128))


def test_values_are_typed_once():
  """An int given for a float field is a float in the part; lists are tuples."""
  config = _override(inner__learning_rate=1, clock__speeds=[1, 2, 1, 1])
  parts = config_schema.read(config)
  assert type(parts.inner.learning_rate) is float
  assert parts.clock.speeds == (1.0, 2.0, 1.0, 1.0)
  with pytest.raises(dataclasses.FrozenInstanceError):
    parts.inner.steps = 3  # pytype: disable=attribute-error


def test_the_algorithm_is_built_once_per_read(monkeypatch):
  """validate() reads the config once; its checks ask the built algorithm."""
  calls = []
  real = outer_lib.REGISTRY.get

  def counting(name, **hparams):
    calls.append(name)
    return real(name, **hparams)

  monkeypatch.setattr(outer_lib.REGISTRY, "get", counting)
  config = _override(outer__name="fedavg", train__num_clients=8,
                     data__partition="iid")
  with config.unlocked():
    config.outer.hparams.reset_inner_state = True
  parts = config_validation.validate(config, device_count=1)
  assert calls == ["fedavg"]
  assert parts.algorithm.name == "fedavg"


def test_spec_read_types_and_checks_directly():
  @dataclasses.dataclass(frozen=True)
  class Toy:
    n: int = spec.field(1, spec.POSITIVE)
    xs: tuple = ()

  with pytest.raises(TypeError, match="Toy.xs: .* not a config type"):
    spec.read(Toy, {"n": 2, "xs": ()}, "toy")  # Untyped tuple: a code bug.
  with pytest.raises(ConfigError, match=r"^toy\.n: must be >= 1, got 0"):
    spec.read(Toy, {"n": 0}, "toy")
  assert spec.read(config_schema.TrainSpec,
                   spec.defaults(config_schema.TrainSpec), "train") == (
                       config_schema.TrainSpec())
