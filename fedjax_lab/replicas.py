"""Reductions over the replica axis and per-replica tree helpers.

The engine keeps per-replica arrays with a leading replica axis [m, ...] (the
block of replicas this device holds; m = M on one device). `ReplicaOps`
(defined in `fedjax_lab.outer.base`, where algorithms see it) reduces over all
M of them: an ordinary sum on one device, that sum followed by `lax.psum` over
the mesh's replica axis inside `shard_map`.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from fedjax_lab.outer.base import broadcast_like as broadcast_to  # noqa: F401
from fedjax_lab.outer.base import ReplicaOps


def select(pred: jax.Array, on_true, on_false):
  """where(pred[i], a[i], b[i]) over trees with a leading replica axis."""

  def sel(a, b):
    return jnp.where(pred.reshape(pred.shape + (1,) * (a.ndim - pred.ndim)),
                     a, b)

  return jax.tree.map(sel, on_true, on_false)


def all_finite(tree) -> jax.Array:
  """Per replica: every element of every leaf finite. Leaves are [m, ...]."""
  flags = [jnp.all(jnp.isfinite(x).reshape(x.shape[0], -1), axis=1)
           for x in jax.tree.leaves(tree)]
  return functools.reduce(jnp.logical_and, flags)


def tree_finite(tree) -> jax.Array:
  """One scalar: every element of every leaf finite (no replica axis).

  A sum is finite iff its terms are (barring overflow of finite values past
  float32's 3e38, which is then reported as non-finite: a false alarm on a
  gradient that large is harmless). One fused reduction per leaf.
  """
  sums = [jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(tree)]
  return jnp.isfinite(functools.reduce(jnp.add, sums, jnp.zeros([])))


def weights(ok, num_examples, ops: ReplicaOps):
  """w_i = n_i / Σ_j n_j over the replicas that count; and whether Σ_j n_j > 0."""
  raw = jnp.where(ok, num_examples, 0.0).astype(jnp.float32)
  total = ops.sum(raw)
  return raw / jnp.maximum(total, 1e-30), total > 0


def fresh_inner_state(inner_opt, old_state, params):
  """inner_opt.init(params), but keeping learning-rate schedule counters.

  Resetting clears the optimizer's statistics (moments, bias-correction
  counts) as a stateless client would; the step counters of
  `optax.scale_by_schedule` are kept so schedules follow the global step
  instead of restarting every round.
  """
  fresh = inner_opt.init(params)
  is_sched = lambda x: isinstance(x, optax.ScaleByScheduleState)
  return jax.tree.map(lambda f, o: o if is_sched(f) else f, fresh, old_state,
                      is_leaf=is_sched)


def local_ops(num_replicas: int) -> ReplicaOps:
  """Reductions when every replica is on this device."""

  def weighted_sum(tree, w):
    # A contraction over the replica axis at full float32 precision (the
    # default dot precision would be bf16 on TPU). Not `jnp.sum(w * x, 0)`:
    # XLA:CPU reduces over a leading axis ~25x slower than it contracts
    # (13.4 ms vs 0.5 ms for [8, 784, 256]).
    w = w.astype(jnp.float32)
    return jax.tree.map(
        lambda x: jnp.tensordot(w, x.astype(jnp.float32), axes=1,
                                precision=jax.lax.Precision.HIGHEST
                                ).astype(x.dtype), tree)

  return ReplicaOps(num_replicas=num_replicas,
                    index=jnp.arange(num_replicas, dtype=jnp.int32),
                    weighted_sum=weighted_sum, sum=jnp.sum,
                    gather=lambda tree: tree)


def sharded_ops(num_replicas: int, local: int, axis: str) -> ReplicaOps:
  """Reductions inside `shard_map`: local sums, then psum over `axis`."""
  ops = local_ops(local)

  def weighted_sum(tree, w):
    return jax.lax.psum(ops.weighted_sum(tree, w), axis)

  index = (jax.lax.axis_index(axis) * local +
           jnp.arange(local, dtype=jnp.int32)).astype(jnp.int32)
  return ReplicaOps(
      num_replicas=num_replicas, index=index, weighted_sum=weighted_sum,
      sum=lambda x: jax.lax.psum(jnp.sum(x), axis),
      # A psum of each device's block placed in a zero array: unlike
      # all_gather, its result is known to be replicated (metrics need that).
      gather=lambda tree: jax.tree.map(
          lambda x: jax.lax.psum(
              jnp.zeros((num_replicas,) + x.shape[1:], x.dtype)
              .at[index].set(x), axis), tree),
      varying=lambda tree: jax.lax.pcast(tree, axis, to="varying"),
      across=lambda tree: jax.lax.psum(tree, axis))
