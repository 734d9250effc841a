"""A run's memory, checked before anything is built or written.

`check_memory` is a rough estimate from the config alone (round batches,
activations, replica states, a population's client state) against the host's
RAM or one accelerator's memory; `check_compiled_memory` compiles the round
once for the run's shapes and compares what it needs with one device's
memory. Both refuse a run that cannot fit with ONE `ConfigError` naming the
field to change; `fedjax_lab.run.build` calls them.
"""

import dataclasses
import os
from typing import Dict, Optional, Sequence

import jax
import numpy as np

from fedjax_lab import local_steps
from fedjax_lab.config_validation import ConfigError
from fedjax_lab.engine import Engine

GIB = float(1 << 30)


def _value(parts, field: str):
  group, name = field.split(".")
  return getattr(getattr(parts, group), name)


def _largest(parts, fields: Sequence[str]) -> str:
  """The field furthest above its default (the one most worth lowering)."""
  def ratio(field):
    group, name = field.split(".")
    typical = {f.name: f.default for f in dataclasses.fields(
        type(getattr(parts, group)))}[name]
    return float(abs(_value(parts, field))) / (abs(typical) or 1)
  return max(fields, key=ratio)


def available_bytes() -> float:
  """Memory a run may use: the host's RAM, or one accelerator's."""
  device = jax.local_devices()[0]
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    if stats.get("bytes_limit"):
      return float(stats["bytes_limit"])
  return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_memory(parts, num_params: Optional[int] = None, *,
                 limit: Optional[float] = None,
                 client_state_bytes: float = 0.0) -> Dict[str, float]:
  """Refuses a run whose rough memory estimate exceeds the machine's.

  Terms: the round batches (M × H × B examples, for the loader's prefetch
  queue plus the one on the device), one device's activations (all its
  replicas' under `engine.replica_mode` 'vmap', one replica's when
  'sequential'; one block's with `model.remat`), the replica states (params,
  AdamW moments, gradient, Δ and outer state; split over
  `mesh.model_devices`) and a population's per-client state
  (`client_state_bytes`, host memory: counted against the host's RAM on an
  accelerator).

  Returns:
    The terms in bytes ('round batches', 'activations', 'replica states',
    'client state', 'total', 'limit').

  Raises:
    ConfigError: naming the field that drives the largest term.
  """
  kind = parts.task_kind
  m, h, b = parts.train.num_replicas, parts.inner.steps, parts.inner.batch_size
  units = kind.example_units(parts.model)
  batch = 4.0 * m * h * b * (units + 1) * (parts.data.prefetch + 2)
  model_devices = parts.mesh.model_devices
  slots = max(jax.device_count() // model_devices, 1)
  per_device = max(m // slots, 1)
  if parts.mesh.num_devices == 0:
    per_device = m
  mode = parts.engine.replica_mode
  if mode == "auto":
    mode = local_steps.default_replica_mode(per_device)
  if mode == "sequential":
    per_device = 1
  act = per_device * kind.activation_bytes(parts.model, b)
  state = (0.0 if num_params is None else
           4.0 * num_params * (6 * m + 4) / model_devices)
  limit = available_bytes() if limit is None else limit
  host = float(client_state_bytes)
  on_host = jax.local_devices()[0].platform == "cpu"
  if not on_host:
    ram = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    if host > ram:
      raise ConfigError(
          f"train.num_clients: the per-client state would need about "
          f"{host / GIB:.3g} GiB of host memory and this host has "
          f"{ram / GIB:.3g} GiB; lower train.num_clients (now "
          f"{parts.train.num_clients})")
    host = 0.0
  total = batch + act + state + host
  if total <= limit:
    return {"round batches": batch, "activations": act,
            "replica states": state, "client state": float(client_state_bytes),
            "total": total, "limit": limit}
  terms = {
      "client state": (host, ("train.num_clients",)),
      "round batches": (batch, ("inner.steps", "inner.batch_size",
                                "train.num_replicas", "data.prefetch")),
      "activations": (act, ("inner.batch_size", "model.seq_len",
                            "model.d_model", "model.num_layers",
                            "model.mlp_ratio", "train.num_replicas")),
      "replica states": (state, ("model.d_model", "model.num_layers",
                                 "model.mlp_ratio", "train.num_replicas")),
  }
  name, (size, fields) = max(terms.items(), key=lambda kv: kv[1][0])
  own = {f.name for f in dataclasses.fields(type(parts.model))}
  fields = tuple(f for f in fields if not f.startswith("model.")
                 or f.split(".")[1] in own) or ("inner.batch_size",)
  field = (fields[0] if len(fields) == 1 else _largest(parts, fields))
  raise ConfigError(
      f"{field}: the run would need about {total / GIB:.3g} GiB ({name}: "
      f"{size / GIB:.3g} GiB) and this machine has {limit / GIB:.3g} GiB; "
      f"lower {field} (now {_value(parts, field)})")


def check_compiled_memory(parts, engine: Engine, params, example_batch,
                          num_local: int, inner_steps: int, *,
                          limit: Optional[float] = None) -> Optional[float]:
  """Refuses a run whose compiled round will not fit one device's memory.

  On an accelerator (or with `limit`, bytes), the round is lowered for the
  run's shapes and compiled once, without running; its arguments and
  temporaries (`memory_analysis()`) are compared with the device's
  `bytes_limit`. On CPU without `limit` nothing is compiled (the host-RAM
  estimate of `check_memory` applies).

  Returns:
    The compiled program's bytes, or None when not checked.

  Raises:
    ConfigError: naming the field most likely to make it fit.
  """
  if limit is None:
    device = jax.local_devices()[0]
    if device.platform == "cpu":
      return None
    limit = (device.memory_stats() or {}).get("bytes_limit")
    if not limit:
      return None
  batch = jax.tree.map(
      lambda x: np.zeros((num_local, inner_steps) + np.shape(x),
                         np.asarray(x).dtype), example_batch)
  compiled = engine.lower_round(engine.abstract_state(params), batch).compile()
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None
  need = float(analysis.argument_size_in_bytes + analysis.temp_size_in_bytes)
  if need <= limit:
    return need
  knob = parts.task_kind.memory_knob(parts.model)
  if engine.replica_mode == "vmap" and engine.local_replicas > 1:
    field, hint = "engine.replica_mode", "set it to 'sequential'"
  elif knob is not None:
    field, hint = knob
  else:
    field, hint = "inner.batch_size", (f"lower it (now "
                                       f"{parts.inner.batch_size}), or raise "
                                       f"mesh.model_devices")
  raise ConfigError(
      f"{field}: the compiled round needs {need / GIB:.3g} GiB per device "
      f"and a device has {limit / GIB:.3g} GiB; {hint}")
