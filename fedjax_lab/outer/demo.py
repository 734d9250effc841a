"""DeMo: "DeMo: Decoupled Momentum Optimization", Peng, Quesnelle, Kingma,
arXiv 2411.19870 (the published part of Nous Research's DisTrO; reference
code github.com/bloc97/DeMo).

Every step, per replica i (no gradient all-reduce): e_i ← β·e_i + η·g_i;
message_i = top-k(DCT(e_i)) per chunk; e_i ← e_i − IDCT(message_i); then
Q = IDCT(per-coefficient mean of the messages over the replicas that sent
each coefficient) and θ ← θ·(1 − η·λ) − η·sign(Q). The rule with its defaults
is in docs/algorithms.md; the codec (chunking, scalars, ≥ 3-D tensors, bytes)
is `fedjax_lab.comm.dct`.

In the engine DeMo is an every-step entry: the residual e_i is the
per-replica state of its own codec, the per-coefficient mean is that codec's
`aggregate`, and sign-SGD with decoupled weight decay is its `step_rule`,
applied to the one shared model. The engine's `inner_opt` is not used, and a
run's compressor is refused (DeMo's messages are its own).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_lab.comm import compress as compress_lib
from fedjax_lab.comm import dct
from fedjax_lab.outer import base
from fedjax_lab.typing import Params


class ResidualState(NamedTuple):
  """One replica's DeMo state: the momentum residual e_i (float32)."""
  residual: Params


def residual_compressor(*, learning_rate: float, decay: float, chunk: int,
                        topk: int) -> compress_lib.Compressor:
  """DeMo's step compressor: decaying residual, DCT top-k, sparse mean.

  compress(g_i, state, key): e ← β·e + η·g; sends top-k(DCT(e)) per block
  (a `dct.Message` per leaf: coefficient-domain values with zeros plus a 0/1
  mask); e ← e − IDCT(message). aggregate: `dct.mean_over_senders`, the
  per-coefficient mean over the replicas with weight > 0, then the IDCT.
  Bytes per step: `dct.tree_bytes` (fp32 values + bit-packed indices).

  η is a fixed float (no schedule): it scales what enters the residual, so a
  schedule would need a step counter in this state.
  """

  def init(params):
    return ResidualState(residual=jax.tree.map(
        lambda p: jnp.zeros(p.shape, jnp.float32), params))

  def compress(grads, state, key):
    del key
    e = jax.tree.map(lambda g, r: decay * r + learning_rate * jnp.asarray(
        g, jnp.float32), grads, state.residual)
    sent = jax.tree.map(lambda x: dct.encode(x, dct.plan(x.shape, chunk, topk)),
                        e)
    # What was sent leaves the residual (`sent` has `e` as a tree prefix).
    residual = jax.tree.map(lambda x, msg: x - dct.decode(msg.values, msg.plan),
                            e, sent)
    return sent, ResidualState(residual=residual)

  return compress_lib.Compressor(
      init=init, compress=compress,
      payload_bytes=lambda params: dct.tree_bytes(params, chunk, topk),
      aggregate=dct.mean_over_senders, collective="all_gather")


def sign_sgd(learning_rate: float,
             weight_decay: float = 0.0) -> optax.GradientTransformation:
  """θ ← θ·(1 − η·λ) − η·sign(Q) (sign(0) = 0), as an optax transform."""
  parts = [optax.scale_by_sign()]
  if weight_decay > 0:
    # −η·(sign(Q) + λ·θ): the same update as decaying θ first.
    parts.append(optax.add_decayed_weights(weight_decay))
  parts.append(optax.scale(-learning_rate))
  return optax.chain(*parts)


def demo(*, learning_rate: float = 4e-4, compression_decay: float = 0.999,
         compression_topk: int = 32, compression_chunk: int = 64,
         weight_decay: float = 0.0) -> base.OuterAlgorithm:
  """DeMo: every step, sign-SGD on the sparse DCT mean of momentum residuals.

  Args:
    learning_rate: η, a fixed float > 0; it scales the gradient entering
      the residual and the sign step. 4e-4 is the paper's OLMo setting (the
      peak lr of its AdamW baseline: a sign step moves every weight by η, as
      an Adam step does).
    compression_decay: β ∈ [0, 1), the residual's decay (paper: 0.999).
    compression_topk: k ≥ 1 coefficients kept per block (paper: 32).
    compression_chunk: s ≥ 1, the largest block side (paper: 64).
    weight_decay: λ ≥ 0, decoupled (paper: 0).

  Raises:
    ValueError: naming the field, for a value out of range.
  """
  lr = base.check_positive("learning_rate", learning_rate)
  decay = base.check_unit_interval("compression_decay", compression_decay)
  topk = base.check_positive_int("compression_topk", compression_topk)
  chunk = base.check_positive_int("compression_chunk", compression_chunk)
  wd = base.check_nonnegative("weight_decay", weight_decay)

  return base.OuterAlgorithm(
      init=lambda params: (), step_rule=lambda inner_tx: sign_sgd(lr, wd),
      reset_inner_state=False, name="demo",
      codec=residual_compressor(learning_rate=lr, decay=decay, chunk=chunk,
                                topk=topk))
