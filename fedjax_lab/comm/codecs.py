"""Leaf codecs: what one tensor becomes on the wire, and `from_codec`.

A `Codec` is one tensor's decode(encode(x)) round trip and its byte count;
`from_codec` applies one to every tensor of a pytree as a `Compressor`. The
blocking, scale, rounding and non-finite conventions are those of
`fedjax_lab.comm.compress`'s docstring; the public factories built on these
codecs are in `fedjax_lab.comm.quantizers`.
"""

import math
from typing import Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_lab.comm.compressor import Compressor
from fedjax_lab.typing import PRNGKey


class Codec(NamedTuple):
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


def cast_codec(dtype, bits: int) -> Codec:

  def roundtrip(x, key):
    del key
    return x.astype(dtype).astype(jnp.float32)

  return Codec(roundtrip, lambda shape: -(-_numel(shape) * bits // 8))


def absmax_int_codec(levels: int, bits: int, block_size: Optional[int],
                      stochastic: bool) -> Codec:
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

  return Codec(roundtrip, leaf_bytes, stochastic)


# E3M0: magnitudes scale · 2^(e − 7) for exponent field e = 1..7 and zero for
# e = 0, i.e. {0, 2^-6, 2^-5, ..., 2^-1, 1} · scale.
_FP4_MIN_EXP = -6


def fp4_e3m0_codec(block_size: Optional[int], stochastic: bool) -> Codec:
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

  return Codec(roundtrip, leaf_bytes, stochastic)


_UINT8_LEVELS = 256


def uint8_lut_codec(bins: str) -> Codec:
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

  return Codec(roundtrip, leaf_bytes)


def topk_codec(fraction: float, values: Optional[Codec]) -> Codec:
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

  return Codec(roundtrip, leaf_bytes, values is not None and values.stochastic)


def from_codec(codec: Codec) -> Compressor:
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
