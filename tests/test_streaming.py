"""Streaming DiLoCo (arXiv 2501.18512) on the engine."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_lab
from fedjax_lab import outer
from fedjax_lab import engine as streaming
from fedjax_lab import fragments

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


@pytest.mark.parametrize("tau,alpha", [(1, 0.0), (2, 0.5), (3, 0.0)])
def test_overlap_and_merge_run_finite_and_differ(tau, alpha):
  a, ma, _ = run(streaming.StreamingEngine, num_fragments=2,
                 overlap_steps=tau, merge_alpha=alpha)
  b, _, _ = run(streaming.StreamingEngine, num_fragments=2)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(a))
  assert not all(np.allclose(x, y) for x, y in
                 zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))
  assert np.isfinite(float(ma["loss"]))


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
    (dict(num_fragments=2, outer="easgd"), "not supported"),
])
def test_bad_input(kwargs, match):
  kwargs = dict(kwargs)
  algo = kwargs.pop("outer", "diloco")
  with pytest.raises(ValueError, match=match):
    streaming.StreamingEngine(loss_fn, inner_opt=optax.sgd(0.1), outer=algo,
                              num_replicas=M, inner_steps=H, **kwargs)
