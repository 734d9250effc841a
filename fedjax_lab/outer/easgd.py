"""EASGD: "Deep learning with Elastic Averaging SGD", Zhang, Choromanska,
LeCun, arXiv 1412.6651 (synchronous form, communication period τ = H).

At an exchange, with center x̃ = θ and α = β/M:
  d_i = α·(θ_i − x̃);  θ_i ← θ_i − d_i;  x̃ ← x̃ + Σ_i d_i.
Workers are not reset to the center; the center is the model evaluated.
In our sign convention Σ_i d_i = −β·Δ with Δ = mean_i (x̃ − θ_i), so the center
takes an outer SGD step with lr β on Δ. With partial participation or unequal
work the mean is the weighted one (w_i), so the center's pull stays β.
Optionally each local step adds the elastic penalty (ρ/2)‖θ_i − x̃‖² (the TF
reference adds it every step); ρ = 0 by default.
"""

import jax
import jax.numpy as jnp
import optax

from fedjax_lab.outer import base


def elastic_penalty(rho: float) -> base.LocalLossFn:
  """(ρ/2)·‖θ_i − anchor‖², summed over every leaf (a `local_loss`)."""

  def penalty(params, context: base.LocalContext):
    sq = jax.tree.map(lambda p, a: jnp.sum(jnp.square(p - a)), params,
                      context.anchor)
    return 0.5 * rho * sum(jax.tree.leaves(sq))

  return penalty


def easgd(*, beta: float = 0.9, rho: float = 0.0,
          reset_inner_state: bool = False) -> base.OuterAlgorithm:
  """Synchronous EASGD with moving rate β = M·α (recommended 0.9)."""
  beta = base.check_unit_interval("beta", beta)
  rho = base.check_nonnegative("rho", rho)
  center_tx = optax.sgd(beta)

  def sync(inputs: base.SyncInputs, state, ops: base.ReplicaOps):
    alpha = beta / ops.num_replicas
    updates, state = center_tx.update(inputs.delta, state, inputs.global_params)
    new_center = optax.apply_updates(inputs.global_params, updates)
    # θ_i − α(θ_i − x̃), with the center as it was when the worker sent.
    new_replicas = jax.tree.map(
        lambda p, c: p - alpha * (p - c[None]), inputs.replica_params,
        inputs.global_params)
    return base.SyncResult(new_center, new_replicas, state)

  return base.OuterAlgorithm(
      init=center_tx.init, sync=sync,
      local_loss=elastic_penalty(rho) if rho > 0 else None,
      reset_inner_state=base.check_bool("reset_inner_state", reset_inner_state),
      name="easgd", restarts_replicas=False)
