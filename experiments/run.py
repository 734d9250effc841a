r"""Trains and evaluates one config: a thin entry point.

  python experiments/run.py --config=configs/default.py --workdir=/tmp/run
  python experiments/run.py --config=configs/fedopt.py --workdir=/tmp/fedadam \
      --config.outer.hparams.learning_rate=0.03

Restarting with the same --workdir resumes from the last checkpoint.

Exit codes: 0 done; 2 a mistake in the config or flags (one message naming
the field; nothing written to the workdir); 3 stopped by
train.nonfinite_policy='stop'; 1 anything else (e.g. unreadable
checkpoints).
"""

import os
import sys

# configs/*.py import each other as the `configs` package (repository root).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

from fedjax_lab import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a configs/*.py file; override fields with "
    "--config.<group>.<field>=value.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Directory for metrics, checkpoints and summary.")


def _fail(code: int, message: str):
  sys.stderr.write(f"error: {message}\n")
  sys.stderr.flush()
  sys.exit(code)


def _parse_flags(argv):
  """absl's parser, but a bad flag or config override exits 2 with one line."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    # flags.Error, and whatever config_flags raises for a bad override or an
    # unloadable config file (KeyError, AttributeError, TypeError, ...).
    text = str(e).strip().strip('"')
    _fail(2, f"{type(e).__name__}: {text}" if not isinstance(e, flags.Error)
          else text)


def main(argv):
  if len(argv) > 1:
    _fail(2, f"unexpected arguments {argv[1:]}")
  if _CONFIG.value is None or not _WORKDIR.value:
    _fail(2, "--config and --workdir are required")
  train.quiet_orbax_logs()
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except train.ConfigError as e:
    _fail(2, f"config: {e}")
  except train.TrainingStopped as e:
    logging.error("%s", e)
    _fail(3, f"training stopped: {e}")
  except train.CheckpointError as e:
    _fail(1, f"checkpoint: {e}")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
