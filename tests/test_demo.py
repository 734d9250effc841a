"""DeMo (fedjax_lab/outer/demo.py) in the engine, against an independent
float64 numpy reference of arXiv 2411.19870 written here."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import fedjax_lab
from fedjax_lab import outer

N_IN, N_OUT, B = 6, 10, 4
# chunk 5: w [6, 10] is cut into 3x5 blocks (neither dim a multiple of 5 ... 6
# is not), b [10] into rows of 5; the scalar s is sent dense.
CHUNK, TOPK, LR, DECAY = 5, 4, 0.01, 0.9


def loss_fn(params, batch, rng):
  del rng
  pred = batch["x"] @ params["w"] + params["b"][None] + params["s"]
  return jnp.mean(jnp.square(pred - batch["y"]))


def init_params():
  rs = np.random.RandomState(7)
  return {"w": (0.3 * rs.randn(N_IN, N_OUT)).astype(np.float32),
          "b": (0.1 * rs.randn(N_OUT)).astype(np.float32),
          "s": np.float32(0.05)}


def make_batch(m, h, seed):
  """Heterogeneous replicas: replica i's inputs and targets are shifted."""
  rs = np.random.RandomState(seed)
  shift = np.arange(m)[:, None, None, None]
  x = rs.randn(m, h, B, N_IN) + 0.5 * shift
  y = rs.randn(m, h, B, N_OUT) - 0.3 * shift
  return {"x": x.astype(np.float32), "y": y.astype(np.float32)}


# ------------------------------------------------------- numpy reference


def np_grads(p, x, y):
  r = x @ p["w"] + p["b"] + p["s"] - y  # [B, N_OUT]
  scale = 2.0 / r.size
  return {"w": scale * x.T @ r, "b": scale * r.sum(0),
          "s": np.float64(scale * r.sum())}


def np_basis(s):
  k, n = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
  d = np.sqrt(2.0 / s) * np.cos(np.pi * (2 * n + 1) * k / (2 * s))
  d[np.abs(d) < 1e-12] = 0.0  # cos(π/2) = 0 exactly, not float64 roundoff.
  d[0] /= np.sqrt(2.0)
  return d


def np_chunk(n):
  return max(s for s in range(1, min(n, CHUNK) + 1) if n % s == 0)


def np_dct(x, inverse=False):
  """Blockwise orthonormal DCT-II (or its inverse) of a 0-, 1- or 2-D array,
  staying in the array's own layout (block coefficients in place)."""
  x = np.atleast_1d(np.asarray(x, np.float64))
  out = np.zeros_like(x)
  if x.ndim == 1:
    s = np_chunk(x.shape[0])
    d = np_basis(s)
    for a in range(0, x.shape[0], s):
      out[a:a + s] = d.T @ x[a:a + s] if inverse else d @ x[a:a + s]
    return out
  s1, s2 = np_chunk(x.shape[0]), np_chunk(x.shape[1])
  d1, d2 = np_basis(s1), np_basis(s2)
  for a in range(0, x.shape[0], s1):
    for b in range(0, x.shape[1], s2):
      blk = x[a:a + s1, b:b + s2]
      out[a:a + s1, b:b + s2] = (d1.T @ blk @ d2 if inverse
                                 else d1 @ blk @ d2.T)
  return out


def np_blocks(x):
  """Index arrays of each block of a 1-D or 2-D array."""
  x = np.atleast_1d(x)
  if x.ndim == 1:
    s = np_chunk(x.shape[0])
    return [(slice(a, a + s),) for a in range(0, x.shape[0], s)]
  s1, s2 = np_chunk(x.shape[0]), np_chunk(x.shape[1])
  return [(slice(a, a + s1), slice(b, b + s2))
          for a in range(0, x.shape[0], s1) for b in range(0, x.shape[1], s2)]


def np_topk(c, margins):
  """Keeps the TOPK largest |c| of every block; records the selection gap."""
  mask = np.zeros_like(c)
  for idx in np_blocks(c):
    flat = np.abs(c[idx]).reshape(-1)
    k = min(TOPK, flat.size)
    order = np.argsort(-flat, kind="stable")
    if k < flat.size:  # Relative gap between the k-th and (k+1)-th.
      margins.append((flat[order[k - 1]] - flat[order[k]]) / flat.max())
    keep = np.zeros(flat.size)
    keep[order[:k]] = 1.0
    mask[idx] = keep.reshape(mask[idx].shape)
  return c * mask, mask


def np_demo(params, batches, masks, *, lr=LR, decay=DECAY, wd=0.0):
  """DeMo step by step; returns the params after every step and the residuals.

  batches: list over steps of (x [m, B, N_IN], y [m, B, N_OUT]).
  """
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = batches[0][0].shape[0]
  e = [{k: np.zeros(np.shape(v)) for k, v in p.items()} for _ in range(m)]
  history, margins = [], []
  for (x, y), mask in zip(batches, masks):
    total = {k: 0.0 for k in p}
    count = {k: 0.0 for k in p}
    for i in range(m):
      if not mask[i]:
        continue  # Sends nothing; its residual waits.
      g = np_grads(p, x[i], y[i])
      for k in p:
        e[i][k] = decay * e[i][k] + lr * g[k]
        values, sent = np_topk(np_dct(e[i][k]), margins)
        e[i][k] = e[i][k] - np_dct(values, inverse=True).reshape(np.shape(p[k]))
        total[k] = total[k] + values
        count[k] = count[k] + sent
    for k in p:
      mean = np.where(count[k] > 0, total[k] / np.maximum(count[k], 1), 0.0)
      q = np_dct(mean, inverse=True).reshape(np.shape(p[k]))
      # sign(q) must be unambiguous: exact zeros (elements no sent
      # coefficient reaches) or clearly away from 0.
      nonzero = np.abs(q)[q != 0]
      if nonzero.size:
        margins.append(np.min(nonzero) / np.max(nonzero))
      p[k] = p[k] * (1 - lr * wd) - lr * np.sign(q)
    history.append({k: v.copy() for k, v in p.items()})
  return history, e, margins


# ---------------------------------------------------------------- engine


def engine_for(algo, m, h, mesh=None):
  return fedjax_lab.Engine(loss_fn, inner_opt=optax.sgd(0.1), outer=algo,
                           num_replicas=m, inner_steps=h, mesh=mesh)


def demo_algo(**hp):
  kw = dict(learning_rate=LR, compression_decay=DECAY,
            compression_topk=TOPK, compression_chunk=CHUNK)
  kw.update(hp)
  return outer.get("demo", **kw)


def assert_close(got, expected, tol=1e-5):
  for k in expected:
    np.testing.assert_allclose(np.asarray(got[k], np.float64), expected[k],
                               rtol=tol, atol=tol, err_msg=k)


@pytest.mark.parametrize("m,wd", [(2, 0.0), (3, 0.5), (4, 0.0)])
def test_matches_numpy_reference_every_step(m, wd):
  steps = 3
  masks = [[True] * m, [True] * m, [i != 1 for i in range(m)]]
  batch = [make_batch(m, 1, s) for s in range(steps)]
  expected, residuals, margins = np_demo(
      init_params(), [(b["x"][:, 0], b["y"][:, 0]) for b in batch], masks,
      wd=wd)
  # The problem is well posed in float32 (relative error ~1e-6 here): no
  # near-tie in a top-k selection, no near-zero Q whose sign could flip.
  assert min(margins) > 1e-4, min(margins)
  engine = engine_for(demo_algo(weight_decay=wd), m, 1)
  state = engine.init(init_params())
  for t in range(steps):
    state, metrics = engine.round(state, batch[t], mask=masks[t])
    assert_close(state.params, expected[t])
  assert metrics["payload_bytes"] == 72 + 35 + 4  # See test_bytes_by_hand.
  for i in range(m):
    got = jax.tree.map(lambda x: np.asarray(x[i]), state.comm_state[0].residual)
    assert_close(got, residuals[i])
  # Really sparse: replicas keep a residual (the coefficients not sent).
  assert np.abs(residuals[0]["w"]).max() > 1e-4


def test_inner_steps_scan_equals_one_step_rounds():
  m, h = 3, 3
  batch = make_batch(m, h, 0)
  engine = engine_for(demo_algo(), m, h)
  state, _ = engine.round(engine.init(init_params()), batch)
  expected, _, _ = np_demo(init_params(), [(batch["x"][:, t], batch["y"][:, t])
                                           for t in range(h)], [[True] * m] * h)
  assert_close(state.params, expected[-1])


def test_full_k_is_sign_sgd_on_the_mean_gradient():
  """k ≥ block size sends everything: θ ← θ − η·sign(mean_i g_i)."""
  m, steps = 3, 3
  engine = engine_for(demo_algo(compression_topk=10**6), m, 1)
  state = engine.init(init_params())
  p = {k: np.asarray(v, np.float64) for k, v in init_params().items()}
  for t in range(steps):
    b = make_batch(m, 1, t)
    state, _ = engine.round(state, b)
    g = [np_grads(p, b["x"][i, 0], b["y"][i, 0]) for i in range(m)]
    for k in p:
      mean = np.mean([gi[k] for gi in g], axis=0)
      assert np.min(np.abs(mean)) > 1e-4
      p[k] = p[k] - LR * np.sign(mean)
    assert_close(state.params, p)
    for leaf in jax.tree.leaves(state.comm_state):  # The residual is emptied.
      np.testing.assert_allclose(np.asarray(leaf), 0.0, atol=1e-7)


def test_one_replica_full_k_is_plain_sign_sgd():
  engine = engine_for(demo_algo(compression_topk=10**6), 1, 2)
  b = make_batch(1, 2, 3)
  state, _ = engine.round(engine.init(init_params()), b)
  p = {k: np.asarray(v, np.float64) for k, v in init_params().items()}
  for t in range(2):
    g = np_grads(p, b["x"][0, t], b["y"][0, t])
    p = {k: p[k] - LR * np.sign(g[k]) for k in p}
  assert_close(state.params, p)


def test_bytes_by_hand():
  # w [6, 10], chunk 5: 4 blocks of 3x5 = 15 (4-bit indices), k = 4:
  #   4·4·(32 + 4) bits = 72 bytes. b [10]: 2 rows of 5 (3-bit), k = 4:
  #   2·4·35 bits = 35 bytes. s: one fp32, 4 bytes. Per step: 111 bytes.
  # ddp sends (60 + 10 + 1)·4 = 284 bytes per step.
  h = 3
  engine = engine_for(demo_algo(), 2, h)
  assert engine.comm_bytes(init_params())["payload_bytes"] == h * 111
  assert engine_for("ddp", 2, h).comm_bytes(
      init_params())["payload_bytes"] == h * 284
  # The paper's defaults on one 64x128 matrix: 2 blocks of 64x64, k = 32,
  # 12-bit indices: 2·32·44 bits = 352 bytes (vs 32768 for fp32).
  big = {"w": jnp.zeros((64, 128))}
  assert engine_for(outer.get("demo"), 2, 1).comm_bytes(
      big)["payload_bytes"] == 352


@pytest.mark.parametrize("devices", [8, 4])
def test_sharded_equals_vmapped(devices):
  m = 8
  mesh = fedjax_lab.replica_mesh(devices)
  results = []
  for mesh_ in (None, mesh):
    engine = engine_for(demo_algo(), m, 2, mesh=mesh_)
    state = engine.init(init_params())
    for r in range(2):
      state, _ = engine.round(state, make_batch(m, 2, r),
                              mask=[i != 5 for i in range(m)])
    results.append(jax.tree.map(np.asarray, (state.params, state.comm_state)))
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  leaf = jax.tree.leaves(state.comm_state)[0]
  assert len(leaf.sharding.device_set) == devices


def test_checkpoint_resume_is_bit_identical(tmp_path):
  m, h = 4, 2
  mesh = fedjax_lab.replica_mesh(4)
  engine = engine_for(demo_algo(), m, h, mesh=mesh)
  state = engine.init(init_params())
  state, _ = engine.round(state, make_batch(m, h, 0))
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.save(1, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
    straight, _ = engine.round(state, make_batch(m, h, 1))
    restored = manager.restore(1, args=ocp.args.StandardRestore(
        engine.abstract_state(init_params())))
  resumed, _ = engine_for(demo_algo(), m, h, mesh=mesh).round(
      restored, make_batch(m, h, 1))
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.abs(np.asarray(resumed.comm_state[0].residual["w"])).max() > 0


def test_later_rounds_do_not_recompile():
  engine = engine_for(demo_algo(), 2, 2)
  state = engine.init(init_params())
  for r, mask in enumerate(([True, True], [True, False], [False, True])):
    state, _ = engine.round(state, make_batch(2, 2, r), mask=mask)
  assert engine.compiled_rounds() == 1


def test_nonfinite_replica_is_the_same_as_sitting_out():
  m = 3
  clean = make_batch(m, 1, 0)
  bad = jax.tree.map(np.copy, clean)
  bad["x"][1, 0, 0, 0] = np.nan
  results = []
  for batch, mask in ((bad, None), (clean, [True, False, True])):
    engine = engine_for(demo_algo(), m, 1)
    state = engine.init(init_params())
    state, metrics = engine.round(state, make_batch(m, 1, 1))
    state, metrics = engine.round(state, batch, mask=mask)
    results.append(jax.tree.map(np.asarray, (state.params, state.comm_state)))
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
    assert np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("hp,field", [
    ({"compression_topk": 0}, "compression_topk"),
    ({"compression_topk": 2.5}, "compression_topk"),
    ({"compression_chunk": 0}, "compression_chunk"),
    ({"compression_decay": 1.0}, "compression_decay"),
    ({"compression_decay": -0.1}, "compression_decay"),
    ({"learning_rate": 0.0}, "learning_rate"),
    # η is a fixed float: it scales what enters the residual (no schedules).
    ({"learning_rate": optax.constant_schedule(1e-3)}, "learning_rate"),
    ({"weight_decay": -1.0}, "weight_decay"),
])
def test_bad_hparams_name_the_field(hp, field):
  with pytest.raises(ValueError, match=f"'demo': {field}"):
    outer.get("demo", **hp)


def test_registry_entry_and_defaults():
  algo = outer.get("demo")
  assert algo.every_step and algo.name == "demo"
  # Sparse messages with different indices per replica: all-gathered.
  assert algo.codec.collective == "all_gather"
  assert outer.hparams("demo") == {
      "learning_rate": 4e-4, "compression_decay": 0.999,
      "compression_topk": 32, "compression_chunk": 64, "weight_decay": 0.0}


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
  """DeMo over 2 processes × 4 devices ≡ 1 process × 8 (tests/mp_worker.py)."""
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def launch(procs, out):
    cmd = [sys.executable, os.path.join(root, "experiments", "launch_local.py"),
           f"--num_processes={procs}", f"--devices_per_process={8 // procs}",
           "--timeout_seconds=180", "--", sys.executable,
           os.path.join(root, "tests", "mp_worker.py"), "--algo=demo",
           "--rounds=2", f"--out={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=210,
                          cwd=root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

  launch(2, tmp_path / "two")
  launch(1, tmp_path / "one")
  for r in range(2):
    with np.load(tmp_path / "two" / f"round{r}.npz") as a, \
        np.load(tmp_path / "one" / f"round{r}.npz") as b:
      for k in b:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-6)
  with np.load(tmp_path / "one" / "round1.npz") as b:
    assert np.abs(b["w1"]).max() > 0
