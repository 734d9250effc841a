"""The one round loop, for every registry entry: vmap ≡ sequential replicas,
sharded ≡ on one device, a streaming schedule with one fragment ≡ the plain
loop, one compile per configuration, arrays from eval_params survive."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_lab
from fedjax_lab import outer

D, B, M, H = 4, 3, 8, 3

# Hyperparameters an entry needs that have no default (everything else: the
# paper defaults).
REQUIRED = {"scaffold": {"local_lr": 0.05}}


def algo(name):
  return outer.get(name, **REQUIRED.get(name, {}))


def inner_opt(name):
  # SCAFFOLD's option II assumes plain SGD steps; every other rule gets a
  # stateful inner optimizer, so that kept or reset state shows.
  return optax.sgd(0.05) if name == "scaffold" else optax.adam(1e-2)


def loss_fn(params, batch, rng):
  del rng
  h = jnp.maximum(batch["x"] @ params["w1"], 0.0)
  pred = h @ params["w2"] + params["b"]
  loss = jnp.mean(jnp.square(pred - batch["y"]))
  return loss, {"mse": loss}


def init_params():
  k1, k2 = jax.random.split(jax.random.PRNGKey(3))
  return {"w1": 0.5 * jax.random.normal(k1, (D, 6)),
          "w2": 0.5 * jax.random.normal(k2, (6,)),
          "b": np.zeros((), np.float32)}


def batches(rounds, m=M, h=H):
  rs = np.random.RandomState(1)
  out = []
  for _ in range(rounds):
    x = rs.randn(m, h, B, D) + 0.4 * np.arange(m)[:, None, None, None]
    y = np.cos(x.sum(-1)) + 0.2 * np.arange(m)[:, None, None]
    out.append({"x": x.astype(np.float32), "y": y.astype(np.float32)})
  return out


def run(name, *, rounds=3, engine_cls=fedjax_lab.Engine, round_kwargs=None,
        **engine_kwargs):
  engine = engine_cls(loss_fn, inner_opt=inner_opt(name), outer=algo(name),
                      num_replicas=M, inner_steps=H, **engine_kwargs)
  state = engine.init(init_params(), seed=5)
  history = []
  for r, batch in enumerate(batches(rounds)):
    state, metrics = engine.round(state, batch, **(round_kwargs or {}))
    history.append(jax.tree.map(np.asarray, engine.eval_params(state)))
  return history, state, metrics, engine


def assert_close(a, b, tol):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


# Participation and stragglers on, so that the masked and the skipped paths
# run in both modes.
PARTIAL = dict(mask=[1, 1, 0, 1, 1, 1, 1, 0], num_steps=[3, 1, 3, 0, 3, 2, 3, 3])


@pytest.mark.parametrize("name", outer.names())
@pytest.mark.parametrize("round_kwargs", [None, PARTIAL], ids=["full", "partial"])
def test_vmap_equals_sequential(name, round_kwargs):
  a, sa, ma, ea = run(name, replica_mode="vmap", round_kwargs=round_kwargs,
                      rounds=2)
  b, sb, mb, eb = run(name, replica_mode="sequential",
                      round_kwargs=round_kwargs, rounds=2)
  assert ea.compiled_rounds() == eb.compiled_rounds() == 1  # No mesh.
  for x, y in zip(a, b):
    assert_close(x, y, 1e-6)
  assert_close(sa, sb, 1e-6)
  np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-6)


@pytest.mark.parametrize("name", outer.names())
@pytest.mark.parametrize("mode", ["vmap", "sequential"])
def test_sharded_over_8_devices_equals_one_device(name, mode):
  a, sa, *_ = run(name, replica_mode=mode, round_kwargs=PARTIAL, rounds=2)
  b, sb, _, engine = run(name, replica_mode=mode, round_kwargs=PARTIAL,
                         rounds=2, mesh=fedjax_lab.replica_mesh(8))
  for x, y in zip(a, b):
    assert_close(x, y, 1e-6)
  assert_close(sa, sb, 1e-6)
  assert engine.compiled_rounds() == 1  # One program on the 8-device mesh.
  if sb.replica_params is not None:  # Really sharded: one replica a device.
    leaf = jax.tree.leaves(sb.replica_params)[0]
    assert len(leaf.sharding.device_set) == 8
    assert leaf.addressable_shards[0].data.shape[0] == 1


# Pinned by hand, not derived from the algorithms' own flags: the rules whose
# replicas all restart from the global model and keep nothing per replica
# (SCAFFOLD's c_i, NoLoCo's momentum), whose sync reads only params-shaped
# values (not DES-LOC's moments) and that sync once a round.
STREAMABLE = {"fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad",
              "diloco", "fedprox", "papa_all", "sparseloco"}


def _streamable(name):
  return name in STREAMABLE


@pytest.mark.parametrize("name", outer.names())
def test_streaming_one_fragment_equals_engine(name):
  """P = 1, τ = 0, α = 0 is the plain loop for every rule (inner Adam)."""
  a, sa, ma, _ = run(name, engine_cls=fedjax_lab.StreamingEngine,
                     num_fragments=1, overlap_steps=0, merge_alpha=0.0,
                     round_kwargs=PARTIAL)
  b, sb, mb, _ = run(name, round_kwargs=PARTIAL)
  for x, y in zip(a, b):
    assert_close(x, y, 1e-6)
  assert_close(sa, sb, 1e-6)
  for k in ("loss", "outer_grad_norm", "participants"):
    np.testing.assert_allclose(ma[k], mb[k], rtol=1e-6)


@pytest.mark.parametrize("name", outer.names())
def test_streaming_accepts_exactly_the_rules_that_restart(name):
  build = lambda: fedjax_lab.StreamingEngine(
      loss_fn, inner_opt=inner_opt(name), outer=algo(name), num_replicas=M,
      inner_steps=4, num_fragments=2)
  if _streamable(name):
    engine = build()
    state = engine.init(init_params())
    state, m = engine.round(state, batches(1, h=4)[0])
    assert np.isfinite(float(m["loss"]))
  else:
    with pytest.raises(ValueError, match="outer: a streaming schedule"):
      build()


def test_fedprox_over_easgd_is_not_streamable():
  with pytest.raises(ValueError, match="cannot be streamed"):
    fedjax_lab.StreamingEngine(
        loss_fn, inner_opt=optax.sgd(0.1),
        outer=outer.get("fedprox", outer="easgd"), num_replicas=M,
        inner_steps=4, num_fragments=2)


@pytest.mark.parametrize("name", outer.names())
@pytest.mark.parametrize("mesh_devices", [1])
def test_one_compile_per_configuration(name, mesh_devices):
  """A mesh on one device (where the second round used to recompile). No
  mesh: test_vmap_equals_sequential; 8 devices:
  test_sharded_over_8_devices_equals_one_device."""
  mesh = (None if mesh_devices is None else
          fedjax_lab.replica_mesh(mesh_devices))
  *_, engine = run(name, rounds=3, mesh=mesh,
                   round_kwargs=dict(mask=PARTIAL["mask"]))
  assert engine.compiled_rounds() == 1


def test_streaming_compiles_once():
  engine = fedjax_lab.StreamingEngine(
      loss_fn, inner_opt=optax.adam(1e-2), outer="diloco", num_replicas=M,
      inner_steps=4, num_fragments=2, overlap_steps=1,
      mesh=fedjax_lab.replica_mesh(1))
  state = engine.init(init_params())
  for batch in batches(3, h=4):
    state, _ = engine.round(state, batch)
  assert engine.compiled_rounds() == 1


def test_stragglers_compile_a_second_program_once():
  *_, engine = run("fedavg", rounds=3, round_kwargs=PARTIAL)
  assert engine.compiled_rounds() == 1
  state = engine.init(init_params())
  for batch in batches(2):
    state, _ = engine.round(state, batch)  # No stragglers: the fast program.
  assert engine.compiled_rounds() == 2


@pytest.mark.parametrize("mesh_devices", [None, 4])
def test_eval_params_survive_the_next_round(mesh_devices):
  mesh = (None if mesh_devices is None else
          fedjax_lab.replica_mesh(mesh_devices))
  engine = fedjax_lab.Engine(loss_fn, inner_opt=optax.sgd(0.1), outer="fedavg",
                             num_replicas=M, inner_steps=H, mesh=mesh)
  state = engine.init(init_params())
  kept = []
  for batch in batches(3):
    state, _ = engine.round(state, batch)
    kept.append(engine.eval_params(state))
  # Every stored model is still readable after later (donating) rounds.
  values = [np.asarray(k["w1"]) for k in kept]
  assert not np.allclose(values[0], values[-1])
  np.testing.assert_array_equal(values[-1], np.asarray(state.params["w1"]))


@pytest.mark.parametrize("m, mesh_devices, expected", [
    (2, 0, "vmap"), (7, 0, "vmap"), (8, 0, "sequential"), (16, 0, "sequential"),
    (16, 2, "sequential"), (8, 2, "vmap"), (16, 8, "vmap")])
def test_auto_mode_follows_the_readme_rule(m, mesh_devices, expected):
  """On CPU, 'auto' is sequential from 8 replicas per device, else vmap."""
  assert jax.default_backend() == "cpu"
  mesh = fedjax_lab.replica_mesh(mesh_devices) if mesh_devices else None
  engine = fedjax_lab.Engine(loss_fn, inner_opt=optax.sgd(0.1), outer="fedavg",
                             num_replicas=m, inner_steps=1, mesh=mesh)
  assert engine.replica_mode == expected


def test_unknown_mode_is_refused():
  with pytest.raises(ValueError, match="replica_mode"):
    fedjax_lab.Engine(loss_fn, inner_opt=optax.sgd(0.1), outer="fedavg",
                      num_replicas=2, inner_steps=1, replica_mode="threads")


def test_registry_entries_have_no_hidden_required_hparams():
  """REQUIRED above lists every hyperparameter without a default."""
  for name in outer.names():
    missing = [k for k, v in outer.hparams(name).items()
               if v is inspect.Parameter.empty and k not in REQUIRED.get(name, {})]
    assert not missing, (name, missing)
