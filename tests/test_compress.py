"""Tests of the outer-gradient compressors (fedjax_lab/comm/compress.py).

(Over 400 lines on purpose: every compressor against its reference, registry-
wide, in one place.)
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from fedjax_lab.comm import compress

KEY = jax.random.PRNGKey(0)


def _tree(seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(scale * rng.standard_normal((3, 5)), jnp.float32),
          "b": jnp.asarray(scale * rng.standard_normal(5), jnp.float32)}


def _roundtrip(name, x, key=KEY, **hp):
  c = compress.get(name, **hp)
  out, _ = jax.jit(c.compress)({"x": jnp.asarray(x, jnp.float32)},
                               c.init({"x": x}), key)
  return np.asarray(out["x"], np.float64)


def _blocks(x, block_size):
  flat = np.asarray(x, np.float64).reshape(-1)
  bs = flat.size if block_size is None else block_size
  return [flat[i:i + bs] for i in range(0, flat.size, bs)], bs


# ---------------------------------------------------------------- casts / none


def test_none_is_bit_identical():
  tree = _tree()
  c = compress.none()
  out, state = jax.jit(c.compress)(tree, c.init(tree), KEY)
  for k in tree:
    assert out[k].dtype == tree[k].dtype
    np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(tree[k]))
  assert state == ()


@pytest.mark.parametrize("name,np_dtype", [("bf16", ml_dtypes.bfloat16),
                                           ("fp16", np.float16)])
def test_casts_equal_numpy(name, np_dtype):
  rng = np.random.default_rng(1)
  x = np.concatenate([rng.standard_normal(200) * 10.0 ** rng.integers(-8, 6, 200),
                      [0.0, -0.0, 1e-45, 65504.0, 65520.0, -1e6, 3e38]])
  x = x.astype(np.float32)
  with np.errstate(over="ignore"):  # fp16 overflow to inf is the point
    ref = x.astype(np_dtype).astype(np.float32)
  out = _roundtrip(name, x).astype(np.float32)
  np.testing.assert_array_equal(out, ref)  # inf included (fp16 overflow)


# ------------------------------------------------------------ integer absmax


@pytest.mark.parametrize("name,levels", [("int8", 127), ("int4", 7)])
@pytest.mark.parametrize("block_size", [None, 4, 7, 64])
def test_absmax_int_error_bound(name, levels, block_size):
  x = np.random.default_rng(2).standard_normal(101) * 3.0
  out = _roundtrip(name, x, block_size=block_size)
  for xb, ob in zip(_blocks(x, block_size)[0], _blocks(out, block_size)[0]):
    s = np.abs(xb).max() / levels  # float64 reference scale
    assert np.all(np.abs(xb - ob) <= s / 2 * (1 + 1e-5) + 1e-12)
    # Decoded values are integer multiples of the block's scale, |q| <= levels.
    q = ob / s
    np.testing.assert_allclose(q, np.round(q), atol=1e-4)
    assert np.abs(q).max() <= levels + 1e-4
    # And equal a float64 round-to-nearest reference.
    np.testing.assert_allclose(ob, np.round(xb / s) * s, rtol=1e-5,
                               atol=1e-6 * s)


def test_absmax_zero_block_and_per_tensor_default():
  x = np.zeros(10)
  x[7:] = [1.0, -2.0, 0.5]
  out = _roundtrip("int8", x, block_size=5)
  np.testing.assert_array_equal(out[:5], 0.0)  # all-zero block: no 0/0
  assert out[8] == -2.0  # absmax is exact


@pytest.mark.parametrize("name,levels", [("int8", 127), ("int4", 7)])
def test_stochastic_rounding_unbiased_and_bounded(name, levels):
  x = np.random.default_rng(3).standard_normal(64)
  c = compress.get(name, block_size=16, stochastic=True)
  f = jax.jit(jax.vmap(lambda k: c.compress({"x": jnp.asarray(x, jnp.float32)},
                                            (), k)[0]["x"]))
  outs = np.asarray(f(jax.random.split(KEY, 2000)), np.float64)
  for i, xb in enumerate(_blocks(x, 16)[0]):
    s = np.abs(xb).max() / levels
    ob = outs[:, 16 * i:16 * (i + 1)]
    assert np.all(np.abs(ob - xb) < s * (1 + 1e-5))
    # Mean of 2000 draws: standard error <= s / (2 sqrt(2000)) ~ 0.011 s.
    assert np.all(np.abs(ob.mean(0) - xb) < 0.05 * s)
  with pytest.raises(ValueError, match="needs a key"):
    c.compress({"x": jnp.asarray(x, jnp.float32)}, (), None)


# -------------------------------------------------------------------- fp4


def _e3m0_reference(x, block_size):
  """float64 E3M0: nearest of {0, 2^-6..2^0}·S in linear value, ties up."""
  out = []
  for xb in _blocks(x, block_size)[0]:
    s = np.abs(xb).max()
    levels = np.concatenate([[0.0], 2.0 ** np.arange(-6, 1)]) * s
    d = np.abs(np.abs(xb)[:, None] - levels[None, :])
    # argmin takes the first minimum; reverse so that ties go up.
    idx = len(levels) - 1 - np.argmin(d[:, ::-1], axis=1)
    out.append(np.sign(xb) * levels[idx])
  return np.concatenate(out)


@pytest.mark.parametrize("block_size", [None, 8, 13])
def test_fp4_e3m0_values_bound_and_reference(block_size):
  rng = np.random.default_rng(4)
  x = rng.standard_normal(200) * 10.0 ** rng.uniform(-3, 0, 200)
  out = _roundtrip("fp4", x, block_size=block_size)
  np.testing.assert_allclose(out, _e3m0_reference(x, block_size), rtol=1e-6)
  for xb, ob in zip(_blocks(x, block_size)[0], _blocks(out, block_size)[0]):
    s = np.abs(xb).max()
    bound = np.maximum(np.abs(xb) / 3, s / 128)
    assert np.all(np.abs(xb - ob) <= bound * (1 + 1e-6))
    mags = np.abs(ob[ob != 0]) / s
    np.testing.assert_allclose(np.log2(mags), np.round(np.log2(mags)),
                               atol=1e-6)
    assert np.all(mags <= 1 + 1e-7) and np.all(mags >= 2.0 ** -6 * (1 - 1e-7))
    assert np.abs(ob).max() == pytest.approx(s, rel=1e-7)  # absmax exact


def test_fp4_bound_is_tight_at_midpoints():
  s = 1.0
  x = np.array([s, 0.75 * 0.5, 0.75 * 2.0 ** -3, 2.0 ** -7 * 0.999])
  out = _roundtrip("fp4", x)
  # 0.375 lies midway between 0.25 and 0.5: a tie, rounded up, error x/3.
  assert out[1] == 0.5 and abs(out[1] - x[1]) == pytest.approx(x[1] / 3)
  assert out[2] == 2.0 ** -2 * 0.5
  assert out[3] == 0.0  # below half the smallest level: zero


def test_fp4_stochastic_unbiased():
  x = np.random.default_rng(5).standard_normal(32)
  c = compress.get("fp4", stochastic=True)
  f = jax.jit(jax.vmap(lambda k: c.compress({"x": jnp.asarray(x, jnp.float32)},
                                            (), k)[0]["x"]))
  outs = np.asarray(f(jax.random.split(KEY, 2000)), np.float64)
  s = np.abs(x).max()
  np.testing.assert_allclose(outs.mean(0), x, atol=0.03 * s)


# ------------------------------------------------------------------ uint8


def test_uint8_uniform_lut():
  x = np.random.default_rng(6).standard_normal(1000) * 2.0
  out = _roundtrip("uint8", x)
  lo, hi = x.min(), x.max()
  w = (hi - lo) / 255
  assert np.all(np.abs(out - x) <= w * (1 + 1e-5))
  codes = np.clip(np.round((x - lo) / w), 0, 255)
  assert len(np.unique(out)) <= 256
  for c in np.unique(codes):  # each code decodes to its bin's mean
    sel = codes == c
    np.testing.assert_allclose(out[sel], x[sel].mean(), rtol=1e-5, atol=1e-6)


def test_uint8_quantile_lut():
  x = np.random.default_rng(7).standard_normal(2000) ** 3  # heavy tails
  out = _roundtrip("uint8", x, bins="quantile")
  edges = np.quantile(x, np.linspace(0, 1, 257))
  code = np.clip(np.searchsorted(edges[1:-1], x, side="right"), 0, 255)
  width = edges[code + 1] - edges[code]
  assert np.all(np.abs(out - x) <= width * (1 + 1e-4) + 1e-6)
  # Equal-count bins: every code is used about n / 256 times.
  counts = np.bincount(code, minlength=256)
  assert counts.min() >= 7 and counts.max() <= 9
  assert len(np.unique(out)) <= 256


def test_uint8_non_finite_stays_loud():
  x = np.arange(10.0)
  x[3] = np.nan
  assert np.all(np.isnan(_roundtrip("uint8", x)))


# ------------------------------------------------------------------- top-k


def test_topk_keeps_largest():
  x = np.array([0.1, -5.0, 0.2, 3.0, -0.3, 0.05, 4.0, 0.0, 1.0, -2.0])
  out = _roundtrip("topk", x, fraction=0.3)  # k = 3
  np.testing.assert_array_equal(out, [0, -5.0, 0, 3.0, 0, 0, 4.0, 0, 0, 0])
  out8 = _roundtrip("topk", x, fraction=0.3, values="int8")
  kept = np.array([-5.0, 3.0, 4.0])
  assert np.all(np.abs(out8[[1, 3, 6]] - kept) <= 5.0 / 127 / 2 + 1e-6)
  assert np.count_nonzero(out8) == 3


# --------------------------------------------------------------- byte counts


def test_payload_bytes_by_hand():
  """{'w': (3, 5), 'b': (5,)}: 15 + 5 elements; figures worked out by hand."""
  tree = _tree()
  shapes = jax.eval_shape(lambda: tree)
  expected = {
      ("none", ()): 80,                      # 20 × 4
      ("bf16", ()): 40,                      # 20 × 2
      ("fp16", ()): 40,
      ("int8", ()): 28,                      # (15 + 4) + (5 + 4)
      ("int8", (("block_size", 4),)): 44,    # (15 + 4·4) + (5 + 4·2)
      ("int4", (("block_size", 4),)): 35,    # (8 + 4·4) + (3 + 4·2)
      ("int4", ()): 19,                      # block 32: (8 + 4) + (3 + 4)
      ("fp4", ()): 19,                       # (8 + 4) + (3 + 4)
      ("fp4", (("block_size", 4),)): 35,
      ("uint8", ()): 2068,                   # (15 + 1024) + (5 + 1024)
      ("topk", (("fraction", 0.2),)): 32,    # k=3: 12 + 12; k=1: 4 + 4
      ("topk", (("fraction", 0.2), ("values", "int8"))): 28,
      # k=3: 12 idx + (3 + 4); k=1: 4 + (1 + 4)
      ("int8", (("block_size", 4), ("ef", True))): 44,
      # DCT top-k: w is one 3x5 block (k clamped to 15, 4-bit indices):
      # 15·36 bits = 67.5 -> 68; b one block of 5 (3-bit): 5·35 = 175 bits -> 22.
      ("dct_topk", ()): 90,
      # k = 4: 4·36 = 144 bits = 18; 4·35 = 140 bits -> 18.
      ("dct_topk", (("topk", 4),)): 36,
  }
  for (name, hp), n in expected.items():
    c = compress.get(name, **dict(hp))
    assert c.payload_bytes(tree) == n, (name, hp)
    assert c.payload_bytes(shapes) == n, (name, hp)
  assert compress.tree_bytes(shapes, 8) == 20


# ------------------------------------------------------------ error feedback


def _run_ef(name, rounds=200, seed=8, **hp):
  c = compress.get(name, ef=True, **hp)
  rng = np.random.default_rng(seed)
  shape = {"w": (6, 7), "b": (9,)}
  deltas = [{k: rng.standard_normal(s).astype(np.float32) * rng.uniform(0.1, 3)
             for k, s in shape.items()} for _ in range(rounds)]
  state = c.init(jax.tree.map(jnp.asarray, deltas[0]))
  step = jax.jit(c.compress)
  keys = jax.random.split(KEY, rounds)
  sent_sum = {k: np.zeros(s) for k, s in shape.items()}
  true_sum = {k: np.zeros(s) for k, s in shape.items()}
  worst = 0.0
  for d, k in zip(deltas, keys):
    out, state = step(jax.tree.map(jnp.asarray, d), state, k)
    for name_ in shape:
      sent_sum[name_] += np.asarray(out[name_], np.float64)
      true_sum[name_] += d[name_]
      worst = max(worst, float(np.abs(
          sent_sum[name_] - true_sum[name_]).max()))
  dmax = max(float(np.abs(d[n]).max()) for d in deltas for n in shape)
  return sent_sum, true_sum, state, worst, dmax


@pytest.mark.parametrize("name,hp", [
    ("int8", {}), ("int8", {"block_size": 8}), ("int4", {"block_size": 8}),
    ("fp4", {}), ("uint8", {}), ("topk", {"fraction": 0.1}), ("bf16", {}),
    ("int8", {"stochastic": True}), ("dct_topk", {"chunk": 4, "topk": 2}),
])
def test_error_feedback_conserves_mass(name, hp):
  sent, true, state, _, _ = _run_ef(name, **hp)
  for k in sent:
    resid = np.asarray(state.residual[k], np.float64)
    # Σ sent + r_T = Σ true, up to float32 rounding over 200 rounds.
    np.testing.assert_allclose(sent[k] + resid, true[k], atol=2e-3)
  assert int(state.nonfinite_rounds) == 0


@pytest.mark.parametrize("name,hp,factor", [
    # int8 per tensor: |r| <= absmax(Δ + r)/254 <= (D + R)/254, so R <= D/253.
    ("int8", {}, 1 / 253),
    # int4 per block: |r| <= (D + R)/14, so R <= D/13.
    ("int4", {"block_size": 8}, 1 / 13),
    # fp4: |r| <= absmax(Δ + r)/3 <= (D + R)/3, so R <= D/2.
    ("fp4", {}, 1 / 2),
])
def test_error_feedback_cumulative_error_bounded(name, hp, factor):
  _, _, _, worst, dmax = _run_ef(name, **hp)
  assert worst <= factor * dmax * (1 + 1e-3) + 1e-4, (worst, factor * dmax)


def test_error_feedback_non_finite_does_not_poison_residual():
  c = compress.get("int8", ef=True, block_size=4)
  x = {"w": jnp.arange(1.0, 9.0)}
  state = c.init(x)
  step = jax.jit(c.compress)
  out, state = step(x, state, KEY)  # one normal round: residual non-zero
  bad = {"w": x["w"].at[1].set(jnp.nan)}
  out, state = step(bad, state, KEY)
  assert np.all(np.isnan(np.asarray(out["w"][:4])))  # the NaN's block: loud
  assert np.all(np.isfinite(np.asarray(out["w"][4:])))
  r = np.asarray(state.residual["w"])
  assert np.all(np.isfinite(r)) and np.all(r[:4] == 0)  # reset, not NaN
  assert int(state.nonfinite_rounds) == 1
  out, state = step(x, state, KEY)  # and the next round is clean again
  assert np.all(np.isfinite(np.asarray(out["w"])))
  assert int(state.nonfinite_rounds) == 1


def test_error_feedback_fp16_overflow():
  c = compress.get("fp16", ef=True)
  x = {"w": jnp.asarray([1.0, 1e6], jnp.float32)}
  out, state = jax.jit(c.compress)(x, c.init(x), KEY)
  assert np.isinf(np.asarray(out["w"][1]))
  assert np.asarray(state.residual["w"][1]) == 0
  assert int(state.nonfinite_rounds) == 1


# ------------------------------------------------------------------ registry


def test_registry_errors():
  with pytest.raises(ValueError,
                     match=r"^comm.compressor: unknown compressor 'int9'; known: .*int8"):
    compress.get("int9")
  with pytest.raises(ValueError, match=r"compressor 'int8': unknown hyperparameter"
                     r"\(s\) \['bits'\]; allowed: block_size, stochastic, ef"):
    compress.get("int8", bits=8)
  with pytest.raises(ValueError, match="block_size must be a positive int"):
    compress.get("int8", block_size=0)
  with pytest.raises(ValueError, match="block_size must be a positive int"):
    compress.get("fp4", block_size=2.5)
  with pytest.raises(ValueError, match=r"fraction must be a number in \(0, 1\]"):
    compress.get("topk", fraction=1.5)
  with pytest.raises(ValueError, match="values must be one of"):
    compress.get("topk", values="int3")
  with pytest.raises(ValueError, match="unknown hparam 'bins'"):
    compress.get("topk", values="int8", bins="uniform")
  with pytest.raises(ValueError, match="bins must be 'uniform' or 'quantile'"):
    compress.get("uint8", bins="log")
  with pytest.raises(ValueError, match="ef must be True or False"):
    compress.get("bf16", ef="yes")
  with pytest.raises(ValueError, match="stochastic must be True or False"):
    compress.get("int4", stochastic=1)
  with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) \['ef2'\]; allowed: ef$"):
    compress.get("none", ef2=True)


# -------------------------------------------------------------- jit and vmap


@pytest.mark.parametrize("name,hp", [
    ("none", {}), ("bf16", {}), ("int8", {"block_size": 4, "ef": True}),
    ("int4", {"stochastic": True}), ("fp4", {"block_size": 4}),
    ("uint8", {"ef": True}), ("topk", {"fraction": 0.3, "values": "fp4"}),
    ("dct_topk", {"chunk": 3, "topk": 2, "ef": True}),
])
def test_vmap_over_replicas_matches_loop(name, hp):
  m = 4
  c = compress.get(name, **hp)
  trees = [_tree(seed) for seed in range(m)]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
  state = jax.vmap(c.init)(stacked)
  keys = jax.random.split(KEY, m)
  out, new_state = jax.jit(jax.vmap(c.compress))(stacked, state, keys)
  one = jax.jit(lambda t, k: c.compress(t, c.init(t), k))
  # The elementwise codecs agree to rounding (1e-7). dct_topk's round trip
  # (a DCT, top-k, the inverse) sums `chunk` products twice in float32, and a
  # batched matmul may sum them in another order: a few ulps of the largest
  # input each way, so 2·chunk ulps of max|x|.
  atol = 1e-7
  if name == "dct_topk":
    biggest = max(float(np.abs(x).max()) for x in jax.tree.leaves(trees))
    atol = 2 * hp["chunk"] * np.finfo(np.float32).eps * biggest
  for i in range(m):
    ref, ref_state = one(trees[i], keys[i])
    for k in ref:
      np.testing.assert_allclose(np.asarray(out[k][i]), np.asarray(ref[k]),
                                 rtol=1e-6, atol=atol)
    for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(ref_state)):
      np.testing.assert_allclose(np.asarray(a[i]), np.asarray(b), rtol=1e-6,
                                 atol=atol)
  assert all(o.dtype == jnp.float32 for o in jax.tree.leaves(out))


# ------------------------------------------------------------ dct_topk


def test_dct_topk_keeps_largest_coefficients():
  """A 1-D tensor of 4 = one DCT block; compare with the DCT written out."""
  x = np.array([1.0, -2.0, 0.5, 3.0])
  n = np.arange(4)
  basis = np.array([np.sqrt((1 if k == 0 else 2) / 4) *
                    np.cos(np.pi * (n + 0.5) * k / 4) for k in range(4)])
  c = basis @ x
  kept = np.where(np.abs(c) >= np.sort(np.abs(c))[-2], c, 0.0)  # top 2
  np.testing.assert_allclose(_roundtrip("dct_topk", x, chunk=4, topk=2),
                             basis.T @ kept, atol=1e-6)
  np.testing.assert_allclose(_roundtrip("dct_topk", x, chunk=4, topk=4), x,
                             atol=1e-6)
  # chunk 2: two blocks of 2, one coefficient each.
  b2 = np.array([[1, 1], [1, -1]]) / np.sqrt(2)
  out = _roundtrip("dct_topk", x, chunk=2, topk=1)
  for blk in range(2):
    cc = b2 @ x[2 * blk:2 * blk + 2]
    cc = np.where(np.abs(cc) == np.abs(cc).max(), cc, 0.0)
    np.testing.assert_allclose(out[2 * blk:2 * blk + 2], b2.T @ cc, atol=1e-6)


@pytest.mark.parametrize("hp,field", [({"chunk": 0}, "chunk"),
                                      ({"topk": 0}, "topk"),
                                      ({"topk": 2.5}, "topk"),
                                      ({"chunk": True}, "chunk")])
def test_dct_topk_bad_hparams(hp, field):
  with pytest.raises(ValueError, match=f"dct_topk: {field} must be an integer"):
    compress.get("dct_topk", **hp)


def test_error_feedback_refuses_a_compressor_with_its_own_aggregate():
  c = compress.none()._replace(aggregate=lambda sent, w, ops: sent)
  with pytest.raises(ValueError, match="own aggregate"):
    compress.error_feedback(c)
  assert compress.get("int8").aggregate is None  # The engine's weighted mean.


def test_collective_of_sparse_messages_is_all_gather():
  assert compress.get("int8", ef=True).collective == "all_reduce"
  assert compress.get("dct_topk").collective == "all_gather"
  assert compress.get("dct_topk", ef=True).collective == "all_gather"
