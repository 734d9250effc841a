"""Compressors for outer gradients (the per-replica deltas sent at a sync).

Papers:
  * OpenDiLoCo (arXiv 2407.07852): fp16 / bf16 outer gradients, no loss.
  * INTELLECT-1 (arXiv 2412.01152): 8-bit outer gradients through a 256-entry
    lookup table, the average accumulated in fp32.
  * Streaming DiLoCo (arXiv 2501.18512): 4-bit E3M0 floats (sign + 3 exponent
    bits, no mantissa), the average accumulated in fp32.
  * DeMo (arXiv 2411.19870): chunked DCT-II, top-k coefficients per block
    (`dct_topk`; the codec is `fedjax_lab.comm.dct`).
  * Error feedback (Seide et al. 2014, "1-bit SGD"; Karimireddy et al.,
    arXiv 1901.09847): send c = C(Δ_i + r_i), keep r_i ← Δ_i + r_i − c.

A `Compressor` is optax-shaped: a NamedTuple of pure functions.

* ``init(params) -> state``: the per-replica compressor state (e.g. the
  error-feedback residual), built from ONE replica's params (no replica axis).
* ``compress(delta, state, key) -> (decoded, new_state)``: takes one replica's
  outer gradient Δ_i = θ_global − θ_i, returns what the receivers reconstruct
  (de-quantised, float32, shaped like ``delta``) and the new state. The engine
  vmaps it over replicas and averages the decoded values in float32.
* ``payload_bytes(params) -> int``: the exact number of bytes one replica
  sends for one sync (values, scales, indices, lookup tables), from the shapes
  alone, so it works on `jax.ShapeDtypeStruct` trees.

Every quantiser below works leaf by leaf (one tensor at a time). Where a
quantiser has a `block_size`, a tensor is flattened in row-major order and cut
into consecutive blocks of `block_size` elements (the last one may be short;
the padding is never sent); `block_size=None` means one block per tensor.
Scales are absmax values stored as float32 and counted in the payload.

Rounding is deterministic round-to-nearest unless a factory says
``stochastic=True`` (int8, int4, fp4), in which case the per-replica `key`
drives unbiased stochastic rounding.

Non-finite values. A quantiser does not hide them: a NaN or ±Inf in a block
makes that block's scale non-finite, so the whole block decodes to non-finite
values that the engine's own checks catch (it zeroes non-finite deltas before
compressing, so in practice they come from overflow, e.g. fp16 past 65504).
`error_feedback` never lets a non-finite value into its residual (see there).

Where things are: the `Compressor` interface, `none` and `tree_bytes` in
`fedjax_lab.comm.compressor`; the leaf codecs in `fedjax_lab.comm.codecs`; the
quantisers (bf16, fp16, int8, int4, fp4, uint8, topk) in
`fedjax_lab.comm.quantizers`; `error_feedback` in `fedjax_lab.comm.feedback`.
All are importable from here, with `dct_topk`, the registry (`REGISTRY`, a
`fedjax_lab.registry.Registry`: `names`, `hparams`, `get`).
"""

import jax
import numpy as np

from fedjax_lab.comm import dct as dct_lib
from fedjax_lab.comm.compressor import check_bool
from fedjax_lab.comm.compressor import Compressor
from fedjax_lab.comm.compressor import is_none  # noqa: F401 (re-exported)
from fedjax_lab.comm.compressor import none
from fedjax_lab.comm.compressor import tree_bytes  # noqa: F401 (re-exported)
from fedjax_lab.comm.feedback import error_feedback
from fedjax_lab.comm.feedback import ErrorFeedbackState  # noqa: F401 (re-exported)
from fedjax_lab.comm.quantizers import bf16
from fedjax_lab.comm.quantizers import fp4
from fedjax_lab.comm.quantizers import fp16
from fedjax_lab.comm.quantizers import int4
from fedjax_lab.comm.quantizers import int8
from fedjax_lab.comm.quantizers import topk
from fedjax_lab.comm.quantizers import uint8
from fedjax_lab.registry import Registry


def dct_topk(*, chunk: int = 64, topk: int = 32) -> Compressor:
  """DeMo's chunked DCT-II + top-k per block (arXiv 2411.19870), fp32 values.

  Each tensor is cut into blocks of at most chunk (× chunk) elements (sides:
  the largest divisors ≤ chunk), DCT-II transformed, and the `topk` largest
  coefficients of every block are sent; receivers decode with the IDCT (see
  `fedjax_lab.comm.dct` for the layout of 1-D, 2-D, scalar and ≥ 3-D
  tensors). Bytes per tensor: ceil(blocks · k · (32 + ceil(log2(block)))/8)
  (fp32 values and bit-packed indices). Deterministic; usually wrapped in
  `error_feedback` (`ef=True`). DeMo itself sends the coefficients and
  averages them per coefficient (`fedjax_lab.outer.demo`); this compressor
  sends decoded values through the engine's weighted mean, for outer
  gradients of DiLoCo and the rest.
  """
  for field, value in (("chunk", chunk), ("topk", topk)):
    if (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
        or value < 1):
      raise ValueError(f"compression: dct_topk: {field} must be an integer "
                       f">= 1, got {value!r}")
  chunk, topk = int(chunk), int(topk)

  def compress(delta, state, key):
    del key
    return jax.tree.map(lambda x: dct_lib.roundtrip(x, chunk, topk),
                        delta), state

  return Compressor(init=lambda params: (), compress=compress,
                    payload_bytes=lambda params: dct_lib.tree_bytes(
                        params, chunk, topk), collective="all_gather")


def _error_feedback(name: str, compressor: Compressor, *,
                    ef: bool = False) -> Compressor:
  """`compressor`, wrapped in `error_feedback` when `ef` (the `ef` hparam)."""
  check_bool(name, "ef", ef)
  if ef and name == "none":
    raise ValueError("compression: none: ef=True keeps the residual of a "
                     "lossy compressor, and 'none' loses nothing; choose a "
                     "compressor (e.g. 'int8') or ef=False")
  return error_feedback(compressor) if ef else compressor


# Every compressor also takes `ef` (bool, default False): wrap it in
# `error_feedback`. The factories' messages name themselves
# ("compression: int8: ..."), so `get` does not prefix them.
REGISTRY = Registry("compressor", "comm.compressor", {
    "none": none,
    "bf16": bf16,
    "fp16": fp16,
    "int8": int8,
    "int4": int4,
    "fp4": fp4,
    "uint8": uint8,
    "topk": topk,
    "dct_topk": dct_topk,
}, extra={"ef": False}, wrap=_error_feedback, prefix_errors=False)
names = REGISTRY.names
hparams = REGISTRY.hparams


def get(name: str, **hparams) -> Compressor:
  """Returns the compressor registered under `name`.

  Args:
    name: one of `names()`.
    **hparams: the factory's keyword arguments, plus `ef` (bool, default
      False): wrap the result in `error_feedback`.

  Raises:
    ValueError: unknown name (lists the known ones), unknown hparam (lists the
      allowed ones) or a bad hparam value (names the field and what it may be).
  """
  return REGISTRY.get(name, **hparams)
