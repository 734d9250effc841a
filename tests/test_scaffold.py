"""SCAFFOLD (fedjax_lab/outer/scaffold.py) in the engine, against an
independent float64 numpy reference of arXiv 1910.06378, Alg. 1 option II."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import fedjax_lab
from fedjax_lab import outer

D, K_OUT, B, H = 3, 2, 5, 3
LOCAL_LR = 0.05


def loss_fn(params, batch, rng):
  del rng
  pred = batch["x"] @ params["w"] + params["b"][None]
  return jnp.mean(jnp.square(pred - batch["y"]))


def init_params():
  return {"w": np.array([[0.1, -0.2], [0.3, 0.05], [-0.1, 0.2]], np.float32),
          "b": np.array([0.02, -0.04], np.float32)}


def make_batch(m, seed):
  """Non-i.i.d. replicas: each has its own input shift and true model."""
  rs = np.random.RandomState(seed)
  x = rs.randn(m, H, B, D) + 0.7 * np.arange(m)[:, None, None, None]
  w_true = np.stack([np.full((D, K_OUT), 0.5 * (i - 1.0)) for i in range(m)])
  y = np.einsum("mhbd,mdk->mhbk", x, w_true) + 0.1 * rs.randn(m, H, B, K_OUT)
  return {"x": x.astype(np.float32), "y": y.astype(np.float32)}


# ------------------------------------------------------- numpy reference


def np_grads(p, x, y):
  r = x @ p["w"] + p["b"] - y
  scale = 2.0 / r.size
  return {"w": scale * x.T @ r, "b": scale * r.sum(0)}


class NpScaffold:
  """Alg. 1 of the paper, option II, float64; weights w_i = n_i / Σ n_j."""

  def __init__(self, m, *, server_lr=1.0, zero_controls=False,
               num_clients=None):
    self.x = {k: np.asarray(v, np.float64) for k, v in init_params().items()}
    self.c = {k: np.zeros_like(v) for k, v in self.x.items()}
    self.ci = [{k: np.zeros_like(v) for k, v in self.x.items()}
               for _ in range(m)]
    self.m, self.server_lr, self.zero = m, server_lr, zero_controls
    self.n = m if num_clients is None else num_clients  # N in |S|/N.

  def round(self, batch, mask=None, num_steps=None):
    m = self.m
    mask = [True] * m if mask is None else mask
    steps = [H] * m if num_steps is None else num_steps
    part = [i for i in range(m) if mask[i] and steps[i] > 0]
    n = np.array([steps[i] * B if i in part else 0.0 for i in range(m)])
    w = n / n.sum()
    delta = {k: np.zeros_like(v) for k, v in self.x.items()}
    delta_c = {k: np.zeros_like(v) for k, v in self.x.items()}
    new_ci = {}
    for i in part:
      y = {k: v.copy() for k, v in self.x.items()}
      for t in range(steps[i]):
        g = np_grads(y, batch["x"][i, t], batch["y"][i, t])
        for k in y:
          y[k] = y[k] - LOCAL_LR * (g[k] - self.ci[i][k] + self.c[k])
      new_ci[i] = {k: self.ci[i][k] - self.c[k] +
                      (self.x[k] - y[k]) / (steps[i] * LOCAL_LR) for k in y}
      for k in y:
        delta[k] += w[i] * (self.x[k] - y[k])
        delta_c[k] += (new_ci[i][k] - self.ci[i][k]) / len(part)
    for k in self.x:
      self.x[k] = self.x[k] - self.server_lr * delta[k]
      self.c[k] = self.c[k] + len(part) / self.n * delta_c[k]
    for i in part:
      self.ci[i] = new_ci[i]
    if self.zero:
      self.c = {k: np.zeros_like(v) for k, v in self.c.items()}
      self.ci = [{k: np.zeros_like(v) for k, v in ci.items()} for ci in self.ci]
    return {k: v.copy() for k, v in self.x.items()}


# ---------------------------------------------------------------- engine


def make_engine(algo, m, mesh=None):
  return fedjax_lab.Engine(loss_fn, inner_opt=optax.sgd(LOCAL_LR), outer=algo,
                           num_replicas=m, inner_steps=H, mesh=mesh)


def run(algo, m, rounds, *, mesh=None, kwargs=()):
  engine = make_engine(algo, m, mesh)
  state = engine.init(init_params())
  history = []
  for r in range(rounds):
    state, metrics = engine.round(state, make_batch(m, r),
                                  **(dict(kwargs[r]) if kwargs else {}))
    history.append(jax.tree.map(np.asarray, state.params))
  return history, state, metrics


def assert_close(got, expected, tol=1e-5):
  for k in expected:
    np.testing.assert_allclose(np.asarray(got[k], np.float64), expected[k],
                               rtol=tol, atol=tol, err_msg=k)


ROUND_ARGS = [
    {},
    {"mask": [True, False, True, True]},  # Replica 1 sits out: keeps c_1.
    {"num_steps": [3, 1, 3, 2]},  # Stragglers: K_i = 1 and 2.
]


@pytest.mark.parametrize("server_lr", [1.0, 0.5])
def test_matches_numpy_reference_every_round(server_lr):
  m = 4
  ref = NpScaffold(m, server_lr=server_lr)
  hist, state, _ = run(outer.get("scaffold", local_lr=LOCAL_LR,
                                 server_lr=server_lr), m, 3, kwargs=ROUND_ARGS)
  for r in range(3):
    expected = ref.round(make_batch(m, r), **ROUND_ARGS[r])
    assert_close(hist[r], expected)
  assert_close(state.outer_state[0].control, ref.c)
  for i in range(m):
    assert_close(jax.tree.map(lambda x: x[i], state.client_state), ref.ci[i])
  # Not trivially FedAvg: the controls are non-zero and matter.
  assert np.abs(ref.c["w"]).max() > 1e-2


def test_first_round_is_fedavg():
  m = 4
  a, *_ = run(outer.get("scaffold", local_lr=LOCAL_LR), m, 1)
  b, *_ = run(outer.get("fedavg"), m, 1)
  assert_close(a[0], {k: np.asarray(v, np.float64) for k, v in b[0].items()},
               1e-7)


def _zero_controls(algo):
  """A test-only variant whose sync resets c and every c_i to zero."""
  sync = algo.sync

  def zeroed(inputs, state, ops):
    out = sync(inputs, state, ops)
    zeros = lambda t: jax.tree.map(jnp.zeros_like, t)
    return out._replace(outer_state=zeros(out.outer_state),
                        client_state=zeros(out.client_state))

  return algo._replace(sync=zeroed)


def test_controls_forced_to_zero_is_fedavg():
  m = 4
  algo = outer.get("scaffold", local_lr=LOCAL_LR)
  a, *_ = run(_zero_controls(algo), m, 3, kwargs=ROUND_ARGS)
  b, *_ = run(outer.get("fedavg"), m, 3, kwargs=ROUND_ARGS)
  for r in range(3):
    assert_close(a[r], {k: np.asarray(v, np.float64) for k, v in b[r].items()},
                 1e-6)
  # And the numpy reference with zeroed controls agrees.
  ref = NpScaffold(m, zero_controls=True)
  for r in range(3):
    assert_close(a[r], ref.round(make_batch(m, r), **ROUND_ARGS[r]))
  # Whereas real SCAFFOLD differs from FedAvg after round 1.
  c, *_ = run(algo, m, 3, kwargs=ROUND_ARGS)
  assert np.abs(c[2]["w"] - b[2]["w"]).max() > 1e-3


def test_later_rounds_do_not_recompile():
  engine = make_engine(outer.get("scaffold", local_lr=LOCAL_LR), 4)
  state = engine.init(init_params())
  # (Straggler rounds compile their own program, once: see the engine.)
  for r, mask in enumerate(([True] * 4, [True, False, True, True],
                            [False, True, True, True])):
    state, _ = engine.round(state, make_batch(4, r), mask=mask)
  assert engine.compiled_rounds() == 1


def test_nonfinite_replica_is_the_same_as_sitting_out():
  m = 4
  algo = outer.get("scaffold", local_lr=LOCAL_LR)
  bad = make_batch(m, 1)
  bad["x"][2, 1, 0, 0] = np.inf  # Replica 2 diverges in round 2.
  results = []
  for batch, mask in ((bad, None), (make_batch(m, 1), [True, True, False,
                                                      True])):
    engine = make_engine(algo, m)
    state, _ = engine.round(engine.init(init_params()), make_batch(m, 0))
    state, _ = engine.round(state, batch, mask=mask)
    results.append(jax.tree.map(np.asarray, (state.params, state.client_state,
                                             state.outer_state)))
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
    assert np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("devices", [8, 4])
def test_sharded_equals_vmapped(devices):
  m = 8
  mesh = fedjax_lab.replica_mesh(devices)
  algo = outer.get("scaffold", local_lr=LOCAL_LR)
  args = [{}, {"mask": [i % 3 != 1 for i in range(m)]}]
  a, sa, _ = run(algo, m, 2, kwargs=args)
  b, sb, _ = run(algo, m, 2, mesh=mesh, kwargs=args)
  for x, y in zip(jax.tree.leaves((a, sa.client_state, sa.outer_state)),
                  jax.tree.leaves((b, sb.client_state, sb.outer_state))):
    # Summation order differs (psum of blocks); c_i divides x − y_i by
    # K·η_l, so allow float32 noise relative to the largest entry.
    scale = max(1.0, float(np.abs(np.asarray(x)).max()))
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6,
                               atol=1e-6 * scale)
  leaf = jax.tree.leaves(sb.client_state)[0]
  assert len(leaf.sharding.device_set) == devices
  assert leaf.addressable_shards[0].data.shape[0] == m // devices


def test_checkpoint_resume_is_bit_identical(tmp_path):
  m = 4
  mesh = fedjax_lab.replica_mesh(4)
  algo = outer.get("scaffold", local_lr=LOCAL_LR)
  engine = make_engine(algo, m, mesh)
  state, _ = engine.round(engine.init(init_params()), make_batch(m, 0))
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.save(1, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
    straight, _ = engine.round(state, make_batch(m, 1))
    restored = manager.restore(1, args=ocp.args.StandardRestore(
        make_engine(algo, m, mesh).abstract_state(init_params())))
  assert np.abs(np.asarray(restored.client_state["w"])).max() > 0
  resumed, _ = make_engine(algo, m, mesh).round(restored, make_batch(m, 1))
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_traffic_is_twice_fedavg():
  numel = D * K_OUT + K_OUT
  algo = outer.get("scaffold", local_lr=LOCAL_LR)
  assert len(algo.traffic({"w": np.zeros(3)}, lambda t: 12, "all_reduce")) == 2
  *_, metrics = run(algo, 2, 1)
  *_, fedavg_metrics = run(outer.get("fedavg"), 2, 1)
  assert fedavg_metrics["payload_bytes"] == 4 * numel
  assert metrics["payload_bytes"] == 2 * 4 * numel  # Δy and Δc, fp32.


def test_num_clients_scales_the_server_control_by_s_over_n():
  # The M = 4 replicas as a sample of N = 10 clients: c moves by |S|/10.
  m, n = 4, 10
  ref = NpScaffold(m, num_clients=n)
  hist, state, _ = run(outer.get("scaffold", local_lr=LOCAL_LR, num_clients=n),
                       m, 3, kwargs=ROUND_ARGS)
  for r in range(3):
    assert_close(hist[r], ref.round(make_batch(m, r), **ROUND_ARGS[r]))
  assert_close(state.outer_state[0].control, ref.c)
  full = NpScaffold(m)
  for r in range(3):
    full.round(make_batch(m, r), **ROUND_ARGS[r])
  assert np.abs(full.c["w"] - ref.c["w"]).max() > 1e-3  # N matters.


@pytest.mark.parametrize("hp,match", [
    ({}, "local_lr must be set"),
    ({"local_lr": 0.0}, "local_lr must be a number > 0"),
    ({"local_lr": -0.1}, "local_lr"),
    ({"local_lr": 0.1, "server_lr": -1.0}, "server_lr"),
    ({"local_lr": 0.1, "num_clients": 0}, "num_clients"),
])
def test_bad_hparams_name_the_field(hp, match):
  with pytest.raises(ValueError, match=f"'scaffold': {match}"):
    outer.get("scaffold", **hp)


@pytest.mark.parametrize("args,kwargs,field", [
    (("adamw",), {}, "inner.optimizer"),
    (("sgd",), {"decay": "cosine"}, "inner.decay"),
    (("sgd",), {"warmup_steps": 50}, "inner.warmup_steps"),
    (("sgd",), {"momentum": 0.9}, "inner.momentum"),
    (("sgd",), {"weight_decay": 0.1}, "inner.weight_decay"),
    (("sgd",), {"grad_clip": 1.0}, "inner.grad_clip"),
    (("sgd",), {"learning_rate": 0.1, "local_lr": 0.2},
     "outer.hparams.local_lr.*inner.learning_rate"),
])
def test_check_inner_names_the_field(args, kwargs, field):
  with pytest.raises(ValueError, match=field):
    outer.check_scaffold_inner(*args, **kwargs)


def test_check_inner_accepts_plain_sgd():
  outer.check_scaffold_inner("sgd", decay="constant", warmup_steps=0,
                             weight_decay=0.0, grad_clip=0.0,
                             learning_rate=0.1, local_lr=0.1)


def test_removes_client_drift_on_heterogeneous_least_squares():
  """Deterministic local gradients (the same batch every step): SCAFFOLD's
  fixed point is the minimiser of the average loss (numpy lstsq), FedAvg's
  is not (client drift with H > 1 on non-i.i.d. data)."""
  m, rounds = 4, 400
  batch = {k: np.repeat(v[:, :1], H, axis=1)
           for k, v in make_batch(m, 0).items()}
  xs = np.concatenate([np.c_[batch["x"][i, 0], np.ones(B)] for i in range(m)])
  ys = np.concatenate([batch["y"][i, 0] for i in range(m)])
  optimum = np.linalg.lstsq(xs.astype(np.float64), ys.astype(np.float64),
                            rcond=None)[0]
  errors = {}
  for name, algo in (("scaffold", outer.get("scaffold", local_lr=LOCAL_LR)),
                     ("fedavg", outer.get("fedavg"))):
    engine = make_engine(algo, m)
    state = engine.init(init_params())
    for _ in range(rounds):
      state, _ = engine.round(state, batch)
    got = np.r_[np.asarray(state.params["w"]),
                np.asarray(state.params["b"])[None]]
    errors[name] = np.abs(got - optimum).max()
  assert errors["scaffold"] < 1e-4, errors
  assert errors["fedavg"] > 0.1, errors
