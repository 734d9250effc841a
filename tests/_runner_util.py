"""Shared helpers for the runner tests (subprocesses, data dir, configs)."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)  # `configs` is a package at the repository root.


def cli_env(data_dir, devices=1):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["TFDS_DATA_DIR"] = str(data_dir)
  env.pop("PYTHONWARNINGS", None)
  cache = os.environ.get("FEDJAX_LAB_TEST_COMPILE_CACHE")
  if cache:  # conftest's: the runs share the test process's compilations.
    env.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  return env


def _script(script):
  """experiments/<script>, or tests/<script> for a 'tests/' prefixed one."""
  if script.startswith("tests/"):
    return os.path.join(REPO, script)
  return os.path.join(REPO, "experiments", script)


def run_cli(script, args, *, data_dir, timeout=180, devices=1, env=None):
  """Runs experiments/<script> with args; returns the CompletedProcess."""
  full_env = cli_env(data_dir, devices)
  full_env.update(env or {})
  return subprocess.run(
      [sys.executable, _script(script), *args],
      cwd=REPO, env=full_env, capture_output=True,
      text=True, timeout=timeout, check=False)


def popen_cli(script, args, *, data_dir, devices=1):
  return subprocess.Popen(
      [sys.executable, _script(script), *args],
      cwd=REPO, env=cli_env(data_dir, devices), stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True)
