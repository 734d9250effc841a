"""What the thin entry points share: user mistakes exit 2 with one line."""

import importlib.util
import inspect
import os
import sys
from typing import List, Optional

from absl import flags

_MAX_MESSAGE = 600


def one_line(message: str, limit: int = _MAX_MESSAGE) -> str:
  """`message` on one line, its middle cut when longer than `limit`."""
  text = " ".join(str(message).split())
  if len(text) > limit:
    half = limit // 2
    text = (f"{text[:half]} [... {len(text) - limit} characters cut ...] "
            f"{text[-half:]}")
  return text


def fail(code: int, message: str):
  """Prints `error: message` (one line) to stderr and exits with `code`."""
  sys.stderr.write(f"error: {one_line(message)}\n")
  sys.stderr.flush()
  sys.exit(code)


def _arg(argv: List[str], name: str) -> Optional[str]:
  for a in argv:
    if a.startswith(f"--{name}="):
      return a.split("=", 1)[1]
  return None


def _overrides(argv: List[str]) -> List[str]:
  """The dotted fields of `--config.<field>=value` (or `--config.<field> v`)."""
  out = []
  for a in argv:
    if a.startswith("--config."):
      out.append(a[len("--config."):].split("=", 1)[0])
  return out


def load_config_file(spec: str):
  """get_config() of a `path[:arg]` config spec, as config_flags loads it."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_fedjax_lab_cfg", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  takes_arg = bool(inspect.signature(module.get_config).parameters)
  return module.get_config(arg) if arg and takes_arg else module.get_config()


def _explain(argv: List[str], error: Exception) -> str:
  """One line naming the override that failed and what is allowed there."""
  from fedjax_lab.run import overrides  # pylint: disable=g-import-not-at-top
  spec = _arg(argv, "config")
  if spec:
    try:
      config = load_config_file(spec)
    except Exception:  # pylint: disable=broad-except
      config = None
    if config is not None:
      for field in _overrides(argv):
        text = overrides.override_error(config, field, error)
        if "unknown field" in text or "not a group" in text:
          return f"config: {text}"
  text = str(error).strip().strip("'\"")
  return text if isinstance(error, flags.Error) else (
      f"{type(error).__name__}: {text}")


def _flat(config, prefix: str = ""):
  for key in sorted(config.keys()):
    value = config[key]
    if hasattr(value, "keys"):
      yield from _flat(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def config_help(spec: str) -> str:
  """Every field of the config file `spec`, as --config.<field>=<value>."""
  try:
    config = load_config_file(spec)
  except Exception as e:  # pylint: disable=broad-except
    return f"(--config={spec} cannot be loaded: {one_line(e)})"
  lines = [f"Fields of --config={spec} (override any with "
           "--config.<field>=value; None = unset, the algorithm's default):"]
  lines += [f"  --config.{k}={v!r}" for k, v in _flat(config)]
  return "\n".join(lines)


_HELP = ("--help", "-h", "-?", "--helpshort", "--helpfull")


def parse_flags(argv):
  """absl's parser, but a bad flag or config override exits 2 with one line.

  With --help and a --config, the config's fields are listed first. For
  `app.run(main, flags_parser=parse_flags)`.
  """
  spec = _arg(list(argv), "config")
  if spec and any(a in _HELP for a in argv):
    print(config_help(spec) + "\n")
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    # flags.Error, and whatever config_flags raises for a bad override
    # (KeyError, AttributeError, TypeError, ...).
    fail(2, _explain(list(argv), e))


def config_value(holder):
  """The parsed --config, or exit 2 when its file cannot be loaded."""
  try:
    value = holder.value
    value.keys()  # config_flags reports a load failure on first use.
    return value
  except Exception as e:  # pylint: disable=broad-except
    text = " ".join(str(e).split())
    fail(2, f"--config: cannot load the config file ({text})")


def overridden_fields(argv: Optional[List[str]] = None) -> List[str]:
  """The fields set with --config.<field>=... on this command line."""
  return _overrides(list(sys.argv if argv is None else argv))


def list_algorithms() -> str:
  """The registries, for --list_algorithms: names and hyperparameters."""
  from fedjax_lab import outer  # pylint: disable=g-import-not-at-top
  from fedjax_lab.comm import compress  # pylint: disable=g-import-not-at-top
  from fedjax_lab.models import tasks  # pylint: disable=g-import-not-at-top
  lines = ["outer algorithms (--config.outer.name; "
           "--config.outer.hparams.<name>=value):"]
  for name in outer.names():
    hp = ", ".join(f"{k}={v!r}" for k, v in outer.hparams(name).items())
    lines.append(f"  {name}: {hp or '(no hyperparameters)'}")
  lines.append("compressors (--config.comm.compressor; "
               "--config.comm.hparams.<name>=value):")
  for name in compress.names():
    hp = ", ".join(f"{k}={v!r}" for k, v in compress.hparams(name).items())
    lines.append(f"  {name}: {hp}")
  lines.append(f"task kinds (--config.model.kind): {', '.join(tasks.KINDS.names())}")
  return "\n".join(lines)


def workdir_ok(path: str) -> str:
  """--workdir as given, or exit 2 when it is empty."""
  if not path:
    fail(2, "--workdir is required")
  return os.path.expanduser(path)
