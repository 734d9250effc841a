"""SparseLoCo (Sarfi et al., arXiv 2508.15706) in the engine.

(Over 400 lines on purpose: one method's reference, special cases and engine
checks.)

Against an independent float64 numpy reference written here from the paper,
docs/algorithms.md and the authors' `SparseLoCo.step` (tplr-ai/SparseLoCo
src/tplr/sparseloco.py, read at QErywan/RobustDiLoCo 276fa59): per tensor
and replica

    e_i ← β·e_i + α·Δ_i;  message_i = quantise(top-k per chunk of e_i);
    e_i ← e_i − decode(message_i);
    θ ← θ − α·(per-coordinate mean over the replicas that sent it, 0 if none).

Problem: three least-squares terms (one through tanh) with a [6, 8] kernel w,
a [8] bias c, a [5] gain b (5 is prime: chunks of 1), a [2, 3, 4] kernel k3
(≥3-D: viewed as [6, 4]) and a scalar s; replicas see shifted data (non-i.i.d.);
inner SGD with heavy-ball momentum, whose state every replica keeps across
rounds (so keeping it, not resetting it, is tested).

Chunking at chunk_size 4, top_k 8 (k = max(1, round(L·8/16)) clipped to [1, L]):
  w [6, 8]: 3×4 blocks, L = 12, k = 6 (half sent), 4 blocks;
  c [8]: rows of 4, k = 2, 2 rows;
  b [5]: rows of 1 (5's largest divisor ≤ 4 is 1), k = 1 (dense);
  k3 [2, 3, 4] → [6, 4]: 3×4 blocks, L = 12, k = 6, 2 blocks;
  s: one chunk of 1, k = 1.

Float32 vs float64. The engine runs float32; |θ| < 0.75 here and Δ, e are
O(0.1), so every stored quantity carries absolute rounding ≤ 0.75·2⁻²⁴ ≈ 5e-8
per operation; a round chains H ≤ 3 SGD steps (contractive: lr·‖Hessian‖ < 1)
and a handful of elementwise ops, so no error grows. Measured: this very
reference run in numpy float32 stays within 1.1e-7 of float64 in θ and 1.4e-7
in e over the 5 rounds. We assert TOL = 1e-5 (atol and rtol): ~100× that, to
leave room for XLA's different summation order; the test
`test_reference_in_float32_stays_within_the_tolerance` re-measures it
(float32 reference within TOL / 10 of float64).
The selections are discrete: a top-k near-tie or a value near a quantisation
bin boundary would make float32 and float64 pick differently. We do NOT mirror
the float32 arithmetic of the authors' quantiser; instead the data are such
that no value is near a boundary: the reference records every top-k gap
(|e| of the k-th minus the (k+1)-th largest entry of a chunk) and every
distance of a quantised c from a bin edge ((j + ½ − B/2)·scale), and the tests
assert both exceed MARGIN = 1e-5, i.e. 70× the float32 noise on e (1.4e-7)
(the data seed was picked for this: the smallest gap is 4.9e-5).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_lab
from fedjax_lab import outer

B = 4
M, H = 4, 3
INNER_LR, INNER_MOM = 0.25, 0.5
CHUNK, TOPK = 4, 8
TOL = 1e-5
MARGIN = 1e-5
DATA_SEED = 115  # Chosen so that every gap below exceeds MARGIN.

# Partial participation: replica 1 sits out in round 1; stragglers in round 2
# (1 and 2 steps); replica 2 takes 0 steps in round 3 (sends nothing).
ROUND_ARGS = [
    {},
    {"mask": [True, False, True, True]},
    {"num_steps": [3, 1, 3, 2]},
    {"num_steps": [3, 3, 0, 3]},
    {},
]
ROUNDS = len(ROUND_ARGS)


def init_params():
  rs = np.random.RandomState(11)
  return {"w": (0.3 * rs.randn(6, 8)).astype(np.float32),
          "c": (0.1 * rs.randn(8)).astype(np.float32),
          "b": (0.5 * rs.randn(5)).astype(np.float32),
          "k3": (0.3 * rs.randn(2, 3, 4)).astype(np.float32),
          "s": np.float32(0.05)}


def make_batch(m, seed, h=H):
  """Non-i.i.d.: replica i's inputs are shifted by 0.4·i, targets by −0.3·i."""
  rs = np.random.RandomState(DATA_SEED + seed)
  sh = lambda nd: 0.4 * np.arange(m).reshape((m,) + (1,) * nd)
  out = {"x": rs.randn(m, h, B, 6) + sh(3),
         "y": 0.8 * rs.randn(m, h, B, 8) - 0.75 * sh(3),
         "u": rs.randn(m, h, B, 5) + sh(3),
         "z": rs.randn(m, h, B, 5) + sh(3),
         "v": rs.randn(m, h, B, 2) - sh(3),
         "t": rs.randn(m, h, B, 3, 4) + sh(4)}
  return {k: v.astype(np.float32) for k, v in out.items()}


def loss_fn(params, batch, rng):
  del rng
  h = jnp.tanh(batch["x"] @ params["w"] + params["c"][None] + params["s"])
  l1 = jnp.mean(jnp.square(h - batch["y"]))
  l2 = jnp.mean(jnp.square(batch["u"] * params["b"][None] - batch["z"]))
  l3 = jnp.mean(jnp.square(
      jnp.einsum("bi,ijk->bjk", batch["v"], params["k3"]) - batch["t"]))
  return l1 + l2 + l3


# ------------------------------------------------------- numpy reference


def np_grads(p, d):
  """Gradient of loss_fn for one step's batch d (leaves [B, ...])."""
  h = np.tanh(d["x"] @ p["w"] + p["c"] + p["s"])
  da = 2.0 * (h - d["y"]) / h.size * (1 - h * h)
  r2 = d["u"] * p["b"] - d["z"]
  r3 = np.einsum("bi,ijk->bjk", d["v"], p["k3"]) - d["t"]
  return {"w": d["x"].T @ da, "c": da.sum(0), "s": da.sum(),
          "b": (2.0 * r2 * d["u"] / r2.size).sum(0),
          "k3": 2.0 * np.einsum("bi,bjk->ijk", d["v"], r3) / r3.size}


def np_chunk_len(n, chunk):
  """The largest divisor of n that is ≤ chunk."""
  return max(s for s in range(1, min(n, chunk) + 1) if n % s == 0)


def np_chunks(shape, chunk):
  """Flat (row-major) indices of every chunk of a tensor of `shape`, each in
  the chunk's own row-major order: 0-D → 1-D of length 1; ≥3-D → 2-D
  [prod(leading), last]; 1-D [n] → rows of s; 2-D → s1×s2 blocks."""
  if len(shape) == 0:
    shape = (1,)
  elif len(shape) >= 3:
    shape = (math.prod(shape[:-1]), shape[-1])
  idx = np.arange(math.prod(shape)).reshape(shape)
  if len(shape) == 1:
    s = np_chunk_len(shape[0], chunk)
    return [idx[a:a + s] for a in range(0, shape[0], s)]
  s1, s2 = np_chunk_len(shape[0], chunk), np_chunk_len(shape[1], chunk)
  return [idx[a:a + s1, b:b + s2].reshape(-1)
          for a in range(0, shape[0], s1) for b in range(0, shape[1], s2)]


def np_k(length, chunk, topk):
  """k = max(1, round(L·top_k/chunk²)) (Python round), clipped to [1, L]."""
  return min(length, max(1, round(length * topk / chunk**2)))


class NpSparseLoCo:
  """The rule, replica by replica, in `dtype` (float64 unless checking float32
  rounding). Every replica restarts from θ each round and keeps its inner
  heavy-ball momentum; a replica that sat out or took 0 steps sends nothing
  and keeps its error buffer."""

  def __init__(self, m, *, lr, decay, chunk=CHUNK, topk=TOPK, bins=4,
               quant_range=6.0, dtype=np.float64):
    self.dt = dtype
    self.theta = {k: np.asarray(v, dtype) for k, v in init_params().items()}
    zeros = lambda: {k: np.zeros_like(v) for k, v in self.theta.items()}
    self.e = [zeros() for _ in range(m)]
    self.mom = [zeros() for _ in range(m)]
    self.m, self.lr, self.decay = m, lr, decay
    self.chunk, self.topk, self.bins, self.range = chunk, topk, bins, quant_range
    self.topk_gaps, self.bin_gaps = [], []

  def _quantise(self, v):
    """Kept values v (all chunks of one tensor) → decoded values."""
    if not self.bins:
      return v
    n, nb = v.size, self.bins
    shift = v.mean()
    c = v - shift
    std = np.sqrt(np.sum(c * c)) / math.sqrt(n - 1) if n > 1 else 0.0
    scale = self.range * std / nb
    if scale == 0 or not np.isfinite(scale):
      scale = 1.0
    x = c / scale + nb // 2
    q = np.clip(np.round(x), 0, nb - 1).astype(int)
    if n > 1:  # Distance of every c from every bin edge, in c's units.
      edges = np.arange(nb - 1) + 0.5
      self.bin_gaps.append(np.min(np.abs(x[:, None] - edges[None])) * scale)
    lookup = np.array([c[q == j].mean() if np.any(q == j) else 0.0
                       for j in range(nb)], self.dt)
    return lookup[q] + shift

  def _compress(self, e):
    """e (one tensor) → (flat indices, decoded values) of its message."""
    flat = np.reshape(e, -1)
    idx = []
    for ch in np_chunks(np.shape(e), self.chunk):
      k = np_k(ch.size, self.chunk, self.topk)
      mag = np.abs(flat[ch])
      order = np.argsort(-mag, kind="stable")
      if k < ch.size:
        self.topk_gaps.append(mag[order[k - 1]] - mag[order[k]])
      idx.append(ch[order[:k]])
    idx = np.concatenate(idx)
    return idx, self._quantise(flat[idx])

  def round(self, batch, mask=None, num_steps=None):
    m, dt = self.m, self.dt
    mask = [True] * m if mask is None else mask
    steps = [H] * m if num_steps is None else num_steps
    total = {k: np.zeros(np.size(v), dt) for k, v in self.theta.items()}
    count = {k: np.zeros(np.size(v), dt) for k, v in self.theta.items()}
    for i in range(m):
      if not mask[i] or steps[i] == 0:
        continue  # Sends nothing; e_i and the inner state are unchanged.
      p = {k: v.copy() for k, v in self.theta.items()}
      for t in range(steps[i]):
        g = np_grads(p, {k: np.asarray(v[i, t], dt) for k, v in batch.items()})
        for k in p:
          self.mom[i][k] = g[k] + INNER_MOM * self.mom[i][k]
          p[k] = p[k] - INNER_LR * self.mom[i][k]
      for k in p:
        delta = self.theta[k] - p[k]
        self.e[i][k] = self.decay * self.e[i][k] + self.lr * delta
        idx, vals = self._compress(self.e[i][k])
        sent = np.zeros(np.size(delta), dt)
        sent[idx] = vals
        self.e[i][k] = self.e[i][k] - sent.reshape(np.shape(delta))
        total[k][idx] += vals
        count[k][idx] += 1
    for k in self.theta:
      agg = np.where(count[k] > 0, total[k] / np.maximum(count[k], 1), 0.0)
      self.theta[k] = self.theta[k] - self.lr * agg.astype(dt).reshape(
          np.shape(self.theta[k]))
    return {k: v.copy() for k, v in self.theta.items()}


class NpFedAvgKept:
  """FedAvg (weighted by examples) at server lr `lr`, inner momentum kept."""

  def __init__(self, m, *, lr):
    self.theta = {k: np.asarray(v, np.float64) for k, v in init_params().items()}
    self.mom = [{k: np.zeros_like(v) for k, v in self.theta.items()}
                for _ in range(m)]
    self.m, self.lr = m, lr

  def round(self, batch, mask=None, num_steps=None):
    mask = [True] * self.m if mask is None else mask
    steps = [H] * self.m if num_steps is None else num_steps
    n = np.array([steps[i] if mask[i] else 0 for i in range(self.m)], float)
    delta = {k: np.zeros_like(v) for k, v in self.theta.items()}
    for i in range(self.m):
      if n[i] == 0:
        continue
      p = {k: v.copy() for k, v in self.theta.items()}
      for t in range(steps[i]):
        g = np_grads(p, {k: np.asarray(v[i, t], np.float64)
                         for k, v in batch.items()})
        for k in p:
          self.mom[i][k] = g[k] + INNER_MOM * self.mom[i][k]
          p[k] = p[k] - INNER_LR * self.mom[i][k]
      for k in p:
        delta[k] += n[i] / n.sum() * (self.theta[k] - p[k])
    self.theta = {k: v - self.lr * delta[k] for k, v in self.theta.items()}
    return {k: v.copy() for k, v in self.theta.items()}


def run_reference(ref, rounds=ROUNDS, round_args=ROUND_ARGS):
  return [ref.round(make_batch(ref.m, r), **round_args[r])
          for r in range(rounds)]


# ---------------------------------------------------------------- engine


def sparseloco(**hp):
  kw = dict(learning_rate=0.8, decay=0.9, chunk_size=CHUNK, top_k=TOPK,
            quant_bins=4, quant_range=6.0)
  kw.update(hp)
  return outer.get("sparseloco", **kw)


def run_engine(algo, m=M, rounds=ROUNDS, round_args=ROUND_ARGS):
  engine = fedjax_lab.Engine(
      loss_fn, inner_opt=optax.sgd(INNER_LR, momentum=INNER_MOM), outer=algo,
      num_replicas=m, inner_steps=H)
  state = engine.init(init_params(), seed=0)
  history, metrics = [], []
  for r in range(rounds):
    state, met = engine.round(state, make_batch(m, r), **round_args[r])
    history.append((jax.tree.map(np.asarray, engine.eval_params(state)),
                    jax.tree.map(np.asarray, state.replica_params)))
    metrics.append(met)
  return engine, history, metrics


def assert_close(got, expected, tol=TOL, msg=""):
  for k in expected:
    np.testing.assert_allclose(np.asarray(got[k], np.float64), expected[k],
                               rtol=tol, atol=tol, err_msg=f"{msg} {k}")


# ------------------------------------------- the reference on its own (cheap)


def test_chunking_and_k_by_hand():
  assert [len(c) for c in np_chunks((6, 8), 4)] == [12] * 4
  assert list(np_chunks((6, 8), 4)[1]) == [4, 5, 6, 7, 12, 13, 14, 15, 20, 21,
                                           22, 23]
  assert [list(c) for c in np_chunks((8,), 4)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
  assert [list(c) for c in np_chunks((5,), 4)] == [[i] for i in range(5)]
  assert [list(c) for c in np_chunks((), 4)] == [[0]]
  # ≥3-D: [2, 3, 4] is read as [6, 4] (3×4 blocks), not per leading slice.
  assert [list(c) for c in np_chunks((2, 3, 4), 4)] == [
      list(range(12)), list(range(12, 24))]
  assert np_k(12, 4, 8) == 6 and np_k(4, 4, 8) == 2 and np_k(1, 4, 8) == 1
  assert np_k(16, 4, 10**6) == 16  # Clipped to L.
  assert np_k(64 * 64, 64, 128) == 128  # The 512M sweep's density, 3.1%.
  assert np_k(2, 4, 4) == 1  # round(0.5) = 0 (Python), max(1, ·).


def test_reference_full_k_no_quant_is_fedavg_at_lr_alpha_squared():
  for alpha in (0.7, 1.0):
    expected = run_reference(NpFedAvgKept(M, lr=alpha**2), 4, ROUND_ARGS[:2] * 2)
    for beta in (0.95, 0.5):
      ref = NpSparseLoCo(M, lr=alpha, decay=beta, topk=10**6, bins=0)
      got = run_reference(ref, 4, ROUND_ARGS[:2] * 2)
      for r in range(4):
        assert_close(got[r], expected[r], 1e-13)
      for e in ref.e:  # Everything was sent: the buffers are empty.
        for v in e.values():
          assert np.abs(v).max() < 1e-15


def test_reference_in_float32_stays_within_the_tolerance():
  """The tolerance argument, measured: the same reference in numpy float32
  (every stored value rounded to float32, as in the engine) is within TOL / 10
  of float64 and takes the same discrete decisions (gaps ≫ float32 noise)."""
  for bins in (4, 0):
    hi = NpSparseLoCo(M, lr=0.8, decay=0.9, bins=bins)
    lo = NpSparseLoCo(M, lr=0.8, decay=0.9, bins=bins, dtype=np.float32)
    a, b = run_reference(hi), run_reference(lo)
    for r in range(ROUNDS):
      assert_close({k: np.asarray(v, np.float64) for k, v in b[r].items()},
                   a[r], TOL / 10, f"round {r}")
    assert min(hi.topk_gaps) > MARGIN
    if bins:
      assert min(hi.bin_gaps) > MARGIN
    # The problem is really sparse and quantised: buffers keep a residual.
    assert np.abs(hi.e[0]["w"]).max() > 1e-2


# ---------------------------------------------------------------- the engine


@pytest.mark.parametrize("bins,alpha,beta", [(4, 0.8, 0.9), (0, 0.8, 0.9),
                                             (4, 1.0, 0.95)])
def test_matches_numpy_reference_every_round(bins, alpha, beta):
  ref = NpSparseLoCo(M, lr=alpha, decay=beta, bins=bins)
  expected = run_reference(ref)
  assert min(ref.topk_gaps) > MARGIN, min(ref.topk_gaps)
  if bins:
    assert min(ref.bin_gaps) > MARGIN, min(ref.bin_gaps)
  _, hist, _ = run_engine(sparseloco(learning_rate=alpha, decay=beta,
                                     quant_bins=bins))
  for r in range(ROUNDS):
    glob, reps = hist[r]
    assert_close(glob, expected[r], msg=f"round {r} θ")
    for i in range(M):  # Every replica restarts from θ.
      assert_close({k: v[i] for k, v in reps.items()}, expected[r],
                   msg=f"round {r} replica {i}")
  # Not trivially dense: the buffers hold what was not (exactly) sent.
  assert np.abs(ref.e[0]["w"]).max() > 1e-2


def test_quantisation_and_sparsity_matter():
  """The quantised and unquantised references (and engines) differ clearly,
  so the reference test above really checks the quantiser."""
  a = run_reference(NpSparseLoCo(M, lr=0.8, decay=0.9, bins=4))
  b = run_reference(NpSparseLoCo(M, lr=0.8, decay=0.9, bins=0))
  c = run_reference(NpSparseLoCo(M, lr=0.8, decay=0.9, bins=0, topk=10**6))
  assert np.abs(a[-1]["w"] - b[-1]["w"]).max() > 1e-3
  assert np.abs(b[-1]["w"] - c[-1]["w"]).max() > 1e-3


@pytest.mark.parametrize("alpha", [0.7, 1.0])
def test_full_k_no_quant_is_fedavg_at_lr_alpha_squared(alpha):
  """k = all, no quantisation: e_i is emptied every round, so θ ← θ −
  α²·mean Δ_i whatever β (equal work: FedAvg's weights are the plain mean
  over the participants). Both engines run float32; they differ only in the
  order of a few roundings of O(1) values per round (≈ 1e-7 each), so 2e-6."""
  args = ROUND_ARGS[:2] * 2  # Full rounds and a masked one, equal work.
  _, want, _ = run_engine(outer.get("fedavg", learning_rate=alpha**2,
                                    reset_inner_state=False),
                          rounds=4, round_args=args)
  for beta in (0.95, 0.5):
    _, got, _ = run_engine(sparseloco(learning_rate=alpha, decay=beta,
                                      top_k=10**6, quant_bins=0),
                           rounds=4, round_args=args)
    for r in range(4):
      assert_close(got[r][0], want[r][0], 2e-6, f"β {beta} round {r}")


def payload_bytes_by_hand(bins):
  """Per replica per round, per tensor: every chunk sends k (index, value)
  pairs; an index is ceil(log2 L) bits (0 for L = 1), a value 32 bits
  unquantised or log2(B) = 2 bits quantised; a quantised tensor also sends its
  shift and B-entry lookup as float32 ((1 + B)·4 bytes); bits are rounded up to
  whole bytes per tensor (as DeMo's count, fedjax_lab/comm/dct.py).
    w [6, 8]:  4 chunks × 6 × (4 + v) bits
    c [8]:     2 chunks × 2 × (2 + v)
    b [5]:     5 chunks × 1 × (0 + v)
    k3 → [6, 4]: 2 chunks × 6 × (4 + v)
    s:         1 chunk  × 1 × (0 + v)
  v = 2: 18+20, 2+20, 2+20, 9+20, 1+20 = 132 bytes;
  v = 32: 108, 17, 20, 54, 4 = 203 bytes (dense fp32 would be 4·108 = 432)."""
  total = 0
  for shape in [(6, 8), (8,), (5,), (2, 3, 4), ()]:
    bits = 0
    for ch in np_chunks(shape, CHUNK):
      k = np_k(ch.size, CHUNK, TOPK)
      idx_bits = math.ceil(math.log2(ch.size)) if ch.size > 1 else 0
      bits += k * (idx_bits + (math.ceil(math.log2(bins)) if bins else 32))
    total += -(-bits // 8) + ((1 + bins) * 4 if bins else 0)
  return total


def test_payload_bytes():
  assert payload_bytes_by_hand(4) == 132 and payload_bytes_by_hand(0) == 203
  for bins in (4, 0):
    engine = fedjax_lab.Engine(
        loss_fn, inner_opt=optax.sgd(INNER_LR), outer=sparseloco(
            quant_bins=bins), num_replicas=2, inner_steps=H)
    got = engine.comm_bytes(init_params())["payload_bytes"]
    assert got == payload_bytes_by_hand(bins), (bins, got)
    state, met = engine.round(engine.init(init_params()), make_batch(2, 0))
    assert met["payload_bytes"] == payload_bytes_by_hand(bins)


def test_registry_and_defaults():
  assert "sparseloco" in outer.names()
  hp = outer.hparams("sparseloco")
  assert hp["learning_rate"] == 1.0 and hp["decay"] == 0.95
  assert hp["chunk_size"] == 64 and hp["top_k"] == 128
  assert hp["quant_bins"] == 4 and hp["quant_range"] == 6.0
