"""The simulated clock: how long each round would take on given devices and links.

(Over 400 lines on purpose: one model of time: profiles, policies, the event
simulation and the clock group's spec.)

This machine runs the M replicas one after another; the clock says how long a
round would take with each replica on its own device, joined by a network.
It never touches the training itself (except through the sync policy's step
counts and masks, which the engine already takes), so a run with the default
profile trains exactly as it would without one.

* A device profile gives each replica's seconds per inner step: its batch's
  training FLOPs (`Task.flops_per_example` × B) over `device_flops` (or a
  given `step_seconds`), divided by its relative speed (an explicit list, and
  a seeded lognormal factor exp(σ·z_i)); each round a replica may straggle,
  slowed by `straggler_factor` with probability `straggler_prob`, drawn as a
  pure function of (seed, round) so a resumed run draws the same.
* A network profile (`comm.links.NetworkProfile`: bandwidth and latency,
  uniform or per island) prices each message the algorithm says it sends
  (`Engine.messages`: ddp and DeMo every step, the round rules once per round,
  Streaming DiLoCo once per fragment) with
  `comm.collectives.collective_seconds`, the one network cost model, paced by
  the slowest link of the M replicas' ring (or of the slowest possible group).
* A sync policy decides who does what in a round: 'wait_all' (everyone does
  its steps, the round waits for the slowest), 'dylu' (DyLU, Dynamic Local
  Updates: replica i takes H_i = max(⌊H·min_j t_j / t_i⌋, h_min) steps, t
  the profile's step times, so all finish together) and 'deadline' (a
  deadline D, a quantile of the round's compute times or fixed seconds:
  'partial' counts the steps a replica finished by D, 'drop' leaves out a
  replica that did not finish all of them).

A round is simulated event by event (`simulate_round`): replicas compute on
their own clocks between the algorithm's syncs; a sync's collective starts
when every participating replica has reached it and the link is free, and
takes its message's seconds; a blocking sync (τ = 0) holds the participants
until it is done; with τ > 0 overlapped steps (Streaming DiLoCo) a replica
only waits τ steps later, where it merges the result. A merge that falls into
the next round, and a link still busy at the round's end, carry over
(`ClockState`, checkpointed with the run). Replicas that sit out (a dropped
outer gradient, a missed deadline) are not waited for.
"""

import dataclasses
import math
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from fedjax_lab import spec
from fedjax_lab.comm.collectives import Message
from fedjax_lab.comm.links import NetworkProfile  # noqa: F401 (re-exported)

# The sync policies. 'async' (Asynchronous Local-SGD) has no `Plan` per round:
# the run drives `async_local_sgd.AsyncSimulator` instead (run/async_rounds.py),
# whose own event loop keeps the time.
POLICIES = ("wait_all", "dylu", "deadline", "async")
DEADLINE_MODES = ("partial", "drop")


def _server_rules():
  from fedjax_lab.outer import async_rules  # pylint: disable=g-import-not-at-top
  return async_rules.SERVER_RULES.names()


_F = spec.field
_POS = spec.in_range(0.0, lo_open=True)


@dataclasses.dataclass(frozen=True)
class ClockSpec:
  """`config.clock` (docs/clock.md): how long the run would take with each
  replica on its own device, joined by a network. Only the policy changes
  training ('wait_all' with equal speeds trains exactly as no clock)."""
  # 'wait_all' (a round waits for the slowest), 'dylu' (steps per replica ∝
  # its speed), 'deadline' or 'async'.
  policy: str = _F("wait_all", spec.one_of(POLICIES))
  # Seconds of one inner step at speed 1 (the replica's own batch); 0 =
  # training FLOPs per step / clock.device_flops.
  step_seconds: float = _F(0.0, spec.NONNEG)
  device_flops: float = _F(1e12, _POS)  # FLOP/s one replica's device sustains.
  # Relative speed of each replica (M numbers > 0, 1 = the device above);
  # () = all 1.
  speeds: Tuple[float, ...] = _F((), spec.each(_POS))
  # Also multiply each speed by exp(sigma * z), z ~ N(0, 1) seeded by
  # train.seed; 0 = off.
  lognormal_sigma: float = _F(0.0, spec.NONNEG)
  # Each round each replica straggles with this probability (seeded by
  # train.seed and the round).
  straggler_prob: float = _F(0.0, spec.FRACTION)
  # A straggler's steps take this many times longer.
  straggler_factor: float = _F(4.0, spec.in_range(1.0))
  bandwidth_gbps: float = _F(1.0, _POS)  # Each replica's link to the others, Gbit/s.
  latency_s: float = _F(1e-3, spec.NONNEG)  # Latency of one hop, s (ring all-reduce: 2(M-1) hops).
  # Per island: replica i's own link, Gbit/s (M numbers > 0), replacing
  # bandwidth_gbps; () = all bandwidth_gbps. A ring or group is paced by its
  # slowest link (min), an async arrival by its replica's.
  bandwidths_gbps: Tuple[float, ...] = _F((), spec.each(_POS))
  # Per island: replica i's latency per hop, s (M numbers >= 0), replacing
  # latency_s; () = all latency_s. A ring or group pays its largest per hop,
  # an async arrival its replica's.
  latencies_s: Tuple[float, ...] = _F((), spec.each(spec.NONNEG))
  # policy='deadline': D = this quantile of the replicas' round compute
  # times, in (0, 1].
  deadline_quantile: float = _F(0.75, spec.in_range(0.0, 1.0, lo_open=True))
  # policy='deadline': D in seconds of compute instead (> 0); 0 = use the
  # quantile.
  deadline_seconds: float = _F(0.0, spec.NONNEG)
  # policy='deadline': 'partial' (a late replica's finished steps count) or
  # 'drop' (it is left out).
  deadline_mode: str = _F("partial", spec.one_of(DEADLINE_MODES))
  # policy='dylu': the fewest local steps a replica takes.
  dylu_min_steps: int = _F(1, spec.POSITIVE)
  # policy='async' (Asynchronous Local-SGD, arXiv 2401.09135): the server
  # applies each replica's outer gradient when it arrives; a round is M
  # arrivals. Its server rule: 'delayed_nesterov' (DN) or 'vanilla'
  # (Nesterov SGD on Δ_i/√M).
  async_rule: str = _F("delayed_nesterov", spec.one_of(_server_rules))
  # policy='async': the rule's lr; 0 = its default (DN 0.7, vanilla 0.07).
  async_learning_rate: float = _F(0.0, spec.NONNEG)
  async_momentum: float = _F(0.9, spec.UNIT_OPEN)  # policy='async': the rule's Nesterov momentum.
  # policy='async': DN's N, arrivals per momentum update; 0 = M (the paper's).
  async_delay: int = _F(0, spec.NONNEG)
  # policy='async': arrivals within this many of the fastest replica's step
  # times after a burst's first one join the burst.
  async_grace: float = _F(0.0, spec.NONNEG)
  # policy='async': DyLU, replica i takes max(⌊H·t_fastest/t_i⌋,
  # clock.dylu_min_steps) steps per task.
  async_dylu: bool = _F(False)


_STRAGGLER_TAG = 0xC10C  # Separates the clock's draws from the data's.
_EPS = 1e-9  # Step counts from float ratios: 3.9999999 steps is 4.


class DeviceProfile(NamedTuple):
  """Each replica's compute speed.

  Attributes:
    step_seconds: float64 [M], seconds one inner step of replica i takes
      (its own batch) when it does not straggle.
    straggler_prob: per round and replica, the chance it straggles.
    straggler_factor: a straggling replica's steps take this many times longer.
    seed: seeds the straggler draws (with the round).
  """
  step_seconds: np.ndarray
  straggler_prob: float = 0.0
  straggler_factor: float = 1.0
  seed: int = 0

  @classmethod
  def build(cls, num_replicas: int, *, step_seconds: float,
            speeds: Sequence[float] = (), lognormal_sigma: float = 0.0,
            straggler_prob: float = 0.0, straggler_factor: float = 1.0,
            seed: int = 0) -> "DeviceProfile":
    """A profile from one device's step time and relative speeds.

    Args:
      num_replicas: M.
      step_seconds: one step at relative speed 1, > 0.
      speeds: relative speed of each replica (M of them; () = all 1).
      lognormal_sigma: σ ≥ 0; each speed is also multiplied by exp(σ·z_i),
        z_i ~ N(0, 1) drawn from `seed`.
      straggler_prob, straggler_factor, seed: as the attributes.
    """
    speed = np.ones([num_replicas]) if not len(speeds) else np.asarray(
        speeds, np.float64)
    if speed.shape != (num_replicas,) or not np.all(speed > 0):
      raise ValueError(f"speeds: need {num_replicas} numbers > 0, got "
                       f"{list(speeds)}")
    if lognormal_sigma:
      z = np.random.default_rng([seed, _STRAGGLER_TAG, 1]).normal(
          size=num_replicas)
      speed = speed * np.exp(lognormal_sigma * z)
    return cls(np.float64(step_seconds) / speed, float(straggler_prob),
               float(straggler_factor), int(seed))

  def round_step_seconds(self, r: int) -> np.ndarray:
    """float64 [M]: this round's seconds per step (stragglers slowed)."""
    if not self.straggler_prob:
      return self.step_seconds
    draw = np.random.default_rng([self.seed, r, _STRAGGLER_TAG]).random(
        len(self.step_seconds))
    slow = draw < self.straggler_prob
    return np.where(slow, self.step_seconds * self.straggler_factor,
                    self.step_seconds)


class Policy(NamedTuple):
  """A synchronous sync policy (see the module docstring)."""
  name: str = "wait_all"
  deadline_quantile: float = 1.0  # D = this quantile of the round's times...
  deadline_seconds: float = 0.0  # ...unless > 0: D in seconds of compute.
  deadline_mode: str = "partial"  # 'partial' or 'drop'.
  dylu_min_steps: int = 1  # h_min.


class Plan(NamedTuple):
  """What a policy decided for one round."""
  num_steps: np.ndarray  # int32 [M]: inner steps each replica takes.
  mask: np.ndarray  # bool [M]: whose update reaches the sync.
  deadline: Optional[float] = None  # D, seconds of compute (deadline only).


def dylu_steps(base_step_seconds: np.ndarray, inner_steps: int,
               min_steps: int = 1) -> np.ndarray:
  """int32 [M]: H_i = clip(⌊H · min_j t_j / t_i⌋, h_min, H)."""
  t = np.asarray(base_step_seconds, np.float64)
  h = np.floor(inner_steps * t.min() / t + _EPS)
  return np.clip(h, min_steps, inner_steps).astype(np.int32)


def plan_round(policy: Policy, step_seconds: np.ndarray,
               base_step_seconds: np.ndarray, want_steps: np.ndarray) -> Plan:
  """The policy's plan for a round.

  Args:
    policy: the policy.
    step_seconds: float64 [M], this round's seconds per step.
    base_step_seconds: float64 [M], the profile's (DyLU sizes H_i by these:
      a transient straggler is not known in advance).
    want_steps: int [M], the steps each replica would take (H, or a
      population client's own).
  """
  want = np.asarray(want_steps, np.int32)
  ones = np.ones(want.shape, bool)
  if policy.name == "wait_all":
    return Plan(want, ones)
  if policy.name == "dylu":
    h = dylu_steps(base_step_seconds, int(want.max(initial=1)),
                   policy.dylu_min_steps)
    return Plan(np.minimum(want, h), ones)
  if policy.name != "deadline":
    raise ValueError(f"policy: must be one of {list(POLICIES)}, got "
                     f"{policy.name!r}")
  full = want * step_seconds
  deadline = (float(policy.deadline_seconds) if policy.deadline_seconds > 0
              else float(np.quantile(full, policy.deadline_quantile)))
  if policy.deadline_mode == "drop":
    return Plan(want, full <= deadline * (1 + _EPS), deadline)
  done = np.floor(deadline / step_seconds + _EPS)
  steps = np.minimum(want, done).astype(np.int32)
  return Plan(steps, steps > 0, deadline)


class Event(NamedTuple):
  """A sync (collective start) or a merge (waiting for one) after a step."""
  step: int
  kind: str  # 'sync', 'merge' (same round) or 'merge_next' (next round's).
  key: int  # The step of the sync it belongs to.
  seconds: float  # A sync's collective time (0 for merges).


def round_events(messages: Sequence[Tuple[int, Message]], *, num_replicas: int,
                 inner_steps: int, overlap_steps: int,
                 network: NetworkProfile) -> List[Event]:
  """A round's events from the engine's messages ((step, Message) pairs).

  The messages sent after the same step form one sync (their collectives
  run back to back); with τ = `overlap_steps` > 0 its result is merged τ
  steps later (in the next round when that is past H). A collective spans
  all M replicas (one that sits out a round's average still relays its
  zero-weighted share), so the slowest island's link paces it; for a group
  exchange, whose random groups the clock does not see, that is the slowest
  group there can be.
  """
  per_step: Dict[int, float] = {}
  for t, msg in messages:
    per_step[t] = per_step.get(t, 0.0) + network.seconds(msg, num_replicas)
  events = [Event(t, "sync", t, c) for t, c in per_step.items()]
  if overlap_steps:
    for t in per_step:
      t_merge = t + overlap_steps
      events.append(Event(t_merge - inner_steps, "merge_next", t, 0.0)
                    if t_merge > inner_steps else Event(t_merge, "merge", t,
                                                        0.0))
  order = {"merge_next": 0, "merge": 0, "sync": 1}  # Merges before syncs.
  return sorted(events, key=lambda e: (e.step, order[e.kind], e.key))


class ClockState(NamedTuple):
  """What the clock carries from one round to the next (checkpointed)."""
  seconds: float = 0.0  # Simulated seconds so far.
  link_busy_s: float = 0.0  # The link is busy this long into the next round.
  # (sync step, seconds into the next round its result is ready) for syncs
  # whose merge falls into the next round.
  pending: Tuple[Tuple[int, float], ...] = ()

  def to_json(self) -> Dict[str, Any]:
    return {"seconds": self.seconds, "link_busy_s": self.link_busy_s,
            "pending": [list(p) for p in self.pending]}

  @classmethod
  def from_json(cls, d: Optional[Dict[str, Any]]) -> "ClockState":
    if not d:
      return cls()
    return cls(float(d["seconds"]), float(d["link_busy_s"]),
               tuple((int(k), float(v)) for k, v in d["pending"]))


def _steps_between(num_steps: np.ndarray, t0: int, t1: int) -> np.ndarray:
  """Steps each replica takes in [t0, t1) when it stops after num_steps."""
  return np.minimum(num_steps, t1) - np.minimum(num_steps, t0)


def simulate_round(events: Sequence[Event], step_seconds: np.ndarray,
                   plan: Plan, inner_steps: int, *, blocking: bool,
                   carry: ClockState = ClockState()) -> Tuple[float, ClockState]:
  """(seconds the round takes, the state carried into the next round).

  Args:
    events: `round_events`.
    step_seconds: float64 [M], this round's seconds per step.
    plan: the policy's plan (steps per replica, who takes part).
    inner_steps: H.
    blocking: syncs hold the replicas until done (τ = 0).
    carry: the previous round's `ClockState` (its `seconds` is kept).
  """
  n = np.asarray(plan.num_steps, np.int64)
  active = np.asarray(plan.mask, bool) & (n > 0)
  clock = np.zeros(len(step_seconds))  # Each replica's own time.
  link = carry.link_busy_s
  ready_next = dict(carry.pending)
  ready: Dict[int, float] = {}
  prev = 0
  for e in events:
    clock += _steps_between(n, prev, e.step) * step_seconds
    prev = e.step
    if e.kind == "sync":
      if not active.any():
        continue
      link = max(float(clock[active].max()), link) + e.seconds
      if blocking:
        clock[active] = np.maximum(clock[active], link)
      else:
        ready[e.key] = link
    else:
      done = (ready_next if e.kind == "merge_next" else ready).get(e.key, 0.0)
      clock[active] = np.maximum(clock[active], done)
  clock += _steps_between(n, prev, inner_steps) * step_seconds
  if active.any():
    end = float(clock[active].max())
  else:
    end = plan.deadline if plan.deadline is not None else float(clock.max())
  merged_here = {e.key for e in events if e.kind == "merge"}
  pending = tuple((k, max(0.0, v - end)) for k, v in sorted(ready.items())
                  if k not in merged_here)
  return end, ClockState(carry.seconds + end, max(0.0, link - end), pending)


class Clock:
  """A run's simulated clock: profiles, policy and the algorithm's traffic."""

  def __init__(self, device: DeviceProfile, network: NetworkProfile,
               policy: Policy, messages: Sequence[Tuple[int, Message]], *,
               inner_steps: int, overlap_steps: int = 0):
    """Args: the profiles, the policy, `Engine.messages(params)`, H and τ."""
    self.device, self.network, self.policy = device, network, policy
    self.num_replicas = len(device.step_seconds)
    self.inner_steps, self.overlap_steps = inner_steps, overlap_steps
    self.events = round_events(messages, num_replicas=self.num_replicas,
                               inner_steps=inner_steps,
                               overlap_steps=overlap_steps, network=network)

  def plan(self, r: int, want_steps: Optional[np.ndarray] = None) -> Plan:
    """Round r's plan (a pure function of the profile, seed and round)."""
    want = (np.full([self.num_replicas], self.inner_steps, np.int32)
            if want_steps is None else np.asarray(want_steps, np.int32))
    return plan_round(self.policy, self.device.round_step_seconds(r),
                      self.device.step_seconds, want)

  def advance(self, r: int, plan: Plan, state: ClockState
              ) -> Tuple[float, ClockState]:
    """(round r's seconds, the new state) once round r ran with `plan`."""
    return simulate_round(self.events, self.device.round_step_seconds(r), plan,
                          self.inner_steps, blocking=not self.overlap_steps,
                          carry=state)

  def comm_seconds_per_round(self) -> float:
    """The collectives' seconds in a round, overlapped or not."""
    return float(sum(e.seconds for e in self.events))

  def describe(self) -> Dict[str, Any]:
    """The profile, for summary.json and report headers."""
    d, n, p = self.device, self.network, self.policy
    out = {"policy": p.name,
           "step_seconds": [float(x) for x in d.step_seconds],
           "straggler_prob": d.straggler_prob,
           "straggler_factor": d.straggler_factor,
           **n.describe(),
           "comm_seconds_per_round": self.comm_seconds_per_round(),
           "overlap_steps": self.overlap_steps}
    if p.name == "deadline":
      out.update(deadline_mode=p.deadline_mode,
                 deadline_quantile=p.deadline_quantile,
                 deadline_seconds=p.deadline_seconds)
    if p.name == "dylu":
      out["dylu_steps"] = dylu_steps(d.step_seconds, self.inner_steps,
                                     p.dylu_min_steps).tolist()
    return out

  def check_deadline(self) -> None:
    """Raises a ValueError naming the field if no replica can meet a fixed
    deadline (D below the fastest replica's whole round)."""
    p = self.policy
    if p.name != "deadline" or p.deadline_seconds <= 0:
      return
    fastest = self.inner_steps * float(self.device.step_seconds.min())
    if p.deadline_seconds < fastest * (1 - _EPS):
      raise ValueError(
          f"deadline_seconds: no replica meets {p.deadline_seconds:g} s: the "
          f"fastest needs {fastest:.6g} s for its {self.inner_steps} steps; "
          f"allowed: >= {fastest:.6g}, or 0 (use clock.deadline_quantile)")


def hours(seconds: Optional[float]) -> Optional[float]:
  """Seconds as hours (None stays None)."""
  return None if seconds is None or not math.isfinite(seconds) else seconds / 3600
