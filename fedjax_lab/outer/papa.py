"""PAPA: "PopulAtion Parameter Averaging (PAPA)", Jolicoeur-Martineau et al.,
arXiv 2304.03094.

A population of M models, each with its own data order; every k = H steps:
  papa     (gradual): θ_i ← α·θ_i + (1 − α)·mean_j θ_j   (α = 0.99, k = 10)
  papa_all:           θ_i ← mean_j θ_j
  papa_2:             random disjoint pairs are each replaced by the pair's mean
The model evaluated is the population average. Replicas are never otherwise
reset and keep their inner optimizer state. With our sign convention
mean_j θ_j = θ − Δ, θ the previous population mean.
"""

import jax
import jax.numpy as jnp
import optax

from fedjax_lab.outer import base


def _no_state(params):
  del params
  return ()


def papa(*, alpha: float = 0.99,
         reset_inner_state: bool = False) -> base.OuterAlgorithm:
  """Gradual PAPA: pull every replica toward the population mean by 1 − α."""
  alpha = base.check_unit_interval("alpha", alpha, closed=True)

  def sync(inputs: base.SyncInputs, state, ops):
    del ops
    mean = jax.tree.map(lambda g, d: g - d, inputs.global_params, inputs.delta)
    new_replicas = jax.tree.map(lambda p, m: alpha * p + (1 - alpha) * m[None],
                                inputs.replica_params, mean)
    return base.SyncResult(mean, new_replicas, state)

  return base.OuterAlgorithm(
      init=_no_state, sync=sync,
      reset_inner_state=base.check_bool("reset_inner_state", reset_inner_state),
      name="papa", restarts_replicas=False)


def papa_all(*, reset_inner_state: bool = False) -> base.OuterAlgorithm:
  """PAPA-all: every replica becomes the population mean (outer SGD lr 1 on Δ,
  inner optimizer state kept)."""
  return base.optax_outer(optax.sgd(1.0), name="papa_all",
                          reset_inner_state=base.check_bool(
                              "reset_inner_state", reset_inner_state))


def random_pairs(key: jax.Array, num_replicas: int) -> jax.Array:
  """partner[i]: i's partner in a random disjoint pairing (itself if M is odd
  and i is left over)."""
  perm = jax.random.permutation(key, num_replicas)
  half = num_replicas // 2
  first, second = perm[:2 * half:2], perm[1:2 * half:2]
  partner = jnp.arange(num_replicas)
  return partner.at[first].set(second).at[second].set(first)


def papa_2(*, reset_inner_state: bool = False) -> base.OuterAlgorithm:
  """PAPA-2: random disjoint pairs average with each other every H steps."""

  def sync(inputs: base.SyncInputs, state, ops: base.ReplicaOps):
    partner = random_pairs(inputs.key, ops.num_replicas)[ops.index]  # [m]
    all_deltas = ops.gather(inputs.deltas)  # [M, ...]
    all_weights = ops.gather(inputs.weights)  # [M]
    # A partner that sat out this round has nothing to offer: keep own params.
    paired = all_weights[partner] > 0
    def mix(p, g, d):
      mate = g[None] - d[partner]
      avg = 0.5 * (p + mate)
      return jnp.where(paired.reshape((-1,) + (1,) * (p.ndim - 1)), avg, p)
    new_replicas = jax.tree.map(mix, inputs.replica_params,
                                inputs.global_params, all_deltas)
    mean = jax.tree.map(lambda g, d: g - d, inputs.global_params, inputs.delta)
    return base.SyncResult(mean, new_replicas, state)

  return base.OuterAlgorithm(
      init=_no_state, sync=sync,
      reset_inner_state=base.check_bool("reset_inner_state", reset_inner_state),
      name="papa_2", restarts_replicas=False)
