"""What happens at a sync, for any algorithm and any fragment of the model.

Sign convention (docs/algorithms.md): Δ_i = θ − θ_i, θ the global model at the
round's start. A sync zeroes what must not count, compresses each Δ_i, takes
the weighted mean Δ = Σ_i w_i Δ_i over all replicas (across devices) and hands
it to the algorithm's `sync`. Replicas that did not count restart from the new
global model; if nobody counted, the global model and outer state stay.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_lab import replicas as rep
from fedjax_lab.outer.base import SyncInputs


class SyncArgs(NamedTuple):
  """One sync's inputs: the whole model or one fragment of it.

  Params-shaped fields hold the fragment's leaves; replica-axis fields the
  local block [m, ...].
  """
  global_params: Any  # θ at the round's start.
  outer_state: Any  # The fragment's outer state.
  replica_params: Any  # θ_i after the local steps.
  replica_start: Any  # θ_i at the round's start.
  comm_state: Any  # The codec's per-replica state.
  client_state: Any  # The algorithm's per-replica state (whole model).
  inner_state: Any  # Inner optimizer states, non-counting ones at their start.
  ok: jax.Array  # bool [m]: the replica counts (took part, stayed finite).
  num_examples: jax.Array  # [m]
  num_steps: jax.Array  # int32 [m]
  comm_keys: jax.Array  # [m] per-replica codec keys.
  key: jax.Array  # The sync's key (identical on every device).
  round: jax.Array  # int32: rounds completed before this one.


class SyncOut(NamedTuple):
  params: Any
  replica_params: Any
  outer_state: Any
  comm_state: Any
  client_state: Any
  inner_state: Any
  delta: Any  # The aggregate Δ (for the outer-gradient norm).


def outer_sync(outer, codec, args: SyncArgs, ops) -> SyncOut:
  """Δ_i, the codec, the aggregate and `outer.sync`.

  Works on any tree shaped like the params (the whole model or one
  fragment of it). Replicas that are not `ok` (sat out or diverged) send
  nothing, keep their codec and per-replica state, and restart from the new
  global model. If nobody counted, the global model and outer state stay.
  """
  ok, g = args.ok, args.global_params
  deltas = jax.tree.map(lambda g_, p: g_[None] - p, g, args.replica_params)
  weights, anyone = rep.weights(ok, args.num_examples, ops)
  # Zero (not multiply) what must not count: 0 × NaN is NaN.
  deltas = rep.select(ok, deltas, jax.tree.map(jnp.zeros_like, deltas))
  sent, new_comm = jax.vmap(codec.compress)(deltas, args.comm_state,
                                            args.comm_keys)
  comm_state = rep.select(ok, new_comm, args.comm_state)
  delta = (ops.weighted_sum(sent, weights) if codec.aggregate is None else
           codec.aggregate(sent, weights, ops))
  inputs = SyncInputs(global_params=g, replica_params=args.replica_params,
                      deltas=sent, delta=delta, weights=weights, key=args.key,
                      client_state=args.client_state, num_steps=args.num_steps,
                      replica_start=args.replica_start,
                      inner_state=args.inner_state, round=args.round)
  result = outer.sync(inputs, args.outer_state, ops)
  client = args.client_state
  if result.client_state is not None:
    client = rep.select(ok, result.client_state, client)
  inner = (args.inner_state if result.inner_state is None
           else result.inner_state)
  keep_if_nobody = lambda new, old: jax.tree.map(
      lambda a, b: jnp.where(anyone, a, b), new, old)
  new_g = keep_if_nobody(result.params, g)
  outer_state = keep_if_nobody(result.outer_state, args.outer_state)
  restart = rep.broadcast_to(new_g, result.replica_params)
  return SyncOut(new_g, rep.select(ok, result.replica_params, restart),
                 outer_state, comm_state, client, inner, delta)


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
