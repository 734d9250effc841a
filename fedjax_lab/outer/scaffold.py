"""SCAFFOLD: "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", Karimireddy, Kale, Mohri, Reddi, Stich, Suresh, arXiv 1910.06378
(Algorithm 1, option II).

Local steps y_i ← y_i − η_l·(g_i(y_i) − c_i + c); at the sync
c_i⁺ = c_i − c + (x − y_i)/(K_i·η_l), x ← x − η_g·Δ (Δ = Σ_i w_i (x − y_i)),
c ← c + (|S|/N)·mean_{i∈S} (c_i⁺ − c_i). The rule and its defaults are in
docs/algorithms.md. Δ is weighted by examples (w_i) like every entry of the
registry, which is the paper's mean over S when the work is equal; the mean
of Δc_i is the paper's unweighted one.

The engine keeps every replica's c_i in `TrainState.client_state` (sharded
like the replicas, checkpointed) and keeps the old c_i of a replica that did
not take part (sat out, diverged or took 0 steps). The correction is a local
loss term ⟨c − c_i, y_i⟩, whose gradient is c − c_i: every inner gradient
becomes g_i(y_i) − c_i + c. The server's c is the outer state. A replica
sends Δy_i and Δc_i: two messages (twice FedAvg's traffic). With a
compressor configured only Δy_i goes through it; Δc_i is applied exactly
but counted at Δy_i's compressed size.

Option II assumes plain SGD inner steps with the known lr η_l: the inner
optimizer must be `optax.sgd(local_lr)` without momentum, weight decay,
clipping or schedule (`check_inner`, exported as
`fedjax_lab.outer.check_scaffold_inner`, is the run layer's check).
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from fedjax_lab.outer import base
from fedjax_lab.typing import Params


class ScaffoldState(NamedTuple):
  """The server's control variate c (float32, shaped like the params)."""
  control: Params


def _zeros(params):
  return jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)


def control_term(params, context: base.LocalContext):
  """⟨c − c_i, y_i⟩: its gradient turns g_i into g_i − c_i + c.

  The controls are constants of the round (`stop_gradient`); the product is
  taken in float32 so that low-precision params get a float32 correction.
  """
  c = context.outer_state.control
  terms = jax.tree.map(
      lambda p, ci, cc: jnp.sum(jax.lax.stop_gradient(cc - ci) *
                                p.astype(jnp.float32)),
      params, context.client_state, c)
  return sum(jax.tree.leaves(terms))


def check_inner(optimizer: str, *, decay: str = "constant",
                warmup_steps: int = 0, weight_decay: float = 0.0,
                grad_clip: float = 0.0, momentum: float = 0.0,
                learning_rate: Optional[float] = None,
                local_lr: Optional[float] = None) -> None:
  """Raises a ValueError unless the inner steps are plain constant-lr SGD.

  For the run layer (config fields `inner.*`, `outer.hparams.local_lr`):
  option II turns (x − y_i)/(K_i·η_l) into an average corrected gradient,
  which holds only for plain SGD steps of a known, constant lr.

  Args:
    optimizer: `inner.optimizer`, must be 'sgd'.
    decay: `inner.decay`, must be 'constant'.
    warmup_steps, weight_decay, grad_clip, momentum: `inner.*`, must be 0.
    learning_rate: `inner.learning_rate`; when given with `local_lr`, the two
      must be equal.
    local_lr: `outer.hparams.local_lr`.

  Raises:
    ValueError: naming the config field.
  """
  if optimizer != "sgd":
    raise ValueError(f"inner.optimizer: scaffold needs plain SGD inner steps "
                     f"(option II divides by K·local_lr), got {optimizer!r}")
  if decay != "constant":
    raise ValueError(f"inner.decay: scaffold needs a constant inner learning "
                     f"rate equal to local_lr, got {decay!r}")
  for field, value in (("inner.warmup_steps", warmup_steps),
                       ("inner.weight_decay", weight_decay),
                       ("inner.grad_clip", grad_clip),
                       ("inner.momentum", momentum)):
    if value:
      raise ValueError(f"{field}: scaffold needs plain constant-lr SGD inner "
                       f"steps, got {value!r} (must be 0)")
  if (learning_rate is not None and local_lr is not None and
      learning_rate != local_lr):
    raise ValueError(f"outer.hparams.local_lr: must equal inner.learning_rate "
                     f"({learning_rate!r}), got {local_lr!r}")


def scaffold(*, local_lr: Optional[float] = None, server_lr: float = 1.0,
             num_clients: Optional[int] = None) -> base.OuterAlgorithm:
  """SCAFFOLD, option II, with stateful clients.

  Args:
    local_lr: η_l > 0, the inner SGD learning rate (required; the engine's
      `inner_opt` must be `optax.sgd(local_lr)`).
    server_lr: η_g ≥ 0, the outer SGD learning rate (paper: 1).
    num_clients: N in c's |S|/N, the clients of a population of which the M
      replicas are a sample (the run layer sets it from train.num_clients);
      None: N = M, every client every round.

  Raises:
    ValueError: naming `local_lr`, `server_lr` or `num_clients`.
  """
  if local_lr is None:
    raise ValueError("local_lr must be set to the inner SGD learning rate "
                     "(scaffold's option II divides by K·local_lr)")
  eta_l = base.check_positive("local_lr", local_lr)
  eta_g = base.check_nonnegative("server_lr", server_lr)
  if num_clients is not None and (
      isinstance(num_clients, bool) or int(num_clients) != num_clients
      or num_clients < 1):
    raise ValueError(f"num_clients must be an int >= 1 (or None: the replica "
                     f"count), got {num_clients!r}")
  server_tx = optax.sgd(eta_g)

  def init(params):
    return ScaffoldState(control=_zeros(params))

  def sync(inputs: base.SyncInputs, state: ScaffoldState, ops):
    x, c = inputs.global_params, state.control
    updates, _ = server_tx.update(inputs.delta, server_tx.init(x), x)
    new_x = optax.apply_updates(x, updates)
    k = inputs.num_steps.astype(jnp.float32)  # K_i [m]
    # Every replica's c_i⁺; the engine keeps the old c_i of non-participants.
    new_ci = jax.tree.map(
        lambda ci, cl, xg, yi: _client_update(ci, cl, xg, yi, k, eta_l),
        inputs.client_state, c, x, inputs.replica_params)
    # c ← c + (|S|/N)·mean_{i∈S} Δc_i = c + Σ_{i∈S} Δc_i / N (N = M unless
    # the replicas are a sample of num_clients).
    # Zeroed, not multiplied, for non-senders: a diverged y_i is NaN.
    senders = inputs.weights > 0
    delta_c = jax.tree.map(
        lambda a, b: jnp.where(senders.reshape((-1,) + (1,) * (a.ndim - 1)),
                               a - b, 0.0), new_ci, inputs.client_state)
    sum_dc = ops.weighted_sum(delta_c, senders.astype(jnp.float32))
    n = ops.num_replicas if num_clients is None else int(num_clients)
    new_c = jax.tree.map(lambda cl, s: cl + s / n, c, sum_dc)
    return base.SyncResult(
        new_x, base.broadcast_like(new_x, inputs.replica_params),
        ScaffoldState(control=new_c), client_state=new_ci)

  def traffic(params, payload_bytes, collective):
    # Δy_i through the run's compressor, Δc_i counted at the same size.
    return base.one_message(params, payload_bytes, collective) * 2

  return base.OuterAlgorithm(
      init=init, sync=sync, reset_inner_state=True, name="scaffold",
      client_init=_zeros, local_loss=control_term, traffic=traffic)


def _client_update(ci, c, x, y, k, eta_l):
  """c_i⁺ = c_i − c + (x − y_i)/(K_i·η_l) on a leaf [m, ...]; c_i if K_i = 0."""
  expand = lambda v: v.reshape(v.shape + (1,) * (ci.ndim - 1))
  drift = (x[None].astype(jnp.float32) - y.astype(jnp.float32)) / (
      expand(jnp.maximum(k, 1.0)) * eta_l)
  return jnp.where(expand(k > 0), ci - c[None] + drift, ci)
