"""A replica's inner steps: H optimizer steps in one `lax.scan`.

The engine runs `local_phase` over the replicas a device holds, all at once
(`jax.vmap`) or one after another (`lax.map`): the same numbers either way;
sequential needs one replica's activations at a time. What an algorithm adds
locally (`local_loss`: a penalty, or a linear term whose gradient corrects
every step's) is data on the `OuterAlgorithm`.
"""

from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import optax

from fedjax_lab.outer.base import LocalContext
from fedjax_lab.outer.base import OuterAlgorithm
from fedjax_lab.typing import LossFn

REPLICA_MODES = ("auto", "vmap", "sequential")


# From bench/round_throughput.py on a 2-core CPU: sequential beat vmap for 8
# and more replicas a device (MLP 1.45x vs 1.62x of the bound at M = 8, LM
# 0.95x vs 0.98x at M = 16), vmap won with 4 (LM 1.15x vs 1.39x).
SEQUENTIAL_FROM = 8


def default_replica_mode(local_replicas: int = 1) -> str:
  """What 'auto' means: 'sequential' on CPU when a device holds at least
  SEQUENTIAL_FROM replicas (many small vmapped matmuls run slowly there),
  'vmap' otherwise and on accelerators."""
  cpu = jax.default_backend() == "cpu"
  return "sequential" if cpu and local_replicas >= SEQUENTIAL_FROM else "vmap"


def split_loss(out) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """(loss, aux dict) from a loss_fn's output (a loss or a (loss, aux) pair)."""
  if isinstance(out, tuple):
    loss, aux = out
    return loss, dict(aux)
  return out, {}


class ReplicaSteps:
  """One replica's local training, for any algorithm.

  Attributes:
    loss_fn: (params, batch, rng) -> loss or (loss, metrics).
    inner_opt: the optax optimizer every replica runs.
    outer: the algorithm (its `local_loss` applies locally).
    replica_mode: 'vmap' or 'sequential'.
  """

  def __init__(self, loss_fn: LossFn, inner_opt: optax.GradientTransformation,
               outer: OuterAlgorithm, replica_mode: str,
               local_replicas: int = 1):
    if replica_mode not in REPLICA_MODES:
      raise ValueError(f"replica_mode must be one of {', '.join(REPLICA_MODES)}, "
                       f"got {replica_mode!r}")
    self.loss_fn = loss_fn
    self.inner_opt = inner_opt
    self.outer = outer
    self.replica_mode = (default_replica_mode(local_replicas)
                         if replica_mode == "auto" else replica_mode)

  def loss_and_grad(self, params, batch, rng, anchor, client=(),
                    outer_state=()):
    """(loss, aux, grads) of one step: the algorithm's local term (anchored at
    the global model) is added to the loss it differentiates; the loss it
    reports is the task's."""
    local = self.outer.local_loss
    context = LocalContext(anchor, client, outer_state)

    def total(p):
      loss, aux = split_loss(self.loss_fn(p, batch, rng))
      full = loss if local is None else loss + local(p, context)
      return full, (loss, aux)

    (_, (loss, aux)), grads = jax.value_and_grad(total, has_aux=True)(params)
    return loss, aux, grads

  def run_replica(self, params, opt_state, batch, num_steps, key, client, *,
                  anchor, outer_state, start: int, stragglers: bool):
    """Inner steps of one replica over `batch`'s leading (step) axis.

    Steps are numbered from `start` (for the per-step keys); with
    `stragglers`, steps numbered ≥ num_steps are skipped (a branch when
    replicas run in sequence, a select under vmap). Returns the new params
    and state, the sums of the loss and aux metrics over the steps taken,
    their count, and whether every loss taken was finite.
    """

    def take_step(p, o, b, t):
      loss, aux, grads = self.loss_and_grad(
          p, b, jax.random.fold_in(key, t), anchor, client, outer_state)
      updates, o = self.inner_opt.update(grads, o, p)
      return optax.apply_updates(p, updates), o, loss, aux

    def step(carry, xs):
      p, o = carry
      b, t = xs
      if not stragglers:
        p, o, loss, aux = take_step(p, o, b, t)
        return (p, o), (loss, aux)
      active = t < num_steps
      if self.replica_mode == "sequential":
        shapes = jax.eval_shape(take_step, p, o, b, t)
        # Zeros typed like the replica's own values (varying over the mesh
        # axis inside shard_map, as the taken branch's are).
        zero = lambda s: jnp.zeros(s.shape, s.dtype) + jnp.zeros_like(
            num_steps, s.dtype)
        skip = lambda p, o, b, t: (p, o) + tuple(jax.tree.map(zero,
                                                              shapes[2:]))
        p, o, loss, aux = jax.lax.cond(active, take_step, skip, p, o, b, t)
      else:
        p_new, o_new, loss, aux = take_step(p, o, b, t)
        keep = lambda new, old: jax.tree.map(
            lambda a, b_: jnp.where(active, a, b_), new, old)
        p, o = keep(p_new, p), keep(o_new, o)
      return (p, o), (loss, aux)

    n = jax.tree.leaves(batch)[0].shape[0]
    steps = start + jnp.arange(n, dtype=jnp.int32)
    (params, opt_state), (losses, aux) = jax.lax.scan(
        step, (params, opt_state), (batch, steps))
    if stragglers:
      active = steps < num_steps
      total = lambda x: jnp.sum(jnp.where(active, x, 0.0))
      count = jnp.sum(active).astype(jnp.int32)
    else:
      total = jnp.sum
      count = jnp.full([], n, jnp.int32)
    # A non-finite loss on any step taken marks the replica as diverged.
    finite = jnp.isfinite(total(losses))
    return (params, opt_state, total(losses), jax.tree.map(total, aux),
            count, finite)

  def local_phase(self, replica_params, inner_state, batch, num_steps,
                  replica_keys, client, *, anchor, outer_state, start=0,
                  stragglers=True):
    """`run_replica` over the local block of replicas (vmap or in turn)."""

    def one(xs):
      return self.run_replica(*xs, anchor=anchor, outer_state=outer_state,
                               start=start, stragglers=stragglers)

    xs = (replica_params, inner_state, batch, num_steps, replica_keys, client)
    if self.replica_mode == "vmap":
      return jax.vmap(one)(xs)
    return map_in_place(one, xs)


def map_in_place(one, xs):
  """`lax.map(one, xs)` for xs = (params, inner_state, *rest) with one(x) =
  (params, inner_state, *small): replica i's new params and inner state are
  written over its old ones in the carried [m, ...] arrays (read before
  written, never read again), so the loop needs no second [m, ...] buffer.

  `lax.map` stacks its outputs into fresh buffers: at M = 64 replicas of the
  784-256-10 MLP that is a 51 MiB temporary XLA:CPU allocates, and the kernel
  faults in page by page, every round (~13k minor page faults, tens of ms;
  docs/throughput.md). The arithmetic per replica is the same as `lax.map`'s.
  """
  params, inner, *rest = xs
  m = jax.tree.leaves(params)[0].shape[0]
  take = lambda tree, i: jax.tree.map(
      lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), tree)
  put = lambda tree, new, i: jax.tree.map(
      lambda a, v: jax.lax.dynamic_update_index_in_dim(a, v, i, 0), tree, new)
  first = jax.eval_shape(one, take(xs, 0))
  # Zeros typed like the replicas' own values (varying over the mesh axis
  # inside shard_map, as the loop body's outputs are): built from an input.
  lead = jax.tree.leaves(rest)[0]
  base = jnp.zeros_like(lead.reshape(m, -1)[:, 0])
  small = jax.tree.map(
      lambda s: jnp.zeros((m,) + s.shape, s.dtype) + base.astype(s.dtype)
      .reshape((m,) + (1,) * len(s.shape)), first[2:])

  def body(i, carry):
    p_all, o_all, s_all = carry
    p, o, *s = one((take(p_all, i), take(o_all, i)) + tuple(take(rest, i)))
    return put(p_all, p, i), put(o_all, o, i), put(s_all, tuple(s), i)

  p_all, o_all, s_all = jax.lax.fori_loop(0, m, body, (params, inner, small))
  return (p_all, o_all) + tuple(s_all)
