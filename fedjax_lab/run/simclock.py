"""The run's side of the simulated clock (fedjax_lab.clock).

`build_clock` reads `parts.clock` once, where the run is built (a bad
profile is a `ConfigError` naming the field, before anything is written);
`RoundClock` is what the loop calls around each round: the policy's step
counts and mask go into `Engine.round`, and the round's simulated seconds
into the metrics rows and the checkpointed counters (`meta['clock']`), so a
resumed run continues the same clock. Steps a policy skipped (DyLU's and a
deadline's shorter replicas) are counted too (`meta['skipped_steps']`), so
the run's token count is what the replicas processed.
"""

from typing import Any, Dict, Optional, Tuple

import numpy as np

from fedjax_lab import clock as clock_lib
from fedjax_lab.config_validation import ConfigError


def build_clock(parts, task, engine, params) -> clock_lib.Clock:
  """The run's clock: profiles from `parts.clock`, traffic from the engine.

  Raises:
    ConfigError: naming the clock field (a task without a FLOP count and no
      step_seconds, a fixed deadline no replica meets).
  """
  ck = parts.clock
  step_s = ck.step_seconds
  if not step_s:
    flops = float(task.flops_per_example or 0.0) * parts.inner.batch_size
    step_s = flops / ck.device_flops
  if not step_s > 0:
    raise ConfigError("clock.step_seconds: the task gives no FLOP count to "
                      "derive it from; set clock.step_seconds > 0")
  try:
    device = clock_lib.DeviceProfile.build(
        parts.train.num_replicas, step_seconds=step_s,
        speeds=tuple(ck.speeds), lognormal_sigma=ck.lognormal_sigma,
        straggler_prob=ck.straggler_prob,
        straggler_factor=ck.straggler_factor, seed=parts.train.seed)
    network = clock_lib.NetworkProfile.build(
        parts.train.num_replicas, bandwidth_gbps=ck.bandwidth_gbps,
        latency_s=ck.latency_s, bandwidths_gbps=tuple(ck.bandwidths_gbps),
        latencies_s=tuple(ck.latencies_s))
    clock = clock_lib.Clock(
        device, network,
        clock_lib.Policy(ck.policy, ck.deadline_quantile, ck.deadline_seconds,
                         ck.deadline_mode, ck.dylu_min_steps),
        engine.messages(params), inner_steps=engine.inner_steps,
        overlap_steps=engine.schedule.overlap_steps)
    clock.check_deadline()
  except ValueError as e:
    raise ConfigError(f"clock.{' '.join(str(e).split())}") from None
  return clock


class RoundClock:
  """Plans each round with the policy and advances the simulated seconds."""

  def __init__(self, clock: clock_lib.Clock, meta: Dict[str, Any]):
    """`meta['clock']` holds the `ClockState` (restored with a checkpoint)."""
    self.clock, self.meta = clock, meta
    self.state = clock_lib.ClockState.from_json(meta.get("clock"))
    self.meta["clock"] = self.state.to_json()
    self.meta.setdefault("skipped_steps", 0)
    # round -> (total seconds, the round's seconds, skipped steps so far).
    self.at: Dict[int, Tuple[float, float, int]] = {}
    self._skipping = 0  # Steps the current round's plan skips.

  def round_kwargs(self, r: int, kwargs: Dict[str, Any]
                   ) -> Tuple[Dict[str, Any], clock_lib.Plan]:
    """`Engine.round` keyword arguments with the policy's plan applied.

    Steps are the fewer of the policy's and the caller's (a population
    client's own); a replica takes part if both say so. Nothing is added
    when the plan changes nothing (wait_all), so such a run is unchanged.
    """
    m, h = self.clock.num_replicas, self.clock.inner_steps
    want = kwargs.get("num_steps")
    plan = self.clock.plan(r, want)
    self._skipping = int(np.sum(np.full([m], h) if want is None else want)
                         - np.sum(plan.num_steps))
    mask = np.ones([m], bool) if kwargs.get("mask") is None else np.asarray(
        kwargs["mask"], bool)
    kwargs = dict(kwargs)
    if not plan.mask.all():
      kwargs["mask"] = mask = mask & plan.mask
    if "num_steps" in kwargs or np.any(plan.num_steps != h):
      kwargs["num_steps"] = plan.num_steps
    return kwargs, plan._replace(mask=mask)

  def advance(self, r: int, plan: clock_lib.Plan) -> float:
    """Records round r (run with `plan`); returns its simulated seconds."""
    seconds, self.state = self.clock.advance(r, plan, self.state)
    self.meta["clock"] = self.state.to_json()
    self.meta["skipped_steps"] += self._skipping
    self.at[r] = (self.state.seconds, seconds, self.meta["skipped_steps"])
    return seconds

  def seconds(self, r: int) -> float:
    """Cumulative simulated seconds after round r (the latest if unknown)."""
    return self.at.get(r, (self.state.seconds,))[0]

  def skipped_steps(self, r: int) -> int:
    """Replica steps the policy skipped up to round r (the latest if unknown)."""
    got = self.at.get(r)
    return self.meta["skipped_steps"] if got is None else got[2]

  def round_seconds(self, r: int) -> Optional[float]:
    got = self.at.get(r)
    return None if got is None else got[1]

  def forget_before(self, r: int) -> None:
    """Drops rounds before r (their rows are written)."""
    for rr in [rr for rr in self.at if rr < r]:
      del self.at[rr]
