"""Streaming DiLoCo (arXiv 2501.18512) on the engine."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_lab
from fedjax_lab import engine as streaming
from fedjax_lab import fragments
from fedjax_lab import outer

M, H, B, D = 4, 4, 3, 5


def loss_fn(params, batch, rng):
  del rng
  h = batch["x"]
  for i in range(3):
    h = jnp.tanh(h @ params[f"layer_{i}"]["w"] + params[f"layer_{i}"]["b"][None])
  return jnp.mean(jnp.square(h @ params["head"] - batch["y"]))


def init_params():
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  p = {f"layer_{i}": {"w": 0.5 * jax.random.normal(keys[i], (D, D)),
                      "b": jnp.zeros(D)} for i in range(3)}
  p["head"] = 0.5 * jax.random.normal(keys[3], (D,))
  return p


def batches(rounds):
  rs = np.random.RandomState(0)
  return [{"x": rs.randn(M, H, B, D).astype(np.float32),
           "y": rs.randn(M, H, B).astype(np.float32)} for _ in range(rounds)]


def run(engine_cls, rounds=3, **kwargs):
  engine = engine_cls(loss_fn, inner_opt=optax.adam(1e-2),
                      outer=outer.get("diloco"), num_replicas=M,
                      inner_steps=H, **kwargs)
  state = engine.init(init_params())
  for batch in batches(rounds):
    state, metrics = engine.round(state, batch)
  return state, metrics, engine


def test_one_fragment_no_overlap_is_diloco():
  a, ma, _ = run(streaming.StreamingEngine, num_fragments=1, overlap_steps=0,
                 merge_alpha=0.0)
  b, mb, _ = run(fedjax_lab.Engine)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
  for x, y in zip(jax.tree.leaves(a.replica_params),
                  jax.tree.leaves(b.replica_params)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(ma["outer_grad_norm"], mb["outer_grad_norm"],
                             rtol=1e-5)


@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_fragments_partition_the_parameters(p):
  frags = streaming.StreamingEngine(
      loss_fn, inner_opt=optax.sgd(0.1), outer="diloco", num_replicas=2,
      inner_steps=12, num_fragments=p).fragments(init_params())
  flat = sorted(i for f in frags for i in f)
  assert flat == list(range(len(jax.tree.leaves(init_params()))))
  assert all(f for f in frags)


def test_strided_over_layers():
  leaves = jax.tree_util.tree_flatten_with_path(init_params())[0]
  assignment = fragments.strided_fragments(init_params(), 2)
  for (path, _), frag in zip(leaves, assignment):
    layer = fragments.layer_index(path)
    if layer is not None:
      assert frag == layer % 2


def test_fragments_sync_at_their_offsets():
  # With P = 2, H = 4: fragment 0 syncs after step 2, fragment 1 after step 4,
  # so after one round fragment 1's replicas equal the global model while
  # fragment 0 has had 2 more local steps.
  state, _, engine = run(streaming.StreamingEngine, rounds=1, num_fragments=2)
  frags = engine.fragments(state.params)
  g = jax.tree.leaves(state.params)
  r = jax.tree.leaves(state.replica_params)
  for i in frags[1]:
    np.testing.assert_allclose(r[i], np.broadcast_to(g[i], r[i].shape),
                               atol=1e-7)
  assert any(not np.allclose(r[i], np.broadcast_to(g[i], r[i].shape))
             for i in frags[0])


# Overlap τ and merge α: test_streaming_matches_numpy_reference below.


def test_overlap_merge_applies_tau_steps_late():
  # P = 1, τ = 1, α = 0: right after a round, replicas still hold their local
  # values (the merge happens 1 step into the next round).
  state, _, _ = run(streaming.StreamingEngine, rounds=1, num_fragments=1,
                    overlap_steps=1)
  g = jax.tree.leaves(state.params)[0]
  r = jax.tree.leaves(state.replica_params)[0]
  assert not np.allclose(r, np.broadcast_to(g, r.shape))


def test_sharded_equals_vmapped():
  a, *_ = run(streaming.StreamingEngine, num_fragments=2, overlap_steps=1)
  b, *_ = run(streaming.StreamingEngine, num_fragments=2, overlap_steps=1,
              mesh=fedjax_lab.replica_mesh(4))
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


def test_bytes_peak_is_a_fragment():
  _, metrics, engine = run(streaming.StreamingEngine, rounds=1,
                           num_fragments=2)
  frags = engine.fragments(init_params())
  leaves = jax.tree.leaves(init_params())
  sizes = [4 * sum(leaves[i].size for i in f) for f in frags]
  assert metrics["payload_bytes"] == sum(sizes)
  assert metrics["peak_payload_bytes"] == max(sizes)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_fragments=3), "num_fragments"),
    (dict(num_fragments=2, overlap_steps=4), "overlap_steps"),
    (dict(num_fragments=2, merge_alpha=1.5), "merge_alpha"),
    (dict(num_fragments=2, outer="easgd"), "outer.*easgd"),
])
def test_bad_input(kwargs, match):
  kwargs = dict(kwargs)
  algo = kwargs.pop("outer", "diloco")
  with pytest.raises(ValueError, match=match):
    streaming.StreamingEngine(loss_fn, inner_opt=optax.sgd(0.1), outer=algo,
                              num_replicas=M, inner_steps=H, **kwargs)


# ---------------------------------------------------------------------------
# Streaming DiLoCo with P > 1, overlap τ > 0 and merge α > 0 against a float64
# numpy reference, for every registry entry streaming accepts.
#
# The schedule (docs/algorithms.md "Streaming DiLoCo", arXiv
# 2501.18512 Alg. 2, fedjax_lab/fragments.py): the parameters are split into P
# fragments (layer l in fragment l mod P). Fragment p syncs after inner step
# (p + 1)·H/P of every round, with its own outer optimizer state:
#   Δ_p = mean_i (θ_p − θ_{i,p}),  θ_p ← outer rule(θ_p, Δ_p).
# τ = 0: the replicas' fragment p becomes α·θ_{i,p} + (1 − α)·θ_p at once.
# τ > 0: replicas train on; τ steps after the sync (wrapping into the next
# round when the sync is less than τ steps from the round's end; never in
# round 0, before any sync) θ_{i,p} ← α·θ_{i,p} + (1 − α)·θ_p.

# Which entries a streaming schedule runs, pinned by hand (not derived from
# the flags the engine checks): rules whose replicas restart from the global
# model and keep no per-replica state. Every registry name must be in one of
# the two sets, so a new entry needs a decision here.
STREAMING_ACCEPTS = ("diloco", "fedadagrad", "fedadam", "fedavg", "fedavgm",
                     "fedprox", "fedyogi", "papa_all", "sparseloco")
STREAMING_REFUSES = ("ddp", "demo", "desloc", "easgd", "local_adam", "noloco",
                     "papa", "papa_2", "scaffold")

# Hyperparameters given explicitly, so that the reference holds every number.
REF_HPARAMS = {
    "fedavg": {"learning_rate": 0.8},
    "fedavgm": {"learning_rate": 0.8, "momentum": 0.9},
    "diloco": {"learning_rate": 0.7, "momentum": 0.9},
    "fedadam": {"learning_rate": 0.05, "b1": 0.9, "b2": 0.99, "tau": 1e-2},
    "fedyogi": {"learning_rate": 0.05, "b1": 0.9, "b2": 0.99, "tau": 1e-2},
    "fedadagrad": {"learning_rate": 0.05, "b1": 0.9, "tau": 1e-2},
    "fedprox": {"mu": 0.3, "outer": "fedavg",
                "outer_hparams": {"learning_rate": 0.8}},
    "papa_all": {},
    # Every entry of every chunk kept (top_k = chunk_size²) as fp32 values
    # (quant_bins = 0): each sync sends its whole error buffer e_i = α·Δ_i
    # and empties it, so the step is θ ← θ − α·mean_i(α·Δ_i) = θ − α²·Δ.
    "sparseloco": {"learning_rate": 0.9, "chunk_size": 64, "top_k": 64 * 64,
                   "quant_bins": 0},
}
SM, SH, SB, SLAYERS, SW = 3, 6, 4, 3, 2  # M, H, B, layers, weights per layer.
SLR, SROUNDS = 0.05, 3


def test_streaming_accepts_and_refuses_the_pinned_entries():
  assert set(outer.names()) == set(STREAMING_ACCEPTS) | set(STREAMING_REFUSES)
  kwargs = dict(num_replicas=2, inner_steps=4, num_fragments=2)
  for name in outer.names():
    if name == "scaffold":  # Plain SGD inner steps at its local_lr.
      algo, inner = outer.get(name, local_lr=0.1), optax.sgd(0.1)
    else:  # desloc and local_adam need an Adam inner optimizer.
      algo, inner = outer.get(name), optax.adam(0.1)
    # Without a schedule, every entry builds: a refusal is streaming's.
    fedjax_lab.Engine(loss_fn, inner_opt=inner, outer=algo, num_replicas=2,
                      inner_steps=4)
    if name in STREAMING_REFUSES:
      with pytest.raises(ValueError, match="stream"):
        streaming.StreamingEngine(loss_fn, inner_opt=inner, outer=algo,
                                  **kwargs)
    else:
      streaming.StreamingEngine(loss_fn, inner_opt=inner, outer=algo, **kwargs)
  # FedProx streams when its outer rule does, not around easgd.
  with pytest.raises(ValueError, match="stream"):
    streaming.StreamingEngine(
        loss_fn, inner_opt=optax.sgd(0.1),
        outer=outer.get("fedprox", outer="easgd"), **kwargs)


def _ref_loss(params, batch, rng):
  del rng
  w = jnp.concatenate([params[f"layer_{k}"]["w"] for k in range(SLAYERS)])
  return jnp.mean(jnp.square(batch["x"] @ w - batch["y"]))


def _ref_data():
  """Heterogeneous replicas: [rounds, M, H, B, features] and targets."""
  rs = np.random.RandomState(3)
  d = SLAYERS * SW
  x = rs.randn(SROUNDS, SM, SH, SB, d) + 0.4 * np.arange(SM)[:, None, None,
                                                              None]
  w_true = rs.randn(SM, d)
  y = np.einsum("rmhbd,md->rmhb", x, w_true) + 0.1 * rs.randn(
      SROUNDS, SM, SH, SB)
  return x, y


def _outer_step(name, hp, g, delta, st):
  """One outer step of `name` on one fragment (θ, Δ, that fragment's state)."""
  if name in ("fedavg", "papa_all"):
    return g - hp.get("learning_rate", 1.0) * delta
  if name == "fedprox":
    return g - hp["outer_hparams"]["learning_rate"] * delta
  if name == "sparseloco":  # k = all, fp32: see REF_HPARAMS.
    return g - hp["learning_rate"] ** 2 * delta
  if name == "fedavgm":
    st["b"] = hp["momentum"] * st.get("b", 0.0) + delta
    return g - hp["learning_rate"] * st["b"]
  if name == "diloco":  # Nesterov.
    st["b"] = hp["momentum"] * st.get("b", 0.0) + delta
    return g - hp["learning_rate"] * (delta + hp["momentum"] * st["b"])
  # FedAdam / FedYogi / FedAdagrad, paper form: m0 = 0, v0 = τ², no bias
  # correction.
  b1, tau, lr = hp["b1"], hp["tau"], hp["learning_rate"]
  m = b1 * st.get("m", 0.0) + (1 - b1) * delta
  v = st.get("v", np.full_like(g, tau**2))
  if name == "fedadam":
    v = hp["b2"] * v + (1 - hp["b2"]) * delta**2
  elif name == "fedyogi":
    v = v - (1 - hp["b2"]) * delta**2 * np.sign(v - delta**2)
  else:
    v = v + delta**2
  st["m"], st["v"] = m, v
  return g - lr * m / (np.sqrt(v) + tau)


def streaming_reference(name, hp, p, tau, alpha, x, y, theta0):
  """The global θ (float64) after every round of Streaming DiLoCo."""
  # Fragment of each coordinate: layer l -> fragment l mod P (strided).
  frag_of = np.repeat(np.arange(SLAYERS) % p, SW)
  idx = [np.flatnonzero(frag_of == q) for q in range(p)]
  s = SH // p
  mu = hp.get("mu", 0.0)  # FedProx's proximal term, anchored at θ.
  g = theta0.copy()
  reps = np.tile(theta0, (SM, 1))
  states = [{} for _ in range(p)]
  out = []
  for r in range(SROUNDS):
    for t in range(1, SH + 1):  # Inner step t (1-based), then its events.
      for i in range(SM):
        xb, yb = x[r, i, t - 1], y[r, i, t - 1]
        grad = 2.0 / SB * xb.T @ (xb @ reps[i] - yb) + mu * (reps[i] - g)
        reps[i] = reps[i] - SLR * grad
      for q in range(p):
        t_sync = (q + 1) * s
        if t == t_sync:
          j = idx[q]
          delta = np.mean(g[j][None] - reps[:, j], 0)
          g[j] = _outer_step(name, hp, g[j], delta, states[q])
          if tau == 0:
            reps[:, j] = alpha * reps[:, j] + (1 - alpha) * g[j][None]
        t_merge = t_sync + tau
        wrapped = t_merge > SH
        if tau and t == (t_merge - SH if wrapped else t_merge) and not (
            wrapped and r == 0):
          j = idx[q]
          reps[:, j] = alpha * reps[:, j] + (1 - alpha) * g[j][None]
    out.append(g.copy())
  return out


@pytest.mark.parametrize("p,tau,alpha", [(2, 2, 0.5), (3, 3, 0.3)],
                         ids=["P2-tau2-a0.5", "P3-tau3-a0.3"])
@pytest.mark.parametrize("name", STREAMING_ACCEPTS)
def test_streaming_matches_numpy_reference(name, p, tau, alpha):
  hp = REF_HPARAMS[name]
  x, y = _ref_data()
  theta0 = np.linspace(-0.3, 0.4, SLAYERS * SW)
  expected = streaming_reference(name, hp, p, tau, alpha, x, y, theta0)
  engine = streaming.StreamingEngine(
      _ref_loss, inner_opt=optax.sgd(SLR), outer=outer.get(name, **hp),
      num_replicas=SM, inner_steps=SH, num_fragments=p, overlap_steps=tau,
      merge_alpha=alpha)
  params = {f"layer_{k}": {"w": jnp.asarray(theta0[k * SW:(k + 1) * SW],
                                            jnp.float32)}
            for k in range(SLAYERS)}
  state = engine.init(params)
  for r in range(SROUNDS):
    batch = {"x": x[r].astype(np.float32), "y": y[r].astype(np.float32)}
    state, _ = engine.round(state, batch)
    got = engine.eval_params(state)
    got = np.concatenate([np.asarray(got[f"layer_{k}"]["w"])
                          for k in range(SLAYERS)])
    np.testing.assert_allclose(got, expected[r], rtol=1e-5, atol=1e-5,
                               err_msg=f"{name} P={p} round {r}")


def test_streaming_immediate_merge_matches_reference():
  """τ = 0, α > 0: the merge happens at the sync itself."""
  x, y = _ref_data()
  theta0 = np.linspace(-0.3, 0.4, SLAYERS * SW)
  hp = REF_HPARAMS["diloco"]
  expected = streaming_reference("diloco", hp, 2, 0, 0.5, x, y, theta0)
  engine = streaming.StreamingEngine(
      _ref_loss, inner_opt=optax.sgd(SLR), outer=outer.get("diloco", **hp),
      num_replicas=SM, inner_steps=SH, num_fragments=2, overlap_steps=0,
      merge_alpha=0.5)
  state = engine.init({f"layer_{k}": {"w": jnp.asarray(
      theta0[k * SW:(k + 1) * SW], jnp.float32)} for k in range(SLAYERS)})
  for r in range(SROUNDS):
    state, _ = engine.round(state, {"x": x[r].astype(np.float32),
                                    "y": y[r].astype(np.float32)})
    got = engine.eval_params(state)
    got = np.concatenate([np.asarray(got[f"layer_{k}"]["w"])
                          for k in range(SLAYERS)])
    np.testing.assert_allclose(got, expected[r], rtol=1e-5, atol=1e-5,
                               err_msg=f"round {r}")
