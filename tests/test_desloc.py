"""DES-LOC and Local Adam (Iacob et al., arXiv 2505.22549) in the engine,
against independent float64 numpy references written here from
the paper (Algorithm 1) and docs/algorithms.md:

  worker m, step s = 1, 2, …: g = ∇f_m(x^m); u ← β1·u + (1 − β1)·g;
  v ← β2·v + (1 − β2)·g²; x ← x − η·û/(√v̂ + ε) (optax.adam: bias-corrected
  with the worker's step count, ε outside the root);
  after step s: s % Kx = 0 ⇒ x^m ← mean x; s % Ku = 0 ⇒ u^m ← mean u;
  s % Kv = 0 ⇒ v^m ← mean v (the step count is never averaged).

The engine's round is Kx = H steps; desloc(u_every, v_every) has
Ku = u_every·H, Kv = v_every·H (0 = never); local_adam = u = v = 1.

Problem: nonlinear least squares pred = z + 0.3·z², z = x·w + b, w [3, 2],
b [2]; non-i.i.d. replicas (each has its own input shift and target model).
(A polynomial, not tanh: XLA's float32 tanh is not correctly rounded, ≈ 2e-7
off, which would make the engine's error differ from numpy float32's.)

Float32 vs float64. The engine runs float32; every quantity is O(1)
(|x| < 0.5, |g| < 2) with ≈ 6e-8 relative rounding per operation, and the
12–24 Adam steps do not amplify it (lr·curvature < 1). One float32 effect is
not small: Adam's bias correction 1 − β2^t cancels, so the float32 rounding of
β2^t (≈ 6e-8) is a relative error 6e-8/(t·(1 − β2)) of v̂: 6e-5/t at
β2 = 0.999, which moved the engine 1.3e-6 from float64 here. We take
β2 = 0.99 (10× smaller), and the reference computes the bias corrections in
its own dtype, as optax does. Then the reference run in numpy float32 is
within 1e-7 of float64 in x, u, v over 6 rounds, and so is the engine (FedAvg
with kept Adam state: 9e-8 in x, 2.6e-7 in u). We assert TOL = 1e-5 (atol and
rtol), ≥ 40× that; `test_reference_in_float32_stays_within_the_tolerance`
re-measures the numpy float32 run against TOL / 10. No gradient entry is near
ε = 1e-8 (the smallest |g| entry is 6.7e-4, checked > 1e-4).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_lab
from fedjax_lab import outer

D, K, B = 3, 2, 4
M, H = 3, 2
LR, B1, B2, EPS = 0.05, 0.9, 0.99, 1e-8
CURVE = 0.3  # pred = z + CURVE·z², z = x·w + b.
TOL = 1e-5


def init_params():
  return {"w": np.array([[0.2, -0.1], [0.05, 0.3], [-0.25, 0.1]], np.float32),
          "b": np.array([0.1, -0.05], np.float32)}


def make_batch(m, seed, h=H, identical=False):
  """Replica i: inputs shifted by 0.5·i, its own target model w_i."""
  rs = np.random.RandomState(40 + seed)
  x = rs.randn(m, h, B, D)
  if identical:
    x = np.broadcast_to(x[:1], x.shape)
  else:
    x = x + 0.5 * np.arange(m)[:, None, None, None]
  w_true = np.stack([np.full((D, K), 0.4 * (i - 1.0)) +
                     0.3 * np.eye(D, K) * (1 if identical else i + 1)
                     for i in range(m)])
  if identical:
    w_true = np.broadcast_to(w_true[:1], w_true.shape)
  y = np.tanh(np.einsum("mhbd,mdk->mhbk", x, w_true))
  y = y + 0.1 * (rs.randn(1, h, B, K) if identical else rs.randn(m, h, B, K))
  return {"x": np.ascontiguousarray(x, np.float32),
          "y": np.ascontiguousarray(np.broadcast_to(y, (m, h, B, K)),
                                    np.float32)}


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
  """One worker's Adam (optax.adam's form) in `dtype`."""

  def __init__(self, params, dtype=np.float64):
    self.x = {k: np.asarray(v, dtype) for k, v in params.items()}
    self.u = {k: np.zeros_like(v) for k, v in self.x.items()}
    self.v = {k: np.zeros_like(v) for k, v in self.x.items()}
    self.count = 0
    self.dt = dtype
    self.min_abs_grad = np.inf

  def step(self, x, y):
    g = np_grads(self.x, x, y)
    self.count += 1
    for k in self.x:
      self.min_abs_grad = min(self.min_abs_grad, float(np.abs(g[k]).min()))
      self.u[k] = B1 * self.u[k] + (1 - B1) * g[k]
      self.v[k] = B2 * self.v[k] + (1 - B2) * g[k] * g[k]
      # Bias corrections in the state's dtype, as optax (in float32 they carry
      # β2's rounding: see the module docstring).
      uh = self.u[k] / (1 - self.dt(B1)**self.count)
      vh = self.v[k] / (1 - self.dt(B2)**self.count)
      self.x[k] = self.x[k] - LR * uh / (np.sqrt(vh) + EPS)


def np_desloc(batches, kx, ku, kv, m, dtype=np.float64):
  """The step form of Algorithm 1 with periods in steps (None = never).

  batches: list over rounds of {"x": [m, H, ...], "y": ...}; steps are taken
  in order. Returns per round (after its last step): the workers.
  """
  workers = [NpAdam(init_params(), dtype) for _ in range(m)]
  out, s = [], 0
  for batch in batches:
    for t in range(H):
      s += 1
      for i, wk in enumerate(workers):
        wk.step(np.asarray(batch["x"][i, t], dtype),
                np.asarray(batch["y"][i, t], dtype))
      for period, attr in ((kx, "x"), (ku, "u"), (kv, "v")):
        if period and s % period == 0:
          for k in workers[0].x:
            mean = np.mean([getattr(wk, attr)[k] for wk in workers], 0)
            for wk in workers:
              getattr(wk, attr)[k] = mean.copy()
    out.append([(jax.tree.map(np.copy, wk.x), jax.tree.map(np.copy, wk.u),
                 jax.tree.map(np.copy, wk.v), wk.count) for wk in workers])
  return out, workers


def np_local_adam(batches, m):
  """Local Adam written on its own: each round H Adam steps per worker, then
  parameters and both moments of all workers replaced by their means."""
  xs = [{k: np.asarray(v, np.float64) for k, v in init_params().items()}
        for _ in range(m)]
  us = [{k: np.zeros_like(v) for k, v in xs[0].items()} for _ in range(m)]
  vs = [{k: np.zeros_like(v) for k, v in xs[0].items()} for _ in range(m)]
  n, out = 0, []
  for batch in batches:
    for t in range(H):
      n += 1
      for i in range(m):
        g = np_grads(xs[i], batch["x"][i, t].astype(np.float64),
                     batch["y"][i, t].astype(np.float64))
        for k in g:
          us[i][k] = B1 * us[i][k] + (1 - B1) * g[k]
          vs[i][k] = B2 * vs[i][k] + (1 - B2) * g[k]**2
          xs[i][k] = xs[i][k] - LR * (us[i][k] / (1 - B1**n)) / (
              np.sqrt(vs[i][k] / (1 - B2**n)) + EPS)
    avg = lambda trees: [{k: sum(t[k] for t in trees) / m for k in trees[0]}
                         for _ in range(m)]
    xs, us, vs = avg(xs), avg(us), avg(vs)
    out.append(dict(xs[0]))
  return out


def np_plain_adam(batches, replica=0):
  wk = NpAdam(init_params())
  out = []
  for batch in batches:
    for t in range(H):
      wk.step(batch["x"][replica, t].astype(np.float64),
              batch["y"][replica, t].astype(np.float64))
    out.append(jax.tree.map(np.copy, wk.x))
  return out


def periods(u_every, v_every):
  return H, (u_every * H or None), (v_every * H or None)


# ---------------------------------------------------------------- engine


def run_engine(algo, m, rounds, identical=False, inner=None):
  engine = fedjax_lab.Engine(
      loss_fn, inner_opt=inner or optax.adam(LR, b1=B1, b2=B2, eps=EPS),
      outer=algo, num_replicas=m, inner_steps=H)
  state = engine.init(init_params(), seed=0)
  hist = []
  for r in range(rounds):
    state, _ = engine.round(state, make_batch(m, r, identical=identical))
    hist.append((jax.tree.map(np.asarray, engine.eval_params(state)),
                 jax.tree.map(np.asarray, state.replica_params),
                 adam_state(state.inner_state)))
  return hist


def adam_state(inner_state):
  """The optax.ScaleByAdamState inside a (vmapped) inner optimizer state."""
  found = [s for s in jax.tree.leaves(
      inner_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
           if isinstance(s, optax.ScaleByAdamState)]
  assert len(found) == 1, inner_state
  return jax.tree.map(np.asarray, found[0])


def assert_close(got, expected, tol=TOL, msg=""):
  for k in expected:
    np.testing.assert_allclose(np.asarray(got[k], np.float64), expected[k],
                               rtol=tol, atol=tol, err_msg=f"{msg} {k}")


def batches(m, rounds, identical=False):
  return [make_batch(m, r, identical=identical) for r in range(rounds)]


# ------------------------------------------- the references on their own


def test_reference_special_cases():
  bs = batches(M, 6)
  # Local Adam: the step form with Kx = Ku = Kv = H ≡ the direct form.
  ref, _ = np_desloc(bs, H, H, H, M)
  direct = np_local_adam(bs, M)
  for r in range(6):
    for i in range(M):
      assert_close(ref[r][i][0], direct[r], 1e-14)
  # M = 1 ⇒ Adam; identical data ⇒ Adam for any periods.
  one = np_desloc(batches(1, 6), *periods(2, 3), 1)[0]
  plain = np_plain_adam(batches(1, 6))
  same_bs = batches(M, 6, identical=True)
  plain_same = np_plain_adam(same_bs)
  for kx, ku, kv in (periods(2, 3), periods(1, 1), periods(3, 6),
                     periods(0, 0)):
    same = np_desloc(same_bs, kx, ku, kv, M)[0]
    for r in range(6):
      for i in range(M):
        assert_close(same[r][i][0], plain_same[r], 1e-14)
  for r in range(6):
    assert_close(one[r][0][0], plain[r], 1e-14)
  # The periods matter on non-i.i.d. data.
  a = np_desloc(bs, *periods(2, 3), M)[0][-1][0][0]
  b = np_desloc(bs, *periods(1, 1), M)[0][-1][0][0]
  c = np_desloc(bs, *periods(0, 0), M)[0][-1][0][0]
  assert np.abs(a["w"] - b["w"]).max() > 1e-4
  assert np.abs(a["w"] - c["w"]).max() > 1e-4


def test_reference_in_float32_stays_within_the_tolerance():
  bs = batches(M, 6)
  hi, workers = np_desloc(bs, *periods(2, 3), M)
  lo, _ = np_desloc(bs, *periods(2, 3), M, dtype=np.float32)
  for r in range(6):
    for i in range(M):
      for j in range(3):  # x, u, v
        assert_close(jax.tree.map(lambda a: np.asarray(a, np.float64),
                                  lo[r][i][j]), hi[r][i][j], TOL / 10,
                     f"round {r} replica {i} part {j}")
  # ε = 1e-8 plays no part: every gradient entry is far larger.
  assert min(wk.min_abs_grad for wk in workers) > 1e-4


# ---------------------------------------------------------------- the engine


def check_against_reference(hist, ref, rounds, m):
  for r in range(rounds):
    glob, reps, adam = hist[r]
    # Parameters are averaged every round: every replica holds the mean.
    assert_close(glob, ref[r][0][0], msg=f"round {r} θ")
    for i in range(m):
      x, u, v, count = ref[r][i]
      at = lambda tree: {k: a[i] for k, a in tree.items()}
      assert_close(at(reps), x, msg=f"round {r} replica {i} params")
      assert_close(at(adam.mu), u, msg=f"round {r} replica {i} mu")
      assert_close(at(adam.nu), v, msg=f"round {r} replica {i} nu")
      assert int(adam.count[i]) == count


@pytest.mark.parametrize("u_every,v_every", [(2, 3), (3, 6)])
def test_desloc_matches_numpy_reference(u_every, v_every):
  rounds = 6
  ref, _ = np_desloc(batches(M, rounds), *periods(u_every, v_every), M)
  hist = run_engine(outer.get("desloc", u_every=u_every, v_every=v_every), M,
                    rounds)
  check_against_reference(hist, ref, rounds, M)
  # Between syncs the replicas' moments really differ (not all averaged).
  mu = hist[0][2].mu["w"]
  assert np.abs(mu[0] - mu[1]).max() > 1e-4


def test_local_adam_matches_independent_reference():
  rounds = 4
  direct = np_local_adam(batches(M, rounds), M)
  hist = run_engine(outer.get("local_adam"), M, rounds)
  ref, _ = np_desloc(batches(M, rounds), H, H, H, M)
  check_against_reference(hist, ref, rounds, M)
  for r in range(rounds):
    assert_close(hist[r][0], direct[r], msg=f"round {r}")
    for part in (hist[r][2].mu, hist[r][2].nu):  # Moments equal everywhere.
      for a in part.values():
        np.testing.assert_array_equal(a, np.broadcast_to(a[:1], a.shape))


def test_one_replica_is_plain_adam():
  rounds = 4
  plain = np_plain_adam(batches(1, rounds))
  hist = run_engine(outer.get("desloc", u_every=2, v_every=3), 1, rounds)
  for r in range(rounds):
    assert_close(hist[r][0], plain[r], msg=f"round {r}")


@pytest.mark.parametrize("u_every,v_every", [(2, 3), (0, 0)])
def test_identical_data_is_plain_adam(u_every, v_every):
  rounds = 4
  plain = np_plain_adam(batches(M, rounds, identical=True))
  hist = run_engine(outer.get("desloc", u_every=u_every, v_every=v_every), M,
                    rounds, identical=True)
  for r in range(rounds):
    assert_close(hist[r][0], plain[r], msg=f"round {r}")


def test_no_moment_averaging_is_fedavg_keeping_adam_state():
  """u_every = v_every = 0 ⇒ FedAvg (lr 1) with each replica's Adam state
  kept. Both engines run float32 and differ only in a few roundings of O(1)
  values per round (≈ 1e-7), so 2e-6."""
  rounds = 4
  a = run_engine(outer.get("desloc", u_every=0, v_every=0), M, rounds)
  b = run_engine(outer.get("fedavg", reset_inner_state=False), M, rounds)
  ref, _ = np_desloc(batches(M, rounds), *periods(0, 0), M)
  check_against_reference(a, ref, rounds, M)
  for r in range(rounds):
    assert_close(a[r][0], b[r][0], 2e-6, f"round {r}")
    for part in ("mu", "nu"):
      assert_close(getattr(a[r][2], part), getattr(b[r][2], part), 2e-6,
                   f"round {r} {part}")


@pytest.mark.parametrize("name", ["desloc", "local_adam"])
def test_non_adam_inner_optimizer_is_refused(name):
  algo = outer.get(name)
  with pytest.raises(ValueError):
    engine = fedjax_lab.Engine(loss_fn, inner_opt=optax.sgd(0.1), outer=algo,
                               num_replicas=M, inner_steps=H)
    engine.init(init_params())


def test_registry_and_defaults():
  assert {"desloc", "local_adam"} <= set(outer.names())
  hp = outer.hparams("desloc")
  assert hp["u_every"] == 3 and hp["v_every"] == 6


def test_adamw_inner_is_accepted():
  """optax.adamw is Adam plus decoupled decay: its moments are averaged too
  (weight_decay 0 here, so the reference is the Adam one)."""
  rounds = 2
  ref, _ = np_desloc(batches(M, rounds), *periods(1, 2), M)
  hist = run_engine(outer.get("desloc", u_every=1, v_every=2), M, rounds,
                    inner=optax.adamw(LR, b1=B1, b2=B2, eps=EPS,
                                      weight_decay=0.0))
  check_against_reference(hist, ref, rounds, M)
