"""A decoder-only byte-level transformer LM (flax.linen).

Pre-LayerNorm blocks (GPT-2 / Xiong et al., arXiv:2002.04745), causal
self-attention with rotary position embeddings (RoPE, Su et al.,
arXiv:2104.09864: no position parameters, so the parameter count does not
depend on seq_len), a GELU MLP, and tied input/output embeddings. Dense
layers have no biases; LayerNorms have scale and bias.

Parameters are float32; `dtype` is the compute dtype (e.g. bfloat16).
The residual stream, attention softmax, LayerNorms and output logits are
float32 whatever `dtype` is.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

VOCAB_SIZE = 256  # Bytes.

# GPT-2 initialisation: N(0, 0.02), residual projections scaled by
# 1/sqrt(2 · num_layers) so the residual stream's variance does not grow
# with depth. At init the tied logits are ~N(0, 0.02² · d) and the loss is
# close to ln 256.
_INIT_STD = 0.02


def transformer_num_params(*, d_model: int, num_layers: int, mlp_ratio: int,
                           vocab_size: int = VOCAB_SIZE) -> int:
  """The parameter count of `TransformerLM`, by hand.

  N = V·d (tied embedding) + num_layers · (4·d² attention + 2·r·d² MLP
  + 4·d two LayerNorms) + 2·d final LayerNorm.
  """
  d, r = d_model, mlp_ratio
  return vocab_size * d + num_layers * (4 * d * d + 2 * r * d * d + 4 * d) + 2 * d


def transformer_train_flops_per_token(*, num_params: int, num_layers: int,
                                      seq_len: int, d_model: int) -> float:
  """Training FLOPs per token: 6·N + 12·num_layers·seq_len·d_model.

  The PaLM / Chinchilla convention (Chowdhery et al., arXiv:2204.02311,
  appendix B). A forward pass costs 2 FLOPs per parameter per token (every
  parameter is in one matmul; the tied embedding is counted once, as the
  output projection; LayerNorm parameters, <1%, are counted too) plus
  4·seq_len·d_model per layer for QKᵀ and AV (full, not halved for the
  causal mask); training (forward + backward) is 3× forward.
  """
  return 6.0 * num_params + 12.0 * num_layers * seq_len * d_model


def rotary(x_BxLxNxH: jax.Array) -> jax.Array:
  """Applies RoPE (rotate-half form) over the L axis of [B, L, N, H]."""
  length, head_dim = x_BxLxNxH.shape[1], x_BxLxNxH.shape[3]
  half = head_dim // 2
  inv_freq = 1.0 / (10000.0 ** (jnp.arange(half, dtype=jnp.float32) / half))
  angle_LxH = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None, :]
  sin = jnp.sin(angle_LxH)[None, :, None, :]
  cos = jnp.cos(angle_LxH)[None, :, None, :]
  x = x_BxLxNxH.astype(jnp.float32)
  x1, x2 = x[..., :half], x[..., half:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxNxH.dtype)


class Block(nn.Module):
  """Pre-LN block: x + Attn(LN(x)), then x + MLP(LN(x))."""

  d_model: int
  num_heads: int
  mlp_ratio: int
  num_layers: int
  dropout: float
  dtype: Any

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, deterministic: bool) -> jax.Array:
    head_dim = self.d_model // self.num_heads
    init = nn.initializers.normal(_INIT_STD)
    out_init = nn.initializers.normal(_INIT_STD / (2 * self.num_layers) ** 0.5)
    ln = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=jnp.float32,
                                   param_dtype=jnp.float32, name=name)

    h = ln("ln_attn")(x_BxLxD).astype(self.dtype)
    # One fused QKV matmul: [B, L, 3, N, H].
    qkv = nn.DenseGeneral((3, self.num_heads, head_dim), use_bias=False,
                          kernel_init=init, dtype=self.dtype,
                          param_dtype=jnp.float32, name="qkv")(h)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q, k = rotary(q), rotary(k)
    # XLA on CPU; cuDNN flash attention can be chosen on GPU later via
    # `implementation=`. Softmax is computed in float32 inside.
    attn = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    attn = nn.DenseGeneral(self.d_model, axis=(-2, -1), use_bias=False,
                           kernel_init=out_init, dtype=self.dtype,
                           param_dtype=jnp.float32, name="attn_out")(attn)
    attn = nn.Dropout(self.dropout)(attn, deterministic=deterministic)
    x_BxLxD = x_BxLxD + attn

    h = ln("ln_mlp")(x_BxLxD).astype(self.dtype)
    h = nn.Dense(self.mlp_ratio * self.d_model, use_bias=False,
                 kernel_init=init, dtype=self.dtype, param_dtype=jnp.float32,
                 name="mlp_in")(h)
    h = nn.gelu(h)
    h = nn.Dense(self.d_model, use_bias=False, kernel_init=out_init,
                 dtype=self.dtype, param_dtype=jnp.float32, name="mlp_out")(h)
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    return x_BxLxD + h


class TransformerLM(nn.Module):
  """Decoder-only byte LM: int32 tokens [B, L] → float32 logits [B, L, 256].

  Attributes:
    d_model: width; must be divisible by num_heads, head_dim must be even.
    num_layers: depth.
    num_heads: attention heads.
    mlp_ratio: MLP hidden width / d_model.
    dropout: dropout rate on the embeddings and each residual branch.
    dtype: compute dtype (params are float32).
    remat: rematerialise each block's activations in the backward pass
      (`nn.remat`): activation memory of one block instead of all, for about
      a third more compute.
  """

  d_model: int = 128
  num_layers: int = 2
  num_heads: int = 4
  mlp_ratio: int = 4
  dropout: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, tokens_BxL: jax.Array, *,
               deterministic: bool = True) -> jax.Array:
    embed = nn.Embed(VOCAB_SIZE, self.d_model,
                     embedding_init=nn.initializers.normal(_INIT_STD),
                     dtype=self.dtype, param_dtype=jnp.float32, name="embed")
    # The residual stream stays float32; only matmul inputs use `dtype`.
    x = embed(tokens_BxL).astype(jnp.float32)
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    # `deterministic` (argument 2, counting self) is a Python bool: static.
    block = nn.remat(Block, static_argnums=(2,)) if self.remat else Block
    for i in range(self.num_layers):
      x = block(self.d_model, self.num_heads, self.mlp_ratio, self.num_layers,
                self.dropout, self.dtype, name=f"block_{i}")(x, deterministic)
    x = nn.LayerNorm(epsilon=1e-6, dtype=jnp.float32, param_dtype=jnp.float32,
                     name="ln_final")(x)
    return embed.attend(x.astype(self.dtype)).astype(jnp.float32)
