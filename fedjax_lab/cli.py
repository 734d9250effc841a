"""What the thin entry points share: user mistakes exit 2 with one line."""

import sys

from absl import flags


def fail(code: int, message: str):
  """Prints `error: message` to stderr and exits with `code` (no traceback)."""
  sys.stderr.write(f"error: {message}\n")
  sys.stderr.flush()
  sys.exit(code)


def parse_flags(argv):
  """absl's parser, but a bad flag or config override exits 2 with one line.

  For `app.run(main, flags_parser=parse_flags)`.
  """
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    # flags.Error, and whatever config_flags raises for a bad override or an
    # unloadable config file (KeyError, AttributeError, TypeError, ...).
    text = str(e).strip().strip('"')
    fail(2, text if isinstance(e, flags.Error)
         else f"{type(e).__name__}: {text}")
