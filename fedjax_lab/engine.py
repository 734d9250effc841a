"""The replica engine: one jitted call runs a whole round for any algorithm.

A round: each of M replicas takes H inner optimizer steps on its own batches
(`lax.scan` over steps, `jax.vmap` over the replicas of one device, and
`jax.shard_map` over a named mesh axis when the replicas span devices), then
the replicas' outer gradients Δ_i = θ − θ_i (θ the global model at the round's
start, see `fedjax_lab.outer.base`) are compressed, averaged with weights
w_i = n_i / Σ_j n_j (a `psum` over the mesh axis) and handed to the outer
algorithm's `sync`. The `ddp` baseline instead averages gradients every step.

What differs between algorithms is data (an `OuterAlgorithm`), not loops:
this module holds the only training loop.

Per-replica arrays carry a leading replica axis [M, ...]; batches have leading
axes [M, H, B, ...].
"""

import functools
from typing import Any, Dict, Optional, Tuple, Union

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fedjax_lab import outer as outer_lib
from fedjax_lab.comm import compress as compress_lib
from fedjax_lab.outer.base import OuterAlgorithm, ReplicaOps, SyncInputs
from fedjax_lab.typing import Batch, LossFn, Params, PRNGKey

DEFAULT_AXIS = "replicas"


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue, as one pytree (checkpointable).

  Attributes:
    params: the model to evaluate: the global model (the center for EASGD, the
      population mean for PAPA; the shared model for ddp).
    outer_state: the outer optimizer's state (replicated).
    replica_params: per-replica params [M, ...] (None for ddp).
    inner_state: per-replica inner optimizer states [M, ...] (the one shared
      state for ddp).
    comm_state: per-replica compressor state [M, ...] (error feedback).
    round: int32 scalar, rounds completed.
    rng: uint32[2] raw PRNG key; per-round/replica/step keys are folded in.
  """
  params: Params
  outer_state: Any
  replica_params: Any
  inner_state: Any
  comm_state: Any
  round: jax.Array
  rng: jax.Array


def replica_mesh(num_devices: Optional[int] = None, *,
                 axis_name: str = DEFAULT_AXIS, devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes)."""
  devices = list(jax.devices() if devices is None else devices)
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f"num_devices must be in [1, {len(devices)}], "
                       f"got {num_devices}")
    devices = devices[:num_devices]
  return jax.sharding.Mesh(np.asarray(devices), (axis_name,),
                           axis_types=(jax.sharding.AxisType.Auto,))


def _split_loss(out) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  if isinstance(out, tuple):
    loss, aux = out
    return loss, dict(aux)
  return out, {}


def _select(pred: jax.Array, on_true, on_false):
  """where(pred[i], a[i], b[i]) over trees with a leading replica axis."""

  def sel(a, b):
    return jnp.where(pred.reshape(pred.shape + (1,) * (a.ndim - pred.ndim)),
                     a, b)

  return jax.tree.map(sel, on_true, on_false)


def _all_finite(tree) -> jax.Array:
  """Per-replica: every element of every leaf finite. Leaves are [m, ...]."""
  flags = [jnp.all(jnp.isfinite(x).reshape(x.shape[0], -1), axis=1)
           for x in jax.tree.leaves(tree)]
  return functools.reduce(jnp.logical_and, flags)


def _fresh_inner_state(inner_opt, old_state, params):
  """inner_opt.init(params), but keeping learning-rate schedule counters.

  Resetting clears the optimizer's statistics (moments, bias-correction
  counts) as a stateless client would; the step counters of
  `optax.scale_by_schedule` are kept so schedules follow the global step
  instead of restarting every round.
  """
  fresh = inner_opt.init(params)
  is_sched = lambda x: isinstance(x, optax.ScaleByScheduleState)
  return jax.tree.map(lambda f, o: o if is_sched(f) else f, fresh, old_state,
                      is_leaf=is_sched)


def _local_ops(num_replicas: int) -> ReplicaOps:
  def weighted_sum(tree, w):
    # Elementwise multiply-and-sum rather than a dot: a dot would run at
    # reduced precision on TPU by default.
    return jax.tree.map(
        lambda x: jnp.sum(w.reshape((-1,) + (1,) * (x.ndim - 1)).astype(
            jnp.float32) * x.astype(jnp.float32), axis=0).astype(x.dtype), tree)

  return ReplicaOps(num_replicas=num_replicas,
                    index=jnp.arange(num_replicas, dtype=jnp.int32),
                    weighted_sum=weighted_sum, sum=jnp.sum,
                    gather=lambda tree: tree)


def _sharded_ops(num_replicas: int, local: int, axis: str) -> ReplicaOps:
  local_ops = _local_ops(local)

  def weighted_sum(tree, w):
    return jax.lax.psum(local_ops.weighted_sum(tree, w), axis)

  index = (jax.lax.axis_index(axis) * local +
           jnp.arange(local, dtype=jnp.int32)).astype(jnp.int32)
  return ReplicaOps(
      num_replicas=num_replicas, index=index, weighted_sum=weighted_sum,
      sum=lambda x: jax.lax.psum(jnp.sum(x), axis),
      # A psum of each device's block placed in a zero array: unlike
      # all_gather, its result is known to be replicated (metrics need that).
      gather=lambda tree: jax.tree.map(
          lambda x: jax.lax.psum(
              jnp.zeros((num_replicas,) + x.shape[1:], x.dtype)
              .at[index].set(x), axis), tree),
      varying=lambda tree: jax.lax.pcast(tree, axis, to="varying"))


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
               donate: bool = True):
    """Builds the engine.

    Args:
      loss_fn: (params, batch, rng) -> loss or (loss, metrics dict), for ONE
        replica's batch of one step.
      inner_opt: the optax optimizer every replica runs locally.
      outer: an `OuterAlgorithm` or a registry name (default hyperparameters).
      num_replicas: M ≥ 1.
      inner_steps: H ≥ 1, inner steps per round.
      mesh: shard replicas over `axis_name` of this mesh (M must be a multiple
        of that axis' size); None vmaps them all on the default device.
      axis_name: the mesh axis (default: the mesh's first axis).
      compressor: how Δ_i is compressed before the average (default: none).
      donate: donate the state buffers to the round (the state passed in is
        consumed).

    Raises:
      ValueError: naming the field, for a bad M, H, mesh or optimizer.
    """
    if isinstance(outer, str):
      outer = outer_lib.get(outer)
    if not isinstance(outer, OuterAlgorithm):
      raise ValueError(f"outer must be an OuterAlgorithm or a registry name, "
                       f"got {type(outer).__name__}")
    if not isinstance(inner_opt, optax.GradientTransformation):
      raise ValueError("inner_opt must be an optax.GradientTransformation, "
                       f"got {type(inner_opt).__name__}")
    for field, value in (("num_replicas", num_replicas),
                         ("inner_steps", inner_steps)):
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{field} must be an integer >= 1, got {value!r}")
    self.loss_fn = loss_fn
    self.inner_opt = inner_opt
    self.outer = outer
    self.num_replicas = int(num_replicas)
    self.inner_steps = int(inner_steps)
    self.compressor = compressor or compress_lib.none()
    self.mesh = mesh
    if mesh is not None:
      self.axis_name = axis_name or mesh.axis_names[0]
      if self.axis_name not in mesh.axis_names:
        raise ValueError(f"axis_name {self.axis_name!r} is not an axis of the "
                         f"mesh {mesh.axis_names}")
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
    self._round_jit = jax.jit(self._round_fn,
                              donate_argnums=(0,) if donate else ())
    self._init_jit = None
    self._round_comm_bytes = None  # Static per engine: shapes never change.

  # --------------------------------------------------------------------------
  # State.

  def _init_fn(self, params, rng):
    m = self.num_replicas
    params = jax.tree.map(jnp.asarray, params)
    stack = lambda tree: jax.tree.map(
        lambda x: jnp.broadcast_to(x, (m,) + x.shape), tree)
    if self.outer.data_parallel:
      # Per-replica compressor state: ddp may compress its gradients too.
      return TrainState(params=params, outer_state=(), replica_params=None,
                        inner_state=self.inner_opt.init(params),
                        comm_state=jax.vmap(self.compressor.init)(stack(params)),
                        round=jnp.zeros([], jnp.int32), rng=rng)
    replica_params = stack(params)
    return TrainState(
        params=params, outer_state=self.outer.init(params),
        replica_params=replica_params,
        inner_state=jax.vmap(self.inner_opt.init)(replica_params),
        comm_state=jax.vmap(self.compressor.init)(replica_params),
        round=jnp.zeros([], jnp.int32), rng=rng)

  def _state_specs(self) -> TrainState:
    rep = P(self.axis_name)
    dp = self.outer.data_parallel
    return TrainState(params=P(), outer_state=P(), replica_params=rep,
                      inner_state=P() if dp else rep, comm_state=rep,
                      round=P(), rng=P())

  def state_shardings(self, abstract_state: TrainState):
    """NamedShardings for every leaf of a state (None without a mesh)."""
    if self.mesh is None:
      return None
    return jax.tree.map(
        lambda spec, sub: jax.tree.map(lambda _: NamedSharding(self.mesh, spec), sub),
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
    """The model to evaluate (global model, EASGD center, PAPA mean)."""
    return state.params

  # --------------------------------------------------------------------------
  # Communication accounting (static: from shapes only).

  def comm_bytes(self, params: Params) -> Dict[str, float]:
    """Bytes one replica sends per round: payload and ring all-reduce traffic.

    Payload = Σ numel × bits / 8 as the compressor encodes it (per sync; ddp
    sends its gradients, fp32 unless compressed, every one of its H steps).
    A ring all-reduce moves 2·(M − 1)/M of the payload per replica.
    """
    payload = self.compressor.payload_bytes(params)
    if self.outer.data_parallel:
      payload *= self.inner_steps
    m = self.num_replicas
    return {"payload_bytes": float(payload),
            "ring_bytes": float(payload * 2 * (m - 1) / m)}

  # --------------------------------------------------------------------------
  # The round.

  def _loss_and_grad(self, params, batch, rng, anchor):
    def total(p):
      loss, aux = _split_loss(self.loss_fn(p, batch, rng))
      full = loss
      if self.outer.penalty is not None:
        full = loss + self.outer.penalty(p, anchor)
      return full, (loss, aux)

    (_, (loss, aux)), grads = jax.value_and_grad(total, has_aux=True)(params)
    return loss, aux, grads

  def _run_replica(self, params, opt_state, batch, num_steps, key, anchor,
                   start=0):
    """Inner steps of one replica over `batch`'s leading (step) axis.

    Steps are numbered from `start` (for the per-step keys); steps numbered
    ≥ num_steps are skipped (stragglers). Returns the new params and state,
    the sums of the loss and aux metrics over the steps taken, their count,
    and whether every loss taken was finite.
    """

    def step(carry, xs):
      p, o = carry
      b, t = xs
      loss, aux, grads = self._loss_and_grad(p, b, jax.random.fold_in(key, t),
                                             anchor)
      updates, o_new = self.inner_opt.update(grads, o, p)
      p_new = optax.apply_updates(p, updates)
      active = t < num_steps
      keep = lambda new, old: jax.tree.map(
          lambda a, b_: jnp.where(active, a, b_), new, old)
      return (keep(p_new, p), keep(o_new, o)), (loss, aux, active)

    n = jax.tree.leaves(batch)[0].shape[0]
    steps = start + jnp.arange(n, dtype=jnp.int32)
    (params, opt_state), (losses, aux, active) = jax.lax.scan(
        step, (params, opt_state), (batch, steps))
    total = lambda x: jnp.sum(jnp.where(active, x, 0.0))
    # A non-finite loss on any step taken marks the replica as diverged.
    finite = jnp.all(jnp.isfinite(jnp.where(active, losses, 0.0)))
    return (params, opt_state, total(losses), jax.tree.map(total, aux),
            jnp.sum(active), finite)

  def _weights(self, ok, num_examples, ops):
    """w_i = n_i / Σ_j n_j over the replicas that count; and Σ_j n_j > 0."""
    raw = jnp.where(ok, num_examples, 0.0).astype(jnp.float32)
    total = ops.sum(raw)
    return raw / jnp.maximum(total, 1e-30), total > 0

  def _local_phase(self, replica_params, inner_state, batch, num_steps,
                   replica_keys, anchor, start=0):
    """`_run_replica` vmapped over the local block of replicas."""
    return jax.vmap(self._run_replica, in_axes=(0, 0, 0, 0, 0, None, None))(
        replica_params, inner_state, batch, num_steps, replica_keys, anchor,
        start)

  def _sync(self, outer, g, outer_state, new_p, comm_state, ok, num_examples,
            comm_keys, sync_key, ops):
    """Δ_i, compression, the weighted average and `outer.sync`.

    Works on any tree shaped like the params (the whole model or one
    fragment of it). Replicas that are not `ok` (sat out or diverged) count
    for nothing and restart from the new global model.

    Returns:
      (new global, new replica params, outer state, compressor state, Δ,
      whether anyone took part).
    """
    deltas = jax.tree.map(lambda g_, p: g_[None] - p, g, new_p)
    weights, anyone = self._weights(ok, num_examples, ops)
    # Zero (not multiply) what must not count: 0 × NaN is NaN.
    deltas = _select(ok, deltas, jax.tree.map(jnp.zeros_like, deltas))
    sent, new_comm = jax.vmap(self.compressor.compress)(deltas, comm_state,
                                                        comm_keys)
    comm_state = _select(ok, new_comm, comm_state)
    delta = ops.weighted_sum(sent, weights)
    inputs = SyncInputs(global_params=g, replica_params=new_p, deltas=sent,
                        delta=delta, weights=weights, key=sync_key)
    new_g, new_replicas, new_outer = outer.sync(inputs, outer_state, ops)
    keep_if_nobody = lambda new, old: jax.tree.map(
        lambda a, b: jnp.where(anyone, a, b), new, old)
    new_g = keep_if_nobody(new_g, g)
    outer_state = keep_if_nobody(new_outer, outer_state)
    restart = jax.tree.map(
        lambda x, like: jnp.broadcast_to(x, like.shape).astype(like.dtype),
        new_g, new_replicas)
    return (new_g, _select(ok, new_replicas, restart), outer_state, comm_state,
            delta, anyone)

  def _round_keys(self, state, ops):
    round_key = jax.random.fold_in(state.rng, state.round)
    sync_key, step_key = jax.random.split(round_key)
    replica_keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(ops.index)
    comm_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2**31 - 1))(
        replica_keys)
    return sync_key, replica_keys, comm_keys

  def _round_metrics(self, ok, mask, finite, loss_sum, aux_sum, count, delta,
                     ops):
    n_ok = ops.sum(ok.astype(jnp.float32))
    denom = jnp.maximum(count, 1)
    loss_i = loss_sum / denom
    mean_ok = lambda v: ops.sum(jnp.where(ok, v, 0.0)) / jnp.maximum(n_ok, 1)
    metrics = {
        "loss": mean_ok(loss_i),
        # Gathered: M scalars, so every process can read every replica's loss.
        "replica_loss": ops.gather(loss_i),
        "outer_grad_norm": optax.tree.norm(delta),
        "participants": n_ok,
        "nonfinite_replicas": ops.sum((mask & ~finite).astype(jnp.float32)),
    }
    for k, v in aux_sum.items():
      metrics[f"inner/{k}"] = mean_ok(v / denom)
    return metrics

  def _round_local(self, state: TrainState, batch, mask, num_examples,
                   num_steps, ops: ReplicaOps):
    sync_key, replica_keys, comm_keys = self._round_keys(state, ops)
    if self.outer.data_parallel:
      return self._ddp_round_local(state, batch, mask, num_examples,
                                   replica_keys, comm_keys, ops)
    g = state.params
    new_p, new_o, loss_sum, aux_sum, count, finite_loss = self._local_phase(
        state.replica_params, state.inner_state, batch, num_steps,
        replica_keys, g)
    finite = finite_loss & _all_finite(new_p)
    ok = mask & finite & (num_steps > 0)
    new_g, replica_params, outer_state, comm_state, delta, _ = self._sync(
        self.outer, g, state.outer_state, new_p, state.comm_state, ok,
        num_examples, comm_keys, sync_key, ops)
    # A replica that sat out (or diverged) also discards its optimizer steps.
    inner_state = _select(ok, new_o, state.inner_state)
    if self.outer.reset_inner_state:
      inner_state = jax.vmap(functools.partial(_fresh_inner_state,
                                               self.inner_opt))(
                                                   inner_state, replica_params)
    metrics = self._round_metrics(ok, mask, finite, loss_sum, aux_sum, count,
                                  delta, ops)
    new_state = state.replace(params=new_g, outer_state=outer_state,
                              replica_params=replica_params,
                              inner_state=inner_state, comm_state=comm_state,
                              round=state.round + 1)
    return new_state, metrics

  def _ddp_round_local(self, state, batch, mask, num_examples, replica_keys,
                       comm_keys, ops):
    """Data-parallel: every step, (compressed) gradients are averaged."""
    batch_t = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), batch)  # [H, m, ...]
    grad_fn = jax.vmap(self._loss_and_grad, in_axes=(None, 0, 0, None))

    def step(carry, xs):
      p, o, cs = carry
      b, t = xs
      keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(replica_keys)
      # Per-replica gradients, each summed exactly once (by weighted_sum).
      p_local = ops.varying(p)
      loss_i, aux_i, grads_i = grad_fn(p_local, b, keys, p_local)
      finite = jnp.isfinite(loss_i) & _all_finite(grads_i)
      ok = mask & finite
      weights, anyone = self._weights(ok, num_examples, ops)
      grads_i = _select(ok, grads_i, jax.tree.map(jnp.zeros_like, grads_i))
      step_keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(comm_keys)
      sent, cs_new = jax.vmap(self.compressor.compress)(grads_i, cs, step_keys)
      cs = _select(ok, cs_new, cs)
      grad = ops.weighted_sum(sent, weights)
      updates, o_new = self.inner_opt.update(grad, o, p)
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
    loss_i = per_replica(losses)
    n_ok = ops.sum(jnp.sum(okf, 0))
    metrics = {
        "loss": ops.sum(jnp.sum(jnp.where(oks, losses, 0.0), 0)) / jnp.maximum(n_ok, 1),
        "replica_loss": ops.gather(loss_i),
        "outer_grad_norm": jnp.mean(gnorms),  # Mean gradient norm over steps.
        "participants": ops.sum(jnp.all(oks, 0).astype(jnp.float32)),
        "nonfinite_replicas": ops.sum(
            (mask & ~jnp.all(oks | ~mask[None], 0)).astype(jnp.float32)),
    }
    for k, v in aux.items():
      metrics[f"inner/{k}"] = ops.sum(jnp.sum(jnp.where(oks, v, 0.0), 0)) / jnp.maximum(n_ok, 1)
    return state.replace(params=params, inner_state=opt_state,
                         comm_state=comm_state, round=state.round + 1), metrics

  def _round_fn(self, state, batch, mask, num_examples, num_steps):
    if self.mesh is None:
      return self._round_local(state, batch, mask, num_examples, num_steps,
                               _local_ops(self.num_replicas))
    axis = self.axis_name
    rep = P(axis)

    def body(state, batch, mask, num_examples, num_steps):
      ops = _sharded_ops(self.num_replicas, self.local_replicas, axis)
      return self._round_local(state, batch, mask, num_examples, num_steps, ops)

    # Every metric is replicated (per-replica ones are gathered).
    sharded = jax.shard_map(
        body, mesh=self.mesh,
        in_specs=(self._state_specs(), rep, rep, rep, rep),
        out_specs=(self._state_specs(), P()))
    return sharded(state, batch, mask, num_examples, num_steps)

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
        (stragglers; default H). Ignored by ddp.

    Returns:
      (new state, metrics): device scalars `loss`, `outer_grad_norm`,
      `participants`, `nonfinite_replicas`, `inner/<aux>`, per-replica
      `replica_loss` [M], and host numbers `payload_bytes` and `ring_bytes`
      (per participating replica, this round).
    """
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
    put = self._put_replica_axis
    state, metrics = self._round_jit(state, jax.tree.map(put, batch), put(mask),
                                     put(num_examples), put(num_steps))
    if self._round_comm_bytes is None:
      self._round_comm_bytes = self.comm_bytes(state.params)
    metrics = {**metrics, **self._round_comm_bytes}
    return state, metrics

  def compiled_rounds(self) -> int:
    """How many distinct round programs have been compiled (1 after warm-up)."""
    return self._round_jit._cache_size()  # pylint: disable=protected-access
