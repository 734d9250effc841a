"""The simulated clock's network: each island's link, and which link paces a
collective.

Each of a run's M replicas (islands) reaches the others over its own link: a
bandwidth (Gbit/s, decimal) and a latency (seconds per hop). `NetworkProfile`
holds one pair for every island (`bandwidth_gbps`, `latency_s`) or one per
island (`bandwidths_gbps`, `latencies_s`: M numbers each; () = the uniform
value for every island). A message's time is always
`comm.collectives.collective_seconds` (the one cost model, shared with the
what-if tables of `comm.netsim`), given the bandwidth and latency of the link
that paces it (`NetworkProfile.pace`):

* A ring all-reduce or all-gather runs its 2(M − 1) (or M − 1) steps in
  lock-step, every replica passing a chunk to its neighbour; a step ends when
  its slowest transfer does, so every step pays the largest latency and the
  smallest bandwidth of the ring: min bandwidth, max latency over the
  replicas on it.
* A pairwise (group) exchange is paced by the slower of the two (the slowest
  of the group) in the same way.
* A replica's own transfer (clock.policy='async': its Δ_i to the server and
  the model back) by its own link.

With equal values per island, min and max return that very value, so the
times are bit-identical to the uniform profile's.
"""

import math
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

from fedjax_lab.comm.collectives import collective_seconds
from fedjax_lab.comm.collectives import Message


def _per_island(field: str, values: Sequence[float], num_replicas: int,
                positive: bool) -> Tuple[float, ...]:
  """`values` as floats, or a ValueError naming `field`."""
  out = tuple(float(v) for v in values)
  ok = all(math.isfinite(v) and (v > 0 if positive else v >= 0) for v in out)
  if len(out) not in (0, num_replicas) or not ok:
    raise ValueError(
        f"{field}: need one finite number {'> 0' if positive else '>= 0'} per "
        f"replica (train.num_replicas={num_replicas}) or () for the uniform "
        f"value, got {len(out)}: {list(out)}")
  return out


class NetworkProfile(NamedTuple):
  """The islands' links (see the module docstring).

  Attributes:
    bandwidth_gbps: every island's link, Gbit/s (decimal), unless
      `bandwidths_gbps` gives one per island.
    latency_s: seconds per hop, unless `latencies_s` gives one per island.
    bandwidths_gbps: () or M bandwidths, island i's link.
    latencies_s: () or M latencies, island i's link.
  """
  bandwidth_gbps: float = 1.0
  latency_s: float = 1e-3
  bandwidths_gbps: Tuple[float, ...] = ()
  latencies_s: Tuple[float, ...] = ()

  @classmethod
  def build(cls, num_replicas: int, *, bandwidth_gbps: float = 1.0,
            latency_s: float = 1e-3, bandwidths_gbps: Sequence[float] = (),
            latencies_s: Sequence[float] = ()) -> "NetworkProfile":
    """A checked profile; a ValueError names the field at fault."""
    if not (math.isfinite(bandwidth_gbps) and bandwidth_gbps > 0):
      raise ValueError(f"bandwidth_gbps: must be a finite number > 0, got "
                       f"{bandwidth_gbps!r}")
    if not (math.isfinite(latency_s) and latency_s >= 0):
      raise ValueError(f"latency_s: must be a finite number >= 0, got "
                       f"{latency_s!r}")
    return cls(float(bandwidth_gbps), float(latency_s),
               _per_island("bandwidths_gbps", bandwidths_gbps, num_replicas,
                           True),
               _per_island("latencies_s", latencies_s, num_replicas, False))

  @property
  def per_island(self) -> bool:
    """Whether any island has its own bandwidth or latency."""
    return bool(len(self.bandwidths_gbps) or len(self.latencies_s))

  def pace(self, members: Optional[Sequence[int]] = None
           ) -> Tuple[float, float]:
    """(bandwidth, latency) pacing a transfer among `members` (None: all
    islands): the smallest bandwidth and the largest latency among them."""
    bw, lat = self.bandwidths_gbps, self.latencies_s
    if members is not None:
      bw = tuple(bw[i] for i in members) if len(bw) else bw
      lat = tuple(lat[i] for i in members) if len(lat) else lat
    return (min(bw) if len(bw) else self.bandwidth_gbps,
            max(lat) if len(lat) else self.latency_s)

  def seconds(self, message: Message, num_replicas: int,
              members: Optional[Sequence[int]] = None) -> float:
    """`collective_seconds` of `message` over `num_replicas`, paced by the
    slowest link among `members` (None: every island)."""
    return collective_seconds(message, num_replicas, *self.pace(members))

  def describe(self) -> Dict[str, Any]:
    """For summary.json: the link pacing a collective over every island,
    and the per-island links when given."""
    bw, lat = self.pace()
    out = {"bandwidth_gbps": bw, "latency_s": lat}
    if len(self.bandwidths_gbps):
      out["bandwidths_gbps"] = list(self.bandwidths_gbps)
    if len(self.latencies_s):
      out["latencies_s"] = list(self.latencies_s)
    return out
