"""FedOpt: FedAdam, FedYogi, FedAdagrad.

"Adaptive Federated Optimization", Reddi et al., arXiv 2003.00295 (Algorithm 2).
With g = Δ (our sign), elementwise:
  m ← β1·m + (1 − β1)·g
  FedAdagrad: v ← v + g²;  FedYogi: v ← v − (1 − β2)·g²·sign(v − g²);
  FedAdam:    v ← β2·v + (1 − β2)·g²
  θ ← θ − η·m / (√v + τ)
Paper form (default): m₀ = 0, v₀ = τ², no bias correction, β2 = 0.99.
`bias_correction=True` gives the authors' reference-code form (Keras Adam):
m₀ = v₀ = 0, m̂ = m/(1 − β1ᵗ), v̂ = v/(1 − β2ᵗ) (v is not corrected for
Adagrad, which has no β2), β2 = 0.999 unless given; FedAdam in that form is
exactly optax.adam(η, β1, β2, eps=τ).
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from fedjax_lab.outer import base

_KINDS = ("adam", "yogi", "adagrad")


class ScaleByFedOptState(NamedTuple):
  count: jax.Array  # int32 scalar: outer steps taken.
  mu: optax.Updates  # First moment m.
  nu: optax.Updates  # Second moment v.


def scale_by_fedopt(kind: str, *, b1: float, b2: float, tau: float,
                    bias_correction: bool) -> optax.GradientTransformation:
  """The FedOpt direction m/(√v + τ) (no learning rate; see module doc)."""
  if kind not in _KINDS:
    raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")

  def init_fn(params):
    v0 = 0.0 if bias_correction else tau**2
    return ScaleByFedOptState(
        count=jnp.zeros([], jnp.int32),
        mu=jax.tree.map(jnp.zeros_like, params),
        nu=jax.tree.map(lambda p: jnp.full_like(p, v0), params))

  def update_v(v, g):
    g2 = g * g
    if kind == "adagrad":
      return v + g2
    if kind == "yogi":
      return v - (1 - b2) * g2 * jnp.sign(v - g2)
    return b2 * v + (1 - b2) * g2

  def update_fn(updates, state, params=None):
    del params
    count = state.count + 1
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(update_v, state.nu, updates)
    if bias_correction:
      t = count.astype(jnp.float32)
      c1 = 1 - b1**t
      c2 = 1 - b2**t if kind != "adagrad" else jnp.ones([], jnp.float32)
      direction = jax.tree.map(
          lambda m, v: (m / c1) / (jnp.sqrt(v / c2) + tau), mu, nu)
    else:
      direction = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + tau), mu, nu)
    return direction, ScaleByFedOptState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def _fedopt(kind: str, *, learning_rate: float, b1: float, b2: Optional[float],
            tau: float, bias_correction: bool,
            reset_inner_state: bool) -> base.OuterAlgorithm:
  lr = base.check_nonnegative("learning_rate", learning_rate)
  b1 = base.check_unit_interval("b1", b1)
  bias_correction = base.check_bool("bias_correction", bias_correction)
  if b2 is None:
    b2 = 0.999 if bias_correction else 0.99
  b2 = base.check_unit_interval("b2", b2)
  tau = base.check_positive("tau", tau)
  tx = optax.chain(
      scale_by_fedopt(kind, b1=b1, b2=b2, tau=tau,
                      bias_correction=bias_correction),
      optax.scale(-lr))
  return base.optax_outer(tx, name=f"fed{kind}",
                          reset_inner_state=base.check_bool(
                              "reset_inner_state", reset_inner_state))


def fedadam(*, learning_rate: float = 1e-2, b1: float = 0.9,
            b2: Optional[float] = None, tau: float = 1e-3,
            bias_correction: bool = False,
            reset_inner_state: bool = True) -> base.OuterAlgorithm:
  """FedAdam (server Adam on Δ). b2=None: 0.99 (paper), 0.999 (bias-corrected)."""
  return _fedopt("adam", learning_rate=learning_rate, b1=b1, b2=b2, tau=tau,
                 bias_correction=bias_correction,
                 reset_inner_state=reset_inner_state)


def fedyogi(*, learning_rate: float = 1e-2, b1: float = 0.9,
            b2: Optional[float] = None, tau: float = 1e-3,
            bias_correction: bool = False,
            reset_inner_state: bool = True) -> base.OuterAlgorithm:
  """FedYogi (server Yogi on Δ)."""
  return _fedopt("yogi", learning_rate=learning_rate, b1=b1, b2=b2, tau=tau,
                 bias_correction=bias_correction,
                 reset_inner_state=reset_inner_state)


def fedadagrad(*, learning_rate: float = 1e-2, b1: float = 0.9,
               tau: float = 1e-3, bias_correction: bool = False,
               reset_inner_state: bool = True) -> base.OuterAlgorithm:
  """FedAdagrad (server Adagrad with momentum on Δ)."""
  return _fedopt("adagrad", learning_rate=learning_rate, b1=b1, b2=0.0,
                 tau=tau, bias_correction=bias_correction,
                 reset_inner_state=reset_inner_state)
