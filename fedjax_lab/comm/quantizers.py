"""The quantiser factories: bf16, fp16, int8, int4, fp4, uint8 and topk.

Each returns a `Compressor` built from a leaf codec (`fedjax_lab.comm.codecs`)
after checking its hyperparameters; `fedjax_lab.comm.compress.get` finds them
by name.
"""

import inspect
from typing import Optional

import jax.numpy as jnp

from fedjax_lab.comm.codecs import absmax_int_codec
from fedjax_lab.comm.codecs import cast_codec
from fedjax_lab.comm.codecs import fp4_e3m0_codec
from fedjax_lab.comm.codecs import from_codec
from fedjax_lab.comm.codecs import topk_codec
from fedjax_lab.comm.codecs import uint8_lut_codec
from fedjax_lab.comm.compressor import check_block_size
from fedjax_lab.comm.compressor import check_bool
from fedjax_lab.comm.compressor import Compressor


def bf16() -> Compressor:
  """bfloat16 cast round trip (OpenDiLoCo): 2 bytes per element."""
  return from_codec(cast_codec(jnp.bfloat16, 16))


def fp16() -> Compressor:
  """float16 cast round trip (OpenDiLoCo): 2 bytes per element.

  Magnitudes above 65504 overflow to ±Inf, as a numpy cast does; the engine's
  non-finite checks then see them (use bf16 when the range is unknown).
  """
  return from_codec(cast_codec(jnp.float16, 16))


def int8(*, block_size: Optional[int] = None,
         stochastic: bool = False) -> Compressor:
  """Symmetric absmax int8: q = round(x / s), s = absmax / 127, x̂ = q · s.

  Per tensor (`block_size=None`) or per block of `block_size` elements, one
  fp32 scale per block. Error bound, round-to-nearest: |x − x̂| ≤ s / 2 for
  every element, s its block's scale; stochastic rounding: |x − x̂| < s, and
  E[x̂] = x. Bytes: numel + 4 · blocks per tensor.
  """
  check_block_size("int8", block_size)
  check_bool("int8", "stochastic", stochastic)
  return from_codec(absmax_int_codec(127, 8, block_size, stochastic))


def int4(*, block_size: Optional[int] = 32,
         stochastic: bool = False) -> Compressor:
  """Symmetric absmax int4 per block: q ∈ [−7, 7], s = absmax / 7, x̂ = q · s.

  (−8 is left unused so the grid is symmetric.) Same bounds as `int8` with
  s = absmax / 7: |x − x̂| ≤ s / 2 (nearest), < s (stochastic). Bytes:
  ceil(numel / 2) + 4 · blocks per tensor (two codes packed per byte).
  """
  check_block_size("int4", block_size)
  check_bool("int4", "stochastic", stochastic)
  return from_codec(absmax_int_codec(7, 4, block_size, stochastic))


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
  check_block_size("fp4", block_size)
  check_bool("fp4", "stochastic", stochastic)
  return from_codec(fp4_e3m0_codec(block_size, stochastic))


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
  return from_codec(uint8_lut_codec(bins))


# The quantisers top-k may send its kept values with (1-D, per tensor).
_VALUE_CODECS = {
    "fp32": lambda: None,
    "bf16": lambda: cast_codec(jnp.bfloat16, 16),
    "fp16": lambda: cast_codec(jnp.float16, 16),
    "int8": lambda block_size=None, stochastic=False: absmax_int_codec(
        127, 8, block_size, stochastic),
    "int4": lambda block_size=32, stochastic=False: absmax_int_codec(
        7, 4, block_size, stochastic),
    "fp4": lambda block_size=None, stochastic=False: fp4_e3m0_codec(
        block_size, stochastic),
    "uint8": lambda bins="uniform": uint8_lut_codec(bins),
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
    check_block_size(f"topk({values})", value_hparams["block_size"])
  if "stochastic" in value_hparams:
    check_bool(f"topk({values})", "stochastic", value_hparams["stochastic"])
  if "bins" in value_hparams and value_hparams["bins"] not in ("uniform",
                                                               "quantile"):
    raise ValueError("compression: topk(uint8): bins must be 'uniform' or "
                     f"'quantile', got {value_hparams['bins']!r}")
  return from_codec(topk_codec(float(fraction), factory(**value_hparams)))
