r"""Starts N processes on 127.0.0.1 with K CPU devices each: multi-host on one box.

Each child gets FEDJAX_LAB_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID /
_NUM_CPU_DEVICES, which `fedjax_lab.distributed.initialize` reads, so any
fedjax_lab entry point runs unchanged:

  python experiments/launch_local.py --num_processes=2 --devices_per_process=4 \
      -- python experiments/run.py --config=configs/smoke.py --workdir=/tmp/mp

If a child fails, the others are given `--grace_seconds` to notice (JAX's
heartbeat stops them with an error naming the lost peer) and are then killed;
the launcher exits with the first non-zero code. `--timeout_seconds` bounds
the whole run. Children's output is prefixed with their process id.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def without_device_count(xla_flags: str) -> str:
  """`xla_flags` less any forced host device count (each child sets its own
  through FEDJAX_LAB_NUM_CPU_DEVICES); the user's other XLA flags stay."""
  return " ".join(f for f in xla_flags.split()
                  if not f.startswith("--xla_force_host_platform_device_count"))


def _pump(proc, prefix, out):
  for line in iter(proc.stdout.readline, b""):
    out.write(f"[{prefix}] {line.decode(errors='replace')}")
    out.flush()


def launch(command, *, num_processes: int, devices_per_process: int,
           timeout_seconds: float = 600, grace_seconds: float = 60,
           port: int = 0, env=None) -> int:
  """Runs `command` as N processes; returns the launcher's exit code."""
  port = port or free_port()
  procs = []
  for i in range(num_processes):
    child_env = dict(os.environ if env is None else env)
    child_env.update({
        "FEDJAX_LAB_COORDINATOR": f"127.0.0.1:{port}",
        "FEDJAX_LAB_NUM_PROCESSES": str(num_processes),
        "FEDJAX_LAB_PROCESS_ID": str(i),
        "FEDJAX_LAB_NUM_CPU_DEVICES": str(devices_per_process),
        "JAX_PLATFORMS": "cpu",
        "PYTHONUNBUFFERED": "1",
    })
    # A forced device count from the parent would fight the per-process one.
    flags = without_device_count(child_env.pop("XLA_FLAGS", ""))
    if flags:
      child_env["XLA_FLAGS"] = flags
    proc = subprocess.Popen(command, env=child_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    threading.Thread(target=_pump, args=(proc, f"p{i}", sys.stdout),
                     daemon=True).start()
    procs.append(proc)

  def kill_all():
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)

  deadline = time.monotonic() + timeout_seconds
  failed_at = None
  code = 0
  try:
    while True:
      codes = [p.poll() for p in procs]
      if all(c is not None for c in codes):
        break
      bad = [c for c in codes if c not in (None, 0)]
      if bad and failed_at is None:
        failed_at, code = time.monotonic(), bad[0]
      now = time.monotonic()
      if failed_at is not None and now - failed_at > grace_seconds:
        print(f"launch_local: a process failed; stopping the rest after "
              f"{grace_seconds:.0f}s", file=sys.stderr)
        break
      if now > deadline:
        print(f"launch_local: timed out after {timeout_seconds:.0f}s",
              file=sys.stderr)
        code = code or 124
        break
      time.sleep(0.2)
  finally:
    kill_all()
    for p in procs:
      p.wait()
  if code == 0:
    code = next((p.returncode for p in procs if p.returncode), 0)
  return code


def main(argv=None):
  parser = argparse.ArgumentParser(
      description="Run a command as N local JAX processes (127.0.0.1).")
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=4)
  parser.add_argument("--timeout_seconds", type=float, default=600)
  parser.add_argument("--grace_seconds", type=float, default=60)
  parser.add_argument("--port", type=int, default=0, help="0 picks a free one")
  parser.add_argument("command", nargs=argparse.REMAINDER,
                      help="after --: the command every process runs")
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("give the command to run after --")
  if args.num_processes < 1 or args.devices_per_process < 1:
    parser.error("--num_processes and --devices_per_process must be >= 1")
  return launch(command, num_processes=args.num_processes,
                devices_per_process=args.devices_per_process,
                timeout_seconds=args.timeout_seconds,
                grace_seconds=args.grace_seconds, port=args.port)


if __name__ == "__main__":
  sys.exit(main())
