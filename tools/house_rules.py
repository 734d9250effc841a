"""House rules ruff does not check: module and function length, with a reason.

A module over MAX_MODULE lines must say why near its top: a line containing
"Over 400 lines on purpose:" in its first 8 lines. A function over
MAX_FUNCTION lines must say why at its top: "Over 80 lines on purpose:" in its
docstring or in a comment within its first 3 lines. Run by .ci/run before the
tests:

  python3 tools/house_rules.py            # exit 1 and one line per breach
"""

import ast
import os
import subprocess
import sys
from typing import Iterator, List

MAX_MODULE = 400
MAX_FUNCTION = 80
MODULE_REASON = "Over 400 lines on purpose:"
FUNCTION_REASON = "Over 80 lines on purpose:"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_files(root: str = ROOT) -> List[str]:
  """The repository's tracked and new (not ignored) .py files."""
  out = subprocess.run(
      ["git", "ls-files", "--cached", "--others", "--exclude-standard",
       "*.py"], cwd=root, capture_output=True, text=True, check=True).stdout
  return sorted(p for p in out.split() if os.path.exists(os.path.join(root, p)))


def breaches(path: str, source: str) -> Iterator[str]:
  """One line per rule `source` (the file at `path`) breaks."""
  lines = source.splitlines()
  if len(lines) > MAX_MODULE and not any(
      MODULE_REASON in line for line in lines[:8]):
    yield (f"{path}: {len(lines)} lines (over {MAX_MODULE}) and no "
           f"'{MODULE_REASON} <why>' in its first 8 lines")
  for node in ast.walk(ast.parse(source)):
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      continue
    length = node.end_lineno - node.lineno + 1
    if length <= MAX_FUNCTION:
      continue
    body_top = lines[node.lineno - 1:node.body[0].lineno + 2]
    doc = ast.get_docstring(node) or ""
    if FUNCTION_REASON in doc or any(FUNCTION_REASON in t for t in body_top):
      continue
    yield (f"{path}:{node.lineno}: {node.name} is {length} lines (over "
           f"{MAX_FUNCTION}) and does not say '{FUNCTION_REASON} <why>' at "
           "its top")


def main() -> int:
  found = [b for p in python_files()
           for b in breaches(p, open(os.path.join(ROOT, p)).read())]
  for line in found:
    print(line)
  return 1 if found else 0


if __name__ == "__main__":
  sys.exit(main())
