"""The shape of an outer algorithm, shared by every entry of the registry.

Sign convention (stated once, here and in docs/algorithms.md): the outer
gradient of replica i is

    Δ_i = θ − θ_i,

θ the global (server, center) parameters at the start of the round and θ_i the
replica's parameters after its H local steps. Δ = Σ_i w_i Δ_i with
w_i = n_i / Σ_j n_j (n_i the examples replica i processed; 0 if it sat out).
An outer optimizer treats Δ as an ordinary gradient and takes a *descent* step,
so outer SGD with lr 1 gives θ ← Σ_i w_i θ_i (FedAvg).

An algorithm is optax-shaped: a NamedTuple of parts the engine handles
generically, never a name it checks.

* When it talks: `sync` (once a round, after the H local steps: the round
  family) or `step_rule` (every step: the data-parallel family, which
  aggregates what the replicas send and updates one shared model).
* What a replica does locally: `local_loss`, a term added to its loss (a
  proximal or elastic penalty; SCAFFOLD's linear control-variate term, whose
  gradient is the correction c − c_i), and whether its inner optimizer state
  is reset every round (`reset_inner_state`).
* What it keeps: the global outer state (`init`), per-replica state
  (`client_init`: SCAFFOLD's c_i, NoLoCo's momentum), and what a sync may
  replace: the global model, every replica's params, its per-replica state
  and the replicas' inner optimizer states (DES-LOC's moment averaging).
* What it sends: its own codec (`codec`: DeMo's and SparseLoCo's sparse
  messages, aggregated per coefficient) or else the run's compressor, and
  the messages per sync (`traffic`, `fedjax_lab.comm.collectives`).
"""

from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_lab.comm.collectives import Message
from fedjax_lab.typing import Params
from fedjax_lab.typing import PRNGKey
from fedjax_lab.typing import Updates

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
  delta: Updates  # The aggregate Δ (weighted mean, or the codec's aggregate).
  weights: jax.Array  # w_i [m]; Σ over all M is 1 (0 for replicas that sat out).
  key: PRNGKey  # Per-round key, identical on every device.
  # Per-replica algorithm state [m, ...] (`client_init`), or () if none.
  client_state: Any = ()
  # int32 [m]: inner steps each replica actually took this round.
  num_steps: Any = None
  # θ_i at the round's start, [m, ...] (the global model for rules whose
  # replicas restart from it; a replica's own start otherwise).
  replica_start: Params = None
  # Every replica's inner optimizer state [m, ...] (a replica that did not
  # count has its round-start state).
  inner_state: Any = None
  # int32 scalar: rounds completed before this one.
  round: Any = None


class SyncResult(NamedTuple):
  """What a sync returns. None leaves a part as it was."""
  params: Params  # The new global model (the model to evaluate).
  replica_params: Params  # What every replica continues from, [m, ...].
  outer_state: OuterState
  client_state: Any = None  # New per-replica state [m, ...].
  inner_state: Any = None  # New inner optimizer states [m, ...].


class LocalContext(NamedTuple):
  """What a replica's `local_loss` may read (one replica, no replica axis)."""
  anchor: Params  # The global model at the round's start.
  client_state: Any  # This replica's per-replica state, or ().
  outer_state: OuterState


class Setup(NamedTuple):
  """What a run is, for an algorithm's `check` (shapes only)."""
  num_replicas: int  # M.
  inner_steps: int  # H.
  params: Any  # One replica's params (ShapeDtypeStructs).
  inner_state: Any  # One replica's inner optimizer state (ShapeDtypeStructs).


SyncFn = Callable[[SyncInputs, OuterState, ReplicaOps], SyncResult]
# local_loss(params_i, context) -> scalar added to replica i's loss (only its
# gradient matters: the reported loss is the task's).
LocalLossFn = Callable[[Params, LocalContext], jax.Array]
# traffic(params, payload_bytes, collective) -> the messages one replica sends
# per sync; payload_bytes(tree) is the bytes of a params-shaped tree as the
# codec (or the run's compressor) encodes it, `collective` how it travels.
TrafficFn = Callable[[Params, Callable[[Any], float], str], Sequence[Message]]


def one_message(params, payload_bytes, collective) -> Tuple[Message, ...]:
  """The default traffic: Δ_i (or the step's gradient), once per sync."""
  return (Message(float(payload_bytes(params)), collective),)


class OuterAlgorithm(NamedTuple):
  """An outer algorithm, as parts (see the module docstring).

  Attributes:
    init: global params -> outer state (no replica axis).
    sync: (SyncInputs, outer state, ReplicaOps) -> SyncResult, once a round;
      None for the every-step family.
    step_rule: inner optimizer -> the optax update of the one shared model
      from the aggregated step message (ddp: the inner optimizer itself;
      DeMo: sign-SGD); None for the round family.
    name: the registry name, for logs.
    local_loss: optional term added to every replica's local loss.
    client_init: per-replica state from ONE replica's params; the engine
      keeps it stacked [M, ...] in `TrainState.client_state` and keeps the
      old value of a replica that did not count.
    codec: the algorithm's own compressor (its `aggregate` combines the
      messages); None uses the run's compressor.
    traffic: the messages one replica sends per sync (`TrafficFn`).
    reset_inner_state: whether each replica's inner optimizer state starts
      fresh every round (step counters of learning-rate schedules are kept).
    restarts_replicas: every replica restarts from the new global model at a
      sync (FedAvg, FedOpt, DiLoCo, ...; not EASGD, PAPA or NoLoCo).
    leafwise: the sync applies the same rule to every leaf independently and
      reads nothing but params-shaped inputs, so it can be applied to a
      fragment of the model (Streaming DiLoCo). False when it reads the
      inner optimizer state (DES-LOC).
    check: optional Setup -> None, raising a ValueError naming what the
      algorithm cannot run with (an inner optimizer without Adam moments,
      a replica count its groups do not divide).
  """
  init: Callable[[Params], OuterState]
  sync: Optional[SyncFn] = None
  step_rule: Optional[Callable[[optax.GradientTransformation],
                               optax.GradientTransformation]] = None
  name: str = ""
  local_loss: Optional[LocalLossFn] = None
  client_init: Optional[Callable[[Params], Any]] = None
  codec: Optional[Any] = None
  traffic: TrafficFn = one_message
  reset_inner_state: bool = True
  restarts_replicas: bool = True
  leafwise: bool = True
  check: Optional[Callable[[Setup], None]] = None

  @property
  def every_step(self) -> bool:
    """The data-parallel family: something is aggregated every step."""
    return self.step_rule is not None

  def why_not_streamable(self) -> Optional[str]:
    """None if a fragment schedule can run this rule; else the reason."""
    if self.every_step:
      return "it synchronises every step"
    if not self.restarts_replicas:
      return "its replicas do not restart from the global model"
    if self.client_init is not None:
      return "it keeps per-replica state"
    if not self.leafwise:
      return "its sync reads more than the parameters"
    return None


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
    return SyncResult(new_global, broadcast_like(new_global,
                                                 inputs.replica_params), state)

  return init, sync


def optax_outer(tx: optax.GradientTransformation, *, name: str,
                reset_inner_state: bool, **parts) -> OuterAlgorithm:
  """A rule that is an optax optimizer on Δ (FedAvg, FedOpt, DiLoCo, ...)."""
  init, sync = optax_sync(tx)
  return OuterAlgorithm(init=init, sync=sync, name=name,
                        reset_inner_state=reset_inner_state, **parts)


def broadcast_like(tree: Params, like: Params) -> Params:
  """Repeats an unbatched tree along the leading replica axis of `like`."""
  return jax.tree.map(lambda x, y: jnp.broadcast_to(x, y.shape).astype(y.dtype),
                      tree, like)


# ----------------------------------------------------------------------------
# Hyperparameter validation: a ValueError naming the field and what is allowed.


def check_nonnegative(field: str, value: float) -> float:
  if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
    raise ValueError(f"{field} must be a number >= 0, got {value!r}")
  return float(value)


def check_positive_int(field: str, value) -> int:
  """An integer >= 1 (not a bool)."""
  if (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
      or value < 1):
    raise ValueError(f"{field} must be an integer >= 1, got {value!r}")
  return int(value)


def check_nonnegative_int(field: str, value) -> int:
  """An integer >= 0 (not a bool)."""
  if (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
      or value < 0):
    raise ValueError(f"{field} must be an integer >= 0, got {value!r}")
  return int(value)


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
