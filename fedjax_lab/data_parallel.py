"""The data-parallel family's round: something is averaged every step.

An every-step algorithm (one with a `step_rule`): each replica encodes its
gradient with the codec (the algorithm's own, with per-replica state such as
DeMo's residual, or the run's compressor), the messages are aggregated (the
codec's `aggregate`, else the weighted mean with w_i = n_i / Σ_j n_j) and the
algorithm's step rule updates the one shared model (`ddp`: the inner
optimizer). Uncompressed, the weighted sum of the M gradients is taken as one
backward pass.
"""

import jax
import jax.numpy as jnp
import optax

from fedjax_lab import replicas as rep
from fedjax_lab.comm import compress as compress_lib
from fedjax_lab.local_steps import ReplicaSteps
from fedjax_lab.local_steps import split_loss


class DataParallel:
  """H data-parallel steps on the shared model (one jitted scan).

  Attributes:
    steps: the replicas' loss and gradient (`ReplicaSteps`).
    compressor: what each replica sends every step (per-replica state in
      `TrainState.comm_state`).
    tx: the update of the shared model (state in `TrainState.inner_state`).
  """

  def __init__(self, steps: ReplicaSteps,
               compressor: compress_lib.Compressor,
               tx: optax.GradientTransformation):
    self.steps = steps
    self.compressor = compressor
    self.tx = tx

  def _per_replica_grad(self, p, b, keys, mask, num_examples, cs,
                           step_keys, ops):
    """Per-replica gradients, each checked, compressed and aggregated once."""
    comp = self.compressor
    aggregate = comp.aggregate  # None: the weighted mean.
    p_local = ops.varying(p)
    loss_i, aux_i, grads_i = jax.vmap(
        self.steps.loss_and_grad, in_axes=(None, 0, 0, None))(p_local, b, keys,
                                                          p_local)
    ok = mask & jnp.isfinite(loss_i) & jax.vmap(rep.tree_finite)(grads_i)
    weights, anyone = rep.weights(ok, num_examples, ops)
    grads_i = rep.select(ok, grads_i, jax.tree.map(jnp.zeros_like, grads_i))
    sent, cs_new = jax.vmap(comp.compress)(grads_i, cs, step_keys)
    cs = rep.select(ok, cs_new, cs)
    grad = (ops.weighted_sum(sent, weights) if aggregate is None else
            aggregate(sent, weights, ops))
    return grad, cs, loss_i, aux_i, ok, anyone

  def _summed_grad(self, p, b, keys, mask, num_examples, cs, step_keys,
                      ops):
    """Uncompressed: Σ_i w_i ∇ℓ_i as ONE backward pass (a vjp with the weights
    as cotangent), never materialising M gradients. Where a replica's
    gradient is non-finite, the sum is too: then the per-replica path runs
    and drops that replica."""
    p_local = ops.varying(p)

    def losses(q):
      out = jax.vmap(lambda bb, kk: split_loss(self.steps.loss_fn(q, bb, kk)))(
          b, keys)
      return out[0], out

    loss_i, pullback, (_, aux_i) = jax.vjp(losses, p_local, has_aux=True)
    ok = mask & jnp.isfinite(loss_i)
    weights, anyone = rep.weights(ok, num_examples, ops)
    (grad,) = pullback(weights.astype(loss_i.dtype))
    grad = ops.across(grad)
    return jax.lax.cond(
        rep.tree_finite(grad),
        lambda: (grad, cs, loss_i, aux_i, ok, anyone),
        lambda: self._per_replica_grad(p, b, keys, mask, num_examples, cs,
                                          step_keys, ops))

  def round(self, state, batch, mask, num_examples, replica_keys, comm_keys,
            ops):
    """Data-parallel family: every step, (compressed) gradients are averaged."""
    batch_t = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), batch)  # [H, m, ...]
    tx = self.tx
    summed = compress_lib.is_none(self.compressor)
    grad_fn = self._summed_grad if summed else self._per_replica_grad

    def step(carry, xs):
      p, o, cs = carry
      b, t = xs
      keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(replica_keys)
      step_keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(comm_keys)
      grad, cs, loss_i, aux_i, ok, anyone = grad_fn(
          p, b, keys, mask, num_examples, cs, step_keys, ops)
      updates, o_new = tx.update(grad, o, p)
      p_new = optax.apply_updates(p, updates)
      keep = lambda new, old: jax.tree.map(
          lambda a, b_: jnp.where(anyone, a, b_), new, old)
      return (keep(p_new, p), keep(o_new, o), cs), (loss_i, aux_i, ok,
                                                    optax.tree.norm(grad))

    steps = jnp.arange(jax.tree.leaves(batch_t)[0].shape[0], dtype=jnp.int32)
    (params, opt_state, comm_state), (losses, aux, oks, gnorms) = jax.lax.scan(
        step, (state.params, state.inner_state, state.comm_state[0]),
        (batch_t, steps))
    okf = oks.astype(jnp.float32)  # [H, m]
    per_replica = lambda x: jnp.sum(jnp.where(oks, x, 0.0), 0) / jnp.maximum(
        jnp.sum(okf, 0), 1)
    n_ok = ops.sum(jnp.sum(okf, 0))
    mean_ok = lambda x: jnp.where(
        n_ok > 0, ops.sum(jnp.sum(jnp.where(oks, x, 0.0), 0)) /
        jnp.maximum(n_ok, 1), jnp.nan)
    metrics = {
        "loss": mean_ok(losses),
        "replica_loss": ops.gather(per_replica(losses)),
        "outer_grad_norm": jnp.mean(gnorms),  # Mean gradient norm over steps.
        "participants": ops.sum(jnp.all(oks, 0).astype(jnp.float32)),
        "nonfinite_replicas": ops.sum(
            (mask & ~jnp.all(oks | ~mask[None], 0)).astype(jnp.float32)),
    }
    for k, v in aux.items():
      metrics[f"inner/{k}"] = mean_ok(v)
    return state.replace(params=params, inner_state=opt_state,
                         comm_state=(comm_state,), round=state.round + 1), metrics
