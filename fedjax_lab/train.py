"""The former home of the run layer, kept so `fedjax_lab.train.X` imports work.

Everything lives in `fedjax_lab.run` now (build, loop, evaluation,
checkpoints, metrics, summary, comparisons); this module re-exports it.
"""

import optax  # noqa: F401  (tests reach optax through here)

from fedjax_lab.distributed import local_replica_ids
from fedjax_lab.run import (CheckpointError, ConfigError, Diverged,
                            TrainingStopped, apply_overrides, make_inner_opt,
                            make_schedule, quiet_orbax_logs, run_comparison,
                            train_and_evaluate, versions)

__all__ = [
    "CheckpointError", "ConfigError", "Diverged", "TrainingStopped",
    "apply_overrides", "local_replica_ids", "make_inner_opt", "make_schedule",
    "quiet_orbax_logs", "run_comparison", "train_and_evaluate", "versions",
]
