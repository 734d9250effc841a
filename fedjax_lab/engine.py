"""The replica engine: one jitted call runs a whole round for any algorithm.

A round: each of M replicas takes H inner optimizer steps on its own batches
(`lax.scan` over steps; the replicas of one device run all at once under
`jax.vmap` or one after another under `lax.map`; `jax.shard_map` spreads them
over a named mesh axis), then the replicas' outer gradients Δ_i = θ − θ_i (θ the
global model at the round's start, see `fedjax_lab.outer.base`) are compressed,
averaged with weights w_i = n_i / Σ_j n_j (a `psum` over the mesh axis) and
handed to the outer algorithm's `sync`. The data-parallel family (`ddp`,
`demo`) instead averages something every step.

Streaming DiLoCo is not a second loop: a `FragmentSchedule` (fragments.py) cuts
the round into segments and syncs each fragment of the parameters at its own
step; the default schedule (one fragment, synced at the round's end) is plain
DiLoCo/FedAvg/... . Every rule (participation, non-finite replicas, inner-state
reset, compression, byte counts) is written once and holds for both.

What differs between algorithms is data (an `OuterAlgorithm`), not loops:
this module holds the only training loop.

Per-replica arrays carry a leading replica axis [M, ...]; batches have leading
axes [M, H, B, ...].
"""

from typing import Any, Dict, List, Optional, Tuple, Union

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fedjax_lab import fragments as fragments_lib
from fedjax_lab import outer as outer_lib
from fedjax_lab import replicas as rep
from fedjax_lab.comm import compress as compress_lib
from fedjax_lab.outer.base import OuterAlgorithm, ReplicaOps, SyncInputs
from fedjax_lab.typing import Batch, LossFn, Params, PRNGKey

DEFAULT_AXIS = "replicas"
MODEL_AXIS = "model"
# Leaves with fewer elements stay replicated over the model axis (splitting
# them saves little memory and costs a collective).
DEFAULT_MIN_SHARD_SIZE = 2**14
REPLICA_MODES = ("auto", "vmap", "sequential")


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue, as one pytree (checkpointable).

  Attributes:
    params: the model to evaluate: the global model (the center for EASGD, the
      population mean for PAPA; the shared model for the data-parallel family).
    outer_state: the outer optimizer's state (replicated; a tuple with one
      entry per fragment under a streaming schedule).
    replica_params: per-replica params [M, ...] (None for data-parallel).
    inner_state: per-replica inner optimizer states [M, ...] (the one shared
      state for data-parallel).
    comm_state: per-replica compressor state [M, ...] (error feedback; a
      tuple per fragment under a streaming schedule).
    client_state: per-replica algorithm state [M, ...] (SCAFFOLD's c_i), or ().
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


def replica_mesh(num_devices: Optional[int] = None, *,
                 model_devices: int = 1, axis_name: str = DEFAULT_AXIS,
                 model_axis: str = MODEL_AXIS, devices=None) -> jax.sharding.Mesh:
  """A mesh over `devices` (default: all devices of all processes).

  Args:
    num_devices: devices to use (default all), the first ones.
    model_devices: devices each replica's model is sharded over. 1 gives a
      1-D mesh (`axis_name`,); more gives a 2-D mesh (`axis_name`,
      `model_axis`) of shape [num_devices / model_devices, model_devices],
      the model axis innermost (neighbouring devices share a replica).
    axis_name: the replica axis.
    model_axis: the model axis (2-D meshes only).
    devices: the devices to lay out (default `jax.devices()`).
  """
  devices = list(jax.devices() if devices is None else devices)
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f"num_devices must be in [1, {len(devices)}], "
                       f"got {num_devices}")
    devices = devices[:num_devices]
  if (not isinstance(model_devices, (int, np.integer)) or model_devices < 1 or
      len(devices) % model_devices):
    raise ValueError(f"model_devices must be an integer >= 1 dividing the "
                     f"{len(devices)} devices, got {model_devices!r}")
  if model_devices == 1:
    return jax.sharding.Mesh(np.asarray(devices), (axis_name,),
                             axis_types=(jax.sharding.AxisType.Auto,))
  grid = np.asarray(devices).reshape(-1, model_devices)
  return jax.sharding.Mesh(grid, (axis_name, model_axis),
                           axis_types=(jax.sharding.AxisType.Auto,) * 2)


def default_replica_mode() -> str:
  """'sequential' on CPU, where many small vmapped matmuls run slowly
  (bench/round_throughput.py), 'vmap' on accelerators."""
  return "sequential" if jax.default_backend() == "cpu" else "vmap"


def _split_loss(out) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  if isinstance(out, tuple):
    loss, aux = out
    return loss, dict(aux)
  return out, {}


def _check_int(field: str, value) -> int:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
    raise ValueError(f"{field} must be an integer >= 1, got {value!r}")
  return int(value)


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
        (`default_replica_mode`). Both give the same numbers.
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
    if replica_mode not in REPLICA_MODES:
      raise ValueError(f"replica_mode must be one of {', '.join(REPLICA_MODES)}, "
                       f"got {replica_mode!r}")
    self.loss_fn = loss_fn
    self.inner_opt = inner_opt
    self.outer = outer
    self.num_replicas = _check_int("num_replicas", num_replicas)
    self.inner_steps = _check_int("inner_steps", inner_steps)
    if outer.step_compressor is not None and not compress_lib.is_none(
        compressor):
      raise ValueError(
          f"compressor: {outer.name!r} sends its own every-step messages; a "
          f"compressor for outer gradients would be ignored (use 'none')")
    self.compressor = compressor or compress_lib.none()
    self.replica_mode = (default_replica_mode() if replica_mode == "auto"
                         else replica_mode)
    self.schedule = (fragments or fragments_lib.FragmentSchedule()).validate(
        self.inner_steps)
    if not self.schedule.is_plain and (
        outer.data_parallel or not outer.restarts_replicas or
        outer.client_init is not None or outer.correct_grad is not None):
      raise ValueError(
          f"outer: a streaming schedule merges replicas toward the global "
          f"model fragment by fragment; {outer.name!r} is not supported (it "
          f"needs a rule whose replicas restart from the global model and "
          f"keep no per-replica state, e.g. 'diloco')")
    self.mesh = mesh
    self.model_axis = None
    self.model_shards = 1
    self.param_specs = param_specs
    self.min_shard_size = int(min_shard_size)
    if mesh is not None:
      self.axis_name = axis_name or mesh.axis_names[0]
      if self.axis_name not in mesh.axis_names:
        raise ValueError(f"axis_name {self.axis_name!r} is not an axis of the "
                         f"mesh {mesh.axis_names}")
      others = [a for a in mesh.axis_names if a != self.axis_name]
      if model_axis is None and len(others) == 1:
        model_axis = others[0]
      if model_axis is not None and model_axis not in others:
        raise ValueError(f"model_axis {model_axis!r} must be a mesh axis other "
                         f"than {self.axis_name!r}; the mesh has "
                         f"{mesh.axis_names}")
      if len(others) > (model_axis is not None):
        raise ValueError(f"mesh axes {mesh.axis_names}: only a replica axis and "
                         "one model axis are supported")
      self.model_axis = model_axis
      self.model_shards = mesh.shape[model_axis] if model_axis else 1
      self.num_shards = mesh.shape[self.axis_name]
      if self.num_replicas % self.num_shards:
        raise ValueError(
            f"num_replicas ({self.num_replicas}) must be a multiple of the "
            f"number of devices on mesh axis {self.axis_name!r} "
            f"({self.num_shards})")
    else:
      self.axis_name = axis_name or DEFAULT_AXIS
      self.num_shards = 1
    self.local_replicas = self.num_replicas // self.num_shards
    self._donate = donate
    self._round_jit = None  # Built at the first round (needs the shardings).
    self._init_jit = None
    self._round_comm_bytes = None  # Static per engine: shapes never change.

  # --------------------------------------------------------------------------
  # Which tensors the algorithm steps with (the data-parallel family may
  # bring its own compressor and update rule).

  @property
  def _dp_compressor(self) -> compress_lib.Compressor:
    return self.outer.step_compressor or self.compressor

  @property
  def _dp_tx(self) -> optax.GradientTransformation:
    return self.outer.step_tx or self.inner_opt

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
    """build(fragment tree) for each fragment; a tuple only when streaming."""
    out = tuple(build(fragments_lib.take(params, f))
                for f in self._fragments(params))
    return out[0] if self.schedule.is_plain else out

  def _init_fn(self, params, rng):
    m = self.num_replicas
    params = jax.tree.map(jnp.asarray, params)
    stack = lambda tree: jax.tree.map(
        lambda x: jnp.broadcast_to(x, (m,) + x.shape), tree)
    zero = jnp.zeros([], jnp.int32)
    if self.outer.data_parallel:
      comp = self._dp_compressor
      return TrainState(params=params, outer_state=(), replica_params=None,
                        inner_state=self._dp_tx.init(params),
                        comm_state=jax.vmap(comp.init)(stack(params)),
                        client_state=(), round=zero, rng=rng)
    replica_params = stack(params)
    client = (() if self.outer.client_init is None else
              jax.vmap(self.outer.client_init)(replica_params))
    return TrainState(
        params=params,
        outer_state=self._per_fragment(self.outer.init, params),
        replica_params=replica_params,
        inner_state=jax.vmap(self.inner_opt.init)(replica_params),
        comm_state=self._per_fragment(jax.vmap(self.compressor.init),
                                      replica_params),
        client_state=client, round=zero, rng=rng)

  def _state_specs(self) -> TrainState:
    r = P(self.axis_name)
    dp = self.outer.data_parallel
    return TrainState(params=P(), outer_state=P(), replica_params=r,
                      inner_state=P() if dp else r, comm_state=r,
                      client_state=r, round=P(), rng=P())

  def model_spec(self, shape, by_shape=None) -> Tuple[Optional[str], ...]:
    """How a leaf of this shape is split over the model axis (per dimension)."""
    shape = tuple(shape)
    if by_shape and shape in by_shape:
      return by_shape[shape]
    n = self.model_shards
    spec = [None] * len(shape)
    if n > 1 and int(np.prod(shape, dtype=np.int64)) >= self.min_shard_size:
      dims = [d for d in range(len(shape)) if shape[d] % n == 0]
      if dims:
        spec[max(dims, key=lambda d: (shape[d], -d))] = self.model_axis
    return tuple(spec)

  def _specs_by_shape(self, params):
    """{shape: spec} from the user's param_specs (first param of a shape)."""
    if self.param_specs is None:
      return None
    out = {}
    specs = jax.tree.leaves(self.param_specs,
                            is_leaf=lambda x: isinstance(x, P))
    leaves = jax.tree.leaves(params)
    if len(specs) != len(leaves):
      raise ValueError(f"param_specs must have one PartitionSpec per param "
                       f"leaf ({len(leaves)}), got {len(specs)}")
    for leaf, spec in zip(leaves, specs):
      spec = tuple(spec) + (None,) * (len(leaf.shape) - len(tuple(spec)))
      bad = [a for a in spec if a not in (None, self.model_axis)]
      if bad or len(spec) != len(leaf.shape):
        raise ValueError(f"param_specs: {spec} for a leaf of shape "
                         f"{tuple(leaf.shape)} may only name the model axis "
                         f"{self.model_axis!r}, once per dimension")
      out.setdefault(tuple(leaf.shape), spec)
    return out

  def state_shardings(self, abstract_state: TrainState):
    """NamedShardings for every leaf of a state (None without a mesh).

    Replica-stacked leaves are split over the replica axis (their first
    dimension) and, on a 2-D mesh, over the model axis (`model_spec`).
    """
    if self.mesh is None:
      return None
    by_shape = self._specs_by_shape(abstract_state.params)

    def shard(prefix, leaf):
      stacked = prefix == P(self.axis_name)
      shape = tuple(leaf.shape)
      rest = self.model_spec(shape[1:] if stacked else shape, by_shape)
      spec = P(self.axis_name, *rest) if stacked else P(*rest)
      return NamedSharding(self.mesh, spec)

    return jax.tree.map(
        lambda prefix, sub: jax.tree.map(lambda x: shard(prefix, x), sub),
        self._state_specs(), abstract_state,
        is_leaf=lambda x: isinstance(x, P))

  def abstract_state(self, params: Params) -> TrainState:
    """The state's shapes, dtypes and shardings (an orbax restore target)."""
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

  def comm_bytes(self, params: Params) -> Dict[str, float]:
    """Bytes one replica sends per round: payload and ring all-reduce traffic.

    Payload = Σ numel × bits / 8 as the compressor encodes it, times the
    algorithm's `comm_multiplier` (SCAFFOLD sends Δy and Δc); the
    data-parallel family sends every one of its H steps. `ring_bytes` is what
    one replica moves on a ring: 2·(M − 1)/M of the payload for an all-reduce
    of dense values; (M − 1)× the payload for sparse messages that must be
    all-gathered (`Compressor.collective == 'all_gather'`: DeMo, top-k).
    `peak_payload_bytes` is the largest single sync (one fragment's under a
    streaming schedule).
    """
    if self.outer.data_parallel:
      per_sync = [self._dp_compressor.payload_bytes(params)] * self.inner_steps
    else:
      per_sync = [self.compressor.payload_bytes(fragments_lib.take(params, f))
                  * self.outer.comm_multiplier
                  for f in self._fragments(params)]
    payload = float(sum(per_sync))
    m = self.num_replicas
    comp = self._dp_compressor if self.outer.data_parallel else self.compressor
    gather = getattr(comp, "collective", "all_reduce") == "all_gather"
    return {"payload_bytes": payload,
            "ring_bytes": payload * ((m - 1) if gather else 2 * (m - 1) / m),
            "peak_payload_bytes": float(max(per_sync))}

  # --------------------------------------------------------------------------
  # Local steps.

  def _loss_and_grad(self, params, batch, rng, anchor, client=(),
                     outer_state=()):
    def total(p):
      loss, aux = _split_loss(self.loss_fn(p, batch, rng))
      full = loss
      if self.outer.penalty is not None:
        full = loss + self.outer.penalty(p, anchor)
      return full, (loss, aux)

    (_, (loss, aux)), grads = jax.value_and_grad(total, has_aux=True)(params)
    if self.outer.correct_grad is not None:
      grads = self.outer.correct_grad(grads, client, outer_state)
    return loss, aux, grads

  def _run_replica(self, params, opt_state, batch, num_steps, key, client, *,
                   anchor, outer_state, start: int, stragglers: bool):
    """Inner steps of one replica over `batch`'s leading (step) axis.

    Steps are numbered from `start` (for the per-step keys); with
    `stragglers`, steps numbered ≥ num_steps are skipped (a branch when
    replicas run in sequence, a select under vmap). Returns the new params
    and state, the sums of the loss and aux metrics over the steps taken,
    their count, and whether every loss taken was finite.
    """

    def take_step(p, o, b, t):
      loss, aux, grads = self._loss_and_grad(
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

  def _local_phase(self, replica_params, inner_state, batch, num_steps,
                   replica_keys, client, *, anchor, outer_state, start=0,
                   stragglers=True):
    """`_run_replica` over the local block of replicas (vmap or in turn)."""

    def one(xs):
      return self._run_replica(*xs, anchor=anchor, outer_state=outer_state,
                               start=start, stragglers=stragglers)

    xs = (replica_params, inner_state, batch, num_steps, replica_keys, client)
    if self.replica_mode == "vmap":
      return jax.vmap(one)(xs)
    return jax.lax.map(one, xs)

  # --------------------------------------------------------------------------
  # The sync.

  def _weights(self, ok, num_examples, ops):
    """w_i = n_i / Σ_j n_j over the replicas that count; and Σ_j n_j > 0."""
    raw = jnp.where(ok, num_examples, 0.0).astype(jnp.float32)
    total = ops.sum(raw)
    return raw / jnp.maximum(total, 1e-30), total > 0

  def _sync(self, g, outer_state, new_p, comm_state, client, ok, num_examples,
            num_steps, comm_keys, sync_key, ops):
    """Δ_i, compression, the weighted average and `outer.sync`.

    Works on any tree shaped like the params (the whole model or one
    fragment of it). Replicas that are not `ok` (sat out or diverged) count
    for nothing and restart from the new global model.

    Returns:
      (new global, new replica params, outer state, compressor state, client
      state, Δ).
    """
    deltas = jax.tree.map(lambda g_, p: g_[None] - p, g, new_p)
    weights, anyone = self._weights(ok, num_examples, ops)
    # Zero (not multiply) what must not count: 0 × NaN is NaN.
    deltas = rep.select(ok, deltas, jax.tree.map(jnp.zeros_like, deltas))
    sent, new_comm = jax.vmap(self.compressor.compress)(deltas, comm_state,
                                                        comm_keys)
    comm_state = rep.select(ok, new_comm, comm_state)
    delta = ops.weighted_sum(sent, weights)
    inputs = SyncInputs(global_params=g, replica_params=new_p, deltas=sent,
                        delta=delta, weights=weights, key=sync_key,
                        client_state=client, num_steps=num_steps)
    result = self.outer.sync(inputs, outer_state, ops)
    new_g, new_replicas, new_outer = result[:3]
    if len(result) > 3:
      client = rep.select(ok, result[3], client)
    keep_if_nobody = lambda new, old: jax.tree.map(
        lambda a, b: jnp.where(anyone, a, b), new, old)
    new_g = keep_if_nobody(new_g, g)
    outer_state = keep_if_nobody(new_outer, outer_state)
    restart = rep.broadcast_to(new_g, new_replicas)
    return (new_g, rep.select(ok, new_replicas, restart), outer_state,
            comm_state, client, delta)

  def _merge(self, local, global_):
    """Streaming merge θ_i ← α·θ_i + (1 − α)·θ; a diverged replica takes θ."""
    a = self.schedule.merge_alpha
    def merge(p, g):
      out = a * p + (1 - a) * g[None] if a else jnp.broadcast_to(g, p.shape)
      return out.astype(p.dtype)
    merged = jax.tree.map(merge, local, global_)
    return rep.select(rep.all_finite(local), merged,
                      rep.broadcast_to(global_, local))

  # --------------------------------------------------------------------------
  # The round.

  def _round_keys(self, state, ops):
    round_key = jax.random.fold_in(state.rng, state.round)
    sync_key, step_key = jax.random.split(round_key)
    replica_keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(ops.index)
    comm_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2**31 - 1))(
        replica_keys)
    return sync_key, replica_keys, comm_keys

  def _round_metrics(self, ok, mask, finite, loss_sum, aux_sum, count,
                     delta_sq, ops):
    n_ok = ops.sum(ok.astype(jnp.float32))
    denom = jnp.maximum(count, 1)
    loss_i = loss_sum / denom
    # Mean over the replicas that counted; NaN (not a perfect 0) when none did.
    mean_ok = lambda v: jnp.where(
        n_ok > 0, ops.sum(jnp.where(ok, v, 0.0)) / jnp.maximum(n_ok, 1),
        jnp.nan)
    metrics = {
        "loss": mean_ok(loss_i),
        # Gathered: M scalars, so every process can read every replica's loss.
        "replica_loss": ops.gather(loss_i),
        "outer_grad_norm": jnp.sqrt(delta_sq),
        "participants": n_ok,
        "nonfinite_replicas": ops.sum((mask & ~finite).astype(jnp.float32)),
    }
    for k, v in aux_sum.items():
      metrics[f"inner/{k}"] = mean_ok(v / denom)
    return metrics

  def _round_local(self, state: TrainState, batch, mask, num_examples,
                   num_steps, ops: ReplicaOps, stragglers: bool):
    sync_key, replica_keys, comm_keys = self._round_keys(state, ops)
    if self.outer.data_parallel:
      return self._dp_round_local(state, batch, mask, num_examples,
                                  replica_keys, comm_keys, ops)
    plain = self.schedule.is_plain
    frags = self._fragments(state.params)
    as_list = lambda x: [x] if plain else list(x)
    as_state = lambda xs: xs[0] if plain else tuple(xs)
    g, reps, inner = state.params, state.replica_params, state.inner_state
    client = state.client_state
    outer_states = as_list(state.outer_state)
    comm_states = as_list(state.comm_state)
    loss_sum = count = 0
    aux_sum: Dict[str, Any] = {}
    finite = jnp.ones_like(mask)
    ok_all = mask & (num_steps > 0)
    delta_sq = jnp.zeros([], jnp.float32)
    for t0, t1, events in self.schedule.segments(self.inner_steps):
      chunk = jax.tree.map(lambda x, t0=t0, t1=t1: x[:, t0:t1], batch)
      reps, inner, l_sum, a_sum, c, fin = self._local_phase(
          reps, inner, chunk, num_steps, replica_keys, client, anchor=g,
          outer_state=state.outer_state, start=t0, stragglers=stragglers)
      loss_sum, count = loss_sum + l_sum, count + c
      aux_sum = {k: aux_sum.get(k, 0.0) + v for k, v in a_sum.items()}
      finite = finite & fin
      for kind, p in events:
        idx = frags[p]
        g_p, reps_p = fragments_lib.take(g, idx), fragments_lib.take(reps, idx)
        if kind == "sync":
          finite = finite & rep.all_finite(reps_p)
          ok_all = ok = ok_all & finite
          (new_g_p, new_reps_p, outer_states[p], comm_states[p], client,
           delta) = self._sync(
               g_p, outer_states[p], reps_p, comm_states[p], client, ok,
               num_examples, num_steps,
               comm_keys if plain else jax.vmap(
                   lambda k, p=p: jax.random.fold_in(k, p))(comm_keys),
               sync_key if plain else jax.random.fold_in(sync_key, p), ops)
          delta_sq = delta_sq + sum(jnp.sum(jnp.square(d.astype(jnp.float32)))
                                    for d in jax.tree.leaves(delta))
          g = fragments_lib.put(g, idx, new_g_p)
          if self.schedule.overlap_steps == 0:
            if self.schedule.merge_alpha:
              new_reps_p = rep.select(ok, self._merge(reps_p, new_g_p),
                                      new_reps_p)
            reps = fragments_lib.put(reps, idx, new_reps_p)
        else:  # A merge τ steps after this fragment's sync.
          merged = self._merge(reps_p, g_p)
          if kind == "merge_next":  # Its sync was last round: none in round 0.
            merged = jax.tree.map(lambda a, b: jnp.where(state.round > 0, a, b),
                                  merged, reps_p)
          reps = fragments_lib.put(reps, idx, merged)
    # Replicas that did not count (sat out, diverged) restart from the global
    # model and discard their optimizer steps; under the plain schedule the
    # sync has already restarted them, so this changes nothing there.
    ok = ok_all & rep.all_finite(reps)
    reps = rep.select(ok, reps, rep.broadcast_to(g, reps))
    inner = rep.select(ok, inner, state.inner_state)
    if self.outer.reset_inner_state:
      inner = jax.vmap(lambda o, p: rep.fresh_inner_state(self.inner_opt, o, p))(
          inner, reps)
    metrics = self._round_metrics(ok, mask, finite, loss_sum, aux_sum, count,
                                  delta_sq, ops)
    new_state = state.replace(params=g, outer_state=as_state(outer_states),
                              replica_params=reps, inner_state=inner,
                              comm_state=as_state(comm_states),
                              client_state=client, round=state.round + 1)
    return new_state, metrics

  def _dp_per_replica_grad(self, p, b, keys, mask, num_examples, cs,
                           step_keys, ops):
    """Per-replica gradients, each checked, compressed and aggregated once."""
    comp = self._dp_compressor
    aggregate = getattr(comp, "aggregate", None)  # Default: weighted mean.
    p_local = ops.varying(p)
    loss_i, aux_i, grads_i = jax.vmap(
        self._loss_and_grad, in_axes=(None, 0, 0, None))(p_local, b, keys,
                                                          p_local)
    ok = mask & jnp.isfinite(loss_i) & jax.vmap(rep.tree_finite)(grads_i)
    weights, anyone = self._weights(ok, num_examples, ops)
    grads_i = rep.select(ok, grads_i, jax.tree.map(jnp.zeros_like, grads_i))
    sent, cs_new = jax.vmap(comp.compress)(grads_i, cs, step_keys)
    cs = rep.select(ok, cs_new, cs)
    grad = (ops.weighted_sum(sent, weights) if aggregate is None else
            aggregate(sent, weights, ops))
    return grad, cs, loss_i, aux_i, ok, anyone

  def _dp_summed_grad(self, p, b, keys, mask, num_examples, cs, step_keys,
                      ops):
    """Uncompressed: Σ_i w_i ∇ℓ_i as ONE backward pass (a vjp with the weights
    as cotangent), never materialising M gradients. Where a replica's
    gradient is non-finite, the sum is too: then the per-replica path runs
    and drops that replica."""
    p_local = ops.varying(p)

    def losses(q):
      out = jax.vmap(lambda bb, kk: _split_loss(self.loss_fn(q, bb, kk)))(
          b, keys)
      return out[0], out

    loss_i, pullback, (_, aux_i) = jax.vjp(losses, p_local, has_aux=True)
    ok = mask & jnp.isfinite(loss_i)
    weights, anyone = self._weights(ok, num_examples, ops)
    (grad,) = pullback(weights.astype(loss_i.dtype))
    grad = ops.across(grad)
    return jax.lax.cond(
        rep.tree_finite(grad),
        lambda: (grad, cs, loss_i, aux_i, ok, anyone),
        lambda: self._dp_per_replica_grad(p, b, keys, mask, num_examples, cs,
                                          step_keys, ops))

  def _dp_round_local(self, state, batch, mask, num_examples, replica_keys,
                      comm_keys, ops):
    """Data-parallel family: every step, (compressed) gradients are averaged."""
    batch_t = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), batch)  # [H, m, ...]
    tx = self._dp_tx
    summed = (compress_lib.is_none(self._dp_compressor) and
              self.outer.correct_grad is None and self.outer.penalty is None)
    grad_fn = self._dp_summed_grad if summed else self._dp_per_replica_grad

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

    steps = jnp.arange(self.inner_steps, dtype=jnp.int32)
    (params, opt_state, comm_state), (losses, aux, oks, gnorms) = jax.lax.scan(
        step, (state.params, state.inner_state, state.comm_state),
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
                         comm_state=comm_state, round=state.round + 1), metrics

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

  def _put_replica_axis(self, x):
    """Places an array with a leading replica axis on the mesh."""
    if self.mesh is None:
      return x
    sharding = NamedSharding(self.mesh, P(self.axis_name))
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    x = np.asarray(x)
    if x.shape[0] == self.num_replicas:
      return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
    # A process's own replicas only (multi-process runs).
    return jax.make_array_from_process_local_data(
        sharding, x, (self.num_replicas,) + x.shape[1:])

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
    stragglers = bool(np.any(num_steps < h)) and not self.outer.data_parallel
    put = self._put_replica_axis
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
