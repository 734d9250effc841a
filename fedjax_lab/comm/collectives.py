"""What a replica sends, and what a collective moves on the wire.

A `Message` describes one thing a replica sends at a sync: its payload (bytes
as encoded) and the collective that carries it. The byte accounting of every
algorithm (and, later, the simulated clock) is derived from these
descriptions, never from an algorithm's name.

Per replica, for M replicas (ring algorithms; OpenDiLoCo arXiv 2407.07852):
  * 'all_reduce': dense values summed on the way; a ring moves
    2·(M − 1)/M of the payload.
  * 'all_gather': sparse messages whose indices differ between replicas cannot
    be summed on the way: every replica receives the M − 1 others,
    (M − 1)× the payload.
  * 'group': an exchange inside a group of `group_size` replicas (NoLoCo's
    pairs, gossip): each replica sends its payload to the group_size − 1
    others.

The time a collective takes (`collective_seconds`, the one network cost model
the simulated clock and the what-if simulator `comm.netsim` share) is its
sequential hops × the link latency plus the bytes one replica moves over its
link's bandwidth: 2·(M − 1) hops for a ring all-reduce (reduce-scatter then
all-gather), M − 1 for a ring all-gather, group_size − 1 for a group exchange.
"""

from typing import NamedTuple, Sequence

COLLECTIVES = ("all_reduce", "all_gather", "group")


class Message(NamedTuple):
  """One payload a replica sends per sync.

  Attributes:
    payload_bytes: bytes one replica sends, as encoded.
    collective: one of `COLLECTIVES`.
    group_size: peers per group, for 'group' (ignored otherwise).
    every: how many syncs apart it is sent, on average (1 = every sync;
      e.g. a moment averaged every third round: 3).
  """
  payload_bytes: float
  collective: str = "all_reduce"
  group_size: int = 0
  every: float = 1.0


def _shape(message: Message, num_replicas: int):
  """(bytes factor, sequential hops) of one send of `message`."""
  m = num_replicas
  if message.collective == "all_reduce":
    return 2.0 * (m - 1) / m, 2 * (m - 1)
  if message.collective == "all_gather":
    return float(m - 1), m - 1
  if message.collective == "group":
    peers = min(message.group_size, m) - 1
    return float(peers), peers
  raise ValueError(f"collective must be one of {COLLECTIVES}, got "
                   f"{message.collective!r}")


def moved_bytes(message: Message, num_replicas: int) -> float:
  """Bytes one replica moves for `message` on a ring (or to its group)."""
  factor, _ = _shape(message, num_replicas)
  return message.payload_bytes * factor / message.every


def collective_seconds(message: Message, num_replicas: int,
                       bandwidth_gbps: float, latency_s: float = 0.0) -> float:
  """Seconds one sync's `message` occupies the link, averaged over `every`.

  t = (hops · latency + 8 · moved bytes / (bandwidth_gbps · 1e9)) / every;
  0 when M = 1 or nothing is sent. For an all-reduce:
  2·(M − 1)·latency + 2·(M − 1)/M · 8·B / W (Patarasuk & Yuan's ring).

  Args:
    message: what one replica sends.
    num_replicas: M, replicas taking part.
    bandwidth_gbps: each replica's link, Gbit/s (decimal), > 0.
    latency_s: one hop's latency, seconds.
  """
  if num_replicas <= 1 or message.payload_bytes <= 0:
    return 0.0
  factor, hops = _shape(message, num_replicas)
  wire = 8.0 * message.payload_bytes * factor / (bandwidth_gbps * 1e9)
  return (hops * latency_s + wire) / message.every


def totals(messages: Sequence[Message], num_replicas: int):
  """(payload bytes, moved bytes) per sync, averaged over `every`."""
  payload = sum(m.payload_bytes / m.every for m in messages)
  moved = sum(moved_bytes(m, num_replicas) for m in messages)
  return float(payload), float(moved)
