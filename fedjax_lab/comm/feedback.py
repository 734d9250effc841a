"""Error feedback around any compressor that sends decoded values."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_lab.comm.compressor import Compressor
from fedjax_lab.typing import Params


class ErrorFeedbackState(NamedTuple):
  """Error-feedback state of one replica.

  residual: r_i, what was not sent yet (float32, shaped like params).
  inner: the wrapped compressor's state.
  nonfinite_rounds: how many syncs met a non-finite value (int32), so a
    reset residual is visible rather than silent.
  """
  residual: Params
  inner: Any
  nonfinite_rounds: jax.Array


def error_feedback(compressor: Compressor) -> Compressor:
  """Wraps any compressor with error feedback (arXiv 1901.09847).

  Sends c = C(Δ_i + r_i) and keeps r_i ← Δ_i + r_i − c, so after T syncs
  Σ_t c_t + r_T = Σ_t Δ_t exactly (in real arithmetic): nothing is lost, only
  delayed, and the cumulative error is the current residual, which stays as
  small as one step's quantisation error.

  Non-finite values: wherever Δ_i + r_i or its decoded value is NaN or ±Inf
  (a non-finite input, or an fp16 overflow), that element's residual is set
  to 0 instead of NaN, so one bad round cannot poison every later one; what
  the residual held there is dropped. The decoded output is NOT cleaned: the
  non-finite value goes out so the engine's checks see it, and
  `nonfinite_rounds` counts such syncs.
  """

  if compressor.aggregate is not None:
    raise ValueError("compression: error_feedback needs a compressor that "
                     "sends decoded values (this one has its own aggregate)")

  def init(params):
    residual = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    return ErrorFeedbackState(residual=residual,
                              inner=compressor.init(params),
                              nonfinite_rounds=jnp.zeros((), jnp.int32))

  def compress(delta, state, key):
    target = jax.tree.map(lambda d, r: jnp.asarray(d, jnp.float32) + r,
                          delta, state.residual)
    decoded, inner = compressor.compress(target, state.inner, key)
    decoded = jax.tree.map(lambda c: jnp.asarray(c, jnp.float32), decoded)

    def residual_of(t, c):
      ok = jnp.isfinite(t) & jnp.isfinite(c)
      return jnp.where(ok, t - c, 0.0)

    residual = jax.tree.map(residual_of, target, decoded)
    bad = [jnp.any(~(jnp.isfinite(t) & jnp.isfinite(c)))
           for t, c in zip(jax.tree.leaves(target), jax.tree.leaves(decoded))]
    any_bad = jnp.any(jnp.stack(bad)) if bad else jnp.zeros((), bool)
    new_state = ErrorFeedbackState(
        residual=residual, inner=inner,
        nonfinite_rounds=state.nonfinite_rounds + any_bad.astype(jnp.int32))
    return decoded, new_state

  return Compressor(init=init, compress=compress,
                    payload_bytes=compressor.payload_bytes,
                    collective=compressor.collective)
