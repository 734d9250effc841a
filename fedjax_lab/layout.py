"""Where the engine's arrays live: the replica mesh and the state's shardings.

A mesh has a replica axis (replicas are spread over it, several per device
allowed) and optionally a model axis: each replica's leaves are then split
over it FSDP-style (`Layout.model_spec`), and so are the global model and the
outer state. Reductions over replicas run on the replica axis only.
"""

import dataclasses
from typing import Any, Dict, Optional, Tuple

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from fedjax_lab import spec as fields
from fedjax_lab.local_steps import REPLICA_MODES

DEFAULT_AXIS = "replicas"
MODEL_AXIS = "model"
# Leaves with fewer elements stay replicated over the model axis (splitting
# them saves little memory and costs a collective).
DEFAULT_MIN_SHARD_SIZE = 2**14


@dataclasses.dataclass(frozen=True)
class MeshSpec:
  """`config.mesh`: the devices the replicas are sharded over."""
  # Shard replicas over this many devices: 0 = none (vmap), -1 = all.
  num_devices: int = fields.field(-1, fields.in_range(-1))
  # State leaves with fewer elements stay whole on the model axis.
  min_shard_size: int = fields.field(DEFAULT_MIN_SHARD_SIZE, fields.POSITIVE)
  # Devices each replica's model is split over (FSDP-style, a 2-D replica x
  # model mesh); must divide the mesh's devices.
  model_devices: int = fields.field(1, fields.POSITIVE)


@dataclasses.dataclass(frozen=True)
class EngineSpec:
  """`config.engine`: how the engine runs replicas (fedjax_lab.engine.Engine).

  Streaming DiLoCo (arXiv 2501.18512): the params split into P fragments,
  fragment p synced after step (p+1)·H/P of every round, its outer result
  landing τ steps late and merged θ_i ← α·θ_i + (1 − α)·θ; P = 1, τ = 0,
  α = 0 is the plain round.
  """
  num_fragments: int = fields.field(1, fields.POSITIVE)  # P, dividing inner.steps.
  overlap_steps: int = fields.field(0, fields.NONNEG)  # τ in [0, H).
  merge_alpha: float = fields.field(0.0, fields.FRACTION)  # α in [0, 1].
  # Replicas on one device: 'vmap' (together), 'sequential' (one at a time,
  # less memory) or 'auto'.
  replica_mode: str = fields.field("auto", fields.one_of(REPLICA_MODES))


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


class Layout:
  """The replica (and model) axes of a mesh, and every state leaf's sharding.

  Attributes:
    mesh: the mesh, or None (every replica on the default device).
    axis_name: the replica axis.
    model_axis: the model axis, or None.
    num_shards: replica slots (devices along the replica axis; 1 without a
      mesh).
    model_shards: devices along the model axis (1 without one).
    local_replicas: replicas per slot.
  """

  def __init__(self, mesh: Optional[jax.sharding.Mesh], num_replicas: int, *,
               axis_name: Optional[str] = None,
               model_axis: Optional[str] = None, param_specs: Any = None,
               min_shard_size: int = DEFAULT_MIN_SHARD_SIZE):
    self.mesh = mesh
    self.model_axis = None
    self.model_shards = 1
    self.param_specs = param_specs
    self.min_shard_size = int(min_shard_size)
    if mesh is None:
      self.axis_name = axis_name or DEFAULT_AXIS
      self.num_shards = 1
    else:
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
      if num_replicas % self.num_shards:
        raise ValueError(
            f"num_replicas ({num_replicas}) must be a multiple of the "
            f"number of devices on mesh axis {self.axis_name!r} "
            f"({self.num_shards})")
    self.local_replicas = num_replicas // self.num_shards

  def model_spec(self, shape, by_shape=None) -> Tuple[Optional[str], ...]:
    """How a leaf of this shape is split over the model axis (per dimension):
    along its largest dimension divisible by the axis size, if it has at
    least `min_shard_size` elements."""
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

  def _specs_by_shape(self, params) -> Optional[Dict[tuple, tuple]]:
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

  def shardings(self, prefix_specs, abstract_state, params):
    """NamedShardings for every leaf (None without a mesh).

    Args:
      prefix_specs: a tree prefix of `abstract_state` giving P(axis_name) for
        replica-stacked subtrees and P() for the others.
      abstract_state: the state (arrays or ShapeDtypeStructs).
      params: the params (for `param_specs`).
    """
    if self.mesh is None:
      return None
    by_shape = self._specs_by_shape(params)

    def shard(prefix, leaf):
      stacked = prefix == P(self.axis_name)
      shape = tuple(leaf.shape)
      rest = self.model_spec(shape[1:] if stacked else shape, by_shape)
      spec = P(self.axis_name, *rest) if stacked else P(*rest)
      return NamedSharding(self.mesh, spec)

    return jax.tree.map(
        lambda prefix, sub: jax.tree.map(lambda x: shard(prefix, x), sub),
        prefix_specs, abstract_state, is_leaf=lambda x: isinstance(x, P))

  def put_replica_axis(self, x, num_replicas: int):
    """Places an array with a leading replica axis on the mesh."""
    if self.mesh is None:
      return x
    sharding = NamedSharding(self.mesh, P(self.axis_name))
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    x = np.asarray(x)
    if x.shape[0] == num_replicas:
      return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
    # A process's own replicas only (multi-process runs).
    return jax.make_array_from_process_local_data(
        sharding, x, (num_replicas,) + x.shape[1:])
