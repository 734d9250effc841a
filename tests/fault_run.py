"""experiments/run.py with a NaN fault injected (tests only).

  FEDJAX_LAB_TEST_FAULT=<round>,<replica> python tests/fault_run.py <run.py flags>
"""

import functools
import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402

import _fault  # noqa: E402
from fedjax_lab import cli  # noqa: E402
from fedjax_lab import run as run_lib  # noqa: E402


def _main_module():
  spec = importlib.util.spec_from_file_location(
      "fedjax_lab_run_main", os.path.join(REPO, "experiments", "run.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


if __name__ == "__main__":
  fault_round, replica = (int(x) for x in
                          os.environ["FEDJAX_LAB_TEST_FAULT"].split(","))
  run_lib.train_and_evaluate = functools.partial(
      run_lib.train_and_evaluate, **_fault.nan_fault(fault_round, replica))
  app.run(_main_module().main, flags_parser=cli.parse_flags)
