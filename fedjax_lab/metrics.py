"""Metric rows: a JSONL file and TensorBoard event files, from process 0.

A row is a flat dict of JSON numbers keyed like 'train/loss' or 'eval/loss',
plus the counters every curve may be drawn against: 'round', 'step' (inner
steps per replica so far), 'tokens' (all replicas) and the cumulative bytes
each replica has communicated ('payload_bytes', 'ring_bytes').
"""

import json
import math
import os
from typing import Any, Dict, Iterable, List, Optional

from absl import logging

METRICS_FILE = "metrics.jsonl"


def _jsonable(value):
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if hasattr(value, "tolist"):
    return _jsonable(value.tolist())
  if isinstance(value, float) and not math.isfinite(value):
    return None if math.isnan(value) else (
        "inf" if value > 0 else "-inf")  # JSON has no NaN/Inf.
  return value


class MetricsWriter:
  """Appends rows to `workdir/metrics.jsonl` and TensorBoard (if enabled).

  Only the process that is given `enabled=True` writes (process 0 in a
  multi-process run); the others get a writer that does nothing.
  """

  def __init__(self, workdir: str, *, enabled: bool = True,
               tensorboard: bool = True, resume_round: int = 0):
    """Opens the writers.

    Args:
      workdir: the run's directory (exists).
      enabled: write anything at all.
      tensorboard: also write TensorBoard event files (workdir/tensorboard).
      resume_round: rows after this round are dropped from an existing
        metrics file (they belong to rounds that will run again).
    """
    self.enabled = enabled
    self._path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    if not enabled:
      return
    if os.path.exists(self._path):
      kept = [r for r in read_rows(self._path)
              if r.get("round", 0) <= resume_round]
      with open(self._path, "w") as f:
        for row in kept:
          f.write(json.dumps(row) + "\n")
    self._file = open(self._path, "a")
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, row: Dict[str, Any]) -> None:
    if not self.enabled:
      return
    row = {k: _jsonable(v) for k, v in row.items()}
    self._file.write(json.dumps(row) + "\n")
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
  """Writes JSON atomically (tmp file + rename): never half a file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=_jsonable)
    f.write("\n")
  os.replace(tmp, path)


def finite_numbers(values: Iterable[Any]) -> bool:
  return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
