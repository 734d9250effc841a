r"""Runs a comparison sweep and writes its table and plots: a thin entry point.

  python experiments/compare.py --config=configs/compare.py \
      --workdir=/tmp/fedjax_lab/compare [--sweep=default]

The sweep's arms come from `get_sweep(config, name)` in the config file
(configs/compare.py); every arm runs in this process (one engine each) in
workdir/<arm>, and workdir/results.md, results.csv and the plots summarise
them; the file's `after_sweep(name, config, results, workdir)`, when it has
one, runs last (the tuning sweep saves its choices there). Completed arms are reused when the
command is run again (--noreuse to rerun them).

A base-config override of a field that every arm sets (e.g.
--config.outer.name) would be ignored, so it is refused (exit 2).

Exit codes as experiments/run.py: 2 for a config or sweep mistake (nothing
written), 1 otherwise.
"""

import importlib.util
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

from fedjax_lab import cli
from fedjax_lab import run as run_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file that also defines get_sweep(config, name).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the arms and report.")
_SWEEP = flags.DEFINE_string("sweep", "default", "Which sweep of the config file.")
_REUSE = flags.DEFINE_bool("reuse", True, "Skip arms that already completed.")


def _sweep_module(config_arg: str):
  """The file named by --config (the part before any ':'), as a module."""
  path = config_arg.split(":", 1)[0]
  spec = importlib.util.spec_from_file_location("_fedjax_lab_sweep", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    cli.fail(2, f"--config: {path} defines no get_sweep(config, name)")
  return module


def main(argv):
  if len(argv) > 1:
    cli.fail(2, f"unexpected arguments {argv[1:]}")
  if _CONFIG.value is None:
    cli.fail(2, "--config is required (e.g. --config=configs/compare.py)")
  config = cli.config_value(_CONFIG)
  workdir = cli.workdir_ok(_WORKDIR.value)
  run_lib.quiet_orbax_logs()
  module = _sweep_module(config_flags.get_config_filename(flags.FLAGS["config"]))
  try:
    arms = module.get_sweep(config, _SWEEP.value)
  except ValueError as e:
    cli.fail(2, f"--sweep: {e}")
  try:
    run_lib.check_base_overrides(cli.overridden_fields(), arms, _SWEEP.value)
    results = run_lib.run_comparison(config, arms, workdir, reuse=_REUSE.value)
  except run_lib.ConfigError as e:
    cli.fail(2, f"config: {e}")
  if hasattr(module, "after_sweep"):  # E.g. the tuning sweep's choice.
    module.after_sweep(_SWEEP.value, config, results, workdir)
  logging.info("report: %s", os.path.join(workdir, "results.md"))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
