"""Tests written against mutants that survived tools/mutation.py (docs/mutation.md).

Each test names the mutant it kills (module:line, the change) and checks the
behaviour against a reference computed here, independently of fedjax_lab.
"""

import inspect
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_lab import outer
from fedjax_lab import sync
from fedjax_lab.comm import compress
from fedjax_lab.comm import dct
from fedjax_lab.outer import async_rules
from test_engine_modes import STREAMABLE


def _blocks_np(x, s1, s2):
  """Row-major blocks of a 2-D array: block (a, b) = x[a·s1:(a+1)·s1, b·s2:(b+1)·s2]."""
  n1, n2 = x.shape
  return np.stack([x[a * s1:(a + 1) * s1, b * s2:(b + 1) * s2].ravel()
                   for a in range(n1 // s1) for b in range(n2 // s2)])


@pytest.mark.parametrize("shape,chunk", [((6, 10), 5), ((4, 6), 2), ((12,), 4)])
def test_dct_untransformed_plan_cuts_row_major_blocks(shape, chunk):
  """dct.py:144 `.transpose(0, 2, 1, 3)` → (0, 2, 2, 3) / (0, 2, 1, 4): the
  plan without the DCT (SparseLoCo's chunks) must cut the blocks exactly as
  the by-hand slicing above, and `inverse` must put every entry back.

  No tolerance: the path only reshapes and transposes float32 values, so
  the comparison is exact.
  """
  x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) * 0.5 - 3.0
  p = dct.plan(shape, chunk, topk=1)._replace(transform=False)
  blocks = np.asarray(dct.forward(x, p))
  if len(shape) == 1:
    want = x.reshape(-1, chunk)
  else:
    want = _blocks_np(x, *p.chunks)
  np.testing.assert_array_equal(blocks, want)
  np.testing.assert_array_equal(np.asarray(dct.inverse(blocks, p)), x)


def test_compress_topk_fraction_one_is_accepted_and_lossless():
  """compress.py:455 `0 < fraction <= 1` → `0 < fraction < 1`: fraction 1 is in
  the documented range (0, 1] and keeps k = numel entries, i.e. everything.

  No tolerance: with fp32 values nothing is dropped or rounded.
  """
  x = np.array([[0.1, -5.0, 0.2], [3.0, -0.3, 0.0]], np.float32)
  c = compress.get("topk", fraction=1.0)
  out, _ = jax.jit(c.compress)({"x": jnp.asarray(x)}, c.init({"x": x}), jax.random.PRNGKey(0))
  np.testing.assert_array_equal(np.asarray(out["x"]), x)


# Each entry's defaults, typed from docs/algorithms.md (its sources: DiLoCo
# Table 5 outer lr 0.7 / Nesterov 0.9, FedOpt Alg. 2 β1 0.9 / τ 1e-3 paper form,
# FedAvgM heavy ball 0.9, EASGD β 0.9, PAPA α 0.99, SCAFFOLD η_g 1, DeMo's
# reference code, SparseLoCo / NoLoCo / DES-LOC's papers), not read from the
# factories. Kills the mutants of a default value (outer/diloco.py:15 lr 0.7 ->
# 1.7, outer/fedavg.py:31-32 fedavgm lr / momentum / reset_inner_state,
# outer/fedprox.py:17 mu 0.01 -> 1.01): every other test passes hparams.
DEFAULTS = {
    "ddp": {},
    "demo": {"learning_rate": 4e-4, "compression_decay": 0.999,
             "compression_topk": 32, "compression_chunk": 64,
             "weight_decay": 0.0},
    "desloc": {"u_every": 3, "v_every": 6},
    "diloco": {"learning_rate": 0.7, "momentum": 0.9, "nesterov": True,
               "reset_inner_state": False},
    "easgd": {"beta": 0.9, "rho": 0.0, "reset_inner_state": False},
    "fedadagrad": {"learning_rate": 0.01, "b1": 0.9, "tau": 1e-3,
                   "bias_correction": False, "reset_inner_state": True},
    "fedadam": {"learning_rate": 0.01, "b1": 0.9, "b2": None, "tau": 1e-3,
                "bias_correction": False, "reset_inner_state": True},
    "fedavg": {"learning_rate": 1.0, "reset_inner_state": True},
    "fedavgm": {"learning_rate": 1.0, "momentum": 0.9,
                "reset_inner_state": True},
    "fedprox": {"mu": 0.01, "outer": "fedavg", "outer_hparams": None,
                "reset_inner_state": None},
    "fedyogi": {"learning_rate": 0.01, "b1": 0.9, "b2": None, "tau": 1e-3,
                "bias_correction": False, "reset_inner_state": True},
    "local_adam": {},
    "noloco": {"learning_rate": 0.7, "momentum": 0.5, "group_size": 2},
    "papa": {"alpha": 0.99, "reset_inner_state": False},
    "papa_2": {"reset_inner_state": False},
    "papa_all": {"reset_inner_state": False},
    "scaffold": {"local_lr": None, "server_lr": 1.0, "num_clients": None},
    "sparseloco": {"learning_rate": 1.0, "decay": 0.95, "chunk_size": 64,
                   "top_k": 128, "quant_bins": 4, "quant_range": 6.0,
                   "reset_inner_state": False},
}


# tools/mutation.py runs, for a module, the tests here named test_<module>_...


def _check_defaults(*names):
  for name in names:
    assert outer.hparams(name) == DEFAULTS[name], name


def test_init_every_entrys_defaults_are_the_documented_ones():
  """outer/__init__.py: `names`, `hparams` are the registry's, for every entry."""
  assert sorted(DEFAULTS) == outer.names()
  _check_defaults(*DEFAULTS)


def test_diloco_defaults_are_the_documented_ones():
  _check_defaults("diloco")
  assert not outer.get("diloco").reset_inner_state  # Keeps its inner state.


def test_fedavg_defaults_are_the_documented_ones():
  # FedAvg-family clients are stateless: inner state reset every round.
  _check_defaults("fedavg", "fedavgm")
  assert outer.get("fedavgm").reset_inner_state
  assert outer.get("fedavg").reset_inner_state


def test_fedprox_defaults_and_its_reset_flag():
  _check_defaults("fedprox")
  assert outer.get("fedprox").reset_inner_state  # FedAvg's choice, kept.
  assert not outer.get("fedprox", reset_inner_state=False).reset_inner_state


@pytest.mark.parametrize("name", ["fedavgm", "diloco"])
def test_base_momentum_one_is_refused(name):
  """outer/base.py:263 `value < 1` -> `value <= 1`: momentum 1 never decays."""
  with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
    outer.get(name, momentum=1.0)
  outer.get(name, momentum=0.0)  # The closed end is allowed.


def _streamable_as_pinned(names):
  for name in names:
    kw = {"local_lr": 0.1} if name == "scaffold" else {}
    reason = outer.get(name, **kw).why_not_streamable()
    assert (reason is None) == (name in STREAMABLE), (name, reason)


def test_base_streamable_exactly_the_pinned_rules():
  """outer/base.py:188 (client_init test inverted) flips which rules a
  fragment schedule accepts. Compiles nothing (the engine-level check is
  tests/test_engine_modes.py::test_streaming_accepts_...)."""
  _streamable_as_pinned(outer.names())


def test_easgd_is_not_streamable():
  """outer/easgd.py:53 restarts_replicas=True: EASGD's workers are never
  reset to the center, so a fragment schedule must refuse it."""
  _streamable_as_pinned(["easgd"])


def test_desloc_is_not_streamable():
  """outer/desloc.py:96 leafwise=True: DES-LOC's sync reads Adam's moments,
  not only the parameters, so a fragment schedule must refuse it."""
  _streamable_as_pinned(["desloc", "local_adam"])


@pytest.mark.parametrize("name,hp", [
    ("int8", {}), ("int8", {"block_size": 4}), ("int4", {"block_size": 4}),
    ("fp4", {}), ("fp4", {"block_size": 4}), ("uint8", {})])
def test_codecs_an_empty_leaf_costs_no_bytes(name, hp):
  """comm/codecs.py:39 `_num_blocks(0)` 0 -> 1: an empty tensor would be
  charged one block's scale (4 bytes). By hand: it has nothing to send."""
  c = compress.get(name, **hp)
  w = {"w": jnp.zeros((3, 5))}
  assert c.payload_bytes({**w, "e": jnp.zeros((0, 3))}) == c.payload_bytes(w)


@pytest.mark.parametrize("name", ["int8", "int4", "fp4", "uint8"])
def test_codecs_an_all_zero_block_roundtrips_to_zero(name):
  """comm/codecs.py:108 `scale > 0` -> `>= 0` (fp4): an all-zero block's
  absmax scale is 0, and 0/0 would make NaN of what must stay exactly 0."""
  x = jnp.concatenate([jnp.zeros(8), jnp.array([1.0, -2.0, 0.5, 0.25])])
  hp = {} if name == "uint8" else {"block_size": 4}
  c = compress.get(name, **hp)
  state = c.init({"x": x})
  out, _ = c.compress({"x": x}, state, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(np.asarray(out["x"])[:8], 0.0)


def test_async_rules_defaults_are_the_documented_ones():
  """outer/async_rules.py:42 DN lr 0.7 -> 1.7 (and vanilla's): the asyncdiloco
  notebook's outer lr, 0.7 synchronous (DN's buffered step) vs 0.07 per
  arrival, momentum 0.9 (docs/algorithms.md, asynchronous Local-SGD)."""
  defaults = lambda f: {k: p.default for k, p in
                        inspect.signature(f).parameters.items()}
  assert defaults(async_rules.delayed_nesterov) == {
      "learning_rate": 0.7, "momentum": 0.9, "delay": None, "num_workers": 1}
  assert defaults(async_rules.vanilla) == {
      "learning_rate": 0.07, "momentum": 0.9, "weight": None, "nesterov": True,
      "num_workers": 1}
  # The M-dependent defaults: vanilla's w = 1/√M (M = 4: one plain SGD step
  # of 0.5·Δ), DN's N = M (M = 3: the momentum moves on the 3rd arrival only).
  delta = {"x": jnp.ones([2])}
  rule = async_rules.server_rule("vanilla", num_workers=4, momentum=0.0,
                                 learning_rate=1.0)
  up, _ = rule.update(delta, rule.init(delta))
  np.testing.assert_allclose(up["x"], -0.5 * np.ones(2))
  dn = async_rules.server_rule("delayed_nesterov", num_workers=3,
                               learning_rate=1.0, momentum=0.5)
  state = dn.init(delta)
  steps = []
  for _ in range(3):
    up, state = dn.update(delta, state)
    steps.append(float(up["x"][0]))
  # Arrivals 1, 2: −Δ/N; arrival 3: −(Δ/N + β·m), m = (3Δ)/N = Δ.
  np.testing.assert_allclose(steps, [-1 / 3, -1 / 3, -(1 / 3 + 0.5)], rtol=1e-6)


def test_sync_compressor_keys_are_apart_from_every_step_key():
  """sync.py:104 fold_in(k, 2**31 - 1) -> fold_in(k, 61): the compressor's
  stochastic rounding key would be inner step 61's key (local_steps.py
  derives step t's key as fold_in(replica key, t)), correlating the two
  streams whenever H > 61. Checked: no replica's compressor key equals any of
  its first 4,096 step keys, nor another replica's."""
  state = types.SimpleNamespace(rng=jax.random.PRNGKey(3), round=jnp.int32(5))
  ops = types.SimpleNamespace(index=jnp.arange(4))
  _, replica_keys, comm_keys = sync.round_keys(state, ops)
  data = lambda k: tuple(np.asarray(jax.random.key_data(k)).ravel().tolist())
  steps = jax.vmap(lambda k: jax.vmap(lambda t: jax.random.fold_in(k, t))(
      jnp.arange(4096)))(replica_keys)
  step_keys = {data(k) for k in np.asarray(
      jax.random.key_data(steps)).reshape(-1, 2)}
  comm = {data(k) for k in np.asarray(jax.random.key_data(comm_keys))}
  assert len(comm) == 4 and not comm & step_keys
