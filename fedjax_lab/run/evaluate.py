"""Evaluation of the model a run would ship, on the held-out splits.

Two held-out splits, two jobs: the validation split (`data.eval_split`) is
what hyperparameters are chosen on; the test split (`data.test_split`) is
what results are reported on, and nothing is chosen by it.

Two protocols: evaluations during training (the curves) use a fixed,
shuffled sample of `data.eval_batches` batches of each split, stratified by
group (`data.stratified_sample`, the same examples for every arm); the final
evaluation of a completed run covers `data.final_eval_batches` batches, 0 =
the whole split (the last batch smaller, batch means weighted by size).
"""

from typing import Dict, Optional

import jax
import jax.numpy as jnp

from fedjax_lab import data as data_lib
from fedjax_lab.distributed import fetch_replicated


class Evaluator:
  """Mean task metrics of `engine.eval_params(state)` over fixed batches."""

  def __init__(self, run):
    data = run.parts.data
    self._engine = run.engine
    self._batch = data.eval_batch_size
    self._sources = {"eval": run.eval_src}
    if getattr(run, "test_src", None) is not None:
      self._sources["test"] = run.test_src
    self._plans = {
        "periodic": self._plan(data.eval_batches),
        "final": self._plan(data.final_eval_batches)}
    # The curves' batches are gathered once (they are evaluated many times);
    # the final ones when the run completes.
    self._periodic = {split: self._gather(split, plan) for split, plan in
                      self._plans["periodic"].items()}
    loss_fn = run.task.loss_fn
    self._derived = run.task.derived
    self._step = jax.jit(lambda p, batch: loss_fn(p, batch, None)[1])

  def _gather(self, split: str, plan):
    return [(data_lib.gather(self._sources[split], idx), len(idx))
            for idx in plan]

  def _plan(self, num_batches: int):
    return {split: data_lib.eval_plan(src, batch_size=self._batch,
                                      num_batches=num_batches or None)
            for split, src in self._sources.items()}

  def describe(self) -> Dict[str, str]:
    """What each protocol covers, for the summary."""
    out = {}
    for kind, plans in self._plans.items():
      parts = []
      for split, plan in plans.items():
        n, total = sum(len(b) for b in plan), len(self._sources[split])
        what = ("whole split" if n == total else
                "fixed shuffled sample stratified by group")
        label = "validation" if split == "eval" else split
        parts.append(f"{label}: {n} of {total} examples ({what})")
      out[kind] = "; ".join(parts)
    return out

  def __call__(self, state, *, final: bool = False
               ) -> Dict[str, Dict[str, float]]:
    """{'eval': metrics[, 'test': metrics]} of the state's model."""
    params = self._engine.eval_params(state)
    batches = (self._periodic if not final else
               {split: self._gather(split, plan)
                for split, plan in self._plans["final"].items()})
    return {split: self._metrics(params, b) for split, b in batches.items()}

  def _metrics(self, params, batches) -> Dict[str, float]:
    sums: Optional[Dict[str, jnp.ndarray]] = None
    for batch, n in batches:
      out = jax.tree.map(lambda v, n=n: v * n, self._step(params, batch))
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    total = sum(n for _, n in batches)
    means = {k: float(v) / total for k, v in fetch_replicated(sums).items()}
    if self._derived is not None:  # E.g. perplexity of the mean loss.
      means.update(self._derived(means))
    return means
