"""What a run tells its user while it runs: progress lines with an ETA.

Under an absl entry point (flags parsed) lines go through absl logging; called
from Python or a notebook, where absl hides INFO until flags are parsed, they
are printed to stdout, so a multi-minute comparison is never silent.
"""

import sys
import time
from typing import Optional

from absl import flags
from absl import logging


def say(message: str, *args) -> None:
  """One progress line (absl INFO under an entry point, else stdout)."""
  if flags.FLAGS.is_parsed():
    logging.info(message, *args)
  else:
    print(message % args if args else message, file=sys.stdout, flush=True)


def warn(message: str, *args) -> None:
  """A warning: absl WARNING (shown everywhere, notebooks included)."""
  logging.warning(message, *args)


def fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Clock:
  """Round rate and ETA that leave out the first round (compilation) and the
  time spent in evaluations and checkpoints (charged per round instead)."""

  def __init__(self, start_round: int, total_rounds: int):
    self.start_round, self.total = start_round, total_rounds
    self.t0 = time.time()
    self.first_round_s: Optional[float] = None
    self.side_s = 0.0  # Evaluations and checkpoint saves.

  def elapsed(self) -> float:
    return time.time() - self.t0

  def rate(self, r: int) -> float:
    """Rounds per second, steady state."""
    done = r - self.start_round
    elapsed = self.elapsed()
    if done <= 1:
      return done / max(elapsed, 1e-9)
    busy = elapsed - (self.first_round_s or 0.0) - self.side_s
    return (done - 1) / max(busy, 1e-9)

  def eta(self, r: int) -> float:
    done = r - self.start_round
    left = self.total - r
    eta = left / max(self.rate(r), 1e-9)
    if done:
      eta += self.side_s / done * left
    return eta


class _DropOrbaxInfo(logging.logging.Filter):
  """Drops orbax's INFO records (dozens per checkpoint); keeps its warnings."""

  def filter(self, record):
    return record.levelno >= logging.logging.WARNING or (
        "/orbax/" not in record.pathname)


def quiet_orbax_logs() -> None:
  """For entry points: keep absl INFO logs readable during checkpointing."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _DropOrbaxInfo) for f in handler.filters):
    handler.addFilter(_DropOrbaxInfo())
