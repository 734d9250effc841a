"""The shape of an outer algorithm, shared by every entry of the registry.

Sign convention (stated once, here and in docs/algorithms.md): the outer
gradient of replica i is

    Δ_i = θ − θ_i,

θ the global (server, center) parameters at the start of the round and θ_i the
replica's parameters after its H local steps. Δ = Σ_i w_i Δ_i with
w_i = n_i / Σ_j n_j (n_i the examples replica i processed; 0 if it sat out).
An outer optimizer treats Δ as an ordinary gradient and takes a *descent* step,
so outer SGD with lr 1 gives θ ← Σ_i w_i θ_i (FedAvg).

An algorithm is optax-shaped: a NamedTuple of pure functions plus the few
static facts the engine needs. The engine owns every loop and every reduction;
an algorithm only says what happens at a sync (`sync`), what its replicas add to
their local loss (`penalty`) or to every local gradient (`correct_grad`), what
per-replica state it keeps (`client_init`) and whether the inner optimizer
state is reset.
"""

from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from fedjax_lab.typing import Params, PRNGKey, Updates

OuterState = Any


class ReplicaOps(NamedTuple):
  """Reductions over the replica axis, wherever the replicas live.

  Arrays with a replica axis hold only this device's block of m replicas
  (m = M on one device); the reductions run over all M (across devices via
  `lax.psum` on the mesh axis).
  """
  num_replicas: int  # M, over all devices and processes.
  index: jax.Array  # int32 [m]: global replica indices of the local block.
  # weighted_sum(tree [m, ...], w [m]) -> tree: Σ_i w_i x_i over all M replicas.
  weighted_sum: Callable[[Any, jax.Array], Any]
  # sum(x [m]) -> scalar over all M replicas.
  sum: Callable[[jax.Array], jax.Array]
  # gather(tree [m, ...]) -> tree [M, ...] (every replica's value, in order).
  gather: Callable[[Any], Any]
  # varying(tree) -> tree: marks a replicated value as per-device, so that a
  # gradient taken with respect to it is not summed across devices implicitly
  # (shard_map's autodiff sums cotangents of replicated inputs).
  varying: Callable[[Any], Any] = lambda tree: tree
  # across(tree) -> tree: sums a per-device value (e.g. this device's part of
  # a sum over its replicas) over the devices (identity on one device).
  across: Callable[[Any], Any] = lambda tree: tree


class SyncInputs(NamedTuple):
  """What an algorithm sees at a sync. Replica-axis fields hold the local block."""
  global_params: Params  # θ at the start of the round (no replica axis).
  replica_params: Params  # θ_i after the local steps, [m, ...].
  deltas: Updates  # Δ_i = θ − θ_i as received (after compression), [m, ...].
  delta: Updates  # Δ = Σ_i w_i Δ_i (no replica axis).
  weights: jax.Array  # w_i [m]; Σ over all M is 1 (0 for replicas that sat out).
  key: PRNGKey  # Per-round key, identical on every device.
  # Per-replica algorithm state [m, ...] (`client_init`), or () if none.
  client_state: Any = ()
  # int32 [m]: inner steps each replica actually took this round.
  num_steps: Any = None


# sync returns (new global, new replica params [m, ...], new outer state) or,
# for algorithms with per-replica state, a fourth element: the new client
# state [m, ...] (the engine keeps the old one for replicas that did not count).
SyncFn = Callable[[SyncInputs, OuterState, ReplicaOps], Tuple[Any, ...]]
# correct_grad(grads_i, client_state_i, outer_state) -> grads_i: applied to
# every inner-step gradient of replica i (SCAFFOLD's control variates).
CorrectGradFn = Callable[[Updates, Any, OuterState], Updates]
# penalty(params_i, anchor) -> scalar added to replica i's local loss; anchor is
# the global model at the round's start.
PenaltyFn = Callable[[Params, Params], jax.Array]


class OuterAlgorithm(NamedTuple):
  """An outer algorithm.

  Attributes:
    init: global params -> outer state (no replica axis).
    sync: (SyncInputs, outer state, ReplicaOps) -> (new global params, new
      replica params [m, ...], new outer state). The new global params are the
      model to evaluate (the center for EASGD, the population mean for PAPA).
    penalty: optional term added to every replica's local loss.
    reset_inner_state: whether each replica's inner optimizer state starts
      fresh every round (step counters of learning-rate schedules are kept so
      schedules follow the global inner step).
    data_parallel: the data-parallel family (`ddp`, `demo`): something is
      averaged every step, one shared model, no outer step (`sync` unused).
    name: the registry name, for logs.
    restarts_replicas: every replica restarts from the new global model at a
      sync (FedAvg, FedOpt, DiLoCo, ...; not EASGD or PAPA). Only such rules
      can be streamed fragment by fragment (Streaming DiLoCo).
    client_init: per-replica state from ONE replica's params (SCAFFOLD's
      c_i); the engine keeps it stacked [M, ...] in `TrainState.client_state`.
    correct_grad: applied to every inner gradient of a replica (see
      `CorrectGradFn`).
    step_compressor: data-parallel family only: replaces the engine's
      compressor in the every-step path (its `aggregate`, if any, replaces
      the weighted mean).
    step_tx: data-parallel family only: replaces the engine's inner optimizer
      for the shared model.
    comm_multiplier: how many params-shaped tensors a replica sends per sync
      (SCAFFOLD sends Δy and Δc: 2).
  """
  init: Callable[[Params], OuterState]
  sync: SyncFn
  penalty: Optional[PenaltyFn] = None
  reset_inner_state: bool = True
  data_parallel: bool = False
  name: str = ""
  restarts_replicas: bool = True
  client_init: Optional[Callable[[Params], Any]] = None
  correct_grad: Optional[CorrectGradFn] = None
  step_compressor: Optional[Any] = None
  step_tx: Optional[optax.GradientTransformation] = None
  comm_multiplier: int = 1


def broadcast_like(tree: Params, like: Params) -> Params:
  """Repeats an unbatched tree along the leading replica axis of `like`."""
  return jax.tree.map(lambda x, y: jnp.broadcast_to(x, y.shape).astype(y.dtype),
                      tree, like)


def optax_sync(tx: optax.GradientTransformation) -> Tuple[Callable, SyncFn]:
  """(init, sync) for rules that are an optax optimizer on Δ.

  θ ← θ + tx(Δ); every replica restarts from the new θ.
  """

  def init(params):
    return tx.init(params)

  def sync(inputs: SyncInputs, state, ops):
    del ops
    updates, state = tx.update(inputs.delta, state, inputs.global_params)
    new_global = optax.apply_updates(inputs.global_params, updates)
    return new_global, broadcast_like(new_global, inputs.replica_params), state

  return init, sync


def optax_outer(tx: optax.GradientTransformation, *, name: str,
                reset_inner_state: bool,
                penalty: Optional[PenaltyFn] = None) -> OuterAlgorithm:
  init, sync = optax_sync(tx)
  return OuterAlgorithm(init=init, sync=sync, penalty=penalty,
                        reset_inner_state=reset_inner_state, name=name)


# ----------------------------------------------------------------------------
# Hyperparameter validation: a ValueError naming the field and what is allowed.


def check_nonnegative(field: str, value: float) -> float:
  if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
    raise ValueError(f"{field} must be a number >= 0, got {value!r}")
  return float(value)


def check_positive(field: str, value: float) -> float:
  if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
    raise ValueError(f"{field} must be a number > 0, got {value!r}")
  return float(value)


def check_unit_interval(field: str, value: float, *, closed: bool = False) -> float:
  """[0, 1) by default; [0, 1] with closed=True."""
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and
        0 <= value and (value <= 1 if closed else value < 1))
  if not ok:
    allowed = "[0, 1]" if closed else "[0, 1)"
    raise ValueError(f"{field} must be in {allowed}, got {value!r}")
  return float(value)


def check_bool(field: str, value: bool) -> bool:
  if not isinstance(value, bool):
    raise ValueError(f"{field} must be True or False, got {value!r}")
  return value
