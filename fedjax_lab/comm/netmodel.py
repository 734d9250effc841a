"""The network model's functions: one method's sync time and utilisation.

`simulate` (and `utilisation`, `simulated_wall_clock`, `required_bandwidth`
on top of it) computes the model of `fedjax_lab.comm.netsim`'s docstring,
where its formulas, references and assumptions are; the paper tables, the
what-if tables and the CLI are there too. Import these from
`fedjax_lab.comm.netsim`.
"""

import math
from typing import Dict

from fedjax_lab.comm.collectives import collective_seconds
from fedjax_lab.comm.collectives import Message

# How a method syncs (not which algorithm it is): 'every_step' (an all-reduce
# after every step: data-parallel), 'blocking' (one all-reduce every
# `inner_steps`, compute waits: DiLoCo and the other round rules) or
# 'streaming' (Streaming DiLoCo's fragments, optionally overlapped).
METHODS = ("every_step", "blocking", "streaming")

# Kaplan's 6N rule: forward 2N FLOPs, backward 4N (activations and weights).
DEFAULT_BACKWARD_FRACTION = 2.0 / 3.0


def allreduce_seconds(payload_bytes: float, num_replicas: int,
                      bandwidth_gbps: float, latency_s: float = 0.0) -> float:
  """Time of one ring all-reduce of `payload_bytes` per replica.

  t = 2·(M − 1)·latency + 2·(M − 1)/M · 8·bytes / (bandwidth_gbps · 1e9).

  Args:
    payload_bytes: bytes each replica contributes (its compressed payload).
    num_replicas: M, replicas in the ring.
    bandwidth_gbps: per-replica link bandwidth in Gbit/s (decimal).
    latency_s: one hop's latency in seconds.

  Returns:
    Seconds; 0 when M = 1 or nothing is sent
    (`fedjax_lab.comm.collectives.collective_seconds`, the one cost model).
  """
  return collective_seconds(Message(float(payload_bytes), "all_reduce"),
                            int(num_replicas), bandwidth_gbps, latency_s)


def check(cond: bool, msg: str) -> None:
  """Raises ValueError("netsim: <msg>") unless `cond`."""
  if not cond:
    raise ValueError(f"netsim: {msg}")


def _check_args(method, step_seconds, payload_bytes, num_replicas,
                bandwidth_gbps, inner_steps, latency_s, fragments,
                overlap_steps, num_layers, backward_fraction) -> None:
  """`simulate`'s arguments, each in its range, and the method's schedule."""
  check(method in METHODS, f"unknown method {method!r}; known: {METHODS}")
  check(step_seconds > 0, f"step_seconds must be > 0, got {step_seconds}")
  check(payload_bytes >= 0, f"payload_bytes must be >= 0, got {payload_bytes}")
  check(int(num_replicas) == num_replicas and num_replicas >= 1,
        f"num_replicas must be an int >= 1, got {num_replicas}")
  check(bandwidth_gbps > 0, f"bandwidth_gbps must be > 0, got {bandwidth_gbps}")
  check(latency_s >= 0, f"latency_s must be >= 0, got {latency_s}")
  check(int(inner_steps) == inner_steps and inner_steps >= 1,
        f"inner_steps must be an int >= 1, got {inner_steps}")
  check(int(fragments) == fragments and fragments >= 1,
        f"fragments must be an int >= 1, got {fragments}")
  check(int(overlap_steps) == overlap_steps and overlap_steps >= 0,
        f"overlap_steps must be an int >= 0, got {overlap_steps}")
  check(int(num_layers) == num_layers and num_layers >= 1,
        f"num_layers must be an int >= 1, got {num_layers}")
  check(0 <= backward_fraction <= 1,
        f"backward_fraction must be in [0, 1], got {backward_fraction}")
  if method == "every_step":
    check(inner_steps == 1 and fragments == 1 and overlap_steps == 0,
          "every_step syncs every step: inner_steps=1, fragments=1, "
          "overlap_steps=0")
  elif method == "blocking":
    check(fragments == 1 and overlap_steps == 0,
          "blocking is one sync per round: fragments=1, overlap_steps=0 "
          "(use method='streaming' for fragments or overlap)")
  else:
    check(fragments <= inner_steps,
          f"streaming needs fragments <= inner_steps, got {fragments} > "
          f"{inner_steps}")
    check(overlap_steps < inner_steps,
          f"streaming needs overlap_steps < inner_steps (tau < H), got "
          f"{overlap_steps} >= {inner_steps}")


def simulate(method: str, *, step_seconds: float, payload_bytes: float,
             num_replicas: int, bandwidth_gbps: float, inner_steps: int = 1,
             latency_s: float = 0.0, fragments: int = 1, overlap_steps: int = 0,
             num_layers: int = 1,
             backward_fraction: float = DEFAULT_BACKWARD_FRACTION
             ) -> Dict[str, float]:
  """Steady-state wall-clock and compute utilisation of one method.

  Args:
    method: "every_step" (all-reduce every step; H = 1, P = 1, τ = 0),
      "blocking" (blocking all-reduce every `inner_steps`), or "streaming" (Streaming
      DiLoCo: `fragments` equal fragments, each synced every `inner_steps`,
      one every inner_steps / fragments steps, each overlapping
      `overlap_steps` inner steps).
    step_seconds: T, compute time of one inner step (forward + backward), e.g.
      measured.
    payload_bytes: bytes one replica sends per full sync (all fragments), as
      counted by a compressor's `payload_bytes` (every_step: the gradient).
    num_replicas: M.
    bandwidth_gbps: per-replica cross-replica bandwidth, Gbit/s.
    inner_steps: H (must be 1 for every_step).
    latency_s: per-hop latency, seconds.
    fragments: P (streaming only; 1 otherwise).
    overlap_steps: τ, inner steps a sync may run behind (streaming only;
      Streaming DiLoCo needs τ < H).
    num_layers: L, layers whose reductions pipeline with the backward pass;
      1 = no overlap with the backward (compute + communication add up).
    backward_fraction: β, the backward pass's share of `step_seconds`.

  Returns:
    A dict with wall_seconds_per_step, utilisation (compute / wall time),
    comm_seconds_per_sync (one sync event's all-reduce), exposed_seconds_per_sync
    (its part not hidden behind compute), sync_interval_steps (k = H / P),
    bytes_per_sync (payload / P: the peak a link carries at once),
    ring_bytes_per_sync (2·(M − 1)/M of it), mean_gbps (average link load) and
    link_bound (1.0 if the link, not compute, sets the pace).
  """
  _check_args(method, step_seconds, payload_bytes, num_replicas, bandwidth_gbps,
              inner_steps, latency_s, fragments, overlap_steps, num_layers,
              backward_fraction)

  t_step = float(step_seconds)
  k = inner_steps / fragments
  bytes_per_sync = payload_bytes / fragments
  comm = allreduce_seconds(bytes_per_sync, num_replicas, bandwidth_gbps,
                           latency_s)
  backward_window = backward_fraction * t_step * (1.0 - 1.0 / num_layers)
  if overlap_steps == 0:
    exposed = max(comm / num_layers, comm - backward_window)
  else:
    exposed = max(0.0, comm - overlap_steps * t_step - backward_window)
  interval = max(k * t_step + exposed, comm)
  m = int(num_replicas)
  ring_bytes = bytes_per_sync * 2 * (m - 1) / m if m > 1 else 0.0
  return {
      "wall_seconds_per_step": interval / k,
      "utilisation": k * t_step / interval,
      "comm_seconds_per_sync": comm,
      "exposed_seconds_per_sync": exposed,
      "sync_interval_steps": k,
      "bytes_per_sync": bytes_per_sync,
      "ring_bytes_per_sync": ring_bytes,
      "mean_gbps": ring_bytes * 8 / interval / 1e9,
      "link_bound": float(comm > k * t_step + exposed),
  }


def utilisation(method: str, **kwargs) -> float:
  """`simulate(method, **kwargs)["utilisation"]`."""
  return simulate(method, **kwargs)["utilisation"]


def simulated_wall_clock(method: str, *, num_steps: int, **kwargs) -> float:
  """Simulated wall-clock seconds for `num_steps` inner steps.

  For a comparison table: pass the measured step time as `step_seconds` and
  the compressor's counted bytes as `payload_bytes`; other keyword arguments
  as `simulate`.
  """
  return num_steps * simulate(method, **kwargs)["wall_seconds_per_step"]


def required_bandwidth(method: str, *, target_utilisation: float = 0.9,
                       lo_gbps: float = 1e-9, hi_gbps: float = 1e12,
                       **kwargs) -> float:
  """Smallest bandwidth (Gbit/s) at which `utilisation >= target`.

  Utilisation is non-decreasing in bandwidth, so this bisects on a log scale
  (to a relative precision of 1e-9).

  Args:
    method: as `simulate`.
    target_utilisation: in (0, 1].
    lo_gbps, hi_gbps: the search bracket.
    **kwargs: everything else `simulate` takes except `bandwidth_gbps`.

  Returns:
    The bandwidth; 0.0 when nothing is communicated (M = 1 or no payload) and
    math.inf when even infinite bandwidth falls short (latency or link-bound
    schedule).
  """
  check(0 < target_utilisation <= 1,
        f"target_utilisation must be in (0, 1], got {target_utilisation}")
  check("bandwidth_gbps" not in kwargs,
        "required_bandwidth solves for bandwidth_gbps; do not pass it")
  if kwargs.get("num_replicas", 1) <= 1 or kwargs.get("payload_bytes", 0) <= 0:
    simulate(method, bandwidth_gbps=1.0, **kwargs)  # validates the arguments
    return 0.0
  cu = lambda w: simulate(method, bandwidth_gbps=w, **kwargs)["utilisation"]
  if cu(math.inf) < target_utilisation:
    return math.inf
  lo, hi = math.log(lo_gbps), math.log(hi_gbps)
  if cu(lo_gbps) >= target_utilisation:
    return lo_gbps
  if cu(hi_gbps) < target_utilisation:
    return math.inf
  while hi - lo > 1e-9:
    mid = 0.5 * (lo + hi)
    if cu(math.exp(mid)) >= target_utilisation:
      hi = mid
    else:
      lo = mid
  return math.exp(hi)
