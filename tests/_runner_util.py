"""Shared helpers for the runner tests (subprocesses, data dir, configs)."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)  # `configs` is a package at the repository root.


# XLA's CPU compiler settings for every program the suite compiles, in the
# test processes (conftest) and the runs they start. The suite's programs are
# tiny, so compiling them is most of its time: with LLVM's optimisations off
# and XLA's older fusion emitters, DiLoCo's round in tests/test_mesh2d.py
# compiles in 1.1 s instead of 6.0 s and runs a little slower. The programs'
# arithmetic is the same operations; a test compares runs made under the same
# flags (bit-identity) or against float64 references with tolerances that do
# not depend on them. The library and the experiments keep XLA's defaults.
TEST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0 "
                      "--xla_cpu_use_fusion_emitters=false")


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a test process or run with `devices` CPU devices."""
  return (f"--xla_force_host_platform_device_count={devices} "
          f"{TEST_COMPILE_FLAGS}")


def cli_env(data_dir, devices=1):
  env = dict(os.environ)
  env["XLA_FLAGS"] = xla_flags(devices)
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


def popen_cli(script, args, *, data_dir, devices=1, stderr=subprocess.PIPE):
  """Starts experiments/<script>; `stderr` a file to keep a long run's log
  from filling the pipe."""
  return subprocess.Popen(
      [sys.executable, _script(script), *args],
      cwd=REPO, env=cli_env(data_dir, devices), stdout=subprocess.DEVNULL,
      stderr=stderr, text=True)


def sigkill_when(child, ready, *, timeout=300.0, poll=0.005):
  """SIGKILLs the Popen `child` as soon as `ready()` returns something truthy
  (polled every `poll` s); returns that value. Fails the test if the child
  ends first or `timeout` s pass; the child never outlives the call."""
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  deadline, got = time.time() + timeout, None
  try:
    while time.time() < deadline and child.poll() is None:
      got = ready()
      if got:
        break
      time.sleep(poll)
    assert child.poll() is None, (
        "the run ended before it could be killed: "
        f"{(child.stderr.read() if child.stderr else '')[-2000:]}")
    assert got, f"not ready to kill after {timeout} s"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
  finally:
    if child.poll() is None:
      child.kill()
      child.wait(timeout=30)
  assert child.returncode == -signal.SIGKILL, child.returncode
  return got


def plant_comparison(monkeypatch, module, planted, seen):
  """Replaces `module.run_comparison` with one that runs nothing: each arm
  completes with the test loss `planted` gives its key (the arm's name
  without its budget prefix and seed suffix, '1x_diloco_s0' → 'diloco');
  the names of the arms it was asked for are appended to `seen`."""
  def fake_comparison(base, arms, workdir, reuse=True):
    del base, workdir, reuse
    seen.extend(a["name"] for a in arms)
    return [{"name": a["name"], "status": "completed",
             "final_test": {"loss": planted[a["name"][3:].rsplit("_s", 1)[0]]}}
            for a in arms]
  monkeypatch.setattr(module, "run_comparison", fake_comparison)
