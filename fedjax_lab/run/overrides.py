"""Dotted-key overrides of a config (sweep arms, tests), refused by name.

`apply_overrides` is `ConfigDict.update_from_flattened_dict` on a locked
copy, so unknown fields and wrong types are refused by ml_collections; the
refusal is turned into one `ConfigError` line naming the field and what is
allowed (`override_error`, also what the entry points print for a bad
`--config.<field>=value`).
"""

import copy
from typing import Any, Dict

import ml_collections

from fedjax_lab.config_validation import ConfigError
from fedjax_lab.spec import show


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted-key overrides applied (locked while so).

  `ConfigDict.update_from_flattened_dict` does the work (so types are kept
  as ml_collections keeps them); a dict value for an open group
  ('outer.hparams', 'comm.hparams') replaces the group: its other fields
  are unset.

  Raises:
    ConfigError: an override names an unknown field or has the wrong type.
  """
  config = copy.deepcopy(config)
  config.lock()
  flat = {}
  for key, value in overrides.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      group = _lookup(config, key)
      if not isinstance(group, ml_collections.ConfigDict):
        raise ConfigError(f"{key}: not a group of fields, got a dict "
                          f"{show(dict(value))}")
      flat.update({f"{key}.{k}": None for k in group.keys()})
      flat.update({f"{key}.{k}": v for k, v in dict(value).items()})
    else:
      flat[key] = value
  for key, value in flat.items():
    try:
      config.update_from_flattened_dict({key: value})
    except TypeError:
      raise ConfigError(_type_error(config, key, value)) from None
    except (KeyError, AttributeError, ValueError) as e:
      raise ConfigError(override_error(config, key, e)) from None
  config.unlock()
  return config


def _type_error(config, key: str, value) -> str:
  *parents, leaf = key.split(".")
  node = config
  for part in parents:
    node = node[part]
  try:
    expected = node.get_type(leaf).__name__
  except Exception:  # pylint: disable=broad-except
    expected = "another type"
  return (f"{key}: must be {expected}, got {show(value)} "
          f"({type(value).__name__})")


def _lookup(config, key: str):
  node = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise ConfigError(override_error(config, key, KeyError(part)))
    node = node[part]
  return node


def override_error(config, key: str, error: Exception) -> str:
  """One line for a failed override `key`: the field and what is allowed."""
  node, path = config, []
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict):
      return f"{'.'.join(path)}: is a value, not a group; cannot set {key}"
    if part not in node:
      where = ".".join(path) or "the config"
      known = ", ".join(sorted(node.keys()))
      field = ".".join(path + [part])
      hint = ""
      if path and path[-1] == "hparams" and path[0] in ("outer", "comm"):
        hint = (" (which ones the chosen entry takes: python "
                "experiments/run.py --list_algorithms)")
      return f"{field}: unknown field; known fields of {where}: {known}{hint}"
    node = node[part]
    path.append(part)
  text = " ".join(str(error).strip().strip("'\"").split())
  if len(text) > 300:
    text = f"{text[:300]}... ({len(text)} characters)"
  return f"{key}: {text}"
