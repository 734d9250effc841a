"""The replica engine: one jitted call runs a whole round for any algorithm.

(Over 400 lines on purpose: one class, the round program and the state it owns;
its parts already live in local_steps, sync, data_parallel, layout, host_arrays.)

A round: each of M replicas takes H inner optimizer steps on its own batches
(`lax.scan` over steps; the replicas of one device run all at once under
`jax.vmap` or one after another under `lax.map`; `jax.shard_map` spreads them
over a named mesh axis), then the replicas' outer gradients Δ_i = θ − θ_i (θ the
global model at the round's start, see `fedjax_lab.outer.base`) are compressed,
averaged with weights w_i = n_i / Σ_j n_j (a `psum` over the mesh axis) and
handed to the outer algorithm's `sync`. An every-step algorithm (one with a
`step_rule`: the data-parallel family) instead aggregates something every
step (data_parallel.py).

Streaming DiLoCo is not a second loop: a `FragmentSchedule` (fragments.py) cuts
the round into segments and syncs each fragment of the parameters at its own
step; the default schedule (one fragment, synced at the round's end) is plain
DiLoCo/FedAvg/... . Every rule (participation, non-finite replicas, inner-state
reset, compression, byte counts) is written once and holds for both.

What differs between algorithms is data (an `OuterAlgorithm`'s parts), not
loops: this module holds the only training loop and asks an algorithm what it
does, never which one it is.

Per-replica arrays carry a leading replica axis [M, ...]; batches have leading
axes [M, H, B, ...].

(Over 400 lines: the state, the round and its host entry point are one unit;
the traffic accounting, `messages`/`comm_bytes`, is the next part to move out,
next to the simulated clock.)
"""

from typing import Any, Dict, List, Optional, Tuple, Union

import flax
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

from fedjax_lab import fragments as fragments_lib
from fedjax_lab import outer as outer_lib
from fedjax_lab import replicas as rep
from fedjax_lab import sync as sync_lib
from fedjax_lab.comm import collectives
from fedjax_lab.comm import compress as compress_lib
from fedjax_lab.comm.collectives import Message
from fedjax_lab.data_parallel import DataParallel
from fedjax_lab.host_arrays import host_aligned
from fedjax_lab.layout import DEFAULT_AXIS  # noqa: F401 (re-exported)
from fedjax_lab.layout import DEFAULT_MIN_SHARD_SIZE
from fedjax_lab.layout import Layout
from fedjax_lab.layout import MODEL_AXIS  # noqa: F401 (re-exported)
from fedjax_lab.layout import replica_mesh  # noqa: F401 (re-exported)
from fedjax_lab.local_steps import default_replica_mode  # noqa: F401 (re-exported)
from fedjax_lab.local_steps import REPLICA_MODES  # noqa: F401 (re-exported)
from fedjax_lab.local_steps import ReplicaSteps
from fedjax_lab.outer.base import check_positive_int
from fedjax_lab.outer.base import OuterAlgorithm
from fedjax_lab.outer.base import ReplicaOps
from fedjax_lab.typing import Batch
from fedjax_lab.typing import LossFn
from fedjax_lab.typing import Params
from fedjax_lab.typing import PRNGKey


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue, as one pytree (checkpointable).

  Attributes:
    params: the model to evaluate: the global model (the center for EASGD, the
      population mean for PAPA; the shared model for the data-parallel family).
    outer_state: the outer optimizer's state (replicated): a tuple with one
      entry per fragment (one entry without a streaming schedule), so its
      nesting never depends on the schedule.
    replica_params: per-replica params [M, ...] (None for data-parallel).
    inner_state: per-replica inner optimizer states [M, ...] (the one shared
      state for data-parallel).
    comm_state: per-replica codec state [M, ...] (error feedback, DeMo's
      residual): a tuple with one entry per fragment, as `outer_state`.
    client_state: per-replica algorithm state [M, ...] (SCAFFOLD's c_i,
      NoLoCo's momentum), or ().
    round: int32 scalar, rounds completed.
    rng: uint32[2] raw PRNG key; per-round/replica/step keys are folded in.
  """
  params: Params
  outer_state: Any
  replica_params: Any
  inner_state: Any
  comm_state: Any
  client_state: Any
  round: jax.Array
  rng: jax.Array


class Engine:
  """Runs rounds of any outer algorithm over M replicas.

  Example:
    engine = Engine(loss_fn, inner_opt=optax.adamw(4e-4),
                    outer=fedjax_lab.outer.get("diloco"),
                    num_replicas=8, inner_steps=50)
    state = engine.init(params, seed=0)
    state, metrics = engine.round(state, batches)   # leaves [8, 50, B, ...]
    model = engine.eval_params(state)
  """

  def __init__(self, loss_fn: LossFn, *, inner_opt: optax.GradientTransformation,
               outer: Union[OuterAlgorithm, str], num_replicas: int,
               inner_steps: int, mesh: Optional[jax.sharding.Mesh] = None,
               axis_name: Optional[str] = None,
               compressor: Optional[compress_lib.Compressor] = None,
               donate: bool = True, replica_mode: str = "auto",
               fragments: Optional[fragments_lib.FragmentSchedule] = None,
               model_axis: Optional[str] = None, param_specs: Any = None,
               min_shard_size: int = DEFAULT_MIN_SHARD_SIZE):
    # Over 80 lines on purpose: the engine's one validation of its arguments, each a named error.
    """Builds the engine.

    Args:
      loss_fn: (params, batch, rng) -> loss or (loss, metrics dict), for ONE
        replica's batch of one step.
      inner_opt: the optax optimizer every replica runs locally.
      outer: an `OuterAlgorithm` or a registry name (default hyperparameters).
      num_replicas: M ≥ 1.
      inner_steps: H ≥ 1, inner steps per round.
      mesh: shard replicas over `axis_name` of this mesh (M must be a multiple
        of that axis' size); None runs them all on the default device.
      axis_name: the mesh axis (default: the mesh's first axis).
      compressor: how Δ_i is compressed before the average (default: none).
      donate: donate the state buffers to the round (the state passed in is
        consumed; arrays from `eval_params` are copies and survive).
      replica_mode: how a device runs its replicas: 'vmap' (all at once: one
        replica's activations × m in memory), 'sequential' (one after
        another: one replica's activations at a time) or 'auto'
        (`local_steps.default_replica_mode`: sequential on CPU from 8
        replicas a device, vmap otherwise). Both give the same numbers.
      fragments: a Streaming DiLoCo schedule (default: one fragment synced at
        the round's end).
      model_axis: a second mesh axis each replica's model is sharded over
        (FSDP-style; default: the mesh's other axis if it has two). Every
        state leaf (params, optimizer moments, residuals, control variates)
        of at least `min_shard_size` elements is split along its largest
        dimension divisible by the axis size; smaller leaves are replicated.
        Reductions over replicas stay on the replica axis.
      param_specs: optional PartitionSpecs over the model axis, a tree like
        the params (as flax's logical axis rules give); a state leaf shaped
        like a param takes that param's spec (the first one, when several
        params share a shape), other leaves follow the default rule.
      min_shard_size: see `model_axis`.

    Raises:
      ValueError: naming the field, for a bad M, H, mesh, mode or optimizer.
    """
    if isinstance(outer, str):
      outer = outer_lib.get(outer)
    if not isinstance(outer, OuterAlgorithm):
      raise ValueError(f"outer must be an OuterAlgorithm or a registry name, "
                       f"got {type(outer).__name__}")
    if not isinstance(inner_opt, optax.GradientTransformation):
      raise ValueError("inner_opt must be an optax.GradientTransformation, "
                       f"got {type(inner_opt).__name__}")
    self.outer = outer
    self.inner_opt = inner_opt
    self.num_replicas = check_positive_int("num_replicas", num_replicas)
    self.inner_steps = check_positive_int("inner_steps", inner_steps)
    if outer.codec is not None and not compress_lib.is_none(compressor):
      raise ValueError(
          f"compressor: {outer.name!r} sends messages in its own codec; "
          f"another compressor would be ignored (use 'none')")
    self.compressor = compressor or compress_lib.none()
    # What a replica's messages are encoded with: the algorithm's own codec,
    # else the run's compressor.
    self.codec = outer.codec or self.compressor
    self.schedule = (fragments or fragments_lib.FragmentSchedule()).validate(
        self.inner_steps)
    why = outer.why_not_streamable()
    if not self.schedule.is_plain and why:
      raise ValueError(
          f"outer: a streaming schedule merges replicas toward the global "
          f"model fragment by fragment; {outer.name!r} cannot be streamed "
          f"({why}); use a rule such as 'diloco'")
    self.layout = Layout(mesh, self.num_replicas, axis_name=axis_name,
                         model_axis=model_axis, param_specs=param_specs,
                         min_shard_size=min_shard_size)
    self.steps = ReplicaSteps(loss_fn, inner_opt, outer, replica_mode,
                              self.layout.local_replicas)
    self.replica_mode = self.steps.replica_mode
    self.every_step = outer.every_step
    if self.every_step and outer.local_loss is not None:
      raise ValueError(f"outer: {outer.name!r} syncs every step; a local "
                       "loss term has no local steps to act on")
    self._data_parallel = (DataParallel(self.steps, self.codec,
                                        outer.step_rule(inner_opt))
                           if self.every_step else None)

    self._donate = donate
    self._round_jit = None  # Built at the first round (needs the shardings).
    self._init_jit = None
    self._round_comm_bytes = None  # Static per engine: shapes never change.

  # The layout's facts, as attributes of the engine (the run layer reads them).
  mesh = property(lambda self: self.layout.mesh)
  axis_name = property(lambda self: self.layout.axis_name)
  model_axis = property(lambda self: self.layout.model_axis)
  num_shards = property(lambda self: self.layout.num_shards)
  local_replicas = property(lambda self: self.layout.local_replicas)
  loss_fn = property(lambda self: self.steps.loss_fn)

  # --------------------------------------------------------------------------
  # State.

  def _fragments(self, params) -> List[Optional[List[int]]]:
    """Leaf indices per fragment; [None] (the whole tree) when plain."""
    return [None] if self.schedule.is_plain else self.schedule.assign(params)



  def fragments(self, params) -> List[List[int]]:
    """Leaf indices of each fragment (one fragment: every leaf)."""
    n = len(jax.tree.leaves(params))
    return [list(range(n)) if f is None else f for f in self._fragments(params)]

  def _per_fragment(self, build, params):
    """(build(fragment tree) for each fragment,): one entry when plain."""
    return tuple(build(fragments_lib.take(params, f))
                 for f in self._fragments(params))

  def _init_fn(self, params, rng):
    m = self.num_replicas
    params = jax.tree.map(jnp.asarray, params)
    stack = lambda tree: jax.tree.map(
        lambda x: jnp.broadcast_to(x, (m,) + x.shape), tree)
    zero = jnp.zeros([], jnp.int32)
    if self.every_step:
      return TrainState(params=params, outer_state=(), replica_params=None,
                        inner_state=self._data_parallel.tx.init(params),
                        comm_state=(jax.vmap(self.codec.init)(stack(params)),),
                        client_state=(), round=zero, rng=rng)
    replica_params = stack(params)
    client = (() if self.outer.client_init is None else
              jax.vmap(self.outer.client_init)(replica_params))
    return TrainState(
        params=params,
        outer_state=self._per_fragment(self.outer.init, params),
        replica_params=replica_params,
        inner_state=jax.vmap(self.inner_opt.init)(replica_params),
        comm_state=self._per_fragment(jax.vmap(self.codec.init),
                                      replica_params),
        client_state=client, round=zero, rng=rng)

  def _state_specs(self) -> TrainState:
    r = P(self.axis_name)
    return TrainState(params=P(), outer_state=P(), replica_params=r,
                      inner_state=P() if self.every_step else r, comm_state=r,
                      client_state=r, round=P(), rng=P())

  def state_shardings(self, abstract_state: TrainState):
    """NamedShardings for every leaf of a state (None without a mesh).

    Replica-stacked leaves are split over the replica axis (their first
    dimension) and, on a 2-D mesh, over the model axis
    (`layout.Layout.model_spec`).
    """
    return self.layout.shardings(self._state_specs(), abstract_state,
                                 abstract_state.params)

  def check(self, params: Params) -> None:
    """Raises the algorithm's ValueError if it cannot run with these params
    and this inner optimizer (`OuterAlgorithm.check`); shapes only."""
    if self.outer.check is None:
      return
    shapes = jax.eval_shape(lambda p: p, params)
    self.outer.check(outer_lib.Setup(
        num_replicas=self.num_replicas, inner_steps=self.inner_steps,
        params=shapes, inner_state=jax.eval_shape(self.inner_opt.init,
                                                  shapes)))

  def abstract_state(self, params: Params) -> TrainState:
    """The state's shapes, dtypes and shardings (an orbax restore target)."""
    self.check(params)
    abstract = jax.eval_shape(self._init_fn, params, jax.random.PRNGKey(0))
    shardings = self.state_shardings(abstract)
    if shardings is None:
      return abstract
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract, shardings)

  def init(self, params: Params, *, seed: int = 0,
           rng: Optional[PRNGKey] = None) -> TrainState:
    """The whole training state: every replica starts at `params`."""
    rng = jax.random.PRNGKey(seed) if rng is None else rng
    if self._init_jit is None:
      self.check(params)
      abstract = jax.eval_shape(self._init_fn, params, rng)
      self._init_jit = jax.jit(self._init_fn,
                               out_shardings=self.state_shardings(abstract))
    return self._init_jit(params, rng)

  @staticmethod
  def eval_params(state: TrainState) -> Params:
    """The model to evaluate (global model, EASGD center, PAPA mean).

    A copy: the next (donating) round consumes `state`, never these arrays.
    """
    return jax.tree.map(jnp.copy, state.params)

  # --------------------------------------------------------------------------
  # Communication accounting (static: from shapes only).

  def messages(self, params: Params) -> List[Tuple[int, Message]]:
    """What one replica sends in a round: (inner step after which, message).

    Asked of the algorithm (`OuterAlgorithm.traffic`) with the codec's byte
    count: once per step for the every-step family, once per fragment sync
    (after its step, `fragments.FragmentSchedule.segments`) otherwise.
    """
    collective = getattr(self.codec, "collective", "all_reduce")
    per = lambda tree: self.outer.traffic(tree, self.codec.payload_bytes,
                                          collective)
    if self.every_step:
      return [(t + 1, msg) for t in range(self.inner_steps)
              for msg in per(params)]
    frags = self._fragments(params)
    out = []
    for _, t1, events in self.schedule.segments(self.inner_steps):
      for kind, p in events:
        if kind == "sync":
          out += [(t1, msg) for msg in per(fragments_lib.take(params,
                                                              frags[p]))]
    return out

  def comm_bytes(self, params: Params) -> Dict[str, float]:
    """Bytes one replica sends per round: payload and ring traffic.

    From the algorithm's messages (`messages`): payload = Σ their bytes as
    encoded; `ring_bytes` = what one replica moves for them
    (`fedjax_lab.comm.collectives.moved_bytes`: 2·(M − 1)/M of the payload
    for an all-reduce, (M − 1)× for sparse messages all-gathered, (n − 1)×
    for a group exchange); `peak_payload_bytes` the most sent after any one
    step (one fragment's under a streaming schedule).
    """
    msgs = self.messages(params)
    payload, moved = collectives.totals([m for _, m in msgs],
                                        self.num_replicas)
    at_step: Dict[int, float] = {}
    for t, m in msgs:
      at_step[t] = at_step.get(t, 0.0) + m.payload_bytes
    return {"payload_bytes": payload, "ring_bytes": moved,
            "peak_payload_bytes": float(max(at_step.values(), default=0.0))}

  # --------------------------------------------------------------------------
  # The round.

  def _round_local(self, state: TrainState, batch, mask, num_examples,
                   num_steps, ops: ReplicaOps, stragglers: bool):
    sync_key, replica_keys, comm_keys = sync_lib.round_keys(state, ops)
    if self.every_step:
      return self._data_parallel.round(state, batch, mask, num_examples,
                                       replica_keys, comm_keys, ops)
    plain = self.schedule.is_plain
    frags = self._fragments(state.params)
    g, reps, inner = state.params, state.replica_params, state.inner_state
    client = state.client_state
    outer_states = list(state.outer_state)
    comm_states = list(state.comm_state)
    loss_sum = count = 0
    aux_sum: Dict[str, Any] = {}
    finite = jnp.ones_like(mask)
    ok_all = mask & (num_steps > 0)
    delta_sq = jnp.zeros([], jnp.float32)
    for t0, t1, events in self.schedule.segments(self.inner_steps):
      chunk = jax.tree.map(lambda x, t0=t0, t1=t1: x[:, t0:t1], batch)
      reps, inner, l_sum, a_sum, c, fin = self.steps.local_phase(
          reps, inner, chunk, num_steps, replica_keys, client, anchor=g,
          outer_state=outer_states[0], start=t0, stragglers=stragglers)
      loss_sum, count = loss_sum + l_sum, count + c
      aux_sum = {k: aux_sum.get(k, 0.0) + v for k, v in a_sum.items()}
      finite = finite & fin
      for kind, p in events:
        idx = frags[p]
        g_p, reps_p = fragments_lib.take(g, idx), fragments_lib.take(reps, idx)
        if kind == "sync":
          finite = finite & rep.all_finite(reps_p)
          ok_all = ok = ok_all & finite
          out = sync_lib.outer_sync(self.outer, self.codec, sync_lib.SyncArgs(
              global_params=g_p, outer_state=outer_states[p],
              replica_params=reps_p,
              replica_start=fragments_lib.take(state.replica_params, idx),
              comm_state=comm_states[p], client_state=client,
              inner_state=rep.select(ok, inner, state.inner_state),
              ok=ok, num_examples=num_examples, num_steps=num_steps,
              comm_keys=comm_keys if plain else jax.vmap(
                  lambda k, p=p: jax.random.fold_in(k, p))(comm_keys),
              key=sync_key if plain else jax.random.fold_in(sync_key, p),
              round=state.round), ops)
          outer_states[p], comm_states[p] = out.outer_state, out.comm_state
          client, inner = out.client_state, out.inner_state
          delta_sq = delta_sq + sum(jnp.sum(jnp.square(d.astype(jnp.float32)))
                                    for d in jax.tree.leaves(out.delta))
          g = fragments_lib.put(g, idx, out.params)
          new_reps_p = out.replica_params
          if self.schedule.overlap_steps == 0:
            if self.schedule.merge_alpha:
              new_reps_p = rep.select(ok, sync_lib.merge(
                  self.schedule.merge_alpha, reps_p, out.params), new_reps_p)
            reps = fragments_lib.put(reps, idx, new_reps_p)
        else:  # A merge τ steps after this fragment's sync.
          merged = sync_lib.merge(self.schedule.merge_alpha, reps_p, g_p)
          if kind == "merge_next":  # Its sync was last round: none in round 0.
            merged = jax.tree.map(lambda a, b: jnp.where(state.round > 0, a, b),
                                  merged, reps_p)
          reps = fragments_lib.put(reps, idx, merged)
    # Replicas that did not count (sat out, diverged) discard their optimizer
    # steps. Under the plain schedule the one sync has already checked them
    # and restarted them from the global model; a streaming schedule's
    # replicas may have trained on after their fragment's sync, so there they
    # are checked again and restarted here (one more pass over the replicas).
    ok = ok_all
    if not plain:
      ok = ok & rep.all_finite(reps)
      reps = rep.select(ok, reps, rep.broadcast_to(g, reps))
    inner = rep.select(ok, inner, state.inner_state)
    if self.outer.reset_inner_state:
      inner = jax.vmap(lambda o, p: rep.fresh_inner_state(self.inner_opt, o, p))(
          inner, reps)
    metrics = sync_lib.round_metrics(ok, mask, finite, loss_sum, aux_sum, count,
                                  delta_sq, ops)
    new_state = state.replace(params=g, outer_state=tuple(outer_states),
                              replica_params=reps, inner_state=inner,
                              comm_state=tuple(comm_states),
                              client_state=client, round=state.round + 1)
    return new_state, metrics

  def _round_fn(self, state, batch, mask, num_examples, num_steps, *,
                stragglers: bool):
    run = lambda state, batch, mask, num_examples, num_steps, ops: (
        self._round_local(state, batch, mask, num_examples, num_steps, ops,
                          stragglers))
    if self.mesh is None or self.num_shards == 1:
      # All replicas in one slot: nothing to map manually (a model axis, if
      # any, is partitioned by XLA from the state's shardings).
      return run(state, batch, mask, num_examples, num_steps,
                 rep.local_ops(self.num_replicas))
    axis = self.axis_name
    r = P(axis)

    def body(state, batch, mask, num_examples, num_steps):
      ops = rep.sharded_ops(self.num_replicas, self.local_replicas, axis)
      return run(state, batch, mask, num_examples, num_steps, ops)

    # Every metric is replicated (per-replica ones are gathered). Manual over
    # the replica axis only: the model axis stays automatic, so XLA keeps each
    # replica's leaves split over it as `state_shardings` lays them out.
    sharded = jax.shard_map(
        body, mesh=self.mesh,
        in_specs=(self._state_specs(), r, r, r, r),
        out_specs=(self._state_specs(), P()),
        axis_names=frozenset({axis}))
    return sharded(state, batch, mask, num_examples, num_steps)

  def _build_round(self, state):
    """The jitted round; with a mesh, its state keeps one sharding throughout
    (an output sharding that differs from the input's would recompile the
    second round)."""
    kwargs = {}
    if self.mesh is not None:
      shardings = self.state_shardings(state)
      kwargs = dict(out_shardings=(shardings, NamedSharding(self.mesh, P())))
    return jax.jit(self._round_fn, static_argnames=("stragglers",),
                   donate_argnums=(0,) if self._donate else (), **kwargs)

  # --------------------------------------------------------------------------
  # Host-side entry point.

  def round(self, state: TrainState, batch: Batch, *,
            mask: Optional[Any] = None, num_examples: Optional[Any] = None,
            num_steps: Optional[Any] = None) -> Tuple[TrainState, Dict[str, Any]]:
    """Runs one round (one jitted call).

    Args:
      state: the current state (consumed when `donate`).
      batch: a pytree whose leaves have leading axes [M, H, B, ...] (in a
        multi-process run, this process's replicas only).
      mask: bool [M], which replicas take part this round (default all).
      num_examples: [M] examples each replica processed (the weights n_i;
        default num_steps_i × B).
      num_steps: int [M] in [0, H], inner steps each replica actually takes
        (stragglers; default H). Ignored by the data-parallel family.

    Returns:
      (new state, metrics): device scalars `loss` (NaN when no replica
      counted), `outer_grad_norm`, `participants`, `nonfinite_replicas`,
      `inner/<aux>`, per-replica `replica_loss` [M], and host numbers
      `payload_bytes`, `ring_bytes` and `peak_payload_bytes` (per
      participating replica, this round).
    """
    args, stragglers = self._round_args(batch, mask, num_examples, num_steps)
    if self._round_jit is None:
      self._round_jit = self._build_round(state)
    state, metrics = self._round_jit(state, *args, stragglers=stragglers)
    if self._round_comm_bytes is None:
      self._round_comm_bytes = self.comm_bytes(state.params)
    metrics = {**metrics, **self._round_comm_bytes}
    return state, metrics

  def lower_round(self, state: TrainState, batch: Batch, **round_kwargs):
    """The round's program for these inputs, lowered (not run): `.compile()`
    it for `.memory_analysis()` or `.cost_analysis()`."""
    args, stragglers = self._round_args(batch, **round_kwargs)
    if self._round_jit is None:
      self._round_jit = self._build_round(state)
    return self._round_jit.lower(state, *args, stragglers=stragglers)

  def _round_args(self, batch, mask=None, num_examples=None, num_steps=None):
    """Checks a round's inputs and places them on the mesh."""
    m, h = self.num_replicas, self.inner_steps
    leaves = jax.tree.leaves(batch)
    if not leaves:
      raise ValueError("batch has no arrays")
    lead = leaves[0].shape
    local_m = lead[0]
    for x in leaves:
      if x.ndim < 3 or x.shape[1] != h or x.shape[0] != local_m:
        raise ValueError(
            f"batch leaves must have leading axes [num_replicas={m}, "
            f"inner_steps={h}, batch_size, ...], got {tuple(x.shape)}")
    if local_m != m and (self.mesh is None or jax.process_count() == 1):
      raise ValueError(f"batch leading axis must be num_replicas={m}, "
                       f"got {local_m}")
    mask = np.ones([m], bool) if mask is None else np.asarray(mask, bool)
    num_steps = (np.full([m], h, np.int32) if num_steps is None else
                 np.asarray(num_steps, np.int32))
    if mask.shape != (m,) or num_steps.shape != (m,):
      raise ValueError(f"mask and num_steps must have shape [{m}]")
    if np.any(num_steps < 0) or np.any(num_steps > h):
      raise ValueError(f"num_steps must be in [0, inner_steps={h}]")
    if num_examples is None:
      num_examples = num_steps.astype(np.float32) * lead[2]
    num_examples = np.asarray(num_examples, np.float32)
    if num_examples.shape != (m,) or np.any(num_examples < 0):
      raise ValueError(f"num_examples must be >= 0 with shape [{m}]")
    # Paying for skipped steps only in rounds that have stragglers: a second
    # program, compiled once, the first time one shows up.
    stragglers = bool(np.any(num_steps < h)) and not self.every_step
    put = lambda x: self.layout.put_replica_axis(x, self.num_replicas)
    if self.mesh is None:
      batch = jax.tree.map(host_aligned, batch)
    return (jax.tree.map(put, batch), put(mask), put(num_examples),
            put(num_steps)), stragglers

  def compiled_rounds(self) -> int:
    """How many distinct round programs have been compiled (1 after warm-up;
    2 once a round with stragglers has run)."""
    if self._round_jit is None:
      return 0
    return self._round_jit._cache_size()  # pylint: disable=protected-access


class StreamingEngine(Engine):
  """An `Engine` with a Streaming DiLoCo schedule (fragments.py).

  Example:
    engine = StreamingEngine(loss_fn, inner_opt=optax.adamw(4e-4),
                             outer=fedjax_lab.outer.get("diloco"),
                             num_replicas=8, inner_steps=100,
                             num_fragments=4, overlap_steps=5)
  """

  def __init__(self, loss_fn, *, num_fragments: int, overlap_steps: int = 0,
               merge_alpha: float = 0.0, fragment_fn=None, **engine_kwargs):
    """Args: as `fragments.FragmentSchedule`, plus everything `Engine` takes."""
    super().__init__(loss_fn, fragments=fragments_lib.FragmentSchedule(
        num_fragments, overlap_steps, merge_alpha, fragment_fn),
                     **engine_kwargs)
