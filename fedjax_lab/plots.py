"""The comparison report moved to `fedjax_lab.run.report` (beside its runner)."""

from fedjax_lab.run.report import *  # noqa: F401,F403
from fedjax_lab.run.report import write_report  # noqa: F401
