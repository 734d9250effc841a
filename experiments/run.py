r"""Trains and evaluates one config: a thin entry point.

  python experiments/run.py --config=configs/default.py --workdir=/tmp/run
  python experiments/run.py --config=configs/fedopt.py --workdir=/tmp/fedadam \
      --config.outer.hparams.learning_rate=0.03

Restarting with the same --workdir resumes from the last checkpoint.

Several processes (hosts): pass --coordinator_address/--num_processes/
--process_id, or set FEDJAX_LAB_COORDINATOR/_NUM_PROCESSES/_PROCESS_ID (as
experiments/launch_local.py does), or --distributed_auto on a TPU pod slice or
under SLURM; see fedjax_lab/distributed.py.

Print the resolved config (every field, after overrides) and exit:
  python experiments/run.py --config=configs/smoke.py --print_config
List the outer algorithms, compressors and their hyperparameters:
  python experiments/run.py --list_algorithms

Exit codes: 0 done; 2 a mistake in the config, flags or workdir (one line
naming the field; nothing written), or the workdir is in use by another run;
3 the run stopped: train.nonfinite_policy='stop' met a non-finite replica
(status 'stopped_nonfinite'), or the model diverged under either policy
(status 'diverged': a non-finite eval loss, or train.max_empty_rounds rounds
with no replica left); summary.json is written either way; 1 anything else
(e.g. unreadable checkpoints).
"""

import os
import sys

# configs/*.py import each other as the `configs` package (repository root).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

from fedjax_lab import cli
from fedjax_lab import config_validation
from fedjax_lab import distributed
from fedjax_lab import run as run_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a configs/*.py file; override any field with "
    "--config.<group>.<field>=value (configs/default.py documents every "
    "field; --print_config prints them all with their values).",
    lock_config=True)
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False, "Print the resolved config (after overrides) and "
    "exit.")
_LIST = flags.DEFINE_bool(
    "list_algorithms", False, "List the outer algorithms, compressors, task "
    "kinds and their hyperparameters, and exit.")
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Directory for metrics, checkpoints and summary.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Processes in the run (default 1).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id.")
_NUM_CPU_DEVICES = flags.DEFINE_integer(
    "num_cpu_devices", None, "CPU devices per process (for trying it on CPU).")
_AUTO = flags.DEFINE_boolean(
    "distributed_auto", False, "Let JAX detect the cluster (TPU pod slices, "
    "SLURM, ...) and start its distributed runtime.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds", None, "A process silent this long is declared "
    "lost and the others stop (default 20).")


def main(argv):
  if len(argv) > 1:
    cli.fail(2, f"unexpected arguments {argv[1:]}")
  if _LIST.value:
    print(cli.list_algorithms())
    return
  if _CONFIG.value is None:
    cli.fail(2, "--config is required (e.g. --config=configs/smoke.py)")
  config = cli.config_value(_CONFIG)
  if _PRINT_CONFIG.value:
    print(config)
    return
  workdir = cli.workdir_ok(_WORKDIR.value)
  try:  # Before JAX's runtime starts: a mistake is one line, and quick.
    config_validation.validate(config, device_count=None)
  except run_lib.ConfigError as e:
    cli.fail(2, f"config: {e}")
  try:
    distributed.initialize(distributed.config_from_env(
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
        num_cpu_devices=_NUM_CPU_DEVICES.value,
        auto=_AUTO.value or None,
        heartbeat_timeout_seconds=_HEARTBEAT.value))
  except ValueError as e:
    cli.fail(2, f"distributed: {e}")
  run_lib.quiet_orbax_logs()
  try:
    run_lib.train_and_evaluate(config, workdir)
  except run_lib.ConfigError as e:
    cli.fail(2, f"config: {e}")
  except run_lib.TrainingStopped as e:
    logging.error("%s", e)
    cli.fail(3, f"training stopped ({e.status}): {e}")
  except run_lib.CheckpointError as e:
    cli.fail(1, f"checkpoint: {e}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
