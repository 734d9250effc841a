"""Federated populations: N clients, M sampled into replica slots each round.

The FedAvg setting (McMahan et al., "Communication-Efficient Learning of Deep
Networks from Decentralized Data", arXiv:1602.05629): a population of N
clients (`partition.client_partition`), of which M = C·N are sampled each
round, each running E local epochs of batch B (or a fixed H steps).

* `ClientSampler`: which M clients fill the slots in round r, a pure function
  of (seed, r), so a resumed run replays the same clients with no saved state
  beyond the round.
* `client_steps`: FedAvg's E/B work, ceil(n_i / B) · E local steps.
* `PopulationLoader`: for round r, the sampled clients' batches
  [M_local, H, B, ...] with num_steps [M] and num_examples [M] for
  `Engine.round`; its position is the round number (`get_state`).

Per-client state (SCAFFOLD's c_i) lives in `client_state.ClientStateStore`.
"""

from typing import Any, Dict, NamedTuple, Optional, Sequence
import zlib

import numpy as np

from fedjax_lab.data import loader
from fedjax_lab.data.sources import gather

SAMPLING_KINDS = ("uniform", "weighted")
_STATE_VERSION = 1

# The sampler's RNG key is [seed, round, _SAMPLER_TAG]. Client data orders
# use [seed, client, epoch] (loader.py); the tag keeps the two families apart
# for any epoch below 2**31 (numpy pads shorter keys with zeros, so the tag
# must be non-zero).
_SAMPLER_TAG = 0x7A3C_5B11


def client_steps(num_examples, batch_size: int, epochs: int) -> np.ndarray:
  """Local steps of E epochs of batch B over n_i examples: ceil(n_i / B) · E.

  The last batch of an epoch is filled up to B (see `PopulationLoader`), so
  every step is a full batch.

  Args:
    num_examples: n_i, an int or int array (a client's examples).
    batch_size: B >= 1.
    epochs: E >= 1.

  Returns:
    int64 array shaped like `num_examples`.
  """
  n = np.asarray(num_examples, np.int64)
  if batch_size < 1 or epochs < 1 or np.any(n < 0):
    raise ValueError(f"client_steps: need batch_size >= 1, epochs >= 1, n_i >= "
                     f"0, got {batch_size}, {epochs}, min n_i {n.min()}")
  return -(-n // batch_size) * epochs


class ClientSampler:
  """The clients of round r: M distinct ids out of N, sorted.

  `uniform`: every M-subset equally likely (FedAvg's "random set of C·N
  clients"). `weighted`: successive draws without replacement with
  probability proportional to client size among those not yet drawn
  (numpy's `Generator.choice(p=...)`); a client's inclusion probability is
  about M · n_i / Σ n when that is well below 1.

  Ids come sorted, so with M = N every round is arange(N): slot m holds
  client m, as replica m holds shard m in `RoundLoader`.

  Example:
    sampler = ClientSampler(100, 10, seed=0)
    sampler.sample(7)   # int64 [10], the same on every host and every resume
  """

  def __init__(self, num_clients: int, clients_per_round: int, *,
               kind: str = "uniform", sizes: Optional[Sequence[int]] = None,
               seed: int = 0):
    """Validates the settings.

    Args:
      num_clients: N >= 1.
      clients_per_round: M in [1, N].
      kind: 'uniform' or 'weighted'.
      sizes: n_i per client, [N] (weighted only; must be > 0).
      seed: non-negative int.

    Raises:
      ValueError: naming the config field at fault.
    """
    if int(num_clients) != num_clients or num_clients < 1:
      raise ValueError(f"train.num_clients: must be an int >= 1, got "
                       f"{num_clients}")
    if (int(clients_per_round) != clients_per_round
        or not 1 <= clients_per_round <= num_clients):
      raise ValueError(f"train.clients_per_round: must be an int in [1, "
                       f"train.num_clients={num_clients}], got "
                       f"{clients_per_round}")
    if kind not in SAMPLING_KINDS:
      raise ValueError(f"train.sampling: unknown kind {kind!r}; known: "
                       f"{SAMPLING_KINDS}")
    if int(seed) != seed or seed < 0:
      raise ValueError(f"train.seed: must be an int >= 0, got {seed}")
    self.num_clients = int(num_clients)
    self.clients_per_round = int(clients_per_round)
    self.kind = kind
    self.seed = int(seed)
    self._p = None
    if kind == "weighted":
      if sizes is None:
        raise ValueError("train.sampling: 'weighted' needs the client sizes")
      sizes = np.asarray(sizes, np.float64)
      if sizes.shape != (self.num_clients,) or not np.all(sizes > 0):
        raise ValueError(f"train.sampling: 'weighted' needs {num_clients} "
                         f"sizes > 0, got shape {sizes.shape}, min "
                         f"{sizes.min() if sizes.size else None}")
      self._p = sizes / sizes.sum()

  def sample(self, round_index: int) -> np.ndarray:
    """The clients of round `round_index`: sorted int64 [M], all distinct."""
    if round_index < 0:
      raise ValueError(f"ClientSampler: round_index must be >= 0, got "
                       f"{round_index}")
    rng = np.random.default_rng([self.seed, int(round_index), _SAMPLER_TAG])
    ids = rng.choice(self.num_clients, self.clients_per_round, replace=False,
                     p=self._p)
    return np.sort(ids).astype(np.int64)

  def get_config(self) -> Dict[str, Any]:
    """The settings a replay depends on (JSON-serialisable)."""
    return {"num_clients": self.num_clients,
            "clients_per_round": self.clients_per_round, "kind": self.kind,
            "seed": self.seed,
            "p_crc32": None if self._p is None else zlib.crc32(self._p.tobytes())}


class PopulationRound(NamedTuple):
  """One round of a sampled population, ready for `Engine.round`.

  Attributes:
    batch: dict of numpy arrays [len(slot_ids), H, B, ...]; a slot's steps at
      and after its num_steps are zeros (the engine skips them).
    client_ids: int64 [M], the client in each slot (all slots, sorted).
    num_steps: int32 [M], local steps of each slot's client.
    num_examples: float32 [M], examples each slot processes (num_steps · B).
    round_index: the round these belong to.
  """
  batch: Dict[str, np.ndarray]
  client_ids: np.ndarray
  num_steps: np.ndarray
  num_examples: np.ndarray
  round_index: int


class PopulationLoader(loader.RoundPrefetcher):
  """Rounds of M sampled clients' batches, for N clients >> M slots.

  Each client's data is an endless stream of its shard in per-epoch orders
  `default_rng([seed, client, epoch]).permutation(n_i)`: the streams of
  `RoundLoader`, with clients in place of replicas. The stream advances with
  the round clock, whether or not the client is sampled, so what a client
  reads in round r is a pure function of (seed, client, r) and the whole
  position is the round number, as in `RoundLoader`:

  * fixed H (`inner_steps=H`): stream positions [r·H·B, (r+1)·H·B). With
    N = M (every client every round) the batches are RoundLoader's, bit for bit.
  * E epochs (`local_epochs=E`, FedAvg's E/B): epochs r·E ... r·E + E - 1, each
    a permutation of the n_i examples filled up to ceil(n_i/B)·B by repeating
    its first ones, so a client takes `client_steps(n_i, B, E)` full steps
    and sees every example E times (plus < B repeats per epoch). When B
    divides n_i this is the fixed-H stream with H = E·n_i/B. The batch's step
    axis is the largest client's step count (or `max_steps`, which caps the
    clients above it), so every round has one shape and compiles once.

  Example:
    sampler = ClientSampler(len(shards), 10, seed=0)
    loader = PopulationLoader(train, shards, sampler, batch_size=16,
                              local_epochs=1, seed=0)
    engine = Engine(..., num_replicas=10, inner_steps=loader.inner_steps)
    rnd = next(loader)
    state, metrics = engine.round(state, rnd.batch, num_steps=rnd.num_steps,
                                  num_examples=rnd.num_examples)
  """

  def __init__(self, source, client_shards: Sequence[np.ndarray], sampler, *,
               batch_size: int, seed: int, inner_steps: Optional[int] = None,
               local_epochs: Optional[int] = None,
               max_steps: Optional[int] = None,
               slot_ids: Optional[Sequence[int]] = None, prefetch: int = 2):
    """Builds the loader and starts prefetching.

    Args:
      source: a random-access source (`get_batch(indices)` preferred).
      client_shards: N index arrays into `source`, one per client (all
        clients, on every host).
      sampler: a `ClientSampler` over the same N clients.
      batch_size: B, examples per local step.
      seed: non-negative int; with the client index it fixes each order.
      inner_steps: H, local steps per client (exclusive with local_epochs).
      local_epochs: E, local epochs per client (exclusive with inner_steps).
      max_steps: with local_epochs, caps every client's steps (and the step
        axis); default the largest client's ceil(n_i/B)·E.
      slot_ids: slots this process feeds (default all M); batches come in
        this order. num_steps etc. always cover all M slots.
      prefetch: rounds produced ahead in a background thread.

    Raises:
      ValueError: naming the config field at fault.
    """
    if batch_size < 1:
      raise ValueError(f"inner.batch_size: must be >= 1, got {batch_size}")
    if seed < 0:
      raise ValueError(f"train.seed: must be >= 0, got {seed}")
    if (inner_steps is None) == (local_epochs is None):
      raise ValueError("PopulationLoader: give exactly one of inner_steps (H "
                       "steps per client) and local_epochs (E epochs)")
    self._shards = [np.asarray(s, np.int64) for s in client_shards]
    for c, shard in enumerate(self._shards):
      if shard.ndim != 1 or not len(shard):
        raise ValueError(f"PopulationLoader: client shard {c} must be a "
                         f"non-empty 1-D index array, got shape {shard.shape}")
    if sampler.num_clients != len(self._shards):
      raise ValueError(f"train.num_clients: the sampler has "
                       f"{sampler.num_clients} clients, the partition "
                       f"{len(self._shards)}")
    self._source = source
    self._sampler = sampler
    self._batch_size = int(batch_size)
    self._seed = int(seed)
    self.client_sizes = np.array([len(s) for s in self._shards], np.int64)
    if local_epochs is None:
      if inner_steps < 1 or max_steps is not None:
        raise ValueError(f"inner.steps: must be >= 1 (and max_steps is for "
                         f"local_epochs only), got {inner_steps}, {max_steps}")
      self._epochs = 0
      self._max_steps = int(inner_steps)
      self.client_num_steps = np.full(len(self._shards), self._max_steps,
                                      np.int64)
    else:
      if local_epochs < 1:
        raise ValueError(f"train.local_epochs: must be >= 1, got {local_epochs}")
      self._epochs = int(local_epochs)
      steps = client_steps(self.client_sizes, self._batch_size,
                                       self._epochs)
      if max_steps is not None and max_steps < 1:
        raise ValueError(f"train.max_local_steps: must be >= 1, got {max_steps}")
      self._max_steps = int(steps.max() if max_steps is None else max_steps)
      self.client_num_steps = np.minimum(steps, self._max_steps)
    m = sampler.clients_per_round
    self._slot_ids = list(range(m)) if slot_ids is None else [
        int(s) for s in slot_ids]
    if not self._slot_ids or not all(0 <= s < m for s in self._slot_ids):
      raise ValueError(f"PopulationLoader: slot_ids {self._slot_ids} must be a "
                       f"non-empty subset of range({m})")
    self._shards_crc32 = loader.shards_crc32(self._shards)
    self._init_prefetch(prefetch)

  @property
  def inner_steps(self) -> int:
    """The batch's step axis: the engine's inner_steps."""
    return self._max_steps

  @property
  def slot_ids(self):
    return list(self._slot_ids)

  def describe(self) -> str:
    """One line for the log: client sizes, steps, and the padded share.

    The padded share is the part of the [M, H] slot-steps that are padding
    when every client is equally likely: 1 - mean(num_steps_i) / H.
    """
    q = lambda x: "/".join(str(int(v)) for v in np.percentile(x, [0, 50, 100]))
    steps = self.client_num_steps
    work = (f"{self._epochs} local epochs" if self._epochs
            else f"{self._max_steps} local steps")
    return (f"population: {len(self._shards)} clients, "
            f"{self._sampler.clients_per_round} per round "
            f"({self._sampler.kind}), {work} of batch {self._batch_size}; "
            f"examples per client {q(self.client_sizes)} (min/median/max), "
            f"steps {q(steps)}, step axis H={self._max_steps} "
            f"({100 * (1 - steps.mean() / self._max_steps):.0f}% padding "
            f"expected)")

  def client_indices(self, client: int, round_index: int) -> np.ndarray:
    """Source indices client `client` reads in round `round_index`: [steps·B]."""
    b, steps = self._batch_size, int(self.client_num_steps[client])
    if not self._epochs:
      return self._stream(client, round_index * steps * b, steps * b)
    shard = self._shards[client]
    padded = -(-len(shard) // b) * b
    parts, have = [], 0
    for e in range(self._epochs):
      if have >= steps * b:
        break
      perm = self._permutation(client, round_index * self._epochs + e)
      parts.append(shard[np.resize(perm, padded)])
      have += padded
    return np.concatenate(parts)[:steps * b]

  def _make_round(self, round_index: int) -> PopulationRound:
    ids = self._sampler.sample(round_index)
    num_steps = self.client_num_steps[ids].astype(np.int32)
    b, h = self._batch_size, self._max_steps
    batch = None
    for k, slot in enumerate(self._slot_ids):
      steps = int(num_steps[slot])
      part = gather(self._source, self.client_indices(int(ids[slot]),
                                                      round_index).reshape(steps, b))
      if batch is None:
        batch = {key: np.zeros((len(self._slot_ids), h) + v.shape[1:], v.dtype)
                 for key, v in part.items()}
      for key, v in part.items():
        batch[key][k, :steps] = v
    return PopulationRound(batch, ids, num_steps,
                           (num_steps * b).astype(np.float32), round_index)

  def next(self) -> PopulationRound:
    """The next round (a `PopulationRound`)."""
    return super().next()

  def get_state(self) -> Dict[str, Any]:
    """The position after the last delivered round (JSON-serialisable)."""
    return {
        "version": _STATE_VERSION,
        "kind": "population",
        "round": self._next_round,
        "seed": self._seed,
        "batch_size": self._batch_size,
        "inner_steps": self._max_steps,
        "local_epochs": self._epochs,
        "num_clients": len(self._shards),
        "shards_crc32": self._shards_crc32,
        "sampler": self._sampler.get_config(),
    }

  def set_state(self, state: Dict[str, Any]):
    """Continues from a `get_state()` position: the same next rounds follow.

    Args:
      state: a dict from `get_state()` (possibly JSON round-tripped, possibly
        from a loader with other `slot_ids`).

    Raises:
      ValueError: when the state was made with other settings, shards or
        sampler.
    """
    mine = self.get_state()
    for key in mine:
      if key != "round" and state.get(key) != mine[key]:
        raise ValueError(f"PopulationLoader.set_state: {key}={state.get(key)} "
                         f"in the state, but this loader has {key}={mine[key]}")
    self.close()
    self._next_round = int(state["round"])
    self._start()
