"""The server rules of Asynchronous Local-SGD: optax transformations of ONE
arrival's outer gradient Δ_i = θ_launch − θ_i_end (docs/algorithms.md).

"Asynchronous Local-SGD Training for Language Modeling", Liu et al., arXiv
2401.09135: 'vanilla' (the authors' notebook: one Nesterov SGD step on w·Δ_i,
w = 1/√M) and Delayed Nesterov DN(N) (the paper's Algorithm 3: N arrivals add
up to one Nesterov step on their mean). The simulation that applies them is
fedjax_lab/async_local_sgd.py.
"""

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from fedjax_lab.outer.base import check_nonnegative
from fedjax_lab.outer.base import check_positive_int
from fedjax_lab.outer.base import check_unit_interval
from fedjax_lab.registry import Registry


class DelayedNesterovState(NamedTuple):
  count: jax.Array  # int32: arrivals so far.
  momentum: optax.Updates  # m, updated every N-th arrival.
  buffer: optax.Updates  # Σ Δ_i since the last momentum update.


def vanilla(*, learning_rate: float = 0.07, momentum: float = 0.9,
            weight: Optional[float] = None, nesterov: bool = True,
            num_workers: int = 1) -> optax.GradientTransformation:
  """One SGD step per arrival on g = w·Δ_i: b ← μb + g; θ ← θ − η(g + μb)
  (Nesterov; θ ← θ − ηb without). w defaults to the paper's 1/√M, M =
  `num_workers`."""
  lr = check_nonnegative("learning_rate", learning_rate)
  mu = check_unit_interval("momentum", momentum)
  m = check_positive_int("num_workers", num_workers)
  w = check_nonnegative("weight", 1.0 / math.sqrt(m) if weight is None
                        else weight)
  return optax.chain(optax.scale(w), optax.sgd(
      lr, momentum=mu if mu > 0 else None, nesterov=bool(nesterov) and mu > 0))


def delayed_nesterov(*, learning_rate: float = 0.7, momentum: float = 0.9,
                     delay: Optional[int] = None, num_workers: int = 1
                     ) -> optax.GradientTransformation:
  """Delayed Nesterov DN(N), the paper's Algorithm 3.

  Per arrival Δ_i: buf += Δ_i; on every N-th arrival m ← βm + buf/N,
  θ ← θ − η(Δ_i/N + βm), buf ← 0; otherwise θ ← θ − ηΔ_i/N. N arrivals
  from one θ add up to one Nesterov step on their mean (DiLoCo's outer step).
  N (`delay`) defaults to the paper's M = `num_workers`.
  """
  lr = check_nonnegative("learning_rate", learning_rate)
  beta = check_unit_interval("momentum", momentum)
  m = check_positive_int("num_workers", num_workers)
  n = check_positive_int("delay", m if delay is None else delay)

  def init(params):
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # Two buffers.
    return DelayedNesterovState(jnp.zeros([], jnp.int32), zeros(), zeros())

  def update(delta, state, params=None):
    del params
    count = state.count + 1
    fire = count % n == 0
    buf = jax.tree.map(jnp.add, state.buffer, delta)
    mom = jax.tree.map(lambda m, b: jnp.where(fire, beta * m + b / n, m),
                       state.momentum, buf)
    updates = jax.tree.map(
        lambda d, m: -lr * (d / n + jnp.where(fire, beta * m, 0.0)).astype(d.dtype),
        delta, mom)
    buf = jax.tree.map(lambda b: jnp.where(fire, jnp.zeros_like(b), b), buf)
    return updates, DelayedNesterovState(count, mom, buf)

  return optax.GradientTransformation(init, update)


# The server rules (clock.async_rule). Each takes the number of workers M for
# its paper defaults (w = 1/√M, N = M).
SERVER_RULES = Registry("server rule", "clock.async_rule", {
    "vanilla": vanilla, "delayed_nesterov": delayed_nesterov})


def server_rule(name: str, *, num_workers: int, **hparams
                ) -> optax.GradientTransformation:
  """Server rule `name` for `num_workers` workers (ValueError naming
  clock.async_rule when there is none of that name)."""
  return SERVER_RULES.get(name, num_workers=num_workers, **hparams)


def rule_hparams(name: str) -> frozenset:
  """The hyperparameters server rule `name` takes (its factory's keywords)."""
  return frozenset(SERVER_RULES.parameters(name)) - {"num_workers"}
