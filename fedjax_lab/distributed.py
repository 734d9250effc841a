"""Multi-process runs on JAX's own distributed runtime.

One process per host (or, to try it on one machine, several processes on
127.0.0.1 with some CPU devices each: `experiments/launch_local.py`). After
`initialize`, `jax.devices()` lists every device of every process, the replica
mesh spans them all, `lax.psum` over the mesh axis crosses processes (gloo on
CPU, NCCL on GPU, ICI/DCN on TPU), and each process feeds only the batches of
the replicas on its own devices (`local_replica_ids`).

Where the settings come from, first match wins:
  1. explicit arguments (experiments/run.py passes its flags);
  2. FEDJAX_LAB_COORDINATOR / FEDJAX_LAB_NUM_PROCESSES / FEDJAX_LAB_PROCESS_ID
     (set by the local launcher), FEDJAX_LAB_NUM_CPU_DEVICES;
  3. `auto=True`: `jax.distributed.initialize()` with no arguments, which
     detects TPU pod slices, SLURM and other clusters JAX knows.
"""

import dataclasses
import os
from typing import List, Optional

from absl import logging
import jax
import numpy as np

ENV_COORDINATOR = "FEDJAX_LAB_COORDINATOR"
ENV_NUM_PROCESSES = "FEDJAX_LAB_NUM_PROCESSES"
ENV_PROCESS_ID = "FEDJAX_LAB_PROCESS_ID"
ENV_NUM_CPU_DEVICES = "FEDJAX_LAB_NUM_CPU_DEVICES"


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  coordinator_address: Optional[str] = None  # host:port of process 0.
  num_processes: int = 1
  process_id: int = 0
  num_cpu_devices: Optional[int] = None  # CPU devices per process (testing).
  # A peer silent this long is declared dead and every process stops.
  heartbeat_timeout_seconds: int = 20
  initialization_timeout: int = 120  # Seconds to wait for every peer to join.
  auto: bool = False  # Let JAX detect the cluster (TPU pods, SLURM, ...).


def config_from_env(**overrides) -> DistributedConfig:
  """A DistributedConfig from FEDJAX_LAB_* variables, then `overrides`."""
  env = os.environ
  values = {}
  if env.get(ENV_COORDINATOR):
    values["coordinator_address"] = env[ENV_COORDINATOR]
  for key, name in ((ENV_NUM_PROCESSES, "num_processes"),
                    (ENV_PROCESS_ID, "process_id"),
                    (ENV_NUM_CPU_DEVICES, "num_cpu_devices")):
    if env.get(key):
      try:
        values[name] = int(env[key])
      except ValueError:
        raise ValueError(f"{key} must be an integer, got {env[key]!r}") from None
  values.update({k: v for k, v in overrides.items() if v is not None})
  return DistributedConfig(**values)


def _validate(cfg: DistributedConfig):
  if cfg.num_processes < 1:
    raise ValueError(f"num_processes must be >= 1, got {cfg.num_processes}")
  if not 0 <= cfg.process_id < cfg.num_processes:
    raise ValueError(f"process_id must be in [0, {cfg.num_processes}), "
                     f"got {cfg.process_id}")
  if cfg.num_processes > 1 and not cfg.coordinator_address:
    raise ValueError("coordinator_address (host:port of process 0) is needed "
                     "when num_processes > 1")
  if cfg.num_cpu_devices is not None and cfg.num_cpu_devices < 1:
    raise ValueError(f"num_cpu_devices must be >= 1, got {cfg.num_cpu_devices}")


def initialize(cfg: Optional[DistributedConfig] = None) -> DistributedConfig:
  """Starts JAX's distributed runtime if the config asks for several processes.

  Must run before anything touches a device. Idempotent.
  """
  cfg = cfg or config_from_env()
  _validate(cfg)
  if cfg.num_cpu_devices is not None:
    jax.config.update("jax_num_cpu_devices", cfg.num_cpu_devices)
  if jax.distributed.is_initialized():
    return cfg
  if cfg.num_processes > 1:
    logging.info("jax.distributed: process %d of %d, coordinator %s",
                 cfg.process_id, cfg.num_processes, cfg.coordinator_address)
    host, _, port = cfg.coordinator_address.rpartition(":")
    # A loopback coordinator listens on loopback only (JAX binds [::] else).
    bind = (f"{host}:{port}" if host in ("127.0.0.1", "localhost", "[::1]")
            else None)
    jax.distributed.initialize(
        coordinator_address=cfg.coordinator_address,
        num_processes=cfg.num_processes, process_id=cfg.process_id,
        initialization_timeout=cfg.initialization_timeout,
        heartbeat_timeout_seconds=cfg.heartbeat_timeout_seconds,
        coordinator_bind_address=bind)
  elif cfg.auto:
    jax.distributed.initialize(
        initialization_timeout=cfg.initialization_timeout,
        heartbeat_timeout_seconds=cfg.heartbeat_timeout_seconds)
  return cfg


def local_replica_ids(mesh: Optional[jax.sharding.Mesh], num_replicas: int,
                      axis_name: Optional[str] = None) -> List[int]:
  """The replicas whose data this process feeds: those on its devices.

  Replicas are laid out in blocks of num_replicas / (size of the mesh axis)
  along `axis_name` (default: the mesh's first axis); a process feeds every
  block that has a device of its own, in mesh order (the order
  `jax.make_array_from_process_local_data` expects). Without a mesh every
  replica lives on this (single) process.
  """
  if mesh is None:
    return list(range(num_replicas))
  axis_name = axis_name or mesh.axis_names[0]
  axis = mesh.axis_names.index(axis_name)
  devices = np.asarray(mesh.devices)
  per_block = num_replicas // devices.shape[axis]
  me = jax.process_index()
  ids = set()
  for index in np.ndindex(devices.shape):
    if devices[index].process_index == me:
      block = index[axis]
      ids.update(range(block * per_block, (block + 1) * per_block))
  return sorted(ids)


def fetch_replicated(tree):
  """device_get for replicated values, also when they span processes.

  An array replicated over devices of several processes is not fully
  addressable, but every local copy holds the whole value.
  """
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(get, tree)
