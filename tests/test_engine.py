"""Engine tests: equivalences between algorithms, sharding, participation,
recompilation and bad input.

(Over 400 lines on purpose: the engine's cross-cutting equivalences share one
set of fixtures.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_lab
from fedjax_lab import outer

D, B = 4, 6


def loss_fn(params, batch, rng):
  del rng
  h = jnp.tanh(batch["x"] @ params["w1"])
  pred = h @ params["w2"] + params["b"]
  loss = jnp.mean(jnp.square(pred - batch["y"]))
  return loss, {"mse": loss}


def init_params():
  k1, k2 = jax.random.split(jax.random.PRNGKey(42))
  return {"w1": 0.5 * jax.random.normal(k1, (D, 8)),
          "w2": 0.5 * jax.random.normal(k2, (8,)),
          "b": jnp.zeros(())}


def make_batch(m, h, seed=0):
  rs = np.random.RandomState(seed)
  x = (rs.randn(m, h, B, D) + np.arange(m)[:, None, None, None] * 0.3)
  y = np.sin(x.sum(-1)) + 0.1 * np.arange(m)[:, None, None]
  return {"x": x.astype(np.float32), "y": y.astype(np.float32)}


# Registry entries with a hyperparameter that has no default.
REQUIRED_HPARAMS = {"scaffold": {"local_lr": 1e-2}}


def registry_algo(name):
  return outer.get(name, **REQUIRED_HPARAMS.get(name, {}))


def run(algo, *, m=4, h=3, rounds=3, inner_opt=None, mesh=None, seed=0,
        **round_kwargs):
  engine = fedjax_lab.Engine(loss_fn, inner_opt=inner_opt or optax.sgd(0.1),
                             outer=algo, num_replicas=m, inner_steps=h,
                             mesh=mesh)
  state = engine.init(init_params())
  history = []
  for r in range(rounds):
    state, metrics = engine.round(state, make_batch(m, h, seed + r),
                                  **round_kwargs)
    history.append(jax.tree.map(np.asarray, engine.eval_params(state)))
  return history, state, metrics, engine


def assert_trees_close(a, b, tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


# ---------------------------------------------------------------------------
# Equivalences.


def test_fedprox_mu0_is_fedavg():
  a, *_ = run(outer.get("fedprox", mu=0.0))
  b, *_ = run(outer.get("fedavg"))
  assert_trees_close(a, b, 0)


def test_fedprox_mu_changes_result():
  a, *_ = run(outer.get("fedprox", mu=1.0))
  b, *_ = run(outer.get("fedavg"))
  assert not np.allclose(a[-1]["w1"], b[-1]["w1"])


def test_diloco_outer_sgd_lr1_is_fedavg():
  adam = optax.adam(1e-2)  # A stateful inner optimizer: DiLoCo keeps it.
  a, *_ = run(outer.get("diloco", learning_rate=1.0, momentum=0.0),
              inner_opt=adam)
  b, *_ = run(outer.get("fedavg", reset_inner_state=False), inner_opt=adam)
  assert_trees_close(a, b, 1e-6)


def test_fedavg_h1_sgd_is_ddp():
  a, *_ = run("fedavg", h=1, rounds=4)
  b, *_ = run("ddp", h=1, rounds=4)
  assert_trees_close(a, b, 1e-6)


def test_papa_alpha0_is_papa_all():
  adam = optax.adam(1e-2)
  a, *_ = run(outer.get("papa", alpha=0.0), inner_opt=adam)
  b, *_ = run("papa_all", inner_opt=adam)
  assert_trees_close(a, b, 1e-6)


def test_fedadam_bias_corrected_is_optax_adam_on_delta():
  lr, b1, b2, tau = 0.03, 0.9, 0.999, 1e-3
  a, *_ = run(outer.get("fedadam", learning_rate=lr, b1=b1, b2=b2, tau=tau,
                        bias_correction=True), rounds=4)
  reference = outer.optax_outer(optax.adam(lr, b1=b1, b2=b2, eps=tau),
                                name="adam", reset_inner_state=True)
  b, *_ = run(reference, rounds=4)
  assert_trees_close(a, b, 1e-6)


def test_papa_2_pairs_are_disjoint_and_average():
  m = 6
  for seed in range(5):
    partner = np.asarray(outer.papa.__globals__["random_pairs"](
        jax.random.PRNGKey(seed), m))
    assert sorted(partner) == list(range(m))
    np.testing.assert_array_equal(partner[partner], np.arange(m))
    assert np.all(partner != np.arange(m))
  # After a papa_2 sync, replicas come in equal pairs.
  _, state, *_ = run("papa_2", m=m, rounds=1)
  w = np.asarray(state.replica_params["w1"])
  equal = np.array([[np.allclose(w[i], w[j]) for j in range(m)]
                    for i in range(m)])
  assert np.all(equal.sum(1) == 2)


def test_reset_inner_state_keeps_schedule_counter():
  sched = optax.linear_schedule(0.1, 0.0, transition_steps=100)
  inner = optax.chain(optax.scale_by_adam(), optax.scale_by_schedule(
      lambda c: -sched(c)))
  _, state, *_ = run("fedavg", inner_opt=inner, rounds=2, h=3)
  adam_state, sched_state = state.inner_state
  np.testing.assert_array_equal(np.asarray(adam_state.count), 0)  # Reset.
  np.testing.assert_array_equal(np.asarray(sched_state.count), 6)  # Kept.
  _, state, *_ = run("diloco", inner_opt=inner, rounds=2, h=3)
  np.testing.assert_array_equal(np.asarray(state.inner_state[0].count), 6)


# ---------------------------------------------------------------------------
# Sharding over 8 fake CPU devices ≡ vmapped on one.


# M = 8 (one replica a device) is test_engine_modes'
# test_sharded_over_8_devices_equals_one_device, in both modes and with
# partial participation; here M = 16: two replicas a device.
@pytest.mark.parametrize("m", [16])
@pytest.mark.parametrize("name", sorted(outer.REGISTRY))
def test_sharded_equals_vmapped(name, m):
  assert jax.device_count() == 8
  mesh = fedjax_lab.replica_mesh(8)
  algo = registry_algo(name)
  a, _, ma, _ = run(algo, m=m, h=2, rounds=2, inner_opt=optax.adam(1e-2))
  b, state, mb, _ = run(algo, m=m, h=2, rounds=2, inner_opt=optax.adam(1e-2),
                        mesh=mesh)
  assert_trees_close(a, b, 1e-6)
  np.testing.assert_allclose(ma["replica_loss"], mb["replica_loss"], rtol=1e-6,
                             atol=1e-6)
  if state.replica_params is not None:  # Really sharded: one block per device.
    leaf = jax.tree.leaves(state.replica_params)[0]
    assert len(leaf.sharding.device_set) == 8
    assert leaf.addressable_shards[0].data.shape[0] == m // 8


# ---------------------------------------------------------------------------
# Participation, example counts, stragglers.


def single_replica_result(i, *, h=3, steps=None, algo="fedavg"):
  """Replica i's params after its local steps, run on its own."""
  full = make_batch(4, h, 0)
  batch = jax.tree.map(lambda x: x[i:i + 1], full)
  engine = fedjax_lab.Engine(loss_fn, inner_opt=optax.sgd(0.1), outer=algo,
                             num_replicas=1, inner_steps=h)
  state = engine.init(init_params())
  state, _ = engine.round(state, batch,
                          num_steps=None if steps is None else [steps])
  return jax.tree.map(np.asarray, state.params)


def test_partial_participation_and_unequal_counts():
  mask = [True, False, True, True]
  counts = [10.0, 99.0, 30.0, 20.0]
  hist, state, metrics, _ = run("fedavg", rounds=1, mask=mask,
                                num_examples=counts)
  w = np.array([10.0, 0.0, 30.0, 20.0]) / 60.0
  singles = [single_replica_result(i) for i in range(4)]
  expected = jax.tree.map(lambda *xs: sum(wi * x for wi, x in zip(w, xs)),
                          *singles)
  assert_trees_close(hist[0], expected, 1e-5)
  assert float(metrics["participants"]) == 3
  # Everyone, including the replica that sat out, restarts from the new model.
  for i in range(4):
    assert_trees_close(jax.tree.map(lambda x: x[i], state.replica_params),
                       hist[0], 0)


def test_stragglers_count_partial_work():
  prox = outer.get("fedprox", mu=0.5)
  hist, *_ = run(prox, rounds=1, num_steps=[3, 1, 3, 0],
                 num_examples=[3.0, 1.0, 3.0, 0.0])
  w = np.array([3.0, 1.0, 3.0, 0.0]) / 7.0
  singles = [single_replica_result(0, algo=prox),
             single_replica_result(1, steps=1, algo=prox),
             single_replica_result(2, algo=prox),
             single_replica_result(3, algo=prox)]
  expected = jax.tree.map(lambda *xs: sum(wi * x for wi, x in zip(w, xs)),
                          *singles)
  assert_trees_close(hist[0], expected, 1e-5)


def test_nobody_participates_keeps_the_model():
  hist, *_ = run("diloco", rounds=1, mask=[False] * 4)
  assert_trees_close(hist[0], jax.tree.map(np.asarray, init_params()), 0)


def test_nonfinite_replica_is_dropped():
  batch = make_batch(4, 3)
  batch["x"][2, 1, 0, 0] = np.inf  # Replica 2 diverges mid-round.
  engine = fedjax_lab.Engine(loss_fn, inner_opt=optax.sgd(0.1), outer="diloco",
                             num_replicas=4, inner_steps=3)
  state = engine.init(init_params())
  state, metrics = engine.round(state, batch)
  assert float(metrics["nonfinite_replicas"]) == 1
  assert float(metrics["participants"]) == 3
  for leaf in jax.tree.leaves(state):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert np.all(np.isfinite(np.asarray(leaf)))
  # Same as if replica 2 had sat out.
  ref_engine = fedjax_lab.Engine(loss_fn, inner_opt=optax.sgd(0.1),
                                 outer="diloco", num_replicas=4, inner_steps=3)
  ref_state, _ = ref_engine.round(ref_engine.init(init_params()), make_batch(4, 3),
                                  mask=[True, True, False, True])
  assert_trees_close(state.params, ref_state.params, 1e-6)


def test_ddp_nonfinite_gradient_is_dropped():
  batch = make_batch(4, 3)
  batch["x"][1, 0, 0, 0] = np.nan
  _, state, metrics, _ = run("ddp", rounds=1)
  engine = fedjax_lab.Engine(loss_fn, inner_opt=optax.sgd(0.1), outer="ddp",
                             num_replicas=4, inner_steps=3)
  state, metrics = engine.round(engine.init(init_params()), batch)
  assert float(metrics["nonfinite_replicas"]) == 1
  assert all(np.all(np.isfinite(np.asarray(x)))
             for x in jax.tree.leaves(state.params))


# ---------------------------------------------------------------------------
# Compilation, accounting, metrics.


@pytest.mark.parametrize("mesh_devices", [None, 4])
def test_second_round_does_not_recompile(mesh_devices):
  mesh = None if mesh_devices is None else fedjax_lab.replica_mesh(mesh_devices)
  _, _, _, engine = run("diloco", rounds=3, mesh=mesh, mask=[1, 1, 0, 1])
  assert engine.compiled_rounds() == 1


def test_state_is_donated():
  engine = fedjax_lab.Engine(loss_fn, inner_opt=optax.sgd(0.1), outer="fedavg",
                             num_replicas=4, inner_steps=3)
  state = engine.init(init_params())
  old = state
  engine.round(state, make_batch(4, 3))
  assert jax.tree.leaves(old.replica_params)[0].is_deleted()


def test_comm_bytes():
  params = init_params()
  numel = D * 8 + 8 + 1
  _, _, metrics, engine = run("diloco", m=4, h=3, rounds=1)
  assert metrics["payload_bytes"] == numel * 4
  assert metrics["ring_bytes"] == numel * 4 * 2 * 3 / 4
  _, _, metrics, _ = run("ddp", m=4, h=3, rounds=1)
  assert metrics["payload_bytes"] == 3 * numel * 4  # fp32 gradients, H times.
  assert engine.comm_bytes(params)["payload_bytes"] == numel * 4


def test_metrics_include_aux_and_replica_losses():
  _, _, metrics, _ = run("fedavg", rounds=1)
  assert metrics["replica_loss"].shape == (4,)
  np.testing.assert_allclose(metrics["loss"], np.mean(metrics["replica_loss"]),
                             rtol=1e-6)
  np.testing.assert_allclose(metrics["inner/mse"], metrics["loss"], rtol=1e-6)
  assert float(metrics["outer_grad_norm"]) > 0


def test_abstract_state_matches_init():
  mesh = fedjax_lab.replica_mesh(4)
  engine = fedjax_lab.Engine(loss_fn, inner_opt=optax.adam(1e-3),
                             outer="diloco", num_replicas=8, inner_steps=2,
                             mesh=mesh)
  abstract = engine.abstract_state(init_params())
  state = engine.init(init_params())
  for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(state)):
    assert a.shape == s.shape and a.dtype == s.dtype
    assert a.sharding.is_equivalent_to(s.sharding, s.ndim)


# ---------------------------------------------------------------------------
# Bad input: a ValueError naming the field.


@pytest.mark.parametrize("build,match", [
    (lambda: outer.get("fedsgdx"), "unknown outer algorithm 'fedsgdx'.*diloco"),
    (lambda: outer.get("diloco", learning_rate=-0.1), "learning_rate"),
    (lambda: outer.get("fedavg", learning_rate=-1), "learning_rate"),
    (lambda: outer.get("fedadam", b1=1.0), "b1"),
    (lambda: outer.get("fedyogi", b2=-0.1), "b2"),
    (lambda: outer.get("easgd", beta=1.5), "beta"),
    (lambda: outer.get("fedavgm", momentum=1.0), "momentum"),
    (lambda: outer.get("fedprox", mu=-1.0), "mu"),
    (lambda: outer.get("fedprox", outer="ddp"), "outer"),
    (lambda: outer.get("papa", alpha=2.0), "alpha"),
    (lambda: outer.get("fedadam", tau=0.0), "tau"),
    (lambda: outer.get("diloco", lr=0.1), "unknown hyperparameter.*learning_rate"),
    (lambda: fedjax_lab.Engine(loss_fn, inner_opt=optax.sgd(0.1),
                               outer="fedavg", num_replicas=4, inner_steps=0),
     "inner_steps"),
    (lambda: fedjax_lab.Engine(loss_fn, inner_opt=optax.sgd(0.1),
                               outer="fedavg", num_replicas=0, inner_steps=1),
     "num_replicas"),
    (lambda: fedjax_lab.Engine(loss_fn, inner_opt=optax.sgd(0.1),
                               outer="fedavg", num_replicas=6, inner_steps=1,
                               mesh=fedjax_lab.replica_mesh(4)),
     r"num_replicas \(6\).*multiple.*\(4\)"),
    (lambda: fedjax_lab.Engine(loss_fn, inner_opt="adam", outer="fedavg",
                               num_replicas=2, inner_steps=1), "inner_opt"),
])
def test_bad_input_names_the_field(build, match):
  with pytest.raises(ValueError, match=match):
    build()


def test_bad_round_input():
  engine = fedjax_lab.Engine(loss_fn, inner_opt=optax.sgd(0.1), outer="fedavg",
                             num_replicas=4, inner_steps=3)
  state = engine.init(init_params())
  with pytest.raises(ValueError, match="inner_steps=3"):
    engine.round(state, make_batch(4, 2))
  with pytest.raises(ValueError, match="num_steps"):
    engine.round(state, make_batch(4, 3), num_steps=[4, 3, 3, 3])
  with pytest.raises(ValueError, match="num_examples"):
    engine.round(state, make_batch(4, 3), num_examples=[-1.0, 1, 1, 1])


# Payload multipliers: SCAFFOLD sends Δy and Δc (README), the rest one Δ,
# except the entries that also average Adam's moments at their own periods
# (their byte accounting is theirs to test).
COMM_MULTIPLIER = {"scaffold": 2}
MOMENTS_TOO = ("desloc", "local_adam")


# Entries that encode their messages themselves (pinned by hand): DeMo's DCT
# top-k, SparseLoCo's chunked top-k, NoLoCo's group messages.
OWN_CODEC = ("demo", "noloco", "sparseloco")


@pytest.mark.parametrize("name", OWN_CODEC)
def test_own_codec_entries_refuse_a_compressor(name):
  """A compressor on top of an entry's own codec is refused, not ignored."""
  with pytest.raises(ValueError, match="compressor"):
    fedjax_lab.Engine(loss_fn, inner_opt=optax.adam(1e-2), outer=name,
                      num_replicas=4, inner_steps=2,
                      compressor=fedjax_lab.compress.get("int8", ef=True))


@pytest.mark.parametrize("name", [n for n in outer.names()
                                  if n not in OWN_CODEC])
def test_every_algorithm_composes_with_a_compressor(name):
  """int8 with error feedback on every entry (ddp compresses its gradients):
  finite, fewer bytes, close to the uncompressed run, sharded ≡ vmapped.
  (Entries with their own codec: test_own_codec_entries_refuse_... above.)"""
  algo = registry_algo(name)
  numel = D * 8 + 8 + 1

  def go(compressor, mesh=None):
    engine = fedjax_lab.Engine(loss_fn, inner_opt=optax.adam(1e-2),
                               outer=algo, num_replicas=4, inner_steps=2,
                               compressor=compressor, mesh=mesh)
    state = engine.init(init_params())
    start = jax.tree.map(np.asarray, engine.eval_params(state))
    for r in range(2):
      state, metrics = engine.round(state, make_batch(4, 2, r))
    return jax.tree.map(np.asarray, state.params), metrics, start

  exact, m_exact, start = go(None)
  approx, m, _ = go(fedjax_lab.compress.get("int8", ef=True))
  sharded, *_ = go(fedjax_lab.compress.get("int8", ef=True),
                   fedjax_lab.replica_mesh(4))
  per_round = 2 if name == "ddp" else 1  # ddp syncs at each of its 2 steps.
  if name in MOMENTS_TOO:
    assert m["payload_bytes"] < m_exact["payload_bytes"]
  else:
    assert m["payload_bytes"] < m_exact["payload_bytes"] / 3
    assert m_exact["payload_bytes"] == (
        per_round * COMM_MULTIPLIER.get(name, 1) * 4 * numel)
  syncs = 2 * per_round  # In the whole run: 2 rounds.
  # The tolerance, from the quantity under test. int8 rounds each element of
  # a sent Δ to the nearest multiple of s = absmax/127 of its block, an error
  # of at most s/2 = absmax/254; with error feedback that residual is sent
  # again at the next sync, so each of the `syncs` syncs of this run is off
  # by at most absmax/127. Each outer step moves a parameter by at most
  # `move` (its largest change over the exact run) in response to its Δ, so
  # the compressed run ends within syncs·move/127 of the exact one (about
  # 1.6% of `move` for 2 syncs; the measured error is about 1e-4, 0.1–0.3%
  # of `move`). A compressed path that lost Δ would be off by ~`move`.
  move = max(float(np.max(np.abs(a - b))) for a, b in
             zip(jax.tree.leaves(exact), jax.tree.leaves(start)))
  tol = syncs * move / 127
  assert tol < move / 30  # Tight enough to catch a path that drops Δ.
  for a, b in zip(jax.tree.leaves(approx), jax.tree.leaves(exact)):
    np.testing.assert_allclose(a, b, rtol=0, atol=tol)
  assert any(not np.array_equal(a, b) for a, b in  # Really quantised.
             zip(jax.tree.leaves(approx), jax.tree.leaves(exact)))
  assert_trees_close(approx, sharded, 1e-6)
