"""host_arrays.host_aligned: the engine's 64-byte aligned copy of a large host batch
(XLA:CPU aliases it instead of copying) changes no value and nothing else."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_lab import host_arrays


def _unaligned(shape, dtype=np.float32):
  """A numpy array whose data starts 4 bytes past a 64-byte boundary."""
  n = int(np.prod(shape)) * np.dtype(dtype).itemsize
  buf = np.empty(n + 128, np.uint8)
  start = (-buf.ctypes.data) % 64 + 4
  out = buf[start:start + n].view(dtype).reshape(shape)
  out[...] = np.arange(out.size, dtype=dtype).reshape(shape) * 0.5
  return out


def test_large_unaligned_array_is_copied_aligned_with_the_same_values():
  x = _unaligned((64, 32, 784))
  assert x.ctypes.data % 64 != 0
  y = host_arrays.host_aligned(x)
  assert y is not x and y.ctypes.data % 64 == 0
  assert y.dtype == x.dtype and y.shape == x.shape
  np.testing.assert_array_equal(y, x)
  x[0, 0, 0] = -1.0  # The copy is the engine's own: later writes do not reach it.
  assert y[0, 0, 0] == 0.0


@pytest.mark.parametrize("make", [
    lambda: _unaligned((8, 8)),                       # Small: not worth it.
    lambda: jnp.zeros((64, 32, 784)),                 # Already a jax array.
    lambda: _unaligned((64, 32, 784), np.float64),    # jax would convert it.
    lambda: np.zeros((64, 32, 784), object),          # Not a number dtype.
    lambda: 3.0,
])
def test_anything_else_is_returned_as_it_is(make):
  x = make()
  assert host_arrays.host_aligned(x) is x


def test_an_aligned_array_is_not_copied():
  x = host_arrays.host_aligned(_unaligned((64, 32, 784)))
  assert host_arrays.host_aligned(x) is x


def test_int_labels_keep_their_values():
  x = _unaligned((64, 4096), np.int32)
  y = host_arrays.host_aligned(x)
  assert y.ctypes.data % 64 == 0 and y.dtype == np.int32
  np.testing.assert_array_equal(y, x)
  assert jax.device_put(y).dtype == jnp.int32
