"""Evaluation of the model a run would ship, on the held-out split."""

import math
from typing import Dict

import jax
import jax.numpy as jnp

from fedjax_lab import data as data_lib
from fedjax_lab.distributed import fetch_replicated


class Evaluator:
  """Mean task metrics of `engine.eval_params(state)` over fixed eval batches."""

  def __init__(self, run):
    config = run.config
    self._engine = run.engine
    self._batches = list(data_lib.eval_batches(
        run.eval_src, batch_size=config.data.eval_batch_size,
        num_batches=config.data.eval_batches or None))
    loss_fn = run.task.loss_fn
    self._step = jax.jit(lambda p, batch: loss_fn(p, batch, None)[1])

  def __call__(self, state) -> Dict[str, float]:
    params = self._engine.eval_params(state)
    sums = None
    for batch in self._batches:
      out = self._step(params, batch)
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    means = {k: float(v) / len(self._batches)
             for k, v in fetch_replicated(sums).items()}
    if "perplexity" in means:  # Of the mean loss, not the mean of exps.
      means["perplexity"] = math.exp(min(means["loss"], 700.0))
      means["bits_per_byte"] = means["loss"] / math.log(2.0)
    return means
