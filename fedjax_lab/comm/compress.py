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
"""

import inspect
import math
from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_lab.comm import dct as dct_lib
from fedjax_lab.typing import Params
from fedjax_lab.typing import PRNGKey
from fedjax_lab.typing import Updates


class Compressor(NamedTuple):
  """A compressor (see the module docstring).

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
# Leaf codecs: what one tensor becomes on the wire.


class _Codec(NamedTuple):
  """How one tensor is encoded: a decode(encode(x)) round trip and its bytes.

  roundtrip(x_f32, key) -> decoded float32 of x's shape. key is None unless
    the codec is stochastic.
  leaf_bytes(shape) -> int: bytes one tensor of that shape costs.
  """
  roundtrip: Callable[[jax.Array, Optional[PRNGKey]], jax.Array]
  leaf_bytes: Callable[[Tuple[int, ...]], int]
  stochastic: bool = False


def _numel(shape) -> int:
  return int(np.prod(shape, dtype=np.int64))


def _num_blocks(n: int, block_size: Optional[int]) -> int:
  if n == 0:
    return 0
  return 1 if block_size is None else -(-n // block_size)


def _to_blocks(x: jax.Array, block_size: Optional[int]) -> jax.Array:
  """Flattens x and cuts it into rows of block_size (zero-padded): [nb, bs]."""
  flat = x.reshape(-1)
  n = flat.shape[0]
  bs = n if block_size is None else block_size
  nb = _num_blocks(n, block_size)
  # Zero padding never changes an absmax and is dropped again on decode.
  flat = jnp.pad(flat, (0, nb * bs - n))
  return flat.reshape(nb, bs)


def _from_blocks(blocks: jax.Array, shape) -> jax.Array:
  return blocks.reshape(-1)[:_numel(shape)].reshape(shape)


def _round(y: jax.Array, key: Optional[PRNGKey]) -> jax.Array:
  """Round-to-nearest, or unbiased stochastic rounding when a key is given."""
  if key is None:
    return jnp.round(y)
  return jnp.floor(y + jax.random.uniform(key, y.shape, jnp.float32))


def _cast_codec(dtype, bits: int) -> _Codec:

  def roundtrip(x, key):
    del key
    return x.astype(dtype).astype(jnp.float32)

  return _Codec(roundtrip, lambda shape: -(-_numel(shape) * bits // 8))


def _absmax_int_codec(levels: int, bits: int, block_size: Optional[int],
                      stochastic: bool) -> _Codec:
  """Symmetric absmax integers: q ∈ [−levels, levels], x̂ = q · absmax/levels."""

  def roundtrip(x, key):
    if x.size == 0:
      return x
    blocks = _to_blocks(x, block_size)
    scale = jnp.max(jnp.abs(blocks), axis=1, keepdims=True) / levels
    # An all-zero block has scale 0: send q = 0 instead of dividing by zero.
    safe = jnp.where(scale > 0, scale, 1.0)
    q = jnp.clip(_round(blocks / safe, key), -levels, levels)
    return _from_blocks(q * scale, x.shape)

  def leaf_bytes(shape):
    n = _numel(shape)
    return -(-n * bits // 8) + 4 * _num_blocks(n, block_size)

  return _Codec(roundtrip, leaf_bytes, stochastic)


# E3M0: magnitudes scale · 2^(e − 7) for exponent field e = 1..7 and zero for
# e = 0, i.e. {0, 2^-6, 2^-5, ..., 2^-1, 1} · scale.
_FP4_MIN_EXP = -6


def _fp4_e3m0_codec(block_size: Optional[int], stochastic: bool) -> _Codec:
  """4-bit E3M0 floats times an absmax scale (see `fp4`)."""

  def roundtrip(x, key):
    if x.size == 0:
      return x
    blocks = _to_blocks(x, block_size)
    scale = jnp.max(jnp.abs(blocks), axis=1, keepdims=True)
    safe = jnp.where(scale > 0, scale, 1.0)
    a = jnp.abs(blocks) / safe  # in [0, 1]
    # frexp is exact: a = m · 2^ex with m ∈ [0.5, 1), so a lies between the
    # representable powers lo = 2^(ex−1) and hi = 2^ex.
    m, ex = jnp.frexp(a)
    lo = jnp.ldexp(jnp.ones_like(a), ex - 1)
    below = ex - 1 < _FP4_MIN_EXP  # a < 2^-6: between 0 and the smallest level
    smallest = 2.0 ** _FP4_MIN_EXP
    lo = jnp.where(below, 0.0, lo)
    hi = jnp.where(below, smallest, 2.0 * lo)
    if key is None:
      # Nearest in linear value; a tie goes up (half-up).
      up = (a - lo) >= (hi - a)
    else:
      u = jax.random.uniform(key, a.shape, jnp.float32)
      up = u < (a - lo) / (hi - lo)
    mag = jnp.where(up, hi, lo)
    mag = jnp.where(a == 0, 0.0, jnp.minimum(mag, 1.0))
    return _from_blocks(jnp.sign(blocks) * mag * scale, x.shape)

  def leaf_bytes(shape):
    n = _numel(shape)
    return -(-n * 4 // 8) + 4 * _num_blocks(n, block_size)

  return _Codec(roundtrip, leaf_bytes, stochastic)


_UINT8_LEVELS = 256


def _uint8_lut_codec(bins: str) -> _Codec:
  """256 bins per tensor; each code decodes to the mean of its bin's values."""

  def roundtrip(x, key):
    del key
    if x.size == 0:
      return x
    flat = x.reshape(-1)
    if bins == "uniform":
      lo, hi = jnp.min(flat), jnp.max(flat)
      width = (hi - lo) / (_UINT8_LEVELS - 1)
      safe = jnp.where(width > 0, width, 1.0)
      codes = jnp.clip(jnp.round((flat - lo) / safe), 0, _UINT8_LEVELS - 1)
      codes = codes.astype(jnp.int32)
      empty = lo + width * jnp.arange(_UINT8_LEVELS, dtype=jnp.float32)
    else:  # quantile: 256 equal-count bins
      edges = jnp.quantile(flat, jnp.linspace(0.0, 1.0, _UINT8_LEVELS + 1))
      codes = jnp.searchsorted(edges[1:-1], flat, side="right")
      codes = codes.astype(jnp.int32)
      empty = 0.5 * (edges[:-1] + edges[1:])
    # The table holds each bin's centroid (its values' mean), which is what
    # minimises the squared error for a fixed binning; an empty bin is never
    # looked up, but gets its centre so the table stays finite.
    sums = jax.ops.segment_sum(flat, codes, num_segments=_UINT8_LEVELS)
    counts = jax.ops.segment_sum(jnp.ones_like(flat), codes,
                                 num_segments=_UINT8_LEVELS)
    table = jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), empty)
    out = table[codes]
    # A NaN/Inf would otherwise vanish into some bin's code: keep it loud by
    # making the whole tensor (this codec's one "block") non-finite.
    finite = jnp.isfinite(jnp.min(flat)) & jnp.isfinite(jnp.max(flat))
    return jnp.where(finite, out, jnp.nan).reshape(x.shape)

  def leaf_bytes(shape):
    n = _numel(shape)
    return n + (4 * _UINT8_LEVELS if n else 0)  # codes + fp32 table

  return _Codec(roundtrip, leaf_bytes)


def _topk_codec(fraction: float, values: Optional[_Codec]) -> _Codec:
  """Keeps the ceil(fraction · numel) largest |x|; int32 indices + values."""

  def k_of(n):
    return min(n, max(1, math.ceil(fraction * n))) if n else 0

  def roundtrip(x, key):
    if x.size == 0:
      return x
    flat = x.reshape(-1)
    k = k_of(flat.shape[0])
    _, idx = jax.lax.top_k(jnp.abs(flat), k)
    kept = flat[idx]
    if values is not None:
      kept = values.roundtrip(kept, key)
    out = jnp.zeros_like(flat).at[idx].set(kept)
    return out.reshape(x.shape)

  def leaf_bytes(shape):
    k = k_of(_numel(shape))
    vbytes = 4 * k if values is None else values.leaf_bytes((k,))
    return 4 * k + vbytes

  return _Codec(roundtrip, leaf_bytes, values is not None and values.stochastic)


def _from_codec(codec: _Codec) -> Compressor:
  """Applies a leaf codec to every tensor of a pytree."""

  def init(params):
    del params
    return ()

  def compress(delta, state, key):
    leaves, treedef = jax.tree.flatten(delta)
    if codec.stochastic:
      if key is None:
        raise ValueError("compression: a stochastic compressor needs a key")
      keys = list(jax.random.split(key, max(len(leaves), 1)))
    else:
      keys = [None] * len(leaves)
    out = [codec.roundtrip(jnp.asarray(x, jnp.float32), k)
           for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, out), state

  def payload_bytes(params):
    return int(sum(codec.leaf_bytes(tuple(x.shape))
                   for x in jax.tree.leaves(params)))

  return Compressor(init=init, compress=compress, payload_bytes=payload_bytes)


# --------------------------------------------------------------------------
# Validation helpers: messages name the field and what it may be.


def _check_block_size(name: str, block_size) -> None:
  ok = block_size is None or (isinstance(block_size, (int, np.integer))
                              and not isinstance(block_size, bool)
                              and block_size > 0)
  if not ok:
    raise ValueError(f"compression: {name}: block_size must be a positive int "
                     f"or None (one block per tensor), got {block_size!r}")


def _check_bool(name: str, field: str, value) -> None:
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"compression: {name}: {field} must be True or False, "
                     f"got {value!r}")


# --------------------------------------------------------------------------
# Public factories.


def bf16() -> Compressor:
  """bfloat16 cast round trip (OpenDiLoCo): 2 bytes per element."""
  return _from_codec(_cast_codec(jnp.bfloat16, 16))


def fp16() -> Compressor:
  """float16 cast round trip (OpenDiLoCo): 2 bytes per element.

  Magnitudes above 65504 overflow to ±Inf, as a numpy cast does; the engine's
  non-finite checks then see them (use bf16 when the range is unknown).
  """
  return _from_codec(_cast_codec(jnp.float16, 16))


def int8(*, block_size: Optional[int] = None,
         stochastic: bool = False) -> Compressor:
  """Symmetric absmax int8: q = round(x / s), s = absmax / 127, x̂ = q · s.

  Per tensor (`block_size=None`) or per block of `block_size` elements, one
  fp32 scale per block. Error bound, round-to-nearest: |x − x̂| ≤ s / 2 for
  every element, s its block's scale; stochastic rounding: |x − x̂| < s, and
  E[x̂] = x. Bytes: numel + 4 · blocks per tensor.
  """
  _check_block_size("int8", block_size)
  _check_bool("int8", "stochastic", stochastic)
  return _from_codec(_absmax_int_codec(127, 8, block_size, stochastic))


def int4(*, block_size: Optional[int] = 32,
         stochastic: bool = False) -> Compressor:
  """Symmetric absmax int4 per block: q ∈ [−7, 7], s = absmax / 7, x̂ = q · s.

  (−8 is left unused so the grid is symmetric.) Same bounds as `int8` with
  s = absmax / 7: |x − x̂| ≤ s / 2 (nearest), < s (stochastic). Bytes:
  ceil(numel / 2) + 4 · blocks per tensor (two codes packed per byte).
  """
  _check_block_size("int4", block_size)
  _check_bool("int4", "stochastic", stochastic)
  return _from_codec(_absmax_int_codec(7, 4, block_size, stochastic))


def fp4(*, block_size: Optional[int] = None,
        stochastic: bool = False) -> Compressor:
  """4-bit E3M0 floats (Streaming DiLoCo, arXiv 2501.18512) times a scale.

  Encoding, exactly: a 4-bit code is a sign bit s and a 3-bit exponent field
  e ∈ {0, …, 7}, no mantissa. e = 0 encodes zero (no subnormals); e ≥ 1 encodes
  (−1)^s · S · 2^(e − 7), so the representable magnitudes are
  {0, 2^-6, 2^-5, 2^-4, 2^-3, 2^-2, 2^-1, 1} · S, where S is the absmax of
  the block (or tensor, `block_size=None`), stored as fp32: the largest
  element is exact. Round to nearest in linear value (ties up), or unbiased
  stochastic rounding between the two neighbouring levels.

  Error bound (nearest): |x − x̂| ≤ max(|x| / 3, S / 128). Between two powers
  2^(k−1)·S and 2^k·S the worst case is the midpoint 0.75 · 2^k · S, an error
  of |x| / 3; below the smallest level 2^-6 · S the error is at most
  2^-7 · S. Bytes: ceil(numel / 2) + 4 · blocks per tensor.
  """
  _check_block_size("fp4", block_size)
  _check_bool("fp4", "stochastic", stochastic)
  return _from_codec(_fp4_e3m0_codec(block_size, stochastic))


def uint8(*, bins: str = "uniform") -> Compressor:
  """uint8 codes through a 256-entry fp32 lookup table per tensor (INTELLECT-1).

  `bins="uniform"`: 256 bins of width w = (max − min) / 255 centred on
  min + k·w; `bins="quantile"`: 256 equal-count bins between the tensor's
  quantiles. Each code decodes to the mean of the values in its bin, so
  |x − x̂| ≤ the width of x's bin (≤ w for uniform bins). Deterministic.
  Bytes: numel + 1024 (the table) per tensor.
  """
  if bins not in ("uniform", "quantile"):
    raise ValueError("compression: uint8: bins must be 'uniform' or "
                     f"'quantile', got {bins!r}")
  return _from_codec(_uint8_lut_codec(bins))


# The quantisers top-k may send its kept values with (1-D, per tensor).
_VALUE_CODECS = {
    "fp32": lambda: None,
    "bf16": lambda: _cast_codec(jnp.bfloat16, 16),
    "fp16": lambda: _cast_codec(jnp.float16, 16),
    "int8": lambda block_size=None, stochastic=False: _absmax_int_codec(
        127, 8, block_size, stochastic),
    "int4": lambda block_size=32, stochastic=False: _absmax_int_codec(
        7, 4, block_size, stochastic),
    "fp4": lambda block_size=None, stochastic=False: _fp4_e3m0_codec(
        block_size, stochastic),
    "uint8": lambda bins="uniform": _uint8_lut_codec(bins),
}


def topk(*, fraction: float = 0.01, values: str = "fp32",
         **value_hparams) -> Compressor:
  """Top-k sparsification per tensor, optionally with quantised values.

  Keeps k = ceil(fraction · numel) (at least 1) entries of largest |x| and
  zeroes the rest. Sends k int32 indices plus the k values, in fp32
  (`values="fp32"`) or through one of the quantisers bf16, fp16, int8, int4,
  fp4, uint8 applied to the kept values as a 1-D tensor (`value_hparams` go to
  it, e.g. `block_size`). Bytes: 4k + the value bytes per tensor. Usually
  wrapped in `error_feedback`, which carries the dropped mass forward.
  """
  if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
          and 0 < fraction <= 1):
    raise ValueError("compression: topk: fraction must be a number in (0, 1], "
                     f"got {fraction!r}")
  if values not in _VALUE_CODECS:
    raise ValueError(f"compression: topk: values must be one of "
                     f"{sorted(_VALUE_CODECS)}, got {values!r}")
  factory = _VALUE_CODECS[values]
  allowed = sorted(inspect.signature(factory).parameters)
  for field in value_hparams:
    if field not in allowed:
      raise ValueError(f"compression: topk: unknown hparam {field!r} for "
                       f"values={values!r}; allowed: "
                       f"{['fraction', 'values'] + allowed}")
  if "block_size" in value_hparams:
    _check_block_size(f"topk({values})", value_hparams["block_size"])
  if "stochastic" in value_hparams:
    _check_bool(f"topk({values})", "stochastic", value_hparams["stochastic"])
  if "bins" in value_hparams and value_hparams["bins"] not in ("uniform",
                                                               "quantile"):
    raise ValueError("compression: topk(uint8): bins must be 'uniform' or "
                     f"'quantile', got {value_hparams['bins']!r}")
  return _from_codec(_topk_codec(float(fraction), factory(**value_hparams)))


class ErrorFeedbackState(NamedTuple):
  """Error-feedback state of one replica.

  residual: r_i, what was not sent yet (float32, shaped like params).
  inner: the wrapped compressor's state.
  nonfinite_rounds: how many syncs met a non-finite value (int32), so a
    reset residual is visible rather than silent.
  """
  residual: Params
  inner: Any
  nonfinite_rounds: jax.Array


def error_feedback(compressor: Compressor) -> Compressor:
  """Wraps any compressor with error feedback (arXiv 1901.09847).

  Sends c = C(Δ_i + r_i) and keeps r_i ← Δ_i + r_i − c, so after T syncs
  Σ_t c_t + r_T = Σ_t Δ_t exactly (in real arithmetic): nothing is lost, only
  delayed, and the cumulative error is the current residual, which stays as
  small as one step's quantisation error.

  Non-finite values: wherever Δ_i + r_i or its decoded value is NaN or ±Inf
  (a non-finite input, or an fp16 overflow), that element's residual is set
  to 0 instead of NaN, so one bad round cannot poison every later one; what
  the residual held there is dropped. The decoded output is NOT cleaned: the
  non-finite value goes out so the engine's checks see it, and
  `nonfinite_rounds` counts such syncs.
  """

  if compressor.aggregate is not None:
    raise ValueError("compression: error_feedback needs a compressor that "
                     "sends decoded values (this one has its own aggregate)")

  def init(params):
    residual = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    return ErrorFeedbackState(residual=residual,
                              inner=compressor.init(params),
                              nonfinite_rounds=jnp.zeros((), jnp.int32))

  def compress(delta, state, key):
    target = jax.tree.map(lambda d, r: jnp.asarray(d, jnp.float32) + r,
                          delta, state.residual)
    decoded, inner = compressor.compress(target, state.inner, key)
    decoded = jax.tree.map(lambda c: jnp.asarray(c, jnp.float32), decoded)

    def residual_of(t, c):
      ok = jnp.isfinite(t) & jnp.isfinite(c)
      return jnp.where(ok, t - c, 0.0)

    residual = jax.tree.map(residual_of, target, decoded)
    bad = [jnp.any(~(jnp.isfinite(t) & jnp.isfinite(c)))
           for t, c in zip(jax.tree.leaves(target), jax.tree.leaves(decoded))]
    any_bad = jnp.any(jnp.stack(bad)) if bad else jnp.zeros((), bool)
    new_state = ErrorFeedbackState(
        residual=residual, inner=inner,
        nonfinite_rounds=state.nonfinite_rounds + any_bad.astype(jnp.int32))
    return decoded, new_state

  return Compressor(init=init, compress=compress,
                    payload_bytes=compressor.payload_bytes,
                    collective=compressor.collective)


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


_REGISTRY = {
    "none": none,
    "bf16": bf16,
    "fp16": fp16,
    "int8": int8,
    "int4": int4,
    "fp4": fp4,
    "uint8": uint8,
    "topk": topk,
    "dct_topk": dct_topk,
}


def get(name: str, **hparams) -> Compressor:
  """Returns the compressor registered under `name`.

  Args:
    name: one of the keys of `_REGISTRY`.
    **hparams: the factory's keyword arguments, plus `ef` (bool, default
      False): wrap the result in `error_feedback`.

  Raises:
    ValueError: unknown name (lists the known ones), unknown hparam (lists the
      allowed ones) or a bad hparam value (names the field and what it may be).
  """
  if name not in _REGISTRY:
    raise ValueError(
        f"compression: unknown compressor {name!r}; known: {sorted(_REGISTRY)}")
  ef = hparams.pop("ef", False)
  _check_bool(name, "ef", ef)
  if ef and name == "none":
    raise ValueError("compression: none: ef=True keeps the residual of a "
                     "lossy compressor, and 'none' loses nothing; choose a "
                     "compressor (e.g. 'int8') or ef=False")
  factory = _REGISTRY[name]
  params = inspect.signature(factory).parameters
  takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD
                  for p in params.values())
  if not takes_any:
    allowed = sorted(params) + ["ef"]
    for field in hparams:
      if field not in params:
        raise ValueError(f"compression: {name}: unknown hparam {field!r}; "
                         f"allowed: {allowed}")
  compressor = factory(**hparams)
  return error_feedback(compressor) if ef else compressor
