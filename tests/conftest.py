"""Test-wide settings: 8 fake CPU devices and strict rank promotion (nanodo)."""

import os

# Must happen before jax is imported anywhere: sharding tests need 8 devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
