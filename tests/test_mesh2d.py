"""Replicas larger than one device: a (replica × model) mesh on 8 fake CPUs.

Every registry entry, including the data-parallel family, on a 2×4 and a 4×2
mesh equals the same run vmapped on one device; the leaves above the size
threshold are really split over the model axis; one compile per mesh;
checkpoints written on one mesh shape restore on others.
"""

import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import fedjax_lab
from fedjax_lab import models
from fedjax_lab import outer
from test_train import data_dir  # noqa: F401  (a fixture)
from test_train import smoke_config  # noqa: F401  (a fixture)

M, H, B, L = 4, 2, 2, 8
MIN_SHARD = 256
REQUIRED = {"scaffold": {"local_lr": 0.05}}


def task():
  return models.lm_task(d_model=32, num_layers=1, num_heads=2, seq_len=L)


def algo(name):
  return outer.get(name, **REQUIRED.get(name, {}))


def inner_opt(name):
  # SGD with momentum: stateful, but without Adam's division by √v, which
  # turns the float32 reduction-order differences of a split matmul into
  # ~1e-6 differences where a gradient is ~0 (test_engine_modes covers Adam).
  # DES-LOC and Local Adam average Adam's moments, so they need Adam: its eps
  # is raised to 1e-3 so that √v ≈ 0 does not amplify those differences.
  if name in ("desloc", "local_adam"):
    return optax.adam(1e-2, eps=1e-3)
  return (optax.sgd(0.05) if name == "scaffold" else
          optax.sgd(0.05, momentum=0.9))


def batches(rounds, m=M):
  rs = np.random.RandomState(0)
  return [{"tokens": rs.randint(0, 256, size=(m, H, B, L + 1)).astype(np.int32)}
          for _ in range(rounds)]


def make_engine(name, mesh, t, m=M, **kwargs):
  return fedjax_lab.Engine(t.loss_fn, inner_opt=inner_opt(name),
                           outer=algo(name), num_replicas=m, inner_steps=H,
                           mesh=mesh, min_shard_size=MIN_SHARD, **kwargs)


def run(name, mesh, rounds=2, m=M):
  t = task()
  engine = make_engine(name, mesh, t, m=m)
  state = engine.init(t.init(jax.random.PRNGKey(0)), seed=1)
  for batch in batches(rounds, m):
    state, _ = engine.round(state, batch, mask=[1, 0] + [1] * (m - 2))
  return state, engine


def tolerance(name):
  """Float32 sums in another order (a matmul split 4 ways) leave parameters of
  size ~1 a few ulps (2**-23 ≈ 1.2e-7 each) apart: 1e-6 holds them. SCAFFOLD's
  control variates are parameter differences divided by K·η_l (H local steps
  × its local lr = 0.1), which scales those ulps by 1 / (K·η_l)."""
  if name == "scaffold":
    return 1e-6 / (H * REQUIRED["scaffold"]["local_lr"])
  return 1e-6


def assert_close(a, b, tol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


# Every entry on a 2x4 mesh (each replica split 4 ways); the 4x2 layout for
# one entry of each kind (restarting, kept replicas, per-client state,
# data-parallel, DeMo's own messages) to keep the suite fast.
CASES = ([(name, (2, 4)) for name in outer.names()] +
         [(name, (4, 2)) for name in ("diloco", "easgd", "scaffold", "ddp",
                                      "demo")])


@pytest.mark.parametrize("name,shape", CASES,
                         ids=[f"{n}-{s[0]}x{s[1]}" for n, s in CASES])
def test_2d_mesh_equals_one_device(name, shape):
  mesh = fedjax_lab.replica_mesh(8, model_devices=shape[1])
  assert dict(mesh.shape) == {"replicas": shape[0], "model": shape[1]}
  a, _ = run(name, None)
  b, engine = run(name, mesh)
  assert_close(a, b, tolerance(name))
  assert engine.compiled_rounds() == 1


def _split_over_model(x) -> bool:
  return "model" in [a for a in x.sharding.spec if a is not None]


@pytest.mark.parametrize("name", ["diloco", "ddp", "scaffold"])
def test_large_leaves_are_split_over_the_model_axis(name):
  mesh = fedjax_lab.replica_mesh(8, model_devices=4)
  state, engine = run(name, mesh, rounds=1)
  checked = 0
  for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
    stacked = path[0].name in ("replica_params", "client_state") or (
        path[0].name in ("inner_state", "comm_state") and
        not engine.every_step)
    shape = x.shape[1:] if stacked else x.shape
    big = np.prod(shape) >= MIN_SHARD and any(d % 4 == 0 for d in shape)
    assert _split_over_model(x) == bool(big), (path, x.shape, x.sharding.spec)
    if big:
      checked += 1
      # Each device holds 1/4 of the leaf along the model axis (and, for
      # stacked leaves, its replicas' block only).
      shard = x.addressable_shards[0].data.shape
      assert np.prod(shard) * 4 * (2 if stacked else 1) == np.prod(x.shape)
  assert checked >= 6


def test_user_param_specs_are_followed():
  t = task()
  params = t.init(jax.random.PRNGKey(0))
  # Replicate everything except the embedding, split along its first axis.
  specs = jax.tree_util.tree_map_with_path(
      lambda path, x: P("model") if "embed" in jax.tree_util.keystr(path)
      else P(), params)
  mesh = fedjax_lab.replica_mesh(8, model_devices=4)
  engine = make_engine("diloco", mesh, t, param_specs=specs)
  state = engine.init(params)
  for path, x in jax.tree_util.tree_flatten_with_path(state.params)[0]:
    assert _split_over_model(x) == ("embed" in jax.tree_util.keystr(path))
  state, _ = engine.round(state, batches(1)[0])
  assert np.isfinite(float(jax.tree.leaves(state.params)[0].sum()))


def test_checkpoint_from_2x4_restores_on_8x1_1x8_and_one_device(tmp_path):
  t = task()
  params = t.init(jax.random.PRNGKey(0))
  state, engine = run("diloco", fedjax_lab.replica_mesh(8, model_devices=4),
                      rounds=1, m=8)
  expected = jax.tree.map(np.asarray, state)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.save(1, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
  for mesh in (fedjax_lab.replica_mesh(8),
               fedjax_lab.replica_mesh(8, model_devices=8), None):
    other = make_engine("diloco", mesh, t, m=8)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
      restored = manager.restore(
          1, args=ocp.args.StandardRestore(other.abstract_state(params)))
    assert_close(restored, expected, 0)
    # And it trains on: one more round on the new layout matches the old one.
    state_b, _ = other.round(restored, batches(2, 8)[1])
    state_a, _ = engine.round(
        jax.tree.map(lambda x, s: jax.device_put(x, s), expected,
                     engine.state_shardings(expected)), batches(2, 8)[1])
    assert_close(state_a, state_b)


@pytest.mark.parametrize("kwargs,match", [
    (dict(model_devices=3), "model_devices"),
])
def test_bad_mesh_names_the_field(kwargs, match):
  with pytest.raises(ValueError, match=match):
    fedjax_lab.replica_mesh(8, **kwargs)


def test_bad_param_specs_name_the_field():
  t = task()
  mesh = fedjax_lab.replica_mesh(8, model_devices=4)
  engine = make_engine("diloco", mesh, t, param_specs=[P("replicas")])
  with pytest.raises(ValueError, match="param_specs"):
    engine.init(t.init(jax.random.PRNGKey(0)))


# ---------------------------------------------------------------------------
# Through the run layer: mesh.model_devices.


def _smoke(data_dir, **overrides):
  return smoke_config(data_dir, **{"mesh.num_devices": 8,
                                   "train.num_replicas": 4, **overrides})


@pytest.mark.slow
def test_run_with_model_devices_equals_one_model_device(tmp_path, data_dir):
  from fedjax_lab import run as run_lib  # pylint: disable=g-import-not-at-top
  a = run_lib.train_and_evaluate(_smoke(data_dir, **{"mesh.model_devices": 2}),
                               str(tmp_path / "a"))
  b = run_lib.train_and_evaluate(_smoke(data_dir, **{"mesh.num_devices": 4}),
                               str(tmp_path / "b"))
  assert a["status"] == b["status"] == "completed"
  assert a["compiled_rounds"] == 1
  np.testing.assert_allclose(a["final_eval"]["loss"], b["final_eval"]["loss"],
                             rtol=1e-5)


@pytest.mark.parametrize("overrides,match", [
    ({"mesh.model_devices": 3}, "mesh.model_devices"),
    ({"mesh.model_devices": 2, "mesh.num_devices": 0}, "mesh.model_devices"),
    ({"mesh.model_devices": 0}, "mesh.model_devices"),
])
def test_bad_model_devices_names_the_field(tmp_path, data_dir, overrides,
                                           match):
  from fedjax_lab import run as run_lib  # pylint: disable=g-import-not-at-top
  from fedjax_lab.config_validation import ConfigError  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match=match):
    run_lib.train_and_evaluate(_smoke(data_dir, **overrides), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_compiled_round_that_does_not_fit_names_a_field(data_dir):
  """The compiled-program check (run on accelerators) with a tiny limit."""
  from fedjax_lab import config_schema  # pylint: disable=g-import-not-at-top
  from fedjax_lab.config_validation import ConfigError  # pylint: disable=g-import-not-at-top
  from fedjax_lab.run import build  # pylint: disable=g-import-not-at-top
  config = _smoke(data_dir, **{"engine.replica_mode": "vmap"})
  t = task()
  params = t.init(jax.random.PRNGKey(0))
  engine = make_engine("diloco", None, t, replica_mode="vmap")
  example = {"tokens": np.zeros([B, L + 1], np.int32)}
  parts = config_schema.read(config)
  need = build.check_compiled_memory(parts, engine, params, example, M, H,
                                     limit=2**40)
  assert need > 0
  with pytest.raises(ConfigError, match="engine.replica_mode"):
    build.check_compiled_memory(parts, engine, params, example, M, H,
                                limit=need / 2)
  config.engine.replica_mode = "sequential"
  seq = make_engine("diloco", None, t, replica_mode="sequential")
  with pytest.raises(ConfigError, match="model.remat"):
    build.check_compiled_memory(config_schema.read(config), seq, params, example, M, H, limit=1)
