"""NoLoCo (Kolehmainen et al., arXiv 2506.10911) in the engine, against an
independent float64 numpy reference written here from
the paper, docs/algorithms.md and the authors' SparseOptimizerC:

  replica i: slow φ_i (its params at the round's start), momentum b_i = 0,
  its own inner Adam (never reset or averaged); θ_i after H inner steps
  from φ_i. Each round the replicas are cut into groups of n; in i's group
  D̄ = mean_j (φ_j − θ_j), φ̄ = mean_j φ_j (unweighted);
  b_i ← μ·b_i + α·D̄ + α·(φ_i − φ̄);  φ_i ← φ_i − b_i;  θ_i ← φ_i.
  The model evaluated is the unweighted mean of the φ_i.

The groups are the implementation's `group_members(key, M, n)` with
key = split(fold_in(PRNGKey(seed), r))[0]; which pairing a round draws is not
the rule under test, but that it is a partition of range(M) that changes
between rounds is.

Problem: nonlinear least squares pred = z + 0.3·z², z = x·w + b, w [3, 2],
b [2], M = 4 non-i.i.d. replicas, H = 3 inner Adam steps, 4 rounds.
(A polynomial, not tanh: XLA's float32 tanh is ≈ 2e-7 off, not correctly
rounded.)

Float32 vs float64. The engine runs float32; every quantity is O(1)
(|φ| < 0.5) with ≈ 6e-8 relative rounding per operation. Adam's bias
correction 1 − β2^t cancels (float32 β2^t is off by ≈ 6e-8, a relative
6e-8/(t·(1 − β2)) in v̂), so we take β2 = 0.99 and the reference computes the
corrections in its own dtype, as optax. The outer rule is linear with
coefficients ≤ μ + 2α < 2, applied 4 times. Measured: the reference run in
numpy float32 stays within 1.6e-7 of float64, and the engine's heavy-ball
DiLoCo (the group_size = M case) within 1e-7. TOL = 2e-5 (atol and rtol),
> 100× that; `test_reference_in_float32_stays_within_the_tolerance`
re-measures the float32 run against TOL / 10. No gradient entry is near
ε = 1e-8 (smallest |g| entry 1.9e-3, checked > 1e-4).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_lab
from fedjax_lab import outer

D, K, B = 3, 2, 4
M, H, N = 4, 3, 2
ALPHA, MU = 0.7, 0.5
LR, B1, B2, EPS = 0.05, 0.9, 0.99, 1e-8
CURVE = 0.3  # pred = z + CURVE·z², z = x·w + b.
ROUNDS = 4
SEED = 3
TOL = 2e-5


def init_params():
  return {"w": np.array([[0.2, -0.1], [0.05, 0.3], [-0.25, 0.1]], np.float32),
          "b": np.array([0.1, -0.05], np.float32)}


def make_batch(m, seed):
  """Replica i: inputs shifted by 0.5·i, its own target model."""
  rs = np.random.RandomState(70 + seed)
  x = rs.randn(m, H, B, D) + 0.5 * np.arange(m)[:, None, None, None]
  w_true = np.stack([np.full((D, K), 0.4 * (i - 1.5)) + 0.3 * (i + 1) *
                     np.eye(D, K) for i in range(m)])
  y = np.tanh(np.einsum("mhbd,mdk->mhbk", x, w_true)) + 0.1 * rs.randn(
      m, H, B, K)
  return {"x": x.astype(np.float32), "y": y.astype(np.float32)}


def loss_fn(params, batch, rng):
  del rng
  z = batch["x"] @ params["w"] + params["b"][None]
  return jnp.mean(jnp.square(z + CURVE * z * z - batch["y"]))


# ------------------------------------------------------ numpy references


def np_grads(p, x, y):
  z = x @ p["w"] + p["b"]
  da = 2.0 * (z + CURVE * z * z - y) / z.size * (1 + 2 * CURVE * z)
  return {"w": x.T @ da, "b": da.sum(0)}


class NpAdam:
  """optax.adam's state and step (bias-corrected, ε outside the root)."""

  def __init__(self, like):
    self.u = {k: np.zeros_like(v) for k, v in like.items()}
    self.v = {k: np.zeros_like(v) for k, v in like.items()}
    self.count = 0
    self.min_abs_grad = np.inf

  def run(self, p, xs, ys):
    p = {k: v.copy() for k, v in p.items()}
    dt = next(iter(p.values())).dtype.type
    for x, y in zip(xs, ys):
      g = np_grads(p, x, y)
      self.count += 1
      for k in p:
        self.min_abs_grad = min(self.min_abs_grad, float(np.abs(g[k]).min()))
        self.u[k] = B1 * self.u[k] + (1 - B1) * g[k]
        self.v[k] = B2 * self.v[k] + (1 - B2) * g[k] * g[k]
        # Bias corrections in the state's dtype, as optax (in float32 they
        # carry β2's rounding: see the module docstring).
        p[k] = p[k] - LR * (self.u[k] / (1 - dt(B1)**self.count)) / (
            np.sqrt(self.v[k] / (1 - dt(B2)**self.count)) + EPS)
    return p


def fast_weights(i, phi, adams, batch, dt):
  return adams[i].run(phi, np.asarray(batch["x"][i], dt),
                      np.asarray(batch["y"][i], dt))


class NpNoLoCo:
  """The rule for given groups each round, in `dtype`."""

  def __init__(self, m, *, alpha=ALPHA, mu=MU, dtype=np.float64):
    p0 = {k: np.asarray(v, dtype) for k, v in init_params().items()}
    self.phi = [{k: v.copy() for k, v in p0.items()} for _ in range(m)]
    self.b = [{k: np.zeros_like(v) for k, v in p0.items()} for _ in range(m)]
    self.adams = [NpAdam(p0) for _ in range(m)]
    self.m, self.alpha, self.mu, self.dt = m, alpha, mu, dtype

  def round(self, batch, groups):
    theta = [fast_weights(i, self.phi[i], self.adams, batch, self.dt)
             for i in range(self.m)]
    new_phi = [None] * self.m
    for group in groups:
      for k in self.phi[0]:
        dbar = np.mean([self.phi[j][k] - theta[j][k] for j in group], 0)
        phibar = np.mean([self.phi[j][k] for j in group], 0)
        for i in group:
          self.b[i][k] = (self.mu * self.b[i][k] + self.alpha * dbar +
                          self.alpha * (self.phi[i][k] - phibar))
          new_phi[i] = new_phi[i] or {}
          new_phi[i][k] = self.phi[i][k] - self.b[i][k]
    assert all(p is not None for p in new_phi)
    self.phi = new_phi
    mean = {k: np.mean([p[k] for p in self.phi], 0) for k in self.phi[0]}
    return [{k: v.copy() for k, v in p.items()} for p in self.phi], mean


class NpHeavyBallDiLoCo:
  """All-reduce DiLoCo, heavy ball: b ← μ·b + Δ; θ ← θ − α·b; per-replica
  Adam kept; every replica restarts from θ."""

  def __init__(self, m, *, alpha=ALPHA, mu=MU):
    self.theta = {k: np.asarray(v, np.float64) for k, v in init_params().items()}
    self.b = {k: np.zeros_like(v) for k, v in self.theta.items()}
    self.adams = [NpAdam(self.theta) for _ in range(m)]
    self.m, self.alpha, self.mu = m, alpha, mu

  def round(self, batch):
    fast = [fast_weights(i, self.theta, self.adams, batch, np.float64)
            for i in range(self.m)]
    for k in self.theta:
      delta = np.mean([self.theta[k] - f[k] for f in fast], 0)
      self.b[k] = self.mu * self.b[k] + delta
      self.theta[k] = self.theta[k] - self.alpha * self.b[k]
    return {k: v.copy() for k, v in self.theta.items()}


class NpGossip:
  """PAPA-2 style: H Adam steps each, then each group's members all take the
  group's mean fast weights."""

  def __init__(self, m):
    p0 = {k: np.asarray(v, np.float64) for k, v in init_params().items()}
    self.p = [dict(p0) for _ in range(m)]
    self.adams = [NpAdam(p0) for _ in range(m)]
    self.m = m

  def round(self, batch, groups):
    fast = [fast_weights(i, self.p[i], self.adams, batch, np.float64)
            for i in range(self.m)]
    for group in groups:
      mean = {k: np.mean([fast[j][k] for j in group], 0) for k in fast[0]}
      for i in group:
        self.p[i] = {k: v.copy() for k, v in mean.items()}
    return [dict(p) for p in self.p]


# Fixed pairings for the reference-only tests (no implementation needed).
FIXED_GROUPS = [[[0, 2], [1, 3]], [[0, 1], [2, 3]], [[0, 3], [1, 2]],
                [[1, 0], [3, 2]]]


# ---------------------------------------------------------------- engine


def group_rows(r, m=M, n=N, seed=SEED):
  from fedjax_lab.outer.noloco import group_members  # pylint: disable=g-import-not-at-top
  key = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), r))[0]
  rows = np.asarray(group_members(key, m, n))
  assert rows.dtype == np.int32 and rows.shape == (m // n, n), rows
  return rows


def run_engine(algo, m=M, rounds=ROUNDS, seed=SEED):
  engine = fedjax_lab.Engine(loss_fn, inner_opt=optax.adam(
      LR, b1=B1, b2=B2, eps=EPS), outer=algo, num_replicas=m, inner_steps=H)
  state = engine.init(init_params(), seed=seed)
  hist = []
  for r in range(rounds):
    state, _ = engine.round(state, make_batch(m, r))
    reps = jax.tree.map(np.asarray, state.replica_params)
    hist.append(([{k: v[i] for k, v in reps.items()} for i in range(m)],
                 jax.tree.map(np.asarray, engine.eval_params(state))))
  return hist


def noloco(**hp):
  kw = dict(learning_rate=ALPHA, momentum=MU, group_size=N)
  kw.update(hp)
  return outer.get("noloco", **kw)


def assert_close(got, expected, tol=TOL, msg=""):
  for k in expected:
    np.testing.assert_allclose(np.asarray(got[k], np.float64), expected[k],
                               rtol=tol, atol=tol, err_msg=f"{msg} {k}")


# ------------------------------------------- the references on their own


def test_reference_special_cases():
  # Group size M ⇒ heavy-ball DiLoCo with b_noloco = α·b_sgd.
  ref, dil = NpNoLoCo(M), NpHeavyBallDiLoCo(M)
  for r in range(ROUNDS):
    phis, mean = ref.round(make_batch(M, r), [list(range(M))])
    want = dil.round(make_batch(M, r))
    for i in range(M):
      assert_close(phis[i], want, 1e-14)
      assert_close(ref.b[i], {k: ALPHA * v for k, v in dil.b.items()}, 1e-14)
    assert_close(mean, want, 1e-14)
  # α = 1, μ = 0 ⇒ gossip: each replica takes its group's mean fast weights.
  ref, gos = NpNoLoCo(M, alpha=1.0, mu=0.0), NpGossip(M)
  for r in range(ROUNDS):
    phis, _ = ref.round(make_batch(M, r), FIXED_GROUPS[r])
    want = gos.round(make_batch(M, r), FIXED_GROUPS[r])
    for i in range(M):
      assert_close(phis[i], want[i], 1e-14)
  # With pairs and α < 1 the replicas really differ, and differ from DiLoCo.
  ref, dil = NpNoLoCo(M), NpHeavyBallDiLoCo(M)
  for r in range(ROUNDS):
    phis, mean = ref.round(make_batch(M, r), FIXED_GROUPS[r])
    want = dil.round(make_batch(M, r))
  assert np.abs(phis[0]["w"] - phis[1]["w"]).max() > 1e-3
  assert np.abs(mean["w"] - want["w"]).max() > 1e-3


def test_reference_in_float32_stays_within_the_tolerance():
  hi, lo = NpNoLoCo(M), NpNoLoCo(M, dtype=np.float32)
  for r in range(ROUNDS):
    a, ma = hi.round(make_batch(M, r), FIXED_GROUPS[r])
    b, mb = lo.round(make_batch(M, r), FIXED_GROUPS[r])
    for i in range(M):
      assert_close(jax.tree.map(lambda x: np.asarray(x, np.float64), b[i]),
                   a[i], TOL / 10, f"round {r} replica {i}")
  assert min(a.min_abs_grad for a in hi.adams) > 1e-4


# ---------------------------------------------------------------- the engine


def test_groups_are_a_partition_that_changes():
  pairings = []
  for r in range(ROUNDS):
    rows = group_rows(r)
    assert sorted(rows.reshape(-1).tolist()) == list(range(M))
    pairings.append(frozenset(frozenset(row.tolist()) for row in rows))
  assert len(set(pairings)) > 1, pairings
  # Other sizes: a partition into M/n rows of n.
  for m, n in ((8, 2), (8, 4), (6, 3), (4, 4)):
    rows = group_rows(0, m, n)
    assert sorted(rows.reshape(-1).tolist()) == list(range(m))


def test_matches_numpy_reference_every_round():
  hist = run_engine(noloco())
  ref = NpNoLoCo(M)
  for r in range(ROUNDS):
    groups = group_rows(r).tolist()
    phis, mean = ref.round(make_batch(M, r), groups)
    reps, glob = hist[r]
    for i in range(M):
      assert_close(reps[i], phis[i], msg=f"round {r} replica {i}")
    assert_close(glob, mean, msg=f"round {r} mean")
  # Decentralised: the replicas disagree (no all-reduce).
  assert np.abs(hist[-1][0][0]["w"] - hist[-1][0][1]["w"]).max() > 1e-3


def test_one_group_is_heavy_ball_diloco():
  """group_size = M: DiLoCo with outer heavy-ball SGD (b_noloco = α·b_sgd).
  Both engines run float32; they differ by a few roundings of O(1) values per
  round (≈ 1e-7), amplified at most ~3× per round by the momentum, so 1e-5."""
  a = run_engine(noloco(group_size=M))
  b = run_engine(outer.get("diloco", learning_rate=ALPHA, momentum=MU,
                           nesterov=False, reset_inner_state=False))
  dil = NpHeavyBallDiLoCo(M)
  for r in range(ROUNDS):
    want = dil.round(make_batch(M, r))
    assert_close(a[r][1], b[r][1], 1e-5, f"round {r}")
    assert_close(a[r][1], want, msg=f"round {r}")
    for i in range(M):
      assert_close(a[r][0][i], b[r][0][i], 1e-5, f"round {r} replica {i}")


def test_alpha_one_momentum_zero_is_gossip():
  hist = run_engine(noloco(learning_rate=1.0, momentum=0.0))
  gos = NpGossip(M)
  for r in range(ROUNDS):
    groups = group_rows(r).tolist()
    want = gos.round(make_batch(M, r), groups)
    for i in range(M):
      assert_close(hist[r][0][i], want[i], msg=f"round {r} replica {i}")
    for row in groups:  # Pair members hold the same weights.
      for k in want[0]:
        np.testing.assert_allclose(hist[r][0][row[0]][k],
                                   hist[r][0][row[1]][k], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("m,n", [(4, 3), (5, 2)])
def test_indivisible_group_size_is_refused(m, n):
  algo = noloco(group_size=n)  # Valid alone: M is not known yet.
  with pytest.raises(ValueError):
    engine = fedjax_lab.Engine(loss_fn, inner_opt=optax.adam(LR),
                               outer=algo, num_replicas=m, inner_steps=H)
    engine.init(init_params(), seed=SEED)


def test_registry_and_defaults():
  assert "noloco" in outer.names()
  hp = outer.hparams("noloco")
  assert hp["learning_rate"] == 0.7 and hp["momentum"] == 0.5
  assert hp["group_size"] == 2
