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


def moved_bytes(message: Message, num_replicas: int) -> float:
  """Bytes one replica moves for `message` on a ring (or to its group)."""
  m = num_replicas
  if message.collective == "all_reduce":
    factor = 2.0 * (m - 1) / m
  elif message.collective == "all_gather":
    factor = float(m - 1)
  elif message.collective == "group":
    factor = float(min(message.group_size, m) - 1)
  else:
    raise ValueError(f"collective must be one of {COLLECTIVES}, got "
                     f"{message.collective!r}")
  return message.payload_bytes * factor / message.every


def totals(messages: Sequence[Message], num_replicas: int):
  """(payload bytes, moved bytes) per sync, averaged over `every`."""
  payload = sum(m.payload_bytes / m.every for m in messages)
  moved = sum(moved_bytes(m, num_replicas) for m in messages)
  return float(payload), float(moved)
