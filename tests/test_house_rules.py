"""tools/house_rules.py: long modules and functions must say why."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "tools"))
import house_rules  # noqa: E402  pylint: disable=g-import-not-at-top


def _function(n_lines: int, reason: str = "") -> str:
  body = [f"  x{i} = {i}" for i in range(n_lines - 1)]
  if reason:
    body[0] = f"  # {reason}"
  return "\n".join(["def f():"] + body) + "\n"


def test_a_long_function_needs_a_reason():
  assert list(house_rules.breaches("a.py", _function(80))) == []
  [line] = house_rules.breaches("a.py", _function(81))
  assert line.startswith("a.py:1: f is 81 lines (over 80)")
  ok = _function(81, "Over 80 lines on purpose: a table.")
  assert list(house_rules.breaches("a.py", ok)) == []


def test_a_long_module_needs_a_reason_near_its_top():
  body = "\n".join(f"x{i} = {i}" for i in range(400)) + "\n"
  assert list(house_rules.breaches("m.py", body)) == []
  long = body + "y = 1\n"
  [line] = house_rules.breaches("m.py", long)
  assert line.startswith("m.py: 401 lines (over 400)")
  reason = '"""M.\n\n(Over 400 lines on purpose: one table.)\n"""\n'
  assert list(house_rules.breaches("m.py", reason + long)) == []
  late = long.replace("x10 = 10", "# Over 400 lines on purpose: too late.")
  assert len(list(house_rules.breaches("m.py", late))) == 1


def test_the_repository_keeps_the_rules():
  assert house_rules.main() == 0
