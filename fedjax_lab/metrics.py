"""Metric rows: a JSONL file and TensorBoard event files, from process 0.

A row is a flat dict of JSON numbers keyed like 'train/loss' or 'eval/loss',
plus the counters every curve may be drawn against: 'round', 'step' (inner
steps per replica so far), 'tokens' (all replicas) and the cumulative bytes
each replica has communicated ('payload_bytes', 'ring_bytes').

One encoding for every JSON file a run writes (metrics.jsonl, summary.json,
config.json): strict JSON, where a value that is not a finite number (NaN,
+inf, -inf; a round with no participating replica has no loss) is `null`.
`pandas.read_json(path, lines=True)` then reads every metric column as
float64 with NaN for those values.
"""

import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence

from absl import logging

METRICS_FILE = "metrics.jsonl"


def jsonable(value):
  """`value` with numpy scalars/arrays as lists and non-finite floats as None."""
  if isinstance(value, dict):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if hasattr(value, "tolist"):
    return jsonable(value.tolist())
  if isinstance(value, float) and not math.isfinite(value):
    return None  # Strict JSON has no NaN/Infinity.
  return value


def dumps(obj: Any, **kwargs) -> str:
  """Strict JSON (non-finite numbers as null): the encoding of every file."""
  return json.dumps(jsonable(obj), allow_nan=False, **kwargs)


class MetricsWriter:
  """Appends rows to `workdir/metrics.jsonl` and TensorBoard (if enabled).

  Only the process that is given `enabled=True` writes (process 0 in a
  multi-process run); the others get a writer that does nothing.
  """

  def __init__(self, workdir: str, *, enabled: bool = True,
               tensorboard: bool = True, keep_through: int = 0,
               replay: Sequence[Dict[str, Any]] = ()):
    """Opens the writers.

    Args:
      workdir: the run's directory (exists).
      enabled: write anything at all.
      tensorboard: also write TensorBoard event files (workdir/tensorboard).
      keep_through: rows of an existing metrics file up to this round are
        kept; later ones are dropped (their rounds run again, or `replay`
        holds them).
      replay: rows to write again right after the kept ones (those a
        checkpoint carries: the rows from `keep_through` to its round, which
        a killed writer may have lost or truncated).
    """
    self.enabled = enabled
    self._path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    if not enabled:
      return
    kept = []
    if os.path.exists(self._path):
      kept = [r for r in read_rows(self._path)
              if r.get("round", 0) <= keep_through]
    with open(self._path + ".tmp", "w") as f:
      for row in list(kept) + [jsonable(r) for r in replay]:
        f.write(dumps(row) + "\n")
    os.replace(self._path + ".tmp", self._path)
    self._file = open(self._path, "a")
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, row: Dict[str, Any]) -> None:
    if not self.enabled:
      return
    row = jsonable(row)
    self._file.write(dumps(row) + "\n")
    if self._tb is not None:
      step = row.get("step", row.get("round", 0))
      for k, v in row.items():
        if k in ("round", "step") or not isinstance(v, (int, float)):
          continue
        self._tb.add_scalar(k, v, global_step=step)

  def flush(self) -> None:
    if not self.enabled:
      return
    self._file.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if not self.enabled:
      return
    self._file.close()
    if self._tb is not None:
      self._tb.close()


def read_rows(path: str, kind: Optional[str] = None) -> List[Dict[str, Any]]:
  """Rows of a metrics.jsonl (optionally only those with row['kind'] == kind).

  A truncated last line (a killed writer) is skipped.
  """
  rows = []
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        logging.warning("%s: skipping an unreadable line", path)
        continue
      if kind is None or row.get("kind") == kind:
        rows.append(row)
  return rows


def write_json(path: str, obj: Any) -> None:
  """Writes strict JSON atomically (tmp file + rename): never half a file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(dumps(obj, indent=2, sort_keys=True) + "\n")
  os.replace(tmp, path)
