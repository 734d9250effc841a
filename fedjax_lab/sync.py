"""What happens at a sync, for any algorithm and any fragment of the model.

Sign convention (docs/algorithms.md): Δ_i = θ − θ_i, θ the global model at the
round's start. A sync zeroes what must not count, compresses each Δ_i, takes
the weighted mean Δ = Σ_i w_i Δ_i over all replicas (across devices) and hands
it to the algorithm's `sync`. Replicas that did not count restart from the new
global model; if nobody counted, the global model and outer state stay.
"""

import jax
import jax.numpy as jnp

from fedjax_lab import replicas as rep
from fedjax_lab.outer.base import SyncInputs


def outer_sync(outer, compressor, g, outer_state, new_p, comm_state, client,
               ok, num_examples, num_steps, comm_keys, sync_key, ops):
  """Δ_i, compression, the weighted average and `outer.sync`.

  Works on any tree shaped like the params (the whole model or one
  fragment of it). Replicas that are not `ok` (sat out or diverged) count
  for nothing and restart from the new global model.

  Returns:
    (new global, new replica params, outer state, compressor state, client
    state, Δ).
  """
  deltas = jax.tree.map(lambda g_, p: g_[None] - p, g, new_p)
  weights, anyone = rep.weights(ok, num_examples, ops)
  # Zero (not multiply) what must not count: 0 × NaN is NaN.
  deltas = rep.select(ok, deltas, jax.tree.map(jnp.zeros_like, deltas))
  sent, new_comm = jax.vmap(compressor.compress)(deltas, comm_state, comm_keys)
  comm_state = rep.select(ok, new_comm, comm_state)
  delta = ops.weighted_sum(sent, weights)
  inputs = SyncInputs(global_params=g, replica_params=new_p, deltas=sent,
                      delta=delta, weights=weights, key=sync_key,
                      client_state=client, num_steps=num_steps)
  result = outer.sync(inputs, outer_state, ops)
  new_g, new_replicas, new_outer = result[:3]
  if len(result) > 3:
    client = rep.select(ok, result[3], client)
  keep_if_nobody = lambda new, old: jax.tree.map(
      lambda a, b: jnp.where(anyone, a, b), new, old)
  new_g = keep_if_nobody(new_g, g)
  outer_state = keep_if_nobody(new_outer, outer_state)
  restart = rep.broadcast_to(new_g, new_replicas)
  return (new_g, rep.select(ok, new_replicas, restart), outer_state,
          comm_state, client, delta)


def merge(a, local, global_):
  """Streaming merge θ_i ← α·θ_i + (1 − α)·θ; a diverged replica takes θ."""
  def mix(p, g):
    out = a * p + (1 - a) * g[None] if a else jnp.broadcast_to(g, p.shape)
    return out.astype(p.dtype)

  merged = jax.tree.map(mix, local, global_)
  return rep.select(rep.all_finite(local), merged,
                    rep.broadcast_to(global_, local))


def round_keys(state, ops):
  """(sync key, per-replica step keys, per-replica compressor keys)."""
  round_key = jax.random.fold_in(state.rng, state.round)
  sync_key, step_key = jax.random.split(round_key)
  replica_keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(ops.index)
  comm_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2**31 - 1))(
      replica_keys)
  return sync_key, replica_keys, comm_keys


def round_metrics(ok, mask, finite, loss_sum, aux_sum, count, delta_sq, ops):
  """The round's metrics, every one replicated over the replica axis."""
  n_ok = ops.sum(ok.astype(jnp.float32))
  denom = jnp.maximum(count, 1)
  loss_i = loss_sum / denom
  # Mean over the replicas that counted; NaN (not a perfect 0) when none did.
  mean_ok = lambda v: jnp.where(
      n_ok > 0, ops.sum(jnp.where(ok, v, 0.0)) / jnp.maximum(n_ok, 1),
      jnp.nan)
  metrics = {
      "loss": mean_ok(loss_i),
      # Gathered: M scalars, so every process can read every replica's loss.
      "replica_loss": ops.gather(loss_i),
      "outer_grad_norm": jnp.sqrt(delta_sq),
      "participants": n_ok,
      "nonfinite_replicas": ops.sum((mask & ~finite).astype(jnp.float32)),
  }
  for k, v in aux_sum.items():
    metrics[f"inner/{k}"] = mean_ok(v / denom)
  return metrics
