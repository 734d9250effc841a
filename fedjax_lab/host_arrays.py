"""Host arrays XLA:CPU can read in place (docs/throughput.md)."""

import jax
import numpy as np

# XLA:CPU aliases a host numpy array whose data starts on this boundary
# instead of copying it into a device buffer.
_CPU_ALIGN = 64
_ALIGN_MIN_BYTES = 1 << 18


def host_aligned(x):
  """`x`, or for a large numpy array XLA:CPU would copy, a copy of it on a
  64-byte boundary, which XLA:CPU then aliases (zero-copy).

  numpy puts a large array 16 bytes past a page boundary, so XLA:CPU copies
  it into a fresh device buffer at every round, faulting that buffer in 4 KiB
  page by page (M = 64 MLP round batch, 64 MB: ~70 ms on the 2-core CPU);
  numpy's own copy into fresh memory (transparent huge pages) takes about
  half of that (docs/throughput.md). The copy is the engine's own, so nothing
  else writes it while a round reads it. Same bytes: results are identical.
  Anything else (jax arrays, small or already aligned arrays, dtypes jax
  would convert, other backends) is returned as it is.
  """
  if (not isinstance(x, np.ndarray) or x.nbytes < _ALIGN_MIN_BYTES
      or x.ctypes.data % _CPU_ALIGN == 0 or x.dtype.kind not in "biuf"
      or x.dtype != jax.dtypes.canonicalize_dtype(x.dtype)
      or jax.default_backend() != "cpu"):
    return x
  buf = np.empty(x.nbytes + _CPU_ALIGN, np.uint8)
  start = (-buf.ctypes.data) % _CPU_ALIGN
  out = buf[start:start + x.nbytes].view(x.dtype).reshape(x.shape)
  np.copyto(out, x)
  return out
