"""MuLoCo's Muon (fedjax_lab.muon) against a float64 NumPy reference of the
rule, its routing of parameters, and `inner.optimizer='muon'` end to end."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import muloco
from configs import smoke
import fedjax_lab
from fedjax_lab import config_validation
from fedjax_lab import models
from fedjax_lab import muon
from fedjax_lab import run as run_lib

LR, MU, WD, EPS, B1, B2 = 0.044, 0.9, 0.00125, 1e-8, 0.9, 0.99
# The per-iteration Newton–Schulz (a, b, c), written out again from the rule.
NS = [(4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377),
      (3.7418, -5.5913, 2.3037), (2.8769, -3.1427, 1.2046),
      (2.8366, -3.0525, 1.2012)]


# ---------------------------------------------------------------------------
# The float64 reference, from the rule (not from the code under test).


def np_newton_schulz(u):
  """Z = U or Uᵀ (rows ≤ cols), Z/(‖Z‖_F + ε), 5 × Z ← aZ + (bA + cA²)Z."""
  z = np.array(u, np.float64)
  transposed = z.shape[0] > z.shape[1]
  if transposed:
    z = z.T
  z = z / (np.linalg.norm(z) + EPS)
  for a, b, c in NS:
    g = z @ z.T
    z = a * z + (b * g + c * g @ g) @ z
  return z.T if transposed else z


def np_muon_steps(w, grads):
  """W [fan_in, fan_out] (flax layout): M ← μM + G; W ← W(1−ηλ) − η√(out/in)·NS(M)."""
  w, m = np.array(w, np.float64), np.zeros_like(w, np.float64)
  fan_in, fan_out = w.shape
  for g in grads:
    m = MU * m + g
    w = w * (1 - LR * WD) - LR * math.sqrt(fan_out / fan_in) * np_newton_schulz(m)
  return w, m


def np_adamw_steps(p, grads):
  """Bias-corrected AdamW with decoupled decay: p ← p(1−ηλ) − η·m̂/(√v̂ + ε)."""
  p = np.array(p, np.float64)
  m, v = np.zeros_like(p), np.zeros_like(p)
  for t, g in enumerate(grads, 1):
    m = B1 * m + (1 - B1) * g
    v = B2 * v + (1 - B2) * g * g
    m_hat, v_hat = m / (1 - B1**t), v / (1 - B2**t)
    p = p * (1 - LR * WD) - LR * m_hat / (np.sqrt(v_hat) + EPS)
  return p


def run_tx(tx, params, grads_seq):
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  state = tx.init(params)
  for grads in grads_seq:
    grads = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), grads)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return jax.tree.map(lambda x: np.asarray(x, np.float64), params), state


# Float32 tolerance of the Newton–Schulz output Z (entries O(1)): each matrix
# product of one iteration rounds with relative error ≲ (n + 1)·u (n = 10,
# the inner dimension of ZZᵀ on the wide [10, 12] orientation; u = 2⁻²⁴ the
# float32 unit roundoff), and a later iteration amplifies an error by at
# most its slope at 0, a; so |ΔZ| ≲ Π a · (n + 1)·u ≈ 493 · 11 · 6e-8 ≈ 3e-4.
# A weight moves by η·√(10/12)·Z per step, so after 3 steps |ΔW| ≲ 3·η·ΔZ.
# (Measured: ~1e-7; the scale √max(1, ·) instead of √(·) is off by 7e-3.)
NS_TOL = math.prod(a for a, _, _ in NS) * 11 * 2.0**-24
W_TOL = 3 * LR * math.sqrt(10 / 12) * NS_TOL


def _problem(seed=0, steps=3):
  rs = np.random.RandomState(seed)
  params = {"dense": {"kernel": 0.3 * rs.randn(12, 10)},
            "bias": 0.1 * rs.randn(10)}
  grads = [{"dense": {"kernel": rs.randn(12, 10)}, "bias": rs.randn(10)}
           for _ in range(steps)]
  return params, grads


def test_three_steps_match_the_float64_rule():
  params, grads = _problem()
  tx = muon.muon(LR, momentum=MU, weight_decay=WD, eps=EPS, adam_b1=B1,
                 adam_b2=B2, ns_dtype=jnp.float32)
  got, state = run_tx(tx, params, grads)
  want_w, want_m = np_muon_steps(params["dense"]["kernel"],
                                 [g["dense"]["kernel"] for g in grads])
  np.testing.assert_allclose(got["dense"]["kernel"], want_w, rtol=0, atol=W_TOL)
  # The bias (1-D) went to AdamW: float32 Adam, a few ulps per step.
  want_b = np_adamw_steps(params["bias"], [g["bias"] for g in grads])
  np.testing.assert_allclose(got["bias"], want_b, rtol=1e-6, atol=1e-7)
  # Muon's state is the plain momentum sum M = ΣμᵏG (no EMA, no correction).
  (m_state,) = [s for s in jax.tree.leaves(
      state, is_leaf=lambda x: isinstance(x, muon.MuLoCoMuonState))
                if isinstance(s, muon.MuLoCoMuonState)]
  # float32: G's cast and 2 roundings per step, each ≤ u·|M| (|M| < 6).
  np.testing.assert_allclose(np.asarray(m_state.momentum["dense"]["kernel"]),
                             want_m, rtol=0, atol=9 * 6 * 2.0**-24)


def test_newton_schulz_float32_within_the_rounding_bound():
  rs = np.random.RandomState(1)
  for shape in [(12, 10), (10, 12), (7, 7)]:
    u = rs.randn(*shape)
    got = np.asarray(muon.newton_schulz(jnp.asarray(u, jnp.float32),
                                        dtype=jnp.float32))
    np.testing.assert_allclose(got, np_newton_schulz(u), rtol=0, atol=NS_TOL)


def test_bfloat16_is_close_and_differs():
  """The default (bfloat16 Newton–Schulz, as MuLoCo) is near the float64 rule."""
  params, grads = _problem()
  got, _ = run_tx(muon.muon(LR), params, grads)
  want, _ = np_muon_steps(params["dense"]["kernel"],
                          [g["dense"]["kernel"] for g in grads])
  err = np.abs(got["dense"]["kernel"] - want).max()
  # bf16 has 8 significant bits (u = 2⁻⁹): |ΔZ| ~ 1e-2, times 3·η.
  assert 0 < err < 3 * LR * 1e-2, err


def test_embeddings_and_heads_go_to_adamw():
  rs = np.random.RandomState(2)
  params = {"Embed_0": {"embedding": 0.1 * rs.randn(16, 8)},
            "lm_head": {"kernel": 0.1 * rs.randn(8, 16)},
            "Head": {"kernel": 0.1 * rs.randn(8, 3)},
            "hidden": {"kernel": 0.1 * rs.randn(8, 8),
                       "bias": 0.1 * rs.randn(8)}}
  mask = muon.default_adam_mask(params)
  assert mask == {"Embed_0": {"embedding": True}, "lm_head": {"kernel": True},
                  "Head": {"kernel": True},
                  "hidden": {"kernel": False, "bias": True}}
  grads = [jax.tree.map(lambda x: rs.randn(*x.shape), params) for _ in range(3)]
  got, _ = run_tx(muon.muon(LR, ns_dtype=jnp.float32), params, grads)
  for path in [("Embed_0", "embedding"), ("lm_head", "kernel"),
               ("Head", "kernel"), ("hidden", "bias")]:
    want = np_adamw_steps(params[path[0]][path[1]],
                          [g[path[0]][path[1]] for g in grads])
    np.testing.assert_allclose(got[path[0]][path[1]], want, rtol=1e-6,
                               atol=1e-7, err_msg=str(path))
  want, _ = np_muon_steps(params["hidden"]["kernel"],
                          [g["hidden"]["kernel"] for g in grads])
  np.testing.assert_allclose(got["hidden"]["kernel"], want, rtol=0,
                             atol=W_TOL)


def test_lm_routes_embedding_to_adamw_and_splits_fused_qkv():
  task = models.lm_task(d_model=16, num_layers=1, num_heads=2, mlp_ratio=2,
                        seq_len=8)
  params = task.init(jax.random.key(0))
  mask = muon.default_adam_mask(params)
  flat = {jax.tree_util.keystr(p): (x, m) for (p, x), m in zip(
      jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(mask))}
  # The tied embedding is both the input embedding and the output head.
  assert flat["['embed']['embedding']"][1]
  for name, (x, adam) in flat.items():
    if "embed" not in name:
      assert adam == (x.ndim < 2), name  # LayerNorms → AdamW, kernels → Muon.
  assert sum(not m for _, m in flat.values()) == 4  # qkv, attn_out, mlp_in/out.
  # One step, no momentum history or decay: Δ = −η·√(out/in)·NS(G) per
  # matrix; the fused qkv [d, 3, N, H] is three [d, N·H] matrices.
  tx = muon.muon(LR, weight_decay=0.0, ns_dtype=jnp.float32)
  grads = jax.tree.map(
      lambda x: jnp.asarray(np.random.RandomState(3).randn(*x.shape),
                            jnp.float32), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  g, u = grads["block_0"]["qkv"]["kernel"], updates["block_0"]["qkv"]["kernel"]
  d, _, n, h = g.shape
  for j in range(3):
    want = -LR * math.sqrt(n * h / d) * np_newton_schulz(
        np.asarray(g[:, j]).reshape(d, n * h))
    np.testing.assert_allclose(np.asarray(u[:, j]).reshape(d, n * h), want,
                               rtol=0, atol=LR * NS_TOL)
  g, u = grads["block_0"]["attn_out"]["kernel"], updates["block_0"]["attn_out"]["kernel"]
  want = -LR * math.sqrt(d / (n * h)) * np_newton_schulz(
      np.asarray(g).reshape(n * h, d))
  np.testing.assert_allclose(np.asarray(u).reshape(n * h, d), want, rtol=0,
                             atol=LR * NS_TOL)


# ---------------------------------------------------------------------------
# Through the config: make_inner_opt and the engine.


def _muon_inner(**overrides):
  inner = smoke.get_config().inner
  inner.optimizer, inner.learning_rate, inner.momentum = "muon", 0.02, 0.9
  inner.weight_decay, inner.warmup_steps, inner.decay = 0.00125, 0, "constant"
  inner.grad_clip = 1.0
  for k, v in overrides.items():
    inner[k] = v
  return inner


def test_make_inner_opt_is_muloco_after_global_norm_clipping():
  clip = 2.0  # Below the gradients' global norms (~11): every step clips.
  inner = _muon_inner(learning_rate=LR, grad_clip=clip)
  params, grads = _problem()
  got, _ = run_tx(run_lib.make_inner_opt(inner, total_steps=10), params, grads)
  clipped = []
  for g in grads:
    norm = math.sqrt(sum(float(np.sum(x * x)) for x in jax.tree.leaves(g)))
    assert norm > clip
    clipped.append(jax.tree.map(lambda x: x * clip / norm, g))
  want_w, _ = np_muon_steps(params["dense"]["kernel"],
                            [g["dense"]["kernel"] for g in clipped])
  want_b = np_adamw_steps(params["bias"], [g["bias"] for g in clipped])
  # The optimizer's default bfloat16 Newton–Schulz (8 significant bits,
  # |ΔZ| ~ 1e-2), as in test_bfloat16_is_close_and_differs.
  np.testing.assert_allclose(got["dense"]["kernel"], want_w, rtol=0,
                             atol=3 * LR * 1e-2)
  np.testing.assert_allclose(got["bias"], want_b, rtol=1e-6, atol=1e-7)


def test_muloco_in_the_engine_trains():
  rs = np.random.RandomState(0)
  m, h, b, d = 2, 3, 8, 6
  w_true = rs.randn(d, 4)

  def loss_fn(params, batch, rng):
    del rng
    pred = jnp.tanh(batch["x"] @ params["dense"]["kernel"]) + params["bias"][None]
    loss = jnp.mean(jnp.square(pred - batch["y"]))
    return loss, {"loss": loss}

  def batch(seed):
    x = np.random.RandomState(seed).randn(m, h, b, d).astype(np.float32)
    return {"x": x, "y": np.tanh(x @ w_true).astype(np.float32)}

  engine = fedjax_lab.Engine(
      loss_fn, inner_opt=run_lib.make_inner_opt(_muon_inner(), total_steps=30),
      outer=fedjax_lab.outer.get("diloco"), num_replicas=m, inner_steps=h)
  init = {"dense": {"kernel": 0.1 * jnp.asarray(rs.randn(d, 4), jnp.float32)},
          "bias": jnp.zeros((4,), jnp.float32)}
  state = engine.init(init)
  test = batch(999)
  flat = {k: v.reshape(-1, d if k == "x" else 4) for k, v in test.items()}
  losses = []
  for r in range(5):
    state, _ = engine.round(state, batch(r))
    losses.append(float(loss_fn(engine.eval_params(state), flat, None)[0]))
  first = float(loss_fn(init, flat, None)[0])
  assert np.all(np.isfinite(losses)), losses
  assert losses[-1] < 0.7 * first, (first, losses)


# ---------------------------------------------------------------------------
# Config validation.


def test_muloco_config_validates():
  config = muloco.get_config()
  config_validation.validate(config, device_count=1)
  assert config.inner.optimizer == "muon" and config.inner.momentum == 0.9


@pytest.mark.parametrize("field,value", [("inner.momentum", -0.1),
                                         ("inner.momentum", 1.0),
                                         ("inner.learning_rate", -0.044),
                                         ("inner.weight_decay", -1.0)])
def test_bad_muon_config_is_one_line_naming_the_field(field, value):
  config = muloco.get_config()
  group, name = field.split(".")
  config[group][name] = value
  with pytest.raises(config_validation.ConfigError) as e:
    config_validation.validate(config, device_count=1)
  assert str(e.value).startswith(field) and "\n" not in str(e.value)


def test_momentum_still_refused_for_adamw():
  config = muloco.get_config()
  config.inner.optimizer = "adamw"
  with pytest.raises(config_validation.ConfigError, match="inner.momentum"):
    config_validation.validate(config, device_count=1)
