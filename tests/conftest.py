"""Test-wide settings: 8 fake CPU devices and strict rank promotion (nanodo)."""

import os

from _runner_util import xla_flags  # Imports no jax.

# Must happen before jax is imported anywhere: sharding tests need 8 devices;
# the compiler settings are _runner_util.TEST_COMPILE_FLAGS'.
os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

# One persistent compilation cache per test process (an xdist worker), shared
# with the runs it starts (tests/_runner_util.cli_env): the suite compiles the
# same small programs many times over (every smoke run, every resume), and a
# cached executable is the one a fresh compile would make. Removed at exit.
COMPILE_CACHE = tempfile.mkdtemp(prefix="fedjax_lab_test_jax_cache_")
atexit.register(shutil.rmtree, COMPILE_CACHE, ignore_errors=True)
os.environ["FEDJAX_LAB_TEST_COMPILE_CACHE"] = COMPILE_CACHE
jax.config.update("jax_compilation_cache_dir", COMPILE_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_collection_modifyitems(config, items):
  """On an xdist worker: the slow tier first. pytest.ini's --dist=loadgroup
  hands tests out a few at a time in this order, so the long end-to-end runs
  start early and both workers end on short tests together. (Every worker
  sorts the same collection the same way, as xdist requires.)"""
  if hasattr(config, "workerinput"):
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
