"""Compressors for outer gradients (the per-replica deltas sent at a sync).

A `Compressor` is optax-shaped: a NamedTuple of pure functions.

* ``init(params) -> state``: the per-replica compressor state (e.g. the
  error-feedback residual), built from ONE replica's params (no replica axis).
* ``compress(delta, state, key) -> (decoded, new_state)``: takes one replica's
  outer gradient Δ_i = θ_global − θ_i, returns what the receivers reconstruct
  (de-quantised, float32, shaped like ``delta``) and the new state. The engine
  vmaps it over replicas and averages the decoded values in float32.
* ``payload_bytes(params) -> int``: the exact number of bytes one replica
  sends for one sync (values, scales, indices), from the shapes alone.
"""

from typing import Any, Callable, NamedTuple, Tuple

import jax
import numpy as np

from fedjax_lab.typing import Params, PRNGKey, Updates


class Compressor(NamedTuple):
  init: Callable[[Params], Any]
  compress: Callable[[Updates, Any, PRNGKey], Tuple[Updates, Any]]
  payload_bytes: Callable[[Params], int]


def tree_bytes(tree: Params, bits_per_element: float = 32.0) -> int:
  """Σ over leaves of numel × bits / 8 (shape-only; works on ShapeDtypeStructs)."""
  numel = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  return int(np.ceil(numel * bits_per_element / 8))


def none() -> Compressor:
  """No compression: Δ_i travels as float32, bit-identical to the plain path."""

  def init(params):
    del params
    return ()

  def compress(delta, state, key):
    del key
    return delta, state

  return Compressor(init=init, compress=compress,
                    payload_bytes=lambda params: tree_bytes(params, 32))


_REGISTRY = {
    "none": none,
}


def get(name: str, **hparams) -> Compressor:
  """Returns the compressor registered under `name`."""
  if name not in _REGISTRY:
    raise ValueError(
        f"compression: unknown compressor {name!r}; known: {sorted(_REGISTRY)}")
  return _REGISTRY[name](**hparams)
