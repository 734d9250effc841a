"""Per-client state for a population: a numpy tree [N, ...] in host memory.

For the algorithms that keep something per client across its participations
(SCAFFOLD's control variate c_i, Karimireddy et al., arXiv:1910.06378; a
DiLoCo-style kept inner optimizer state under sampling). The M sampled
clients' rows are gathered into the replica slots before a round and
scattered back after it, on the host, off the device's hot path. Stateless
algorithms (FedAvg, FedOpt, FedProx) need none.
"""

from typing import Any

import jax
import numpy as np


def format_bytes(n: float) -> str:
  """1536 -> '1.5 KiB'."""
  for unit in ("B", "KiB", "MiB", "GiB"):
    if n < 1024 or unit == "GiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  raise AssertionError("unreachable")


class ClientStateStore:
  """Per-client state for N clients: a numpy tree [N, ...] in host memory.

  Every client starts as a copy of `template` (e.g. zeros like the params,
  SCAFFOLD's c_i = 0). Each round the M sampled clients' states are gathered
  into the slots and, after the round, scattered back (only where the slot's
  client took part). Host memory keeps it off the device and the hot path;
  `memory_line()` says what it costs.

  Example:
    store = ClientStateStore(jax.tree.map(np.zeros_like, params), 100)
    c_slots = store.gather(ids)               # tree [M, ...]
    store.scatter(ids, new_c_slots, mask=ok)  # rows of ids where ok
  """

  def __init__(self, template: Any, num_clients: int):
    """Allocates [N, ...] per leaf, each row a copy of the template leaf.

    Args:
      template: a pytree of arrays (numpy or jax), one client's state.
      num_clients: N >= 1.
    """
    if int(num_clients) != num_clients or num_clients < 1:
      raise ValueError(f"train.num_clients: must be an int >= 1, got "
                       f"{num_clients}")
    self.num_clients = int(num_clients)
    leaves, self._treedef = jax.tree.flatten(template)
    self._leaves = []
    for leaf in leaves:
      leaf = np.asarray(leaf)
      if leaf.any():
        out = np.empty((self.num_clients,) + leaf.shape, leaf.dtype)
        out[...] = leaf
      else:  # Zeros (the usual c_i = 0): calloc'd pages, touched on first use.
        out = np.zeros((self.num_clients,) + leaf.shape, leaf.dtype)
      self._leaves.append(out)

  @property
  def nbytes(self) -> int:
    """Host bytes held for all N clients."""
    return int(sum(leaf.nbytes for leaf in self._leaves))

  def memory_line(self) -> str:
    """E.g. 'client state: 100 clients × 1.2 MiB = 120.0 MiB (host)'."""
    return (f"client state: {self.num_clients} clients × "
            f"{format_bytes(self.nbytes / self.num_clients)} = "
            f"{format_bytes(self.nbytes)} (host memory)")

  def _ids(self, client_ids) -> np.ndarray:
    ids = np.asarray(client_ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"ClientStateStore: client_ids must be a 1-D int array, "
                       f"got {ids.dtype}{list(ids.shape)}")
    if ids.size and (ids.min() < 0 or ids.max() >= self.num_clients):
      raise ValueError(f"ClientStateStore: client_ids must lie in "
                       f"[0, {self.num_clients}), got {ids.min()}..{ids.max()}")
    return ids.astype(np.int64)

  def gather(self, client_ids) -> Any:
    """The states of `client_ids`: a tree of copies shaped [len(ids), ...]."""
    ids = self._ids(client_ids)
    return jax.tree.unflatten(self._treedef, [leaf[ids] for leaf in self._leaves])

  def scatter(self, client_ids, tree: Any, mask=None) -> None:
    """Writes row m of `tree` to client client_ids[m] where mask[m].

    Args:
      client_ids: int [M], distinct.
      tree: the template's structure with leaves [M, ...] (numpy, or jax
        arrays this process can read whole); cast to the store's dtypes.
      mask: bool [M] or None (all rows).
    """
    ids = self._ids(client_ids)
    if len(np.unique(ids)) != len(ids):
      raise ValueError(f"ClientStateStore.scatter: client_ids must be "
                       f"distinct, got {ids.tolist()}")
    keep = (np.ones(len(ids), bool) if mask is None
            else np.asarray(mask, bool))
    if keep.shape != ids.shape:
      raise ValueError(f"ClientStateStore.scatter: mask shape {keep.shape} != "
                       f"client_ids shape {ids.shape}")
    values = self._values("scatter", tree, len(ids))
    for leaf, value in zip(self._leaves, values):
      leaf[ids[keep]] = value[keep]

  def _values(self, method: str, tree, rows: int):
    """`tree`'s leaves as numpy, checked against the store: the same tree
    structure, each leaf [rows, ...] like the store's."""
    leaves, treedef = jax.tree.flatten(tree)
    if treedef != self._treedef:
      raise ValueError(f"ClientStateStore.{method}: tree structure {treedef} "
                       f"!= the store's {self._treedef}")
    values = [np.asarray(v) for v in leaves]
    for leaf, value in zip(self._leaves, values):
      if value.shape != (rows,) + leaf.shape[1:]:
        raise ValueError(f"ClientStateStore.{method}: leaf shape "
                         f"{value.shape} != {(rows,) + leaf.shape[1:]}")
    return values

  def state_dict(self, copy: bool = True) -> Any:
    """The whole store: the template's tree with numpy leaves [N, ...].

    Args:
      copy: copy the arrays (safe to hand to an asynchronous checkpoint save
        while rounds go on); False returns the live arrays.
    """
    return jax.tree.unflatten(
        self._treedef, [leaf.copy() if copy else leaf for leaf in self._leaves])

  def load_state_dict(self, tree: Any) -> None:
    """Replaces every client's state with `tree` (from `state_dict`)."""
    values = self._values("load_state_dict", tree, self.num_clients)
    for leaf, value in zip(self._leaves, values):
      leaf[...] = value
