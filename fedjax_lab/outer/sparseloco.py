"""SparseLoCo: "Communication Efficient LLM Pre-training with SparseLoCo",
Sarfi, Thérien, Lidin, Belilovsky, arXiv 2508.15706 (reference code
tplr-ai/SparseLoCo, `sparseloco.py`).

Per replica i and tensor, at a sync: e_i ← β·e_i + α·Δ_i; in every chunk keep
the k entries of largest |e_i|, quantise the kept values (2 bits by default);
e_i ← e_i − decode(own message); the aggregate is, per coordinate, the mean
over the replicas that sent it; θ ← θ − α·aggregate. No outer momentum; the
error buffer e_i replaces it. Replicas restart from θ and keep their inner
AdamW state. The rule, its defaults and the sources' ambiguities are in
docs/algorithms.md (we follow the authors' code: α scales both the buffer and
the step, and the mean is over senders).

In the engine the error buffer is the per-replica state of SparseLoCo's own
codec, its chunks are `comm.dct` plans without the transform, and the
per-coordinate mean is `dct.mean_over_senders` (DeMo's aggregate).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_lab.comm import compress as compress_lib
from fedjax_lab.comm import dct
from fedjax_lab.outer import base
from fedjax_lab.typing import Params


class ErrorBuffer(NamedTuple):
  """One replica's error-feedback buffer e_i (float32)."""
  error: Params


def chunk_plan(shape, chunk_size: int, top_k: int) -> dct.Plan:
  """The chunks of a tensor and k per chunk: k = round(L·top_k/chunk_size²)
  (Python's round) clipped to [1, L], L the chunk's size."""
  p = dct.plan(shape, chunk_size, 1)
  k = min(max(1, round(p.block_size * top_k / chunk_size**2)), p.block_size)
  return p._replace(k=k, transform=False)


def quantise(values, mask, bins: int, value_range: float):
  """The authors' quantiser over the kept values of one tensor.

  shift = mean(v), c = v − shift, scale = r·‖c‖/(√(n − 1)·B) (1 if 0),
  q = clip(round(c/scale + B/2), 0, B − 1), lookup[j] = mean of c in bin j;
  a kept value becomes lookup[q] + shift. Unsent entries stay 0.
  """
  sent = mask > 0
  n = jnp.sum(mask)
  shift = jnp.sum(jnp.where(sent, values, 0.0)) / jnp.maximum(n, 1.0)
  c = jnp.where(sent, values - shift, 0.0)
  norm = jnp.sqrt(jnp.sum(jnp.square(c)))
  scale = value_range * norm / (jnp.sqrt(jnp.maximum(n - 1.0, 1.0)) * bins)
  scale = jnp.where((scale > 0) & (n > 1), scale, 1.0)
  q = jnp.clip(jnp.round(c / scale + bins / 2), 0, bins - 1).astype(jnp.int32)
  onehot = (q[..., None] == jnp.arange(bins).reshape(1, 1, bins)) & (
      sent[..., None])
  counts = jnp.sum(onehot, axis=(0, 1))
  lookup = jnp.sum(jnp.where(onehot, c[..., None], 0.0), axis=(0, 1)) / (
      jnp.maximum(counts, 1))
  return jnp.where(sent, lookup[q] + shift, 0.0)


def message_bytes(shape, chunk_size: int, top_k: int, bins: int) -> int:
  """One tensor's message: per chunk k indices of ceil(log2 L) bits and k
  codes of log2(B) bits (fp32 values unquantised), bit-packed per tensor,
  plus a quantised tensor's shift and B-entry lookup (fp32)."""
  p = chunk_plan(shape, chunk_size, top_k)
  if p.numel == 0:
    return 0
  index_bits = math.ceil(math.log2(p.block_size)) if p.block_size > 1 else 0
  value_bits = math.ceil(math.log2(bins)) if bins else 32
  packed = -(-p.num_blocks * p.k * (index_bits + value_bits) // 8)
  return packed + (4 * (1 + bins) if bins else 0)


def codec(*, learning_rate: float, decay: float, chunk_size: int, top_k: int,
          bins: int, value_range: float) -> compress_lib.Compressor:
  """SparseLoCo's messages: error feedback, chunked top-k, quantised values."""

  def init(params):
    return ErrorBuffer(jax.tree.map(
        lambda p: jnp.zeros(p.shape, jnp.float32), params))

  def encode(e):
    msg = dct.encode(e, chunk_plan(e.shape, chunk_size, top_k))
    if bins:
      msg = msg.replace(values=quantise(msg.values, msg.mask, bins,
                                        value_range))
    return msg

  def compress(delta, state, key):
    del key
    e = jax.tree.map(lambda d, r: decay * r + learning_rate * jnp.asarray(
        d, jnp.float32), delta, state.error)
    sent = jax.tree.map(encode, e)
    # What was sent (after quantisation) leaves the buffer.
    error = jax.tree.map(lambda x, m: x - dct.decode(m.values, m.plan), e,
                         sent)
    return sent, ErrorBuffer(error)

  def payload_bytes(params):
    return sum(message_bytes(tuple(x.shape), chunk_size, top_k, bins)
               for x in jax.tree.leaves(params))

  return compress_lib.Compressor(
      init=init, compress=compress, payload_bytes=payload_bytes,
      aggregate=dct.mean_over_senders, collective="all_gather")


def sparseloco(*, learning_rate: float = 1.0, decay: float = 0.95,
               chunk_size: int = 64, top_k: int = 128, quant_bins: int = 4,
               quant_range: float = 6.0,
               reset_inner_state: bool = False) -> base.OuterAlgorithm:
  """SparseLoCo (defaults: the authors' 512M sweep).

  Args:
    learning_rate: α > 0; scales what enters the buffer and the outer step
      (k = all, no quantisation: outer SGD with lr α² on the mean Δ).
    decay: β ∈ [0, 1), the error buffer's decay.
    chunk_size: the largest chunk side (per dimension, a divisor of it).
    top_k: entries kept per full chunk_size² chunk (3.1% at 128 of 64²).
    quant_bins: B ≥ 2 bins for the kept values (4: 2 bits); 0: fp32 values.
    quant_range: r > 0, the quantiser's range in standard deviations.
    reset_inner_state: False keeps each replica's inner AdamW state.
  """
  alpha = base.check_positive("learning_rate", learning_rate)
  beta = base.check_unit_interval("decay", decay)
  chunk = base.check_positive_int("chunk_size", chunk_size)
  k = base.check_positive_int("top_k", top_k)
  bins = base.check_nonnegative_int("quant_bins", quant_bins)
  if bins == 1:
    raise ValueError("quant_bins must be 0 (no quantisation) or >= 2, got 1")
  r = base.check_positive("quant_range", quant_range)
  return base.optax_outer(
      optax.sgd(alpha), name="sparseloco",
      reset_inner_state=base.check_bool("reset_inner_state",
                                        reset_inner_state),
      codec=codec(learning_rate=alpha, decay=beta, chunk_size=chunk, top_k=k,
                  bins=bins, value_range=r))
