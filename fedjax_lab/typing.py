"""Type aliases used across fedjax_lab (one place, as fedjax core/typing.py)."""

from typing import Any, Callable, Mapping, Tuple, Union

import jax

Params = Any  # A pytree of arrays: model parameters (or anything shaped like them).
Updates = Params  # A pytree shaped like Params: gradients, outer gradients, deltas.
OptState = Any  # An optax optimizer state.
PRNGKey = jax.Array  # A typed or raw jax.random key.
Batch = Any  # A pytree of arrays with a leading example axis.
Metrics = Mapping[str, jax.Array]
# loss_fn(params, batch, rng) -> loss  or  (loss, metrics).
LossFn = Callable[[Params, Batch, PRNGKey], Union[jax.Array, Tuple[jax.Array, Metrics]]]
