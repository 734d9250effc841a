"""Chunked DCT-II with top-k per block: the codec of DeMo (arXiv 2411.19870).

"DeMo: Decoupled Momentum Optimization", Peng, Quesnelle, Kingma, arXiv
2411.19870 (reference code github.com/bloc97/DeMo). The rule, as in
docs/algorithms.md: every dimension of size n is cut into chunks of
s_n = the largest divisor of n that is ≤ `chunk`; each block is transformed by
the orthonormal DCT-II along its block axes, and in every (flattened) block
the k = `topk` coefficients of largest magnitude are kept (k clamped to the
block size).

Shapes, exactly:
  * 2-D [n1, n2] -> blocks [n1/s1, n2/s2, s1, s2], transformed along both
    block axes (C = D1 · X · D2ᵀ per block).
  * 1-D [n] -> rows [n/s, s], transformed along s.
  * Scalars are a 1-D tensor of length 1: one block of size 1, sent dense
    (its one value, 4 bytes, no index).
  * ≥ 3-D [..., n] (not covered by the reference) is reshaped to the 2-D
    [prod(leading), n] first.
  * A dimension whose largest divisor ≤ chunk is 1 (e.g. a prime > chunk) has
    chunk 1: its DCT is the 1×1 identity, so it is not transformed.
  * Empty tensors are sent as nothing.

Coefficients live as [num_blocks, block_size] arrays (blocks in row-major
order of the block grid, each block flattened row-major).

Bytes (exact, per tensor): every block sends k fp32 values and k indices of
b = ceil(log2(block_size)) bits (b = 0 for a block of size 1), bit-packed per
tensor: ceil(num_blocks · k · (32 + b) / 8).

A plan with `transform=False` cuts a tensor into the same blocks and sends
them without the DCT (SparseLoCo's chunked top-k); `mean_over_senders` is the
aggregate of both.

This module knows nothing of compressors or replicas; `compress.dct_topk`,
DeMo (`fedjax_lab.outer.demo`) and SparseLoCo (`fedjax_lab.outer.sparseloco`)
build on it.
"""

import functools
import math
from typing import Any, NamedTuple, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST


class Plan(NamedTuple):
  """How one tensor shape is cut into blocks (static, hashable).

  shape: the tensor's shape.
  view: the 1-D or 2-D shape the tensor is transformed as.
  chunks: the block's side per dimension of `view`.
  k: coefficients kept per block (clamped to the block size).
  """
  shape: Tuple[int, ...]
  view: Tuple[int, ...]
  chunks: Tuple[int, ...]
  k: int
  transform: bool = True  # False: the blocks are sent as they are (no DCT).

  @property
  def block_size(self) -> int:
    return int(np.prod(self.chunks, dtype=np.int64))

  @property
  def num_blocks(self) -> int:
    return int(np.prod(self.view, dtype=np.int64)) // self.block_size

  @property
  def numel(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64))


@flax.struct.dataclass
class Message:
  """One tensor's sparse message in the coefficient domain.

  values: float32 [num_blocks, block_size], zeros where not sent.
  mask: float32 [num_blocks, block_size], 1 where sent (float so that replica
    sums count senders).
  plan: the static layout, to decode.
  """
  values: jax.Array
  mask: jax.Array
  plan: Plan = flax.struct.field(pytree_node=False)


def chunk_size(n: int, chunk: int) -> int:
  """The largest divisor of n that is ≤ chunk (1 for n ≤ 1)."""
  for s in range(min(n, chunk), 0, -1):
    if n % s == 0:
      return s
  return 1


def plan(shape, chunk: int, topk: int) -> Plan:
  """The block layout of a tensor of `shape` (see the module docstring)."""
  shape = tuple(int(d) for d in shape)
  if len(shape) == 0:
    view = (1,)
  elif len(shape) <= 2:
    view = shape
  else:
    view = (int(np.prod(shape[:-1], dtype=np.int64)), shape[-1])
  chunks = tuple(chunk_size(n, chunk) for n in view)
  block = int(np.prod(chunks, dtype=np.int64))
  return Plan(shape=shape, view=view, chunks=chunks, k=min(topk, block))


@functools.lru_cache(maxsize=None)
def dct_matrix(s: int) -> np.ndarray:
  """The orthonormal DCT-II matrix D [s, s] (float64): coefficients = D @ x.

  D[k, n] = sqrt(2/s) · c_k · cos(π (2n + 1) k / (2s)), c_0 = 1/√2, c_k = 1;
  D is orthogonal, so the inverse (DCT-III) is Dᵀ. Entries that are exactly
  zero (cos(π/2) = 0, e.g. the middle of odd basis vectors of odd s) are
  stored as 0 rather than as float64 roundoff, so a coefficient cannot give
  an element it does not reach a roundoff value (DeMo takes signs).
  """
  n = np.arange(s)
  arg = (2 * n[None, :] + 1) * n[:, None]  # cos(π·arg / (2s)).
  d = np.sqrt(2.0 / s) * np.cos(np.pi * arg / (2 * s))
  d[arg % (2 * s) == s] = 0.0  # π·arg/(2s) an odd multiple of π/2.
  d[0] /= np.sqrt(2.0)
  return d


def _mat(s: int) -> jax.Array:
  return jnp.asarray(dct_matrix(s), jnp.float32)


def forward(x: jax.Array, p: Plan) -> jax.Array:
  """Tensor -> DCT coefficients [num_blocks, block_size] (float32); with
  `p.transform` False, the blocks themselves (SparseLoCo's chunks)."""
  x = jnp.asarray(x, jnp.float32).reshape(p.view)
  if not p.transform:
    if len(p.view) == 1:
      return x.reshape(p.num_blocks, p.block_size)
    (n1, n2), (s1, s2) = p.view, p.chunks
    blocks = x.reshape(n1 // s1, s1, n2 // s2, s2).transpose(0, 2, 1, 3)
    return blocks.reshape(p.num_blocks, p.block_size)
  if len(p.view) == 1:
    (s,) = p.chunks
    rows = x.reshape(-1, s)
    return jnp.einsum("ij,bj->bi", _mat(s), rows, precision=_HIGHEST)
  (n1, n2), (s1, s2) = p.view, p.chunks
  blocks = x.reshape(n1 // s1, s1, n2 // s2, s2)
  c = jnp.einsum("ij,ajbk,lk->abil", _mat(s1), blocks, _mat(s2),
                 precision=_HIGHEST)
  return c.reshape(p.num_blocks, p.block_size)


def inverse(c: jax.Array, p: Plan) -> jax.Array:
  """DCT coefficients [num_blocks, block_size] -> tensor of p.shape."""
  if not p.transform:
    if len(p.view) == 1:
      return c.reshape(p.shape)
    (n1, n2), (s1, s2) = p.view, p.chunks
    x = c.reshape(n1 // s1, n2 // s2, s1, s2).transpose(0, 2, 1, 3)
    return x.reshape(p.shape)
  if len(p.view) == 1:
    (s,) = p.chunks
    x = jnp.einsum("ij,bi->bj", _mat(s), c, precision=_HIGHEST)
    return x.reshape(p.shape)
  (n1, n2), (s1, s2) = p.view, p.chunks
  c = c.reshape(n1 // s1, n2 // s2, s1, s2)
  x = jnp.einsum("ij,abil,lk->ajbk", _mat(s1), c, _mat(s2),
                 precision=_HIGHEST)
  return x.reshape(p.shape)


def top_k(c: jax.Array, k: int) -> Tuple[jax.Array, jax.Array]:
  """Per row, keeps the k entries of largest |c|: (values with zeros, mask).

  Ties go to the lower index (`lax.top_k`). With k = the row length nothing
  is dropped.
  """
  if k >= c.shape[-1]:
    return c, jnp.ones_like(c)
  _, idx = jax.lax.top_k(jnp.abs(c), k)
  rows = jnp.arange(c.shape[0])[:, None]
  mask = jnp.zeros_like(c).at[rows, idx].set(1.0)
  return jnp.where(mask > 0, c, 0.0), mask


def encode(x: jax.Array, p: Plan) -> Message:
  """Tensor -> its sparse message (DCT, then top-k per block)."""
  if p.numel == 0:
    empty = jnp.zeros((0, p.block_size), jnp.float32)
    return Message(values=empty, mask=empty, plan=p)
  values, mask = top_k(forward(x, p), p.k)
  return Message(values=values, mask=mask, plan=p)


def decode(values: jax.Array, p: Plan) -> jax.Array:
  """Coefficient-domain values [num_blocks, block_size] -> tensor (IDCT)."""
  if p.numel == 0:
    return jnp.zeros(p.shape, jnp.float32)
  return inverse(values, p)


def leaf_bytes(shape, chunk: int, topk: int) -> int:
  """Bytes of one tensor's message: ceil(blocks · k · (32 + b) / 8)."""
  p = plan(shape, chunk, topk)
  if p.numel == 0:
    return 0
  index_bits = math.ceil(math.log2(p.block_size)) if p.block_size > 1 else 0
  return -(-p.num_blocks * p.k * (32 + index_bits) // 8)


def tree_bytes(tree: Any, chunk: int, topk: int) -> int:
  """Σ over leaves of `leaf_bytes` (shape-only; works on ShapeDtypeStructs)."""
  return int(sum(leaf_bytes(tuple(x.shape), chunk, topk)
                 for x in jax.tree.leaves(tree)))


def roundtrip(x: jax.Array, chunk: int, topk: int) -> jax.Array:
  """decode(encode(x)): what a receiver reconstructs of one tensor (float32)."""
  p = plan(x.shape, chunk, topk)
  return decode(encode(x, p).values, p)


def is_message(x) -> bool:
  return isinstance(x, Message)


def mean_over_senders(sent: Any, weights: jax.Array, ops) -> Any:
  """DeMo's aggregate: per coefficient, the mean over the replicas that sent it.

  Q = IDCT(Σ_i v_i / #{i : sent}) per coefficient (0 where nobody sent it),
  NOT the mean of the decoded dense messages (the IDCT mixes coefficients, so
  the sender counts change Q). Replicas with weight 0 count as not sending;
  every replica with weight > 0 counts once (the paper's unweighted mean).

  Args:
    sent: a tree of `Message`s with a leading replica axis [m, ...].
    weights: [m], the engine's w_i.
    ops: a `fedjax_lab.outer.base.ReplicaOps` (sums over all replicas).

  Returns:
    Q, a tree of float32 tensors shaped like the params (no replica axis).
  """
  senders = (weights > 0).astype(jnp.float32)

  def one(msg):
    total = ops.weighted_sum(msg.values, senders)
    count = ops.weighted_sum(msg.mask, senders)
    mean = jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)
    return decode(mean, msg.plan)

  return jax.tree.map(one, sent, is_leaf=is_message)
