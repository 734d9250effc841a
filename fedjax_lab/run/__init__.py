"""The run layer: a config in, a trained, evaluated and reported run out.

  build.py      a run from a validated config (everything, once, before
                anything is written)
  memory.py     build's memory checks (an estimate; the compiled round)
  workdir.py    workdir/data-dir checks, the workdir lock, config.json, resume
  schedule.py   the inner optimizer (AdamW on an optax warm-up + decay)
  loop.py       train_and_evaluate: rounds, policies, checkpoints, metrics
  records.py    the loop's rows, non-finite policies, evals and checkpoints
  evaluate.py   evaluation on the validation and test splits (samples for
                curves, whole splits for final numbers)
  summary.py    summary.json
  progress.py   progress lines with an ETA (terminal and notebook)
  compare.py    comparisons: many arms, run one after another
  report.py     their report: results.md/.csv, seed statistics, the plots
  tables.py     the report's tables (rows, seed statistics); plots.py its plots
  tuning.py     hyperparameters chosen on validation, saved, re-used

This project's own study (published claims, their arms, verdicts, the claims
page) is apart from the library, in experiments/study/.
"""

from fedjax_lab.checkpoint import CheckpointError
from fedjax_lab.config_validation import ConfigError
from fedjax_lab.inner_opt import make_inner_opt
from fedjax_lab.inner_opt import make_schedule
from fedjax_lab.run.build import build_run
from fedjax_lab.run.build import Run
from fedjax_lab.run.compare import check_base_overrides
from fedjax_lab.run.compare import run_comparison
from fedjax_lab.run.compare import run_widening
from fedjax_lab.run.loop import Diverged
from fedjax_lab.run.loop import train_and_evaluate
from fedjax_lab.run.loop import TrainingStopped
from fedjax_lab.run.overrides import apply_overrides
from fedjax_lab.run.overrides import override_error
from fedjax_lab.run.progress import quiet_orbax_logs
from fedjax_lab.run.summary import versions

__all__ = [
    "CheckpointError", "ConfigError", "Diverged", "Run", "TrainingStopped",
    "apply_overrides", "build_run", "check_base_overrides", "make_inner_opt",
    "make_schedule", "override_error", "quiet_orbax_logs", "run_comparison",
    "run_widening", "train_and_evaluate", "versions",
]
