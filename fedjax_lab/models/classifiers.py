"""Image classifiers (flax.linen): the MLP and CNN of the FedAvg paper.

McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data" (arXiv:1602.05629): the "2NN" MLP (two hidden layers of
200, ReLU) and the CNN (two 5×5 convolutions with 32 and 64 channels, each
followed by 2×2 max pooling, a 512-unit dense layer, ReLU, and a softmax
output).

Inputs are float32 images [B, H, W, C] in [0, 1]; outputs float32 logits.
"""

import math
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

MLP_HIDDEN = (200, 200)
CNN_HIDDEN = (32, 64, 512)  # conv1 channels, conv2 channels, dense width.
_KERNEL = 5


class MLP(nn.Module):
  """Flatten → [Dense(h) → ReLU for h in hidden] → Dense(num_classes)."""

  num_classes: int
  hidden: Sequence[int] = MLP_HIDDEN
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image_BxHxWxC: jax.Array) -> jax.Array:
    x = image_BxHxWxC.reshape(image_BxHxWxC.shape[0], -1).astype(self.dtype)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32)(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)(x)
    return x.astype(jnp.float32)


class CNN(nn.Module):
  """[Conv5×5(c) → ReLU → MaxPool2×2 per c] → Dense → ReLU → Dense."""

  num_classes: int
  hidden: Sequence[int] = CNN_HIDDEN
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image_BxHxWxC: jax.Array) -> jax.Array:
    *channels, dense = self.hidden
    x = image_BxHxWxC.astype(self.dtype)
    for c in channels:
      x = nn.Conv(c, (_KERNEL, _KERNEL), padding="SAME", dtype=self.dtype,
                  param_dtype=jnp.float32)(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(dense, dtype=self.dtype, param_dtype=jnp.float32)(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)(x)
    return x.astype(jnp.float32)


def _forward_macs(model: str, num_classes: int, input_shape: Tuple[int, ...],
                  hidden: Sequence[int]) -> int:
  """Multiply-accumulates of one forward pass (biases, ReLU, pooling ignored)."""
  if model == "mlp":
    widths = [math.prod(input_shape)] + list(hidden) + [num_classes]
    return sum(a * b for a, b in zip(widths[:-1], widths[1:]))
  height, width, c_in = input_shape
  *channels, dense = hidden
  macs = 0
  for c in channels:
    macs += _KERNEL * _KERNEL * c_in * c * height * width  # SAME padding.
    height, width, c_in = height // 2, width // 2, c
  flat = height * width * c_in
  return macs + flat * dense + dense * num_classes


def classifier_train_flops_per_example(model: str, *, num_classes: int,
                                       input_shape: Tuple[int, ...],
                                       hidden: Sequence[int]) -> float:
  """Training FLOPs per example: 3 × forward, forward = 2 × multiply-accumulates.

  Dense layer in→out: in·out MACs. Conv k×k, c_in→c_out, SAME padding on an
  H×W map: k²·c_in·c_out·H·W MACs. Biases, ReLU and pooling are ignored.
  """
  return 6.0 * _forward_macs(model, num_classes, tuple(input_shape), hidden)
