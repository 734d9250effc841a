r"""Runs a comparison sweep and writes its table and plots: a thin entry point.

  python experiments/compare.py --config=configs/compare.py \
      --workdir=/tmp/fedjax_lab/compare [--sweep=default]

The sweep's arms come from `get_sweep(config, name)` in the config file
(configs/compare.py); every arm runs in this process (one engine each) in
workdir/<arm>, and workdir/results.md, results.csv and the plots summarise
them; the file's `expand_sweep(name, config, results, max_expansions=K)`,
when it has one, adds arms after each pass until it adds none (the tuning
sweeps widen a grid whose best point is on an edge: fedjax_lab/run/tuning.py),
and its `after_sweep(name, config, results, workdir, max_expansions=K)` runs
last (the tuning sweep saves its choices there). Completed arms are reused
when the command is run again (--noreuse to rerun them), so an interrupted
tuning resumes where it stopped.

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
_MAX_EXPANSIONS = flags.DEFINE_integer(
    "max_expansions", None, "K: the most values a tuning sweep adds to one "
    "field of an arm's grid when its best point is on an edge (default: the "
    "config file's MAX_EXPANSIONS; 0 runs the plain grid).", lower_bound=0)


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
  k = _MAX_EXPANSIONS.value
  if k is None:
    k = getattr(module, "MAX_EXPANSIONS", 0)
  more = None
  if hasattr(module, "expand_sweep"):  # E.g. a tuning grid's edges widened.
    more = lambda results: module.expand_sweep(_SWEEP.value, config, results,
                                               max_expansions=k)
  try:
    run_lib.check_base_overrides(cli.overridden_fields(), arms, _SWEEP.value)
    results = run_lib.run_widening(config, arms, workdir, reuse=_REUSE.value,
                                   more=more)
  except run_lib.ConfigError as e:
    cli.fail(2, f"config: {e}")
  if hasattr(module, "after_sweep"):  # E.g. the tuning sweep's choice.
    if hasattr(module, "expand_sweep"):
      module.after_sweep(_SWEEP.value, config, results, workdir,
                         max_expansions=k)
    else:
      module.after_sweep(_SWEEP.value, config, results, workdir)
  logging.info("report: %s", os.path.join(workdir, "results.md"))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
