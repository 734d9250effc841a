r"""Trains and evaluates one config: a thin entry point.

  python experiments/run.py --config=configs/default.py --workdir=/tmp/run
  python experiments/run.py --config=configs/fedopt.py --workdir=/tmp/fedadam \
      --config.outer.hparams.learning_rate=0.03

Restarting with the same --workdir resumes from the last checkpoint.

Several processes (hosts): pass --coordinator_address/--num_processes/
--process_id, or set FEDJAX_LAB_COORDINATOR/_NUM_PROCESSES/_PROCESS_ID (as
experiments/launch_local.py does), or --distributed_auto on a TPU pod slice or
under SLURM; see fedjax_lab/distributed.py.

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

from fedjax_lab import cli
from fedjax_lab import distributed
from fedjax_lab import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a configs/*.py file; override fields with "
    "--config.<group>.<field>=value.", lock_config=True)
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
  if _CONFIG.value is None or not _WORKDIR.value:
    cli.fail(2, "--config and --workdir are required")
  try:
    distributed.initialize(distributed.config_from_env(
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
        num_cpu_devices=_NUM_CPU_DEVICES.value,
        auto=_AUTO.value or None,
        heartbeat_timeout_seconds=_HEARTBEAT.value))
  except ValueError as e:
    cli.fail(2, f"distributed: {e}")
  train.quiet_orbax_logs()
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except train.ConfigError as e:
    cli.fail(2, f"config: {e}")
  except train.TrainingStopped as e:
    logging.error("%s", e)
    cli.fail(3, f"training stopped: {e}")
  except train.CheckpointError as e:
    cli.fail(1, f"checkpoint: {e}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
