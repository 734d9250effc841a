"""Tests of the chunked DCT-II top-k codec (fedjax_lab/comm/dct.py) against
an independent float64 numpy reference written here."""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_lab.comm import dct

# ------------------------------------------------------ numpy reference


def ref_basis(s):
  """Orthonormal DCT-II, written out from its definition (float64)."""
  d = np.zeros((s, s))
  for k in range(s):
    ck = np.sqrt(1.0 / s) if k == 0 else np.sqrt(2.0 / s)
    for n in range(s):
      d[k, n] = ck * np.cos(np.pi * (n + 0.5) * k / s)
  return d


def ref_chunk(n, chunk):
  return max(s for s in range(1, min(n, chunk) + 1) if n % s == 0)


def ref_view(shape):
  if len(shape) == 0:
    return (1,)
  if len(shape) <= 2:
    return tuple(shape)
  return (int(np.prod(shape[:-1])), shape[-1])


def ref_forward(x, chunk):
  """Tensor -> coefficients [blocks, block_size], blocks row-major."""
  view = ref_view(x.shape)
  x = np.asarray(x, np.float64).reshape(view)
  if len(view) == 1:
    s = ref_chunk(view[0], chunk)
    return x.reshape(-1, s) @ ref_basis(s).T
  s1, s2 = ref_chunk(view[0], chunk), ref_chunk(view[1], chunk)
  d1, d2 = ref_basis(s1), ref_basis(s2)
  out = []
  for a in range(view[0] // s1):
    for b in range(view[1] // s2):
      block = x[a * s1:(a + 1) * s1, b * s2:(b + 1) * s2]
      out.append((d1 @ block @ d2.T).reshape(-1))
  return np.stack(out)


def ref_inverse(c, shape, chunk):
  view = ref_view(shape)
  if len(view) == 1:
    s = ref_chunk(view[0], chunk)
    return (c @ ref_basis(s)).reshape(shape)
  s1, s2 = ref_chunk(view[0], chunk), ref_chunk(view[1], chunk)
  d1, d2 = ref_basis(s1), ref_basis(s2)
  x = np.zeros(view)
  i = 0
  for a in range(view[0] // s1):
    for b in range(view[1] // s2):
      x[a * s1:(a + 1) * s1, b * s2:(b + 1) * s2] = (
          d1.T @ c[i].reshape(s1, s2) @ d2)
      i += 1
  return x.reshape(shape)


def ref_topk(c, k):
  mask = np.zeros_like(c)
  for r in range(c.shape[0]):
    keep = np.argsort(-np.abs(c[r]), kind="stable")[:min(k, c.shape[1])]
    mask[r, keep] = 1.0
  return c * mask, mask


# ------------------------------------------------------------- the codec


@pytest.mark.parametrize("n,chunk,s", [(10, 4, 2), (6, 5, 3), (10, 5, 5),
                                       (7, 5, 1), (64, 64, 64), (100, 64, 50),
                                       (1, 64, 1), (12, 64, 12)])
def test_chunk_size_is_largest_divisor(n, chunk, s):
  assert dct.chunk_size(n, chunk) == s == ref_chunk(n, chunk)


@pytest.mark.parametrize("s", [1, 2, 3, 5, 8])
def test_basis_is_orthonormal_dct2(s):
  np.testing.assert_allclose(dct.dct_matrix(s), ref_basis(s), atol=1e-12)
  np.testing.assert_allclose(dct.dct_matrix(s) @ dct.dct_matrix(s).T,
                             np.eye(s), atol=1e-12)


def test_basis_matches_scipy():
  fft = pytest.importorskip("scipy.fft")
  x = np.random.default_rng(0).standard_normal((4, 6))
  np.testing.assert_allclose(ref_basis(6) @ x[0], fft.dct(x[0], norm="ortho"),
                             atol=1e-12)
  np.testing.assert_allclose(ref_forward(x, 6)[0], fft.dctn(x, norm="ortho")
                             .reshape(-1), atol=1e-12)


@pytest.mark.parametrize("shape,chunk", [((6, 10), 5), ((6, 10), 4), ((10,), 5),
                                         ((7,), 5), ((), 64), ((2, 3, 10), 5),
                                         ((8, 7), 4), ((64, 128), 64)])
def test_forward_and_inverse_match_numpy(shape, chunk):
  x = np.random.default_rng(1).standard_normal(shape)
  p = dct.plan(shape, chunk, 10**6)
  c = np.asarray(jax.jit(lambda x: dct.forward(x, p))(x.astype(np.float32)))
  ref = ref_forward(x, chunk)
  assert c.shape == ref.shape == (p.num_blocks, p.block_size)
  np.testing.assert_allclose(c, ref, atol=1e-5)
  back = np.asarray(dct.inverse(jnp.asarray(ref, jnp.float32), p))
  assert back.shape == tuple(shape)
  np.testing.assert_allclose(back, ref_inverse(ref, shape, chunk), atol=1e-5)
  np.testing.assert_allclose(back, x, atol=1e-5)  # A lossless round trip.


def test_prime_dimension_is_not_transformed():
  x = np.random.default_rng(2).standard_normal((7, 3)).astype(np.float32)
  p = dct.plan(x.shape, 2, 1)  # 7 and 3 have no divisor in (1, 2]: 1x1 blocks.
  assert p.chunks == (1, 1) and p.k == 1
  np.testing.assert_array_equal(np.asarray(dct.forward(x, p)).reshape(7, 3), x)
  np.testing.assert_array_equal(np.asarray(dct.roundtrip(x, 2, 1)), x)


@pytest.mark.parametrize("shape,chunk,k", [((6, 10), 5, 4), ((10,), 5, 2),
                                           ((2, 3, 10), 5, 3), ((8, 8), 4, 1)])
def test_topk_roundtrip_matches_numpy(shape, chunk, k):
  x = np.random.default_rng(3).standard_normal(shape)
  p = dct.plan(shape, chunk, k)
  msg = jax.jit(lambda x: dct.encode(x, p))(x.astype(np.float32))
  values, mask = ref_topk(ref_forward(x, chunk), k)
  np.testing.assert_array_equal(np.asarray(msg.mask), mask)
  assert np.all(np.asarray(msg.mask).sum(1) == k)
  np.testing.assert_allclose(np.asarray(msg.values), values, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dct.roundtrip(x.astype(np.float32),
                                                      chunk, k)),
                             ref_inverse(values, shape, chunk), atol=1e-5)


def test_k_clamped_to_block_size_is_lossless():
  x = np.random.default_rng(4).standard_normal((6, 10)).astype(np.float32)
  assert dct.plan(x.shape, 5, 1000).k == 15
  np.testing.assert_allclose(np.asarray(dct.roundtrip(x, 5, 1000)), x,
                             atol=1e-5)


def test_scalar_and_empty():
  np.testing.assert_array_equal(np.asarray(dct.roundtrip(jnp.float32(3.5), 64,
                                                         32)), 3.5)
  assert dct.leaf_bytes((), 64, 32) == 4
  empty = jnp.zeros((0, 4), jnp.float32)
  assert dct.roundtrip(empty, 64, 32).shape == (0, 4)
  assert dct.leaf_bytes((0, 4), 64, 32) == 0


def test_bytes_by_hand():
  # w [6, 10], chunk 5: blocks 3x5 (block size 15, 4-bit indices), 2x2 = 4
  #   blocks, k = 4: 4 * 4 * (32 + 4) bits = 576 bits = 72 bytes.
  # b [10]: rows of 5 (3-bit indices), 2 rows, k = 4: 2*4*35 = 280 bits = 35.
  # p [7]: prime, blocks of 1 (no index), 7 values: 28 bytes.
  # s (): one fp32 value: 4 bytes.
  # t [2, 3, 10] -> [6, 10]: as w, 72 bytes.
  tree = {"w": jnp.zeros((6, 10)), "b": jnp.zeros((10,)), "p": jnp.zeros((7,)),
          "s": jnp.zeros(()), "t": jnp.zeros((2, 3, 10))}
  assert dct.tree_bytes(tree, 5, 4) == 72 + 35 + 28 + 4 + 72
  # A 64x64 block with the paper's k = 32 and 12-bit indices: 176 bytes.
  assert dct.leaf_bytes((128, 64), 64, 32) == 2 * 32 * 44 // 8
  # Works on shapes alone.
  abstract = jax.eval_shape(lambda: tree)
  assert dct.tree_bytes(abstract, 5, 4) == 211


# --------------------------------------------- the per-coefficient mean


class _Ops(NamedTuple):
  weighted_sum: Callable[[Any, Any], Any]


def _ops():
  return _Ops(weighted_sum=lambda tree, w: jax.tree.map(
      lambda x: jnp.sum(w.reshape((-1,) + (1,) * (x.ndim - 1)) * x, 0), tree))


def test_mean_over_senders_matches_numpy():
  rng = np.random.default_rng(5)
  m, chunk, k = 3, 5, 2
  xs = [{"w": rng.standard_normal((6, 10)), "b": rng.standard_normal(10)}
        for _ in range(m)]
  weights = np.array([0.5, 0.0, 0.5], np.float32)  # Replica 1 did not send.
  plans = {n: dct.plan(xs[0][n].shape, chunk, k) for n in xs[0]}
  msgs = [{n: dct.encode(jnp.asarray(x[n], jnp.float32), plans[n]) for n in x}
          for x in xs]
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *msgs)
  got = jax.jit(lambda s, w: dct.mean_over_senders(s, w, _ops()))(
      stacked, jnp.asarray(weights))
  for n in xs[0]:
    total = 0.0
    count = 0.0
    for i in range(m):
      if weights[i] > 0:
        v, mask = ref_topk(ref_forward(xs[i][n], chunk), k)
        total, count = total + v, count + mask
    mean = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    expected = ref_inverse(mean, xs[0][n].shape, chunk)
    np.testing.assert_allclose(np.asarray(got[n]), expected, atol=1e-5)
    # Not the mean of the decoded messages (the sender counts matter).
    decoded_mean = np.mean([ref_inverse(ref_topk(ref_forward(xs[i][n], chunk),
                                                 k)[0], xs[0][n].shape, chunk)
                            for i in (0, 2)], axis=0)
    assert np.abs(decoded_mean - expected).max() > 1e-3
