"""The `Compressor` interface, the identity compressor and shared hparam checks.

What a compressor is and what its functions take and return is in
`fedjax_lab.comm.compress`'s docstring; the quantisers are in
`fedjax_lab.comm.quantizers`, error feedback in `fedjax_lab.comm.feedback`.
"""

from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import numpy as np

from fedjax_lab.typing import Params
from fedjax_lab.typing import PRNGKey
from fedjax_lab.typing import Updates


class Compressor(NamedTuple):
  """A compressor (see `fedjax_lab.comm.compress`'s docstring).

  aggregate: optional (sent [m, ...], weights [m], ops) -> tree shaped like
    the params: how receivers combine what the replicas sent, `ops` a
    `fedjax_lab.outer.base.ReplicaOps`. None means the engine's weighted mean
    `ops.weighted_sum(sent, weights)` of the decoded values. A compressor
    with its own aggregate may send something other than decoded values
    (e.g. DeMo's sparse DCT coefficients, `fedjax_lab.comm.dct`).
  collective: how the messages would travel on a real network, for the byte
    accounting: "all_reduce" (dense messages that can be summed on the way:
    a ring moves 2·(M − 1)/M of the payload per replica) or "all_gather"
    (sparse messages whose indices differ between replicas cannot be summed
    on the way: every replica receives the M − 1 others, (M − 1)× the
    payload).
  """
  init: Callable[[Params], Any]
  compress: Callable[[Updates, Any, PRNGKey], Tuple[Updates, Any]]
  payload_bytes: Callable[[Params], int]
  aggregate: Optional[Callable[[Any, jax.Array, Any], Updates]] = None
  collective: str = "all_reduce"


def tree_bytes(tree: Params, bits_per_element: float = 32.0) -> int:
  """Σ over leaves of numel × bits / 8 (shape-only; works on ShapeDtypeStructs)."""
  numel = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  return int(np.ceil(numel * bits_per_element / 8))


def _identity_init(params):
  del params
  return ()


def _identity_compress(delta, state, key):
  del key
  return delta, state


_NONE = Compressor(init=_identity_init, compress=_identity_compress,
                   payload_bytes=lambda params: tree_bytes(params, 32))


def none() -> Compressor:
  """No compression: Δ_i travels as float32, bit-identical to the plain path.

  Always the same object, so `is_none(c)` can tell the engine that nothing
  needs compressing.
  """
  return _NONE


def is_none(compressor: Optional[Compressor]) -> bool:
  """Whether `compressor` is absent or `none()`."""
  return compressor is None or compressor is _NONE


# --------------------------------------------------------------------------
# Validation helpers: messages name the field and what it may be.


def check_block_size(name: str, block_size) -> None:
  ok = block_size is None or (isinstance(block_size, (int, np.integer))
                              and not isinstance(block_size, bool)
                              and block_size > 0)
  if not ok:
    raise ValueError(f"compression: {name}: block_size must be a positive int "
                     f"or None (one block per tensor), got {block_size!r}")


def check_bool(name: str, field: str, value) -> None:
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"compression: {name}: {field} must be True or False, "
                     f"got {value!r}")
