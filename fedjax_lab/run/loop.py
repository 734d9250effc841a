"""train_and_evaluate(config, workdir): the round loop of a built run.

1. `build.build_run` validates the config and builds everything, writing nothing
   (a mistake is one `ConfigError` naming the field);
2. the workdir is locked (a second run on it is refused, naming the holder),
   config.json written once, and the newest checkpoint that verifies and
   restores resumed (TrainState + loader position + counters + the metric
   rows since the checkpoint before it), or a fresh state made;
3. rounds run; metrics are fetched from the device every `train.log_every`
   rounds (and before evaluations and checkpoints) and written to
   metrics.jsonl/TensorBoard (process 0); `engine.eval_params(state)` is
   evaluated every `train.eval_every` rounds; orbax checkpoints every
   `train.checkpoint_every` rounds; summary.json at the end, whatever the end.

Every metrics row carries the cumulative bytes each replica has sent, so
curves can be drawn against bytes as well as steps.

Under clock.policy='async' the round step is `async_rounds.AsyncRounds`
(round r = the Asynchronous Local-SGD server's arrivals (r − 1)·M + 1 … r·M)
instead of `Engine.round`, and the checkpointed state is its `AsyncState`;
everything else (rows, evaluations, checkpoints, policies) is this loop's.

A population run (`train.num_clients` > 0, see build.py) draws each round's
M clients and their batches from a `PopulationLoader` and passes the
clients' local steps and example counts to `Engine.round`; with a client
store (SCAFFOLD's c_i) the sampled clients' states are gathered into
`state.client_state` before the round and scattered back after it (for the
slots that took steps; the engine itself keeps the old state of a slot that
sat out or diverged). The store is checkpointed with the TrainState (one
orbax item, {'train_state', 'client_store'}), the loader's position with it.

Non-finite replicas are dropped by the engine (weight 0, restarted from the
global model); `train.nonfinite_policy` decides what the run does about it:
'drop' counts them and warns, 'stop' raises `TrainingStopped` before the next
checkpoint. Under either policy a model that stopped learning ends the run
with `Diverged` (status 'diverged'): a non-finite eval loss, or
`train.max_empty_rounds` rounds in a row in which no replica was left.
"""

import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from fedjax_lab import data as data_lib
from fedjax_lab.checkpoint import Checkpointer
from fedjax_lab.metrics import MetricsWriter
from fedjax_lab.metrics import write_json
from fedjax_lab.run import async_rounds
from fedjax_lab.run import build as build_lib
from fedjax_lab.run import progress
from fedjax_lab.run import simclock
from fedjax_lab.run import workdir as workdir_lib
from fedjax_lab.run.evaluate import Evaluator
from fedjax_lab.run.records import Diverged  # noqa: F401 (re-exported)
from fedjax_lab.run.records import LoopRecords
from fedjax_lab.run.records import TrainingStopped
from fedjax_lab.run.summary import make_summary

SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"


def _fresh_meta() -> Dict[str, Any]:
  return {"wall_s": 0.0, "best_eval_loss": None, "best_eval_round": None,
          "nonfinite_replicas": 0, "empty_rounds": 0, "empty_streak": 0,
          "last_eval": None, "last_test": None, "final": None, "resumes": 0,
          "rows": [], "rows_after": 0, "tokens": 0}


def drop_mask(seed: int, r: int, num_replicas: int, p: float) -> np.ndarray:
  """bool [M]: whose outer gradient reaches the sync in round r.

  Each replica's is dropped with probability p, independently: a pure
  function of (seed, round), so every process draws the same mask and a
  resumed run the same masks as an uninterrupted one.
  """
  rng = np.random.default_rng([seed, r, 0xD809])
  return rng.random(num_replicas) >= p


def _host_value(x) -> np.ndarray:
  """The whole of a replica-axis array on this host (all processes')."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def _put_like(value: np.ndarray, like: jax.Array) -> jax.Array:
  """`value` (the whole array) placed as `like` is (so the round's jit sees
  the same kind of argument and does not compile again)."""
  if not getattr(like, "committed", True):
    return jax.numpy.asarray(value)
  return jax.make_array_from_callback(value.shape, like.sharding,
                                      lambda idx: value[idx])


class _Loop(LoopRecords):
  """One run's loop state; each method is one job of the loop.

  Rows, policies, evaluations and checkpoints are `LoopRecords`' methods
  (fedjax_lab/run/records.py); the start, the round step and the end are here.
  """

  def __init__(self, run: build_lib.Run,
               batch_hook: Optional[Callable[[Dict, int, Sequence[int]], Dict]]):
    self.run, self.config, self.engine = run, run.config, run.engine
    self.parts, self.tc = run.parts, run.parts.train
    self.batch_hook = batch_hook
    self.is_main = jax.process_index() == 0
    self.lock = workdir_lib.Lock(run.workdir)
    self.pending: List[Any] = []  # (round, device metrics) not yet fetched.
    self.last_train: Dict[str, Any] = {}
    self.rounds_this_run = 0
    self.population = run.population
    self.store = run.population.store if run.population else None
    self.tokens_at: Dict[int, int] = {}  # Round -> cumulative tokens (local epochs).
    # The round step: `Engine.round` on the loader's next round, or under
    # clock.policy='async' the simulator's next M arrivals (set in open()).
    self.async_rounds: Optional[async_rounds.AsyncRounds] = None

  # -- Start: lock, config.json, restore. -----------------------------------

  def open(self) -> None:
    run = self.run
    os.makedirs(run.workdir, exist_ok=True)
    if self.is_main:
      self.lock.acquire()
      workdir_lib.write_config(run.workdir, self.config)
    self.checkpointer = Checkpointer(
        os.path.join(run.workdir, CHECKPOINT_DIR), keep=self.tc.keep)
    if run.async_sim is not None:
      self.async_rounds = async_rounds.AsyncRounds(
          run.async_sim, None, {}, seed=self.tc.seed,
          tokens_per_step=self.run.tokens_per_round // (
              self.tc.num_replicas * self.engine.inner_steps),
          batch_hook=self.batch_hook)
      target = self.async_rounds.init(run.params)  # Concrete: numpy clock leaves.
    else:
      target = self.engine.abstract_state(run.params)
    if self.store is not None:
      target = {"train_state": target,
                "client_store": self.store.state_dict(copy=False)}
    restored = self.checkpointer.restore_latest(target)
    self.restored = restored is not None
    if restored is not None and self.store is not None:
      self.store.load_state_dict(restored.state["client_store"])
      restored = restored._replace(state=restored.state["train_state"])
    if restored is None:
      self.state = (target if self.async_rounds is not None else
                    self.engine.init(run.params, seed=self.tc.seed))
      self.start, self.meta = 0, _fresh_meta()
      progress.say("starting %s in %s: %d rounds, M=%d, H=%d, B=%d, %d params",
                   self.parts.outer.name, run.workdir, self.tc.rounds,
                   self.tc.num_replicas, self.engine.inner_steps,
                   self.parts.inner.batch_size, run.task.num_params)
    else:
      self.state, self.start = restored.state, restored.step
      self.meta = dict(_fresh_meta(), **restored.meta)
      self.meta["resumes"] += 1
      progress.say("resuming %s in %s from round %d", self.parts.outer.name,
                   run.workdir, self.start)
    self.last_saved = self.start if self.restored else None
    self.loader = self._make_loader()
    if restored is not None:
      self.loader.set_state(restored.loader)
    replay = self.meta["rows"] if self.restored else []
    stale = os.path.join(run.workdir, SUMMARY_FILE)
    if self.is_main and os.path.exists(stale):
      # The rows are rewritten from here on: a summary of an earlier attempt
      # no longer describes them (a comparison would reuse it as completed).
      os.remove(stale)
    self.writer = MetricsWriter(
        run.workdir, enabled=self.is_main, tensorboard=self.tc.tensorboard,
        keep_through=self.meta["rows_after"] if replay else self.start,
        replay=replay)
    self.rows_since_save = list(replay)
    self.evaluate = Evaluator(run)
    self.meta["eval_protocol"] = self.evaluate.describe()
    self.clock = progress.Clock(self.start, self.tc.rounds)
    if self.async_rounds is not None:
      self.async_rounds.loader, self.async_rounds.meta = self.loader, self.meta
      self.async_rounds.clock = self.sim = async_rounds.AsyncClock(self.meta)
    else:
      self.sim = simclock.RoundClock(run.clock, self.meta)

  def _make_loader(self):
    run, pop = self.run, self.population
    b, seed = self.parts.inner.batch_size, self.tc.seed
    if pop is None:
      return data_lib.RoundLoader(
          run.train_src, run.shards, batch_size=b,
          inner_steps=self.parts.inner.steps, seed=seed,
          replica_ids=run.replica_ids,
          # Async tasks read by (worker, position), not by round.
          prefetch=0 if run.async_sim is not None else self.parts.data.prefetch)
    loader = data_lib.PopulationLoader(
        run.train_src, run.shards, pop.sampler, batch_size=b, seed=seed,
        inner_steps=None if pop.local_epochs else self.parts.inner.steps,
        local_epochs=pop.local_epochs or None, max_steps=pop.max_steps,
        slot_ids=run.replica_ids, prefetch=self.parts.data.prefetch)
    if loader.inner_steps != self.engine.inner_steps:
      loader.close()
      raise AssertionError(f"population loader's step axis "
                           f"{loader.inner_steps} != the engine's "
                           f"{self.engine.inner_steps}")
    progress.say("%s", loader.describe())
    return loader

  # -- The loop. -------------------------------------------------------------

  def round(self, r: int) -> None:
    t0 = time.time()
    if self.async_rounds is not None:
      self.state, mt = self.async_rounds(self.state, r)
      self.tokens_at[r] = self.meta["tokens"]
    else:
      mt = self._sync_round(r)
    self.rounds_this_run += 1
    if self.clock.first_round_s is None:
      jax.block_until_ready(self.state.params)
      self.clock.first_round_s = time.time() - t0  # Mostly compilation.
    # Every device metric is replicated: any process can read it.
    self.pending.append((r, {k: v for k, v in mt.items()
                             if k not in ("payload_bytes", "ring_bytes")}))
    tc = self.tc
    last = r == tc.rounds
    do_eval = last or (tc.eval_every and r % tc.eval_every == 0)
    do_ckpt = tc.checkpoint_every and (last or r % tc.checkpoint_every == 0)
    if do_eval or do_ckpt or r % tc.log_every == 0:
      self.flush(r)
    t_side = time.time()
    if do_eval:
      self.do_eval(r)
    if do_ckpt:
      self.save(r)
    self.clock.side_s += time.time() - t_side

  def _sync_round(self, r: int) -> Dict[str, Any]:
    """The synchronous round step: `Engine.round` on the loader's next round
    (the policy's plan applied, a population's clients gathered and
    scattered); returns its device metrics."""
    rnd, kwargs = self.loader.next(), {}
    batch = rnd
    if self.population is not None:
      batch = rnd.batch
      kwargs = dict(num_steps=rnd.num_steps, num_examples=rnd.num_examples)
      if self.store is not None:
        gathered = self.store.gather(rnd.client_ids)
        self.state = self.state.replace(client_state=jax.tree.map(
            _put_like, gathered, self.state.client_state))
    if self.tc.outer_drop_prob:
      kwargs["mask"] = drop_mask(self.tc.seed, r, self.tc.num_replicas,
                                 self.tc.outer_drop_prob)
    kwargs, plan = self.sim.round_kwargs(r, kwargs)
    if self.batch_hook is not None:
      batch = self.batch_hook(batch, r, self.run.replica_ids)
    self.state, mt = self.engine.round(self.state, batch, **kwargs)
    self.sim.advance(r, plan)
    if self.store is not None:
      # A slot that took no step kept its gathered state; one that sat out
      # or diverged too (the engine keeps it), so writing back is exact.
      self.store.scatter(rnd.client_ids,
                         jax.tree.map(_host_value, self.state.client_state),
                         mask=rnd.num_steps > 0)
    if self.population is not None and self.population.local_epochs:
      units = self.parts.task_kind.example_units(self.parts.model)
      self.meta["tokens"] += int(rnd.num_examples.sum()) * units
      self.tokens_at[r] = self.meta["tokens"]
    return mt

  def finish(self, status: str, wall_start: float) -> Dict[str, Any]:
    self.loader.close()
    self.checkpointer.close()
    self.meta["wall_s"] += self.clock.elapsed()
    summary = make_summary(
        self.run, status=status, meta=self.meta,
        rounds_done=self.start + self.rounds_this_run,
        last_train=self.last_train,
        resumed_from=self.start if self.restored else None,
        timing={"total_s": self.meta["wall_s"],
                "this_process_s": time.time() - wall_start,
                "first_round_s": self.clock.first_round_s,
                "data_s": self.loader.data_seconds,
                "data_wait_s": self.loader.wait_seconds})
    if self.is_main:
      write_json(os.path.join(self.run.workdir, SUMMARY_FILE), summary)
    self.writer.close()
    self.lock.release()
    return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       replica_ids: Optional[Sequence[int]] = None,
                       wrap_loss: Optional[Callable] = None,
                       batch_hook: Optional[Callable] = None
                       ) -> Dict[str, Any]:
  """Trains with periodic evaluation, checkpoints and metrics; resumes.

  Args:
    config: a run config (see configs/default.py for every field).
    workdir: where metrics, TensorBoard files, checkpoints and summary.json
      go; a workdir with checkpoints is resumed.
    replica_ids: the replicas this process feeds (default: those on its
      devices, `distributed.local_replica_ids`).
    wrap_loss: loss_fn -> loss_fn for the engine (instrumentation, tests).
    batch_hook: (round batch, round, replica_ids) -> round batch, applied
      before each round (instrumentation, tests).

  Returns:
    The summary dict (also written to workdir/summary.json by process 0).

  Raises:
    ConfigError: a mistake in the config or workdir, found before anything
      is written (or: the workdir is in use by another run).
    CheckpointError: checkpoints exist but none can be restored.
    TrainingStopped: nonfinite_policy='stop' met a non-finite value;
      `Diverged` (a subclass): the model stopped learning.
  """
  wall_start = time.time()
  run = build_lib.build_run(config, workdir, replica_ids=replica_ids,
                        wrap_loss=wrap_loss)
  loop = _Loop(run, batch_hook)
  try:
    loop.open()
  except BaseException:
    loop.lock.release()
    raise
  status = "failed"
  try:
    for r in range(loop.start + 1, run.parts.train.rounds + 1):
      loop.round(r)
    if loop.start >= run.parts.train.rounds and loop.meta["last_eval"] is None:
      loop.do_eval(loop.start)
    loop.do_final_eval(max(loop.start, run.parts.train.rounds))
    status = "completed"
  except TrainingStopped as e:
    status = e.status
    raise
  finally:
    summary = loop.finish(status, wall_start)
  progress.say("done: %s eval loss %s after %d rounds, %.3g B per replica "
               "sent, %s", run.parts.outer.name,
               summary["final_eval"].get("loss"), summary["rounds"],
               summary["payload_bytes"], progress.fmt_time(summary["wall_s"]))
  return summary
