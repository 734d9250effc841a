"""DES-LOC: "DES-LOC: Desynced Low Communication Adaptive Optimizers for
Training Foundation Models", Iacob, Sani, Safaryan, ... Lane, arXiv 2505.22549
(Algorithm 1), and its baseline Local Adam (all three periods equal).

Each replica runs Adam locally; the parameters are averaged every Kx steps,
Adam's first moment every Ku steps and its second moment every Kv steps
(Kx ≤ Ku ≤ Kv; by default Ku = 3Kx, Kv = 6Kx, tied to the moments'
half-lives). In the engine a round is Kx = H steps: after every round the
parameters are averaged (outer SGD with lr 1 on Δ, every replica restarts
from the mean), and the moments `mu` / `nu` of the replicas' inner
`optax.ScaleByAdamState` are replaced by their weighted mean after every
`u_every`-th / `v_every`-th round (Ku = u_every·H, Kv = v_every·H; 0:
never). The Adam step counts are not averaged. The gradient after a sync is
taken at the averaged parameters (the reading that gives FedAvg as the
Ku = Kv = ∞ limit; docs/algorithms.md says where the sources differ).
"""

from typing import Any, List

import jax
import jax.numpy as jnp
import optax

from fedjax_lab.comm import compress as compress_lib
from fedjax_lab.comm.collectives import Message
from fedjax_lab.outer import base

_is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)


def _adam_states(inner_state) -> List[Any]:
  return [x for x in jax.tree.leaves(inner_state, is_leaf=_is_adam)
          if _is_adam(x)]


def _average_moments(inner_state, weights, ops, do_mu, do_nu):
  """Every ScaleByAdamState's mu (nu) replaced by the replicas' weighted mean
  where `do_mu` (`do_nu`) is true."""

  def mean_of(tree, do):
    avg = base.broadcast_like(ops.weighted_sum(tree, weights), tree)
    return jax.tree.map(lambda a, x: jnp.where(do, a, x), avg, tree)

  def one(state):
    if not _is_adam(state):
      return state
    return state._replace(mu=mean_of(state.mu, do_mu),
                          nu=mean_of(state.nu, do_nu))

  return jax.tree.map(one, inner_state, is_leaf=_is_adam)


def desloc(*, u_every: int = 3, v_every: int = 6) -> base.OuterAlgorithm:
  """DES-LOC with moment periods in rounds (rounds are Kx = H steps).

  Args:
    u_every: average Adam's first moment every u_every rounds (0: never).
    v_every: average Adam's second moment every v_every rounds (0: never).
  """
  return _desloc(base.check_nonnegative_int("u_every", u_every),
                 base.check_nonnegative_int("v_every", v_every), "desloc")


def _desloc(u_every: int, v_every: int, name: str) -> base.OuterAlgorithm:
  average = optax.sgd(1.0)

  def due(every, done):
    return jnp.asarray(False) if every == 0 else (done % every) == 0

  def sync(inputs: base.SyncInputs, state, ops):
    g = inputs.global_params
    updates, state = average.update(inputs.delta, state, g)
    new_g = optax.apply_updates(g, updates)
    done = inputs.round + 1  # Rounds completed after this sync.
    inner = _average_moments(inputs.inner_state, inputs.weights, ops,
                             due(u_every, done), due(v_every, done))
    return base.SyncResult(new_g, base.broadcast_like(new_g,
                                                      inputs.replica_params),
                           state, inner_state=inner)

  def check(setup: base.Setup):
    if not _adam_states(setup.inner_state):
      raise ValueError(
          f"inner.optimizer: {name} averages the Adam moments of the inner "
          "optimizer, which has none; use 'adamw' (optax.adam/adamw)")

  def traffic(params, payload_bytes, collective):
    moment = float(compress_lib.tree_bytes(params, 32))  # fp32, uncompressed.
    msgs = [Message(float(payload_bytes(params)), collective)]
    msgs += [Message(moment, "all_reduce", every=float(k))
             for k in (u_every, v_every) if k]
    return tuple(msgs)

  return base.OuterAlgorithm(
      init=average.init, sync=sync, name=name, reset_inner_state=False,
      leafwise=False, check=check, traffic=traffic)


def local_adam() -> base.OuterAlgorithm:
  """Local Adam: parameters and both moments averaged every round."""
  return _desloc(1, 1, "local_adam")
