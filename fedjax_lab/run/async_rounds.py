"""clock.policy='async' in the run loop: Asynchronous Local-SGD as round steps.

The round loop (run/loop.py) stays one loop; under 'async' its round step is
an `AsyncRounds` instead of `Engine.round`. Round r is the server's arrivals
(r − 1)·M + 1 … r·M of `async_local_sgd.AsyncSimulator` (M = train.
num_replicas), so train.rounds, eval_every and checkpoint_every keep their
meaning: about one task per worker per round.

* Data: worker i's task reads steps [p, p + H_i) of replica i's stream of the
  run's `RoundLoader` (`task_batches`), p the steps it consumed before (in the
  checkpointed `ClockState.position`): a pure function of (worker, position),
  so a resumed run reads what an uninterrupted one reads.
* Time: the simulator's event clock; the profile's seconds per step are the
  run's clock's (`clock.speeds`, `clock.lognormal_sigma`, `clock.step_seconds`
  or FLOPs); one arrival of worker i costs the server the time to receive Δ_i
  and send θ over worker i's own link (`clock.bandwidths_gbps`,
  `clock.latencies_s`, or the uniform link; the algorithm's messages as a
  two-party exchange, `collective_seconds`, both ways); `clock.async_grace`
  is in fastest step times.
* Checkpoints: the `AsyncState` (θ, the server rule's state, every worker's
  in-flight Δ_i, inner states and loss, the event clock, the key) is the
  orbax item the TrainState is otherwise; the loop saves and restores it
  unchanged, so a killed run resumes bit-identically.
* Rows: train/loss (mean inner loss of the round's arrivals),
  train/staleness_mean and train/staleness_max (server updates between an
  arrival's launch and its application), train/task_steps (inner steps the
  arrivals took), sim_seconds (the event clock at the round's last arrival).
"""

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_lab import async_local_sgd as async_lib
from fedjax_lab.comm import compress as compress_lib
from fedjax_lab.config_validation import ConfigError
from fedjax_lab.outer import async_rules


def build_simulator(parts, engine, clock, params) -> async_lib.AsyncSimulator:
  """The run's simulator, or a `ConfigError` naming the field to change."""
  ck, m = parts.clock, parts.train.num_replicas
  why = async_lib.why_not_async(engine)
  if why:
    if engine.mesh is not None:
      field, allowed = "mesh.num_devices", "0 (no mesh)"
    elif not engine.schedule.is_plain:
      field, allowed = "engine.num_fragments", "1 (no streaming)"
    elif not compress_lib.is_none(engine.compressor):
      field, allowed = "comm.compressor", "'none'"
    else:
      field, allowed = "clock.policy", "a synchronous policy for it"
    raise ConfigError(f"{field}: clock.policy='async' cannot run "
                      f"{parts.outer.name!r} ({why}); allowed: {allowed}")
  if jax.process_count() > 1:
    raise ConfigError("clock.policy: 'async' simulates every worker in one "
                      f"process, this run has {jax.process_count()}; allowed: "
                      "a synchronous policy")
  secs = tuple(float(s) for s in clock.device.step_seconds)
  net, messages = clock.network, engine.messages(params)

  def one_way(i):  # Worker i's messages to the server, over its own link.
    return sum(net.seconds(msg._replace(collective="group", group_size=2), 2,
                           members=(i,)) for _, msg in messages)

  sync = tuple(2.0 * one_way(i) for i in range(m))
  accepted = async_rules.rule_hparams(ck.async_rule)
  hparams = {"learning_rate": ck.async_learning_rate or None,
             "momentum": ck.async_momentum, "delay": ck.async_delay or None}
  hparams = {k: v for k, v in hparams.items()
             if v is not None and k in accepted}
  try:
    server = async_rules.server_rule(ck.async_rule, num_workers=m, **hparams)
    profile = async_lib.AsyncProfile(
        secs, grace=ck.async_grace * min(secs), dylu=ck.async_dylu,
        min_steps=ck.dylu_min_steps,
        sync_seconds=sync if net.per_island else sync[0])
    return async_lib.AsyncSimulator(engine, profile, server)
  except ValueError as e:
    raise ConfigError(f"clock.policy: 'async': {' '.join(str(e).split())}"
                      ) from None


def describe(sim: async_lib.AsyncSimulator, parts) -> Dict[str, Any]:
  """The async settings, for summary.json's clock."""
  p = sim.profile
  return {"async_rule": parts.clock.async_rule,
          "async_task_steps": [int(h) for h in sim.task_steps],
          "async_grace_seconds": p.grace,
          "async_sync_seconds": (list(p.sync_seconds) if isinstance(
              p.sync_seconds, tuple) else p.sync_seconds)}


def _savable(state: async_lib.AsyncState) -> async_lib.AsyncState:
  """The event clock's numpy scalars as 0-d arrays (orbax saves those)."""
  return state.replace(clock=async_lib.ClockState(
      *(np.asarray(x) for x in state.clock)))


class AsyncClock:
  """The loop's view of the simulated seconds under 'async' (the interface
  of `simclock.RoundClock`); `meta['clock']['seconds']` feeds the summary."""

  def __init__(self, meta: Dict[str, Any]):
    self.meta = meta
    self.meta["clock"] = {"seconds": float(
        (meta.get("clock") or {}).get("seconds", 0.0))}
    self.meta.setdefault("skipped_steps", 0)
    self.at: Dict[int, Tuple[float, float]] = {}

  def record(self, r: int, seconds: float) -> None:
    last = self.meta["clock"]["seconds"]
    self.meta["clock"] = {"seconds": seconds}
    self.at[r] = (seconds, seconds - last)

  def seconds(self, r: int) -> float:
    return self.at.get(r, (self.meta["clock"]["seconds"],))[0]

  def skipped_steps(self, r: int) -> int:
    del r
    return 0  # Tokens are counted from the arrivals' own steps.

  def round_seconds(self, r: int) -> Optional[float]:
    got = self.at.get(r)
    return None if got is None else got[1]

  def forget_before(self, r: int) -> None:
    for rr in [rr for rr in self.at if rr < r]:
      del self.at[rr]


class AsyncRounds:
  """The round step under 'async': (state, r) -> (state, metrics)."""

  def __init__(self, sim: async_lib.AsyncSimulator, loader, meta: Dict[str, Any],
               *, seed: int, tokens_per_step: int,
               batch_hook: Optional[Callable[[Dict, int, Sequence[int]], Dict]]
               = None):
    """Args: the simulator, the run's `RoundLoader`, the run's meta (its
    'tokens' count grows with each round's arrivals), train.seed, tokens one
    worker's inner step reads, and the loop's batch hook (called on each
    launch's batch with the launched workers as replica ids)."""
    self.sim, self.loader, self.meta = sim, loader, meta
    self.seed, self.tokens_per_step = seed, tokens_per_step
    self.batch_hook = batch_hook
    self.clock = AsyncClock(meta)

  def init(self, params) -> async_lib.AsyncState:
    """A fresh state, its arrays committed to the device as a restored
    one's are (so neither compiles the simulator's programs again)."""
    state = _savable(self.sim.init(params, seed=self.seed))
    device = jax.local_devices()[0]
    commit = lambda t: jax.device_put(t, device)
    return state.replace(
        params=commit(state.params), server_state=commit(state.server_state),
        inner_state=commit(state.inner_state), deltas=commit(state.deltas),
        task_loss=commit(state.task_loss), rng=commit(state.rng))

  def __call__(self, state: async_lib.AsyncState, r: int
               ) -> Tuple[async_lib.AsyncState, Dict[str, Any]]:
    def batches(launch: async_lib.Launch):
      batch = self.loader.task_batches(launch.workers, launch.positions,
                                       launch.num_steps, launch.max_steps)
      if self.batch_hook is not None:
        batch = self.batch_hook(batch, r, [int(w) for w in launch.workers])
      return batch

    m = self.sim.num_workers
    state, arrivals = self.sim.run_until(state, batches, updates=r * m)
    if len(arrivals) != m:
      raise AssertionError(f"round {r}: {len(arrivals)} arrivals, expected {m}")
    state = _savable(state)
    self.clock.record(r, float(state.clock.time))
    steps = int(sum(a.steps for a in arrivals))
    self.meta["tokens"] += steps * self.tokens_per_step
    stale = np.array([a.staleness for a in arrivals], np.float64)
    losses = jnp.stack([a.loss for a in arrivals])
    finite = jnp.isfinite(losses)
    n = jnp.sum(finite)
    mt = {"loss": jnp.sum(jnp.where(finite, losses, 0.0)) / jnp.maximum(n, 1),
          "participants": n.astype(jnp.float32),
          "nonfinite_replicas": jnp.sum(~finite),
          "staleness_mean": float(stale.mean()),
          "staleness_max": float(stale.max()), "task_steps": steps}
    return state, mt
