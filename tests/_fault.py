"""Fault injection for runner tests: a replica's loss becomes NaN in a round.

`nan_fault(round, replica)` gives the two hooks `train_and_evaluate` takes:
the loss is multiplied by (1 + mean(batch['fault'])), and the batch hook sets
batch['fault'] to 0 everywhere except NaN for the poisoned replica in the
poisoned round, so that replica's loss and gradients become NaN exactly as a
real divergence would (x · 1.0 is exact elsewhere).
"""

import jax.numpy as jnp
import numpy as np

FAULT_KEY = "fault"


def nan_fault(fault_round: int, replica: int):
  """{'wrap_loss': ..., 'batch_hook': ...} for train_and_evaluate(**hooks)."""

  def wrap_loss(loss_fn):
    def wrapped(params, batch, rng):
      batch = dict(batch)
      fault = batch.pop(FAULT_KEY)
      loss, aux = loss_fn(params, batch, rng)
      return loss * (1.0 + jnp.mean(fault)), aux
    return wrapped

  def batch_hook(batch, r, replica_ids):
    leaf = next(iter(batch.values()))
    fault = np.zeros(leaf.shape[:3], np.float32)  # [local replicas, H, B]
    if r == fault_round and replica in replica_ids:
      fault[list(replica_ids).index(replica)] = np.nan
    return {**batch, FAULT_KEY: fault}

  return {"wrap_loss": wrap_loss, "batch_hook": batch_hook}
