"""Asynchronous Local-SGD on a simulated clock, with Delayed Nesterov and DyLU.

"Asynchronous Local-SGD Training for Language Modeling", Liu, Chhaparia,
Douillard, Kale, Rusu, Shen, Szlam, Ranzato, arXiv 2401.09135.

Worker i takes sec_i simulated seconds per inner step and H_i steps per task
(DyLU: H_i = max(⌊H·min_j sec_j / sec_i⌋, h_min)); a task starts from the
global θ of the moment with a fresh inner optimizer state. Its outer gradient
Δ_i = θ_launch − θ_i_end (docs/algorithms.md's sign) is applied on arrival to
whatever θ is then: 'vanilla' (Nesterov SGD on w·Δ_i) or Delayed Nesterov
DN(N). The event order (bursts, `grace`, ties) is written out in
docs/algorithms.md and in `next_arrival`.

A task's result depends only on θ at its launch and its data, so it is
computed at launch: workers launched together run in ONE call of the engine's
local steps (`local_steps.ReplicaSteps`), padded to a power of two so few
programs compile. The whole simulation, clock and in-flight results included,
is one pytree (`AsyncState`): a checkpoint of it resumes bit-identically.
"""

import dataclasses
import math
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_lab import replicas as rep
from fedjax_lab.comm import compress as compress_lib
from fedjax_lab.engine import Engine
from fedjax_lab.local_steps import ReplicaSteps
from fedjax_lab.outer.async_rules import delayed_nesterov  # noqa: F401 (re-exported)
from fedjax_lab.outer.async_rules import server_rule  # noqa: F401 (re-exported)
from fedjax_lab.outer.async_rules import vanilla  # noqa: F401 (re-exported)
from fedjax_lab.outer.base import check_nonnegative
from fedjax_lab.outer.base import check_positive_int
from fedjax_lab.outer.base import OuterAlgorithm
from fedjax_lab.typing import Batch
from fedjax_lab.typing import LossFn
from fedjax_lab.typing import Params

# ----------------------------------------------------------------------------
# The clock (host side; numpy, so a checkpoint holds it exactly).


@dataclasses.dataclass(frozen=True)
class AsyncProfile:
  """Who is how fast, and how arrivals are grouped.

  Attributes:
    seconds_per_step: sec_i, simulated seconds per inner step of worker i.
    grace: seconds after a burst's first arrival within which later arrivals
      join the burst before the idle workers relaunch (the paper's 0.5).
    dylu: Dynamic Local Updates: H_i = max(⌊H·min_j sec_j / sec_i⌋,
      min_steps), so slow workers take fewer steps.
    min_steps: DyLU's floor h_min.
    sync_seconds: simulated seconds the server spends on one arrival: one
      number, or one per worker (its own link).
  """
  seconds_per_step: Tuple[float, ...]
  grace: float = 0.5
  dylu: bool = False
  min_steps: int = 5
  sync_seconds: Union[float, Tuple[float, ...]] = 0.0

  def __post_init__(self):
    secs = tuple(float(s) for s in self.seconds_per_step)
    if not secs or not all(math.isfinite(s) and s > 0 for s in secs):
      raise ValueError("seconds_per_step must be a non-empty list of numbers "
                       f"> 0, got {self.seconds_per_step!r}")
    object.__setattr__(self, "seconds_per_step", secs)
    check_nonnegative("grace", self.grace)
    sync = self.sync_seconds
    if isinstance(sync, (tuple, list, np.ndarray)):  # One per worker.
      sync = tuple(check_nonnegative("sync_seconds", float(s)) for s in sync)
      if len(sync) != len(secs):
        raise ValueError(f"sync_seconds: one per worker ({len(secs)}), got "
                         f"{len(sync)}")
      object.__setattr__(self, "sync_seconds", sync)
    else:
      check_nonnegative("sync_seconds", sync)
    check_positive_int("min_steps", self.min_steps)

  def steps(self, inner_steps: int) -> np.ndarray:
    """H_i for every worker (H without DyLU)."""
    h = check_positive_int("inner_steps", inner_steps)
    if not self.dylu:
      return np.full(len(self.seconds_per_step), h, np.int64)
    fastest = min(self.seconds_per_step)
    return np.array([max(int(h * (fastest / s)), self.min_steps)
                     for s in self.seconds_per_step], np.int64)


class ClockState(NamedTuple):
  """The simulated clock; numpy leaves (0-d for scalars)."""
  time: np.ndarray  # float64: now.
  finish: np.ndarray  # float64 [M]: when each busy worker's task ends.
  busy: np.ndarray  # bool [M]
  launch_version: np.ndarray  # int64 [M]: θ's version each task started from.
  version: np.ndarray  # int64: server updates so far.
  burst_start: np.ndarray  # float64: the open burst's first arrival; NaN if none.
  tasks: np.ndarray  # int64 [M]: tasks launched per worker.
  position: np.ndarray  # int64 [M]: inner steps (batches) each worker consumed.

  @classmethod
  def initial(cls, m: int) -> "ClockState":
    f, i = np.zeros([m], np.float64), np.zeros([m], np.int64)
    return cls(np.float64(0.0), f, np.zeros([m], bool), i, np.int64(0),
               np.float64(np.nan), i.copy(), i.copy())


def next_arrival(clock: ClockState, grace: float) -> Optional[int]:
  """The worker that arrives next, or None when the idle ones relaunch first
  (nobody busy, or the earliest finish falls outside the open burst)."""
  busy = np.asarray(clock.busy)
  if not busy.any():
    return None
  i = int(np.argmin(np.where(busy, clock.finish, np.inf)))  # Ties: lowest i.
  start = float(clock.burst_start)
  if not math.isnan(start) and float(clock.finish[i]) - start > grace:
    return None
  return i


def arrive(clock: ClockState, i: int, sync_seconds: float
           ) -> Tuple[ClockState, int]:
  """Worker i's task arrives: (new clock, its staleness)."""
  now = max(float(clock.time), float(clock.finish[i]))
  start = now if math.isnan(float(clock.burst_start)) else clock.burst_start
  staleness = int(clock.version - clock.launch_version[i])
  busy = np.array(clock.busy)
  busy[i] = False
  return clock._replace(time=np.float64(now + sync_seconds), busy=busy,
                        version=np.int64(clock.version + 1),
                        burst_start=np.float64(start)), staleness


def launch(clock: ClockState, steps: np.ndarray, seconds_per_step: Sequence[float]
           ) -> Tuple[ClockState, np.ndarray]:
  """Every idle worker starts a task now: (new clock, their indices)."""
  idle = ~np.asarray(clock.busy, bool)
  end = float(clock.time) + np.asarray(steps) * np.asarray(seconds_per_step, np.float64)
  return clock._replace(
      finish=np.where(idle, end, clock.finish), busy=np.ones_like(idle),
      launch_version=np.where(idle, clock.version, clock.launch_version),
      burst_start=np.float64(np.nan), tasks=clock.tasks + idle,
      position=clock.position + np.where(idle, steps, 0)), np.flatnonzero(idle)


# ----------------------------------------------------------------------------
# The simulation.


@flax.struct.dataclass
class AsyncState:
  """Everything the simulation needs to continue, as one pytree.

  Attributes:
    params: the global model θ.
    server_state: the server rule's optax state.
    inner_state: each worker's inner optimizer state [M, ...] as its last
      task ended (reset at launch; schedule step counters carry on).
    deltas: each worker's in-flight outer gradient Δ_i [M, ...].
    task_loss: each worker's in-flight task's mean inner loss [M].
    clock: the `ClockState` (numpy).
    rng: uint32[2]; a task's key folds in (worker, task number).
  """
  params: Params
  server_state: Any
  inner_state: Any
  deltas: Any
  task_loss: jax.Array
  clock: ClockState
  rng: jax.Array


class Launch(NamedTuple):
  """What `batches_fn` is asked for: data for the workers launched together."""
  workers: np.ndarray  # int [k]
  tasks: np.ndarray  # int [k]: each worker's task number (0 for its first).
  positions: np.ndarray  # int [k]: inner steps the worker consumed before.
  num_steps: np.ndarray  # int [k]: H_i, the steps this task takes.
  max_steps: int  # the step axis every batch leaf must have.


class Arrival(NamedTuple):
  """One applied update."""
  worker: int
  time: float  # Simulated seconds once it is applied (+ sync_seconds).
  staleness: int  # Server updates between its launch and its arrival.
  version: int  # Server updates after it.
  steps: int  # Inner steps it took.
  loss: jax.Array  # Its task's mean inner loss (a device scalar).


BatchesFn = Callable[[Launch], Batch]


def why_not_async(engine: Engine) -> Optional[str]:
  """None if the engine's local steps can run asynchronously; else why."""
  outer = engine.outer
  if outer.every_step:
    return "its outer rule synchronises every step"
  if not outer.restarts_replicas or outer.client_init is not None:
    return "its outer rule keeps replicas or per-replica state of its own"
  if outer.codec is not None or not compress_lib.is_none(engine.compressor):
    return "it compresses messages (the async server applies Δ_i as sent)"
  if not engine.schedule.is_plain:
    return "it has a streaming schedule"
  if engine.mesh is not None:
    return "it has a mesh (the async simulation runs on one device)"
  return None


class AsyncSimulator:
  """Asynchronous Local-SGD over M simulated workers.

  Example:
    sim = AsyncSimulator(engine, AsyncProfile((0.58, 0.75, 1.51, 3.33)),
                         server_rule("delayed_nesterov", num_workers=4))
    state = sim.init(params, seed=0)
    state, arrivals = sim.run_until(state, batches_fn, updates=100)
    model = sim.eval_params(state)
  """

  def __init__(self, engine_or_fns: Union[Engine, Tuple[LossFn, Any]],
               profile: AsyncProfile, server: optax.GradientTransformation, *,
               inner_steps: Optional[int] = None, replica_mode: str = "auto",
               donate: bool = True):
    """Builds the simulator.

    Args:
      engine_or_fns: an `Engine` (its loss, inner optimizer, the local term
        of its outer rule, M, H and replica mode; its outer `sync` is not
        used) or a pair (loss_fn, inner_opt).
      profile: the workers' speeds and the burst rule; one entry per worker.
      server: the server rule (`vanilla`, `delayed_nesterov`, `server_rule`).
      inner_steps: H, with a (loss_fn, inner_opt) pair.
      replica_mode: with a pair: 'vmap', 'sequential' or 'auto'.
      donate: donate the state's buffers to each call.
    """
    m = len(profile.seconds_per_step)
    if isinstance(engine_or_fns, Engine):
      why = why_not_async(engine_or_fns)
      if why:
        raise ValueError(f"async: this engine cannot run asynchronously ({why})")
      if engine_or_fns.num_replicas != m:
        raise ValueError(f"seconds_per_step: {m} entries for "
                         f"num_replicas={engine_or_fns.num_replicas}")
      self.steps = engine_or_fns.steps
      inner_steps = engine_or_fns.inner_steps
    else:
      loss_fn, inner_opt = engine_or_fns
      self.steps = ReplicaSteps(loss_fn, inner_opt, OuterAlgorithm(init=lambda p: ()),
                                replica_mode, local_replicas=m)
    self.inner_opt = self.steps.inner_opt
    self.num_workers = m
    self.profile = profile
    self.server = server
    self.task_steps = profile.steps(inner_steps)  # H_i
    self.max_steps = int(self.task_steps.max())
    self._launch_jit = jax.jit(self._launch_fn, static_argnames=("stragglers", "everyone"),
                               donate_argnums=(1, 2, 3) if donate else ())
    self._arrive_jit = jax.jit(self._arrive_fn,
                               donate_argnums=(0, 1) if donate else ())

  def init(self, params: Params, *, seed: int = 0) -> AsyncState:
    """Nobody launched yet; the first `run_until` launches all at t = 0."""
    params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
    m = self.num_workers
    stack = lambda t: jax.tree.map(lambda x: jnp.tile(x[None], (m,) + (1,) * x.ndim), t)
    return AsyncState(
        params=params, server_state=self.server.init(params),
        inner_state=jax.vmap(self.inner_opt.init)(stack(params)),
        deltas=jax.tree.map(jnp.zeros_like, stack(params)),
        task_loss=jnp.full([m], jnp.nan, jnp.float32),
        clock=ClockState.initial(m), rng=jax.random.PRNGKey(seed))

  @staticmethod
  def eval_params(state: AsyncState) -> Params:
    """A copy of the global θ (survives the next, donating, call)."""
    return jax.tree.map(jnp.copy, state.params)

  def run_until(self, state: AsyncState, batches_fn: BatchesFn, *,
                time: Optional[float] = None, updates: Optional[int] = None
                ) -> Tuple[AsyncState, List[Arrival]]:
    """Runs events until the server has applied `updates` updates in all, or
    until the next arrival would come after simulated second `time`.

    Args:
      state: from `init` or a previous call (or a checkpoint of one).
      batches_fn: Launch -> batch pytree, leaves [k, max_steps, B, ...] for
        the k workers launched together (a pure function of the workers,
        task numbers and positions makes a run reproducible and resumable).
      time, updates: where to stop (absolute; at least one).

    Returns:
      (new state, the arrivals applied, in order).
    """
    if time is None and updates is None:
      raise ValueError("run_until needs time= or updates=")
    arrivals = []
    while updates is None or int(state.clock.version) < updates:
      i = next_arrival(state.clock, self.profile.grace)
      if i is None:
        state = self._launch(state, batches_fn)
        continue
      if time is not None and float(state.clock.finish[i]) > time:
        break
      state, arrival = self._arrive(state, i)
      arrivals.append(arrival)
    return state, arrivals

  def compiled_programs(self) -> int:
    """Distinct local-step programs compiled so far (one per launch size
    bucket and straggler flag)."""
    return self._launch_jit._cache_size()  # pylint: disable=protected-access

  # --------------------------------------------------------------------------

  def _arrive(self, state: AsyncState, i: int) -> Tuple[AsyncState, Arrival]:
    sync = self.profile.sync_seconds  # Worker i's own link's, if per worker.
    clock, staleness = arrive(state.clock, i,
                              sync[i] if isinstance(sync, tuple) else sync)
    params, server_state, loss = self._arrive_jit(
        state.params, state.server_state, state.deltas, state.task_loss,
        np.int32(i))
    arrival = Arrival(i, float(clock.time), staleness, int(clock.version),
                      int(self.task_steps[i]), loss)
    return state.replace(params=params, server_state=server_state,
                         clock=clock), arrival

  def _arrive_fn(self, params, server_state, deltas, task_loss, i):
    delta = jax.tree.map(lambda d: d[i], deltas)
    updates, server_state = self.server.update(delta, server_state, params)
    return optax.apply_updates(params, updates), server_state, task_loss[i]

  def _launch(self, state: AsyncState, batches_fn: BatchesFn) -> AsyncState:
    old = state.clock
    clock, idx = launch(old, self.task_steps, self.profile.seconds_per_step)
    k = len(idx)
    request = Launch(workers=idx, tasks=np.asarray(old.tasks)[idx],
                     positions=np.asarray(old.position)[idx],
                     num_steps=self.task_steps[idx], max_steps=self.max_steps)
    batch = batches_fn(request)
    for x in jax.tree.leaves(batch):
      if x.shape[:2] != (k, self.max_steps):
        raise ValueError(f"batches_fn: leaves must have leading axes [k={k}, "
                         f"max_steps={self.max_steps}], got {tuple(x.shape)}")
    # Padded to a power of two (at most M): few programs compile. Padding
    # rows repeat row 0, take 0 steps and are dropped when scattered back.
    kb = min(1 << (k - 1).bit_length(), self.num_workers)
    rows = np.concatenate([np.arange(k), np.zeros(kb - k, np.int64)])
    batch = jax.tree.map(lambda x: x[rows] if kb > k else x, batch)
    pad = lambda v, fill: np.concatenate([v, np.full(kb - k, fill)]).astype(np.int32)
    num_steps = pad(request.num_steps, 0)
    stragglers = bool(np.any(num_steps < self.max_steps))
    inner, deltas, loss = self._launch_jit(
        state.params, state.inner_state, state.deltas, state.task_loss,
        state.rng, pad(idx, self.num_workers), batch, num_steps,
        pad(request.tasks, 0), stragglers=stragglers,
        everyone=k == self.num_workers)
    return state.replace(inner_state=inner, deltas=deltas, task_loss=loss,
                         clock=clock)

  def _launch_fn(self, params, inner_state, deltas, task_loss, rng, idx, batch,
                 num_steps, tasks, *, stragglers, everyone):
    """The launched workers' tasks, from θ, scattered into their slots
    (padding rows, idx = M, are dropped)."""
    kb = idx.shape[0]
    take = lambda tree: jax.tree.map(lambda x: jnp.take(x, idx, 0, mode="clip"), tree)
    put = lambda tree, new: jax.tree.map(
        lambda x, v: x.at[idx].set(v.astype(x.dtype), mode="drop"), tree, new)
    if everyone:  # idx = 0..M−1: no gather or scatter over the [M, ...] slots.
      take = lambda tree: tree
      put = lambda tree, new: jax.tree.map(lambda x, v: v.astype(x.dtype), tree, new)
    starts = jax.tree.map(lambda x: jnp.broadcast_to(x, (kb,) + x.shape), params)
    fresh = jax.vmap(lambda o, p: rep.fresh_inner_state(self.inner_opt, o, p))(
        take(inner_state), starts)
    keys = jax.vmap(lambda w, t: jax.random.fold_in(jax.random.fold_in(rng, w), t))(
        idx, tasks)
    ends, inner_end, loss_sum, _, count, finite = self.steps.local_phase(
        starts, fresh, batch, num_steps, keys, (), anchor=params, outer_state=(),
        stragglers=stragglers)
    # A task that diverged sends Δ_i = 0 (it still arrives, on time).
    finite = finite & rep.all_finite(ends)
    delta = jax.tree.map(lambda g, p: g[None] - p, params, ends)
    delta = rep.select(finite, delta, jax.tree.map(jnp.zeros_like, delta))
    inner_end = rep.select(finite, inner_end, fresh)
    loss = loss_sum / jnp.maximum(count, 1)
    return (put(inner_state, inner_end), put(deltas, delta),
            put(task_loss, loss))
