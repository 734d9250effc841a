"""NoLoCo: "NoLoCo: No-all-reduce Low Communication Training Method for Large
Models", Kolehmainen, Blagoev, Donaghy, Ersoy, Nies, arXiv 2506.10911
(reference code jkolehm/noloco, `SparseOptimizerC`).

No all-reduce: every round the replicas are split into random groups of n
(pairs by default) and each replica averages only inside its group. Replica
i keeps its own momentum b_i; with φ_i its parameters at the round's start
(its slow weights), θ_i after its H steps, D̄ and φ̄ the group means of
φ_j − θ_j and φ_j:

    b_i ← μ·b_i + α·D̄ + α·(φ_i − φ̄);  φ_i ← φ_i − b_i;  θ_i ← φ_i.

The model evaluated is the mean of the φ_i. Inner optimizer state is each
replica's own (never averaged or reset). The group exchange is modelled as a
gather of the replicas' values and a group-mean contraction; its traffic is
counted as what a replica sends to its n − 1 peers (θ_i and φ_i, fp32).
"""

import jax
import jax.numpy as jnp

from fedjax_lab.comm import compress as compress_lib
from fedjax_lab.comm.collectives import Message
from fedjax_lab.outer import base


def group_members(key: jax.Array, num_replicas: int,
                  group_size: int) -> jax.Array:
  """int32 [G, n], G = M/n: row g holds perm[g::G] of a random permutation."""
  perm = jax.random.permutation(key, num_replicas).astype(jnp.int32)
  return perm.reshape(group_size, num_replicas // group_size).T


def group_mean_matrix(members: jax.Array, num_replicas: int) -> jax.Array:
  """[M, M] with 1/n where two replicas share a group (its rows average)."""
  n = members.shape[1]
  group = jnp.zeros([num_replicas], jnp.int32).at[members.reshape(-1)].set(
      jnp.repeat(jnp.arange(members.shape[0], dtype=jnp.int32), n))
  return (group[:, None] == group[None, :]).astype(jnp.float32) / n


def noloco(*, learning_rate: float = 0.7, momentum: float = 0.5,
           group_size: int = 2) -> base.OuterAlgorithm:
  """NoLoCo (defaults: the authors' noloco_mean_* configs).

  Args:
    learning_rate: α ≥ 0.
    momentum: μ ∈ [0, 1).
    group_size: n ≥ 1 replicas per group; must divide M.
  """
  alpha = base.check_nonnegative("learning_rate", learning_rate)
  mu = base.check_unit_interval("momentum", momentum)
  n = base.check_positive_int("group_size", group_size)

  def init_momentum(params):
    return jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)

  def sync(inputs: base.SyncInputs, state, ops):
    m = ops.num_replicas
    counted = (inputs.weights > 0)
    mean = group_mean_matrix(group_members(inputs.key, m, n), m)[ops.index]

    def in_group(x):  # [m, ...] local block -> its group means [m, ...].
      every = ops.gather(x.astype(jnp.float32))
      return jnp.tensordot(mean, every, axes=1,
                           precision=jax.lax.Precision.HIGHEST)

    def update(phi, theta, b):
      phi32 = phi.astype(jnp.float32)
      keep = counted.reshape((-1,) + (1,) * (phi.ndim - 1))
      # A replica that did not count brings no progress (θ_j = φ_j).
      d = jnp.where(keep, phi32 - theta.astype(jnp.float32), 0.0)
      new_b = mu * b + alpha * in_group(d) + alpha * (phi32 - in_group(phi32))
      return (phi32 - new_b).astype(phi.dtype), new_b

    out = jax.tree.map(update, inputs.replica_start, inputs.replica_params,
                       inputs.client_state)
    is_pair = lambda x: isinstance(x, tuple)
    new_phi = jax.tree.map(lambda t: t[0], out, is_leaf=is_pair)
    new_b = jax.tree.map(lambda t: t[1], out, is_leaf=is_pair)
    evaluated = ops.weighted_sum(new_phi, jnp.full(counted.shape, 1.0 / m))
    return base.SyncResult(evaluated, new_phi, state, client_state=new_b)

  def check(setup: base.Setup):
    if setup.num_replicas % n:
      raise ValueError(f"group_size: {n} must divide the "
                       f"{setup.num_replicas} replicas")

  def traffic(params, payload_bytes, collective):
    del payload_bytes, collective  # Its own fp32 messages: θ_i and φ_i.
    return (Message(2.0 * compress_lib.tree_bytes(params, 32), "group",
                    group_size=n),)

  return base.OuterAlgorithm(
      init=lambda params: (), sync=sync, name="noloco",
      client_init=init_momentum, codec=compress_lib.none(), traffic=traffic,
      reset_inner_state=False, restarts_replicas=False, check=check)
