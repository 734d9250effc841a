"""What the round loop records: metric rows, the non-finite policies,
evaluations and checkpoints.

`LoopRecords` holds the loop's methods that turn a round's device metrics
into metrics rows (with the counters every row carries), apply
`train.nonfinite_policy` and `train.max_empty_rounds` (`TrainingStopped`,
`Diverged`), evaluate and save checkpoints. `fedjax_lab.run.loop._Loop`
derives from it and sets the state these methods use (run, config, engine,
tc, meta, sim, clock, writer, evaluate, checkpointer, loader, store,
population, async_rounds, pending, tokens_at, last_train, last_saved,
rows_since_save) in its `__init__` and `open`.
"""

import math
from typing import Any, Dict

import numpy as np

from fedjax_lab.distributed import fetch_replicated
from fedjax_lab.metrics import jsonable
from fedjax_lab.run import progress

# Metrics that are means over participating replicas: none in an empty round.
_PER_PARTICIPANT = ("loss",)


class TrainingStopped(RuntimeError):
  """nonfinite_policy='stop' met a non-finite replica."""
  status = "stopped_nonfinite"


class Diverged(TrainingStopped):
  """The model stopped learning: non-finite eval, or rounds with no replica."""
  status = "diverged"


class LoopRecords:
  """Rows, policies, evaluations and checkpoints of `_Loop` (see above)."""

  # -- Rows. ----------------------------------------------------------------

  def _tokens(self, r: int) -> int:
    if r in self.tokens_at:  # Local epochs: each round's own work.
      return self.tokens_at[r]
    if self.run.counts_own_tokens:
      return self.meta["tokens"]
    return r * self.run.tokens_per_round

  def counters(self, r: int) -> Dict[str, Any]:
    h, comm = self.run.inner_steps, self.run.comm
    return {"round": r, "step": r * h,
            "tokens": self._tokens(r) - self.sim.skipped_steps(r) * (
                self.run.tokens_per_round // (self.tc.num_replicas * h)),
            "payload_bytes": r * comm["payload_bytes"],
            "ring_bytes": r * comm["ring_bytes"],
            "sim_seconds": self.sim.seconds(r)}

  def write(self, row: Dict[str, Any]) -> None:
    row = jsonable(row)
    self.writer.write(row)
    self.rows_since_save.append(row)

  def _train_row(self, r: int, mt: Dict[str, Any]) -> Dict[str, Any]:
    row = {"kind": "train", **self.counters(r)}
    empty = float(mt.get("participants", 1)) == 0
    for k, v in mt.items():
      v = np.asarray(v)
      value = v.tolist() if v.ndim else float(v)
      if empty and (k in _PER_PARTICIPANT or k.startswith("inner/")):
        value = None  # No replica took part: no loss, not a loss of 0.
      row[f"train/{k}"] = value
    row["sim_round_s"] = self.sim.round_seconds(r)
    row["time_s"] = self.meta["wall_s"] + self.clock.elapsed()
    return row

  def flush(self, r: int) -> None:
    """Fetches pending metrics, writes their rows, applies the policies."""
    fetched = fetch_replicated([mt for _, mt in self.pending])
    rounds = [rr for rr, _ in self.pending]
    self.pending.clear()
    problems = []
    for rr, mt in zip(rounds, fetched):
      row = self._train_row(rr, mt)
      self.write(row)
      self.last_train = row
      n_bad = int(mt["nonfinite_replicas"])
      self.meta["nonfinite_replicas"] += n_bad
      if n_bad and float(mt.get("participants", 1)) == 0:
        # Every replica that took part diverged (not: none was asked to).
        self.meta["empty_rounds"] += 1
        self.meta["empty_streak"] += 1
      else:
        self.meta["empty_streak"] = 0
      if n_bad:
        problems.append((rr, n_bad, self.meta["empty_streak"]))
    self.writer.flush()
    for rr in [rr for rr in self.tokens_at if rr < r]:
      del self.tokens_at[rr]  # Written; round r's may still label an eval row.
    self.sim.forget_before(r)
    for rr, n_bad, streak in problems:
      self._apply_policy(rr, n_bad, streak)
    self._log_progress(r)

  def _since(self) -> str:
    return (f"the last checkpoint is round {self.last_saved}"
            if self.last_saved else "no checkpoint was saved")

  def _apply_policy(self, r: int, n_bad: int, streak: int) -> None:
    limit = self.tc.max_empty_rounds
    if limit and streak >= limit:
      raise Diverged(
          f"round {r}: no replica produced finite values for {streak} rounds "
          f"in a row (train.max_empty_rounds={limit}): the model stopped "
          f"learning; {self._since()}. Lower the learning rates.")
    if self.tc.nonfinite_policy == "stop":
      raise TrainingStopped(
          f"round {r}: {n_bad} replica(s) produced non-finite values and "
          f"train.nonfinite_policy='stop'; {self._since()} (from before that "
          "round). Lower the learning rates, or use nonfinite_policy='drop' "
          "to drop such replicas.")
    progress.warn("round %d: %d replica(s) produced non-finite values; "
                  "dropped for the round and restarted from the global model "
                  "(nonfinite_policy='drop')", r, n_bad)

  def _log_progress(self, r: int) -> None:
    loss = self.last_train.get("train/loss")
    rate = self.clock.rate(r)
    progress.say(
        "round %d/%d (%.0f%%) | train loss %s | %.2f rounds/s, %.0f tok/s | "
        "%.3g bytes/replica | elapsed %s, ETA %s", r, self.tc.rounds,
        100.0 * r / self.tc.rounds,
        "- (no replica)" if loss is None else f"{loss:.4f}", rate,
        rate * self.run.tokens_per_round, r * self.run.comm["payload_bytes"],
        progress.fmt_time(self.clock.elapsed()),
        progress.fmt_time(self.clock.eta(r)))

  # -- Eval and checkpoints. -------------------------------------------------

  def do_eval(self, r: int) -> None:
    out = self.evaluate(self.state)
    ev = out["eval"]
    self.write({"kind": "eval", **self.counters(r),
                **{f"{split}/{k}": v for split, m in out.items()
                   for k, v in m.items()},
                "time_s": self.meta["wall_s"] + self.clock.elapsed()})
    self.writer.flush()
    self.meta["last_eval"] = jsonable({"round": r, **ev})
    if "test" in out:
      self.meta["last_test"] = jsonable({"round": r, **out["test"]})
    if not math.isfinite(ev["loss"]):
      raise Diverged(f"round {r}: eval loss is {ev['loss']}: the model "
                     f"diverged; {self._since()}. Lower the learning rates.")
    best = self.meta["best_eval_loss"]
    if best is None or ev["loss"] < best:
      self.meta["best_eval_loss"], self.meta["best_eval_round"] = ev["loss"], r
    progress.say("round %d eval: %s", r, ", ".join(
        f"{split} {k} {v:.4f}" for split, m in out.items()
        for k, v in sorted(m.items()) if k in ("loss", "accuracy")))

  def do_final_eval(self, r: int) -> None:
    """The completed run's model on the final protocol (whole splits)."""
    if (self.meta.get("final") or {}).get("round") == r:
      return  # A resumed, already completed run: evaluated before.
    out = self.evaluate(self.state, final=True)
    self.meta["final"] = jsonable({"round": r, **out})
    progress.say("final eval (%s): %s", self.evaluate.describe()["final"],
                 ", ".join(f"{split} loss {m['loss']:.4f}"
                           for split, m in out.items()))

  def save(self, r: int) -> None:
    meta = dict(self.meta, wall_s=self.meta["wall_s"] + self.clock.elapsed(),
                rows=self.rows_since_save,
                rows_after=self.last_saved or 0)
    state = self.state
    if self.store is not None:
      state = {"train_state": state, "client_store": self.store.state_dict()}
    self.checkpointer.save(r, state, self.loader.get_state(), meta)
    self.last_saved = r
    self.rows_since_save = []
