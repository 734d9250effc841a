"""Every registry entry against an independent float64 numpy reference.

The reference below re-derives each update rule from docs/algorithms.md
by hand (no fedjax_lab or optax code): a linear-regression problem with
heterogeneous replicas, inner SGD with heavy-ball momentum (so that resetting
or keeping the inner state matters), 3 rounds; the global params after every
round must agree to 1e-5.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_lab
from fedjax_lab import outer

D, H, B = 3, 4, 5
INNER_LR, INNER_MOM = 0.05, 0.5
ROUNDS = 3


def make_data(num_replicas, rounds=ROUNDS, seed=0):
  """Heterogeneous replicas: shifted inputs and different true weights."""
  rs = np.random.RandomState(seed)
  xs, ys = [], []
  for i in range(num_replicas):
    w_true = rs.randn(D) + i
    x = rs.randn(rounds, H, B, D) + 0.5 * i
    y = x @ w_true + 0.3 * rs.randn(rounds, H, B) - i
    xs.append(x)
    ys.append(y)
  # [rounds, M, H, B, ...]
  return np.stack(xs, 1), np.stack(ys, 1)


def loss_fn(params, batch, rng):
  del rng
  pred = batch["x"] @ params["w"] + params["b"]
  return jnp.mean(jnp.square(pred - batch["y"]))


# ---------------------------------------------------------------------------
# The numpy reference. θ is the vector [w; b].


def grad_np(theta, x, y):
  xt = np.concatenate([x, np.ones(x.shape[:-1] + (1,))], -1)
  return 2.0 / x.shape[0] * xt.T @ (xt @ theta - y)


def local_steps(theta, mom, x, y, anchor, penalty):
  """H steps of SGD with momentum: t ← g + μ·t; θ ← θ − lr·t."""
  for t in range(H):
    g = grad_np(theta, x[t], y[t]) + penalty * (theta - anchor)
    mom = g + INNER_MOM * mom
    theta = theta - INNER_LR * mom
  return theta, mom


class Ref:
  """Runs the reference of one algorithm; returns the global θ per round."""

  def __init__(self, name, hp, m):
    self.name, self.hp, self.m = name, hp, m

  def run(self, xs, ys, theta0):
    # Over 80 lines on purpose: the whole float64 reference round, kept as one readable loop.
    m, hp = self.m, self.hp
    g = theta0.copy()
    reps = [theta0.copy() for _ in range(m)]
    moms = [np.zeros_like(theta0) for _ in range(m)]
    state = {}
    out = []
    for r in range(ROUNDS):
      if self.name == "ddp":
        mom = moms[0]
        for t in range(H):
          grad = np.mean([grad_np(g, xs[r, i, t], ys[r, i, t])
                          for i in range(m)], 0)
          mom = grad + INNER_MOM * mom
          g = g - INNER_LR * mom
        moms[0] = mom
        out.append(g.copy())
        continue
      penalty = hp.get("mu", 0.0) if self.name == "fedprox" else hp.get(
          "rho", 0.0)
      new = [local_steps(reps[i], moms[i], xs[r, i], ys[r, i], g, penalty)
             for i in range(m)]
      locals_ = [n[0] for n in new]
      moms = [n[1] for n in new]
      delta = np.mean([g - p for p in locals_], 0)
      reset = True
      if self.name in ("fedavg", "fedprox"):
        g = g - hp.get("learning_rate", 1.0) * delta
        reps = [g.copy() for _ in range(m)]
        reset = hp.get("reset_inner_state", True)
      elif self.name == "fedavgm":
        b = hp["momentum"] * state.get("b", 0.0) + delta
        state["b"] = b
        g = g - hp["learning_rate"] * b
        reps = [g.copy() for _ in range(m)]
      elif self.name == "diloco":
        b = hp["momentum"] * state.get("b", 0.0) + delta
        state["b"] = b
        if hp.get("nesterov", True):
          g = g - hp["learning_rate"] * (delta + hp["momentum"] * b)
        else:  # Heavy ball: θ ← θ − lr·b.
          g = g - hp["learning_rate"] * b
        reps = [g.copy() for _ in range(m)]
        reset = False
      elif self.name in ("fedadam", "fedyogi", "fedadagrad"):
        b1, tau, lr = hp["b1"], hp["tau"], hp["learning_rate"]
        bc = hp.get("bias_correction", False)
        b2 = hp.get("b2", 0.999 if bc else 0.99)
        mm = state.get("m", np.zeros_like(g))
        v = state.get("v", np.zeros_like(g) if bc else np.full_like(g, tau**2))
        mm = b1 * mm + (1 - b1) * delta
        if self.name == "fedadam":
          v = b2 * v + (1 - b2) * delta**2
        elif self.name == "fedyogi":
          v = v - (1 - b2) * delta**2 * np.sign(v - delta**2)
        else:
          v = v + delta**2
        state["m"], state["v"] = mm, v
        t = r + 1
        if bc:
          mh = mm / (1 - b1**t)
          vh = v / (1 - b2**t) if self.name != "fedadagrad" else v
          g = g - lr * mh / (np.sqrt(vh) + tau)
        else:
          g = g - lr * mm / (np.sqrt(v) + tau)
        reps = [g.copy() for _ in range(m)]
      elif self.name == "easgd":
        alpha = hp["beta"] / m
        center = g
        d = [alpha * (p - center) for p in locals_]
        reps = [p - di for p, di in zip(locals_, d)]
        g = center + np.sum(d, 0)
        reset = False
      elif self.name in ("papa", "papa_all", "papa_2"):
        mean = np.mean(locals_, 0)
        if self.name == "papa":
          a = hp["alpha"]
          reps = [a * p + (1 - a) * mean for p in locals_]
        elif self.name == "papa_all":
          reps = [mean.copy() for _ in range(m)]
        else:  # papa_2: each replica becomes its pair's mean.
          partner = papa_2_partners(r, m)
          reps = [0.5 * (locals_[i] + locals_[partner[i]]) for i in range(m)]
        g = mean
        reset = False
      else:
        raise AssertionError(self.name)
      if reset:
        moms = [np.zeros_like(g) for _ in range(m)]
      out.append(g.copy())
    return out


CASES = [
    ("fedavg", {}),
    ("fedavg", {"learning_rate": 0.5}),
    ("fedavgm", {"learning_rate": 0.8, "momentum": 0.9}),
    ("fedadam", {"learning_rate": 0.05, "b1": 0.9, "tau": 1e-2}),
    ("fedadam", {"learning_rate": 0.05, "b1": 0.9, "tau": 1e-2,
                 "bias_correction": True}),
    ("fedyogi", {"learning_rate": 0.05, "b1": 0.9, "tau": 1e-2}),
    ("fedyogi", {"learning_rate": 0.05, "b1": 0.9, "tau": 1e-2,
                 "bias_correction": True}),
    ("fedadagrad", {"learning_rate": 0.05, "b1": 0.9, "tau": 1e-2}),
    ("fedadagrad", {"learning_rate": 0.05, "b1": 0.9, "tau": 1e-2,
                    "bias_correction": True}),
    ("diloco", {"learning_rate": 0.7, "momentum": 0.9}),
    ("diloco", {"learning_rate": 0.7, "momentum": 0.9, "nesterov": False}),
    ("easgd", {"beta": 0.9}),
    ("easgd", {"beta": 0.9, "rho": 0.1}),
    ("fedprox", {"mu": 0.1}),
    ("fedprox", {"mu": 0.1, "reset_inner_state": False}),  # Keeps inner state.
    ("papa", {"alpha": 0.9}),
    ("papa_all", {}),
    ("papa_2", {}),
    ("ddp", {}),
]


@pytest.mark.parametrize("name,hp", CASES,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_matches_numpy_reference(name, hp):
  m = 4 if name == "papa_2" else 3
  xs, ys = make_data(m)
  theta0 = np.array([0.1, -0.2, 0.3, 0.05])
  expected = Ref(name, hp, m).run(xs, ys, theta0)

  engine = fedjax_lab.Engine(
      loss_fn, inner_opt=optax.sgd(INNER_LR, momentum=INNER_MOM),
      outer=outer.get(name, **hp), num_replicas=m, inner_steps=H)
  state = engine.init({"w": jnp.asarray(theta0[:D], jnp.float32),
                       "b": jnp.asarray(theta0[D], jnp.float32)})
  for r in range(ROUNDS):
    batch = {"x": xs[r].astype(np.float32), "y": ys[r].astype(np.float32)}
    state, _ = engine.round(state, batch)
    got = engine.eval_params(state)
    got = np.concatenate([np.asarray(got["w"]), np.asarray(got["b"])[None]])
    np.testing.assert_allclose(got, expected[r], rtol=1e-5, atol=1e-5,
                               err_msg=f"{name} round {r}")
  # demo and scaffold have their own references (tests/test_demo.py,
  # tests/test_scaffold.py).
  # These have reference tests of their own (test_demo.py, test_scaffold.py,
  # test_sparseloco.py, test_desloc.py, test_noloco.py).
  own = {"demo", "scaffold", "sparseloco", "desloc", "local_adam", "noloco"}
  assert set(outer.names()) - own <= {n for n, _ in CASES}


# ---------------------------------------------------------------------------
# papa_2 at M = 4 and 6: every replica equals its pair's mean; a replica whose
# partner sat out keeps its own params.


def papa_2_partners(r, m, seed=0):
  """Round r's pairing: the round's sync key (fedjax_lab/sync.py round_keys:
  the first half of split(fold_in(PRNGKey(seed), r))) drawn into disjoint
  pairs by `fedjax_lab.outer.papa.random_pairs`. Checked to be a perfect matching."""
  key = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), r))[0]
  papa_module = importlib.import_module("fedjax_lab.outer.papa")
  partner = np.asarray(papa_module.random_pairs(key, m))
  assert sorted(partner) == list(range(m))
  np.testing.assert_array_equal(partner[partner], np.arange(m))
  assert np.all(partner != np.arange(m))  # Even M: nobody is left alone.
  return partner


def papa_2_reference(xs, ys, theta0, m, masks):
  """(global θ, replica θs) after every round; replicas keep their momentum.

  Replicas that take part train H steps; the global model is the mean of
  their results; each of them becomes the mean of itself and its partner if
  the partner took part, and stays as it is otherwise. A replica that sat out
  discards its steps (and their momentum) and restarts from the global
  model.
  """
  g = theta0.copy()
  reps = [theta0.copy() for _ in range(m)]
  moms = [np.zeros_like(theta0) for _ in range(m)]
  out = []
  for r, mask in enumerate(masks):
    new = [local_steps(reps[i], moms[i], xs[r, i], ys[r, i], g, 0.0)
           for i in range(m)]
    locals_ = [n[0] for n in new]
    moms = [new[i][1] if mask[i] else moms[i] for i in range(m)]
    g = np.mean([locals_[i] for i in range(m) if mask[i]], 0)
    partner = papa_2_partners(r, m)
    reps = [(0.5 * (locals_[i] + locals_[partner[i]]) if mask[partner[i]]
             else locals_[i]) if mask[i] else g.copy() for i in range(m)]
    out.append((g.copy(), [p.copy() for p in reps]))
  return out


@pytest.mark.parametrize("m", [4, 6])
def test_papa_2_matches_pairwise_reference_with_a_partner_out(m):
  xs, ys = make_data(m)
  theta0 = np.array([0.1, -0.2, 0.3, 0.05])
  # Round 1: replica 0 sits out, so its partner keeps its own params.
  masks = [np.ones(m, bool), np.arange(m) != 0, np.ones(m, bool)]
  expected = papa_2_reference(xs, ys, theta0, m, masks)
  lonely = papa_2_partners(1, m)[0]  # Replica 0's partner in round 1.
  engine = fedjax_lab.Engine(
      loss_fn, inner_opt=optax.sgd(INNER_LR, momentum=INNER_MOM),
      outer=outer.get("papa_2"), num_replicas=m, inner_steps=H)
  state = engine.init({"w": jnp.asarray(theta0[:D], jnp.float32),
                       "b": jnp.asarray(theta0[D], jnp.float32)})
  flat = lambda t, *i: np.concatenate([np.asarray(t["w"][i]).reshape(-1),
                                       np.asarray(t["b"][i]).reshape(-1)])
  for r in range(ROUNDS):
    batch = {"x": xs[r].astype(np.float32), "y": ys[r].astype(np.float32)}
    state, _ = engine.round(state, batch, mask=masks[r])
    g_ref, reps_ref = expected[r]
    np.testing.assert_allclose(flat(engine.eval_params(state)), g_ref,
                               rtol=1e-5, atol=1e-5, err_msg=f"round {r}")
    for i in range(m):
      np.testing.assert_allclose(
          flat(state.replica_params, i), reps_ref[i], rtol=1e-5, atol=1e-5,
          err_msg=f"round {r} replica {i}")
    if r == 1:  # The lonely replica is not any pair's mean.
      assert not any(np.allclose(reps_ref[lonely], reps_ref[j], atol=1e-3)
                     for j in range(m) if j != lonely)
