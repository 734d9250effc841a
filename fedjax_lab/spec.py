"""Typed config parts: each config group is a frozen dataclass its owner defines.

A component that reads a group of the run config (the inner optimizer, the
clock, the engine's options, a task kind's model fields ...) defines that
group as a frozen dataclass next to its code: each field's type is its
annotation, its default the dataclass default, its range a `check` in the
field's metadata, and checks across the group's own fields its
`__post_init__`. `read(cls, group, prefix)` turns a `ConfigDict` group into
an instance, once per run, and every mistake (an unknown or missing field, a
wrong type, a value out of range or not finite) into ONE `ConfigError` that
names the field as `--config.` spells it and says what is allowed.
`defaults(cls)` is the group as a `ConfigDict` (configs/default.py is built
from them, so a default is written once).
"""

import dataclasses
import math
import numbers
import typing
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Type, TypeVar

import ml_collections

T = TypeVar("T")
Check = Callable[[Any], Optional[str]]  # value -> the problem, or None.


class ConfigError(ValueError):
  """A user mistake in the config: the message names the field."""


def show(value, limit: int = 80) -> str:
  """repr(value), cut to `limit` characters (a message stays one short line)."""
  text = repr(value)
  if len(text) > limit:
    text = f"{text[:limit]}... ({len(text)} characters)"
  return text


# -- Checks: value -> problem text or None. ----------------------------------


def in_range(lo=None, hi=None, *, lo_open=False, hi_open=False) -> Check:
  """lo <= v <= hi (an open end excludes it); finite."""
  def check(v):
    if isinstance(v, float) and not math.isfinite(v):
      return "must be a finite number"
    if lo is not None and (v <= lo if lo_open else v < lo):
      return f"must be {'>' if lo_open else '>='} {lo}"
    if hi is not None and (v >= hi if hi_open else v > hi):
      return f"must be {'<' if hi_open else '<='} {hi}"
    return None
  return check


def one_of(options: Callable[[], Sequence[str]] | Sequence[str]) -> Check:
  """v in options (a sequence, or a function giving it: a registry's names)."""
  def check(v):
    allowed = options() if callable(options) else options
    return None if v in allowed else f"must be one of {list(allowed)}"
  return check


def each(item_check: Check) -> Check:
  """Every item of a tuple passes `item_check`."""
  def check(values):
    for v in values:
      problem = item_check(v)
      if problem:
        return f"every value {problem}"
    return None
  return check


POSITIVE = in_range(1)
NONNEG = in_range(0)
SEED = in_range(0, 2**32 - 1)
FRACTION = in_range(0.0, 1.0)  # [0, 1].
UNIT_OPEN = in_range(0.0, 1.0, hi_open=True)  # [0, 1).


def field(default, check: Optional[Check] = None):
  """A spec field: its default and its range check."""
  return dataclasses.field(default=default, metadata={"check": check})


# -- Types. -------------------------------------------------------------------


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


_TYPES = {  # annotation -> (what the message says, test).
    int: ("an integer", _is_int),
    float: ("a number", _is_real),
    str: ("a string", lambda v: isinstance(v, str)),
    bool: ("True or False", lambda v: isinstance(v, bool)),
    Tuple[int, ...]: ("a tuple of integers",
                      lambda v: isinstance(v, (tuple, list))
                      and all(map(_is_int, v))),
    Tuple[float, ...]: ("a tuple of numbers",
                        lambda v: isinstance(v, (tuple, list))
                        and all(map(_is_real, v))),
}


def _convert(annotation, value):
  if annotation is float:
    return float(value)
  if annotation in (Tuple[int, ...], Tuple[float, ...]):
    kind = typing.get_args(annotation)[0]
    return tuple(kind(v) for v in value)
  return value


def plain(group) -> Dict[str, Any]:
  """A ConfigDict (or dict) group as a plain dict, nested groups too."""
  items = ({k: group[k] for k in group.keys()}
           if isinstance(group, ml_collections.ConfigDict) else dict(group))
  return {k: plain(v) if isinstance(v, (ml_collections.ConfigDict, dict))
          else v for k, v in items.items()}


def names(cls) -> Tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(cls))


def check_value(cls, name: str, value, prefix: str) -> Any:
  """`value` of field `name` of `cls`, typed; ConfigError when it is not."""
  f = {f.name: f for f in dataclasses.fields(cls)}[name]
  annotation = typing.get_type_hints(cls)[name]
  if annotation not in _TYPES:
    raise TypeError(f"{cls.__name__}.{name}: {annotation} is not a config "
                    f"type; allowed: {list(_TYPES)}")
  text, ok = _TYPES[annotation]
  if not ok(value):
    raise ConfigError(f"{prefix}.{name}: must be {text}, got {show(value)} "
                      f"({type(value).__name__})")
  check = f.metadata.get("check")
  problem = check(value) if check else None
  if problem:
    raise ConfigError(f"{prefix}.{name}: {problem}, got {show(value)}")
  return _convert(annotation, value)


def read(cls: Type[T], group, prefix: str, *,
         ignore: Sequence[str] = ()) -> T:
  """The instance of `cls` that config group `group` (at `prefix`) holds.

  Fields named in `ignore` may be in the group without being `cls`'s (a
  group several specs share, e.g. the task kinds' model fields).

  Raises:
    ConfigError: the first unknown, missing, mistyped or out-of-range field.
  """
  values = plain(group)
  known = names(cls)
  for name in values:
    if name not in known and name not in ignore:
      raise ConfigError(f"{prefix}.{name}: unknown field; known fields of "
                        f"{prefix}: {', '.join(sorted(known))}")
  out = {}
  for name in known:
    if name not in values:
      raise ConfigError(f"{prefix}.{name}: missing field (start from "
                        "configs/default.py)")
    out[name] = check_value(cls, name, values[name], prefix)
  return cls(**out)


def defaults(*classes) -> ml_collections.ConfigDict:
  """The fields of `classes` (the first one's default wins) as a ConfigDict."""
  out = {}
  for cls in classes:
    for f in dataclasses.fields(cls):
      out.setdefault(f.name, f.default)
  return ml_collections.ConfigDict(out)
