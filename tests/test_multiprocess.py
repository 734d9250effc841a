"""Replicas across processes on JAX's distributed runtime (127.0.0.1 only).

(Over 400 lines on purpose: the multi-process tests share one launcher and its
bounds.)

Every process is bounded in time; the library-level worker is
tests/mp_worker.py. No wall-clock assertion: a peer's loss is checked as an
event (the survivor exits by itself, non-zero, without our kill), and the
time bounds only keep a hung test from hanging the suite.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from _runner_util import cli_env
from experiments import launch_local
from fedjax_lab import outer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "experiments", "launch_local.py")
WORKER = os.path.join(ROOT, "tests", "mp_worker.py")
RUN = os.path.join(ROOT, "experiments", "run.py")

pytestmark = pytest.mark.slow


def free_port() -> int:
  """A TCP port nothing listens on now: the OS picks it (bind to port 0)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(num_processes, devices, *worker_args, timeout=300):
  cmd = [sys.executable, LAUNCH, f"--num_processes={num_processes}",
         f"--devices_per_process={devices}", f"--timeout_seconds={timeout}",
         f"--port={free_port()}", "--", sys.executable, WORKER, *worker_args]
  proc = subprocess.run(cmd, capture_output=True, text=True,
                        timeout=timeout + 30, cwd=ROOT)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout


def load(path):
  with np.load(path) as f:
    return {k: f[k] for k in f}


def assert_rounds_equal(two, one, rounds, what):
  for r in range(rounds):
    a, b = load(f"{two}/round{r}.npz"), load(f"{one}/round{r}.npz")
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-6,
                                 err_msg=f"{what} round {r} {k}")
  # And the model really moved.
  first, last = load(f"{one}/round0.npz"), load(f"{one}/round{rounds - 1}.npz")
  assert not np.allclose(first["w1"], last["w1"]), what


def test_launcher_passes_xla_flags_on_but_the_device_count():
  """Each child sets its own device count; the parent's other flags stay."""
  flags = ("--xla_backend_optimization_level=0 "
           "--xla_force_host_platform_device_count=8 --xla_dump_to=/d")
  assert launch_local.without_device_count(flags) == (
      "--xla_backend_optimization_level=0 --xla_dump_to=/d")
  assert launch_local.without_device_count("") == ""


def test_two_processes_equal_one_for_every_registry_entry(tmp_path):
  """A replica mesh over 2 processes × 4 devices == over 1 × 8, for every
  entry of the registry. One process pair (and one single process) runs all
  entries in turn (tests/mp_worker.py --algos), not a pair per entry."""
  names = outer.names()
  assert len(names) >= 14
  rounds = 2
  algos = "--algos=" + ",".join(names)
  launch(2, 4, algos, f"--rounds={rounds}", f"--out={tmp_path}/two")
  launch(1, 8, algos, f"--rounds={rounds}", f"--out={tmp_path}/one")
  for name in names:
    assert_rounds_equal(f"{tmp_path}/two/{name}", f"{tmp_path}/one/{name}",
                        rounds, name)


def test_two_processes_equal_one_on_a_2d_mesh(tmp_path):
  """2 processes, each 2 replica slots × 2 model devices (a global 4×2
  replica × model mesh) == 1 process with a 2×4 mesh; leaves are split over
  the model axis in both (tests/mp_worker.py uses min_shard_size=1)."""
  rounds, algos = 3, "--algos=diloco,ddp"
  launch(2, 4, algos, f"--rounds={rounds}", "--model_devices=2",
         f"--out={tmp_path}/two")
  launch(1, 8, algos, f"--rounds={rounds}", "--model_devices=4",
         f"--out={tmp_path}/one")
  for name in ("diloco", "ddp"):
    assert_rounds_equal(f"{tmp_path}/two/{name}", f"{tmp_path}/one/{name}",
                        rounds, name)


@pytest.mark.parametrize("save_procs,restore_procs", [(2, 1), (1, 2)])
def test_checkpoint_restores_across_process_counts(tmp_path, save_procs,
                                                   restore_procs):
  ckpt = f"{tmp_path}/ckpt"
  launch(save_procs, 8 // save_procs, "--rounds=2", f"--out={tmp_path}/a",
         f"--save={ckpt}")
  launch(restore_procs, 8 // restore_procs, "--rounds=0", f"--out={tmp_path}/b",
         f"--restore={ckpt}")
  saved = load(f"{tmp_path}/a/round1.npz")
  restored = load(f"{tmp_path}/b/restored.npz")
  for k in saved:
    np.testing.assert_array_equal(saved[k], restored[k])
  assert restored["rep_w1"].shape[0] == 8  # Every replica's params came back.


def start_processes(commands, envs):
  """Popen each command (own session, output captured) with its env."""
  procs = []
  for command, env in zip(commands, envs):
    env = dict(env, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    # Each process sets its own device count; the compiler flags stay.
    env["XLA_FLAGS"] = launch_local.without_device_count(
        env.get("XLA_FLAGS", ""))
    procs.append(subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, cwd=ROOT))
  return procs


def kill_all(procs):
  for p in procs:
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def launcher_env(i, port, num_processes=2, devices=4, base=None):
  """The variables experiments/launch_local.py gives process i."""
  return dict(base or os.environ, FEDJAX_LAB_COORDINATOR=f"127.0.0.1:{port}",
              FEDJAX_LAB_NUM_PROCESSES=str(num_processes),
              FEDJAX_LAB_PROCESS_ID=str(i),
              FEDJAX_LAB_NUM_CPU_DEVICES=str(devices))


# The lost-peer tests wait out JAX's heartbeat: shorter than the library's
# 20 s default (a busy 2-core machine still answers within it).
HEARTBEAT_S = 8


def kill_one_of_two(command, ready, log_dir, *, base_env=None, bound=180):
  """Starts `command` as 2 processes (4 CPU devices each) on 127.0.0.1, waits
  until `ready()`, SIGKILLs process 1 and waits for process 0 to stop by
  itself (JAX's heartbeat). `bound` only keeps a hang from hanging the suite.

  Returns:
    (process 0's output, its exit code).
  """
  port = free_port()
  procs = start_processes([command] * 2,
                          [launcher_env(i, port, base=base_env)
                           for i in range(2)])
  try:
    deadline = time.monotonic() + bound
    while not ready():
      if time.monotonic() > deadline or any(p.poll() is not None
                                             for p in procs):
        kill_all(procs)
        tails = [(p.communicate()[0] or b"").decode(errors="replace")[-3000:]
                 for p in procs]
        pytest.fail("the run never got under way or a process ended early; "
                    "their output:\n" + "\n---\n".join(tails))
      time.sleep(0.2)
    os.killpg(procs[1].pid, signal.SIGKILL)
    try:
      out, _ = procs[0].communicate(timeout=bound)
    except subprocess.TimeoutExpired:
      pytest.fail("process 0 did not stop after its peer was killed")
  finally:
    kill_all(procs)
  out = out.decode(errors="replace")
  # Kept for a reader of a failure (the assertion shows only its tail).
  with open(os.path.join(log_dir, "survivor.log"), "w") as f:
    f.write(out)
  return out, procs[0].returncode


def names_the_lost_process(out):
  """Process 0's error names the lost peer (task / process 1) next to what
  happened to it (heartbeats, unhealthy), in whatever words this JAX version
  uses: not its exact wording."""
  text = out.lower()
  for m in re.finditer(r"heartbeat|unhealthy", text):
    window = text[max(0, m.start() - 200):m.start() + 300]
    if re.search(r"task[:_ ]?(id)?[:= ]*1\b|(?<![\w.:/-])1(?![\w.:])",
                 window):
      return True
  return False


def test_lost_peer_stops_the_survivor(tmp_path):
  """Kill process 1 mid-run: process 0 stops by itself, non-zero, naming
  the lost process."""
  out, code = kill_one_of_two(
      [sys.executable, WORKER, f"--out={tmp_path}", "--rounds=1",
       "--stall_after=1", f"--heartbeat_timeout_seconds={HEARTBEAT_S}"],
      # Under way once process 0 has written a round.
      lambda: os.path.exists(f"{tmp_path}/round1.npz"), tmp_path)
  assert code not in (0, None, -signal.SIGKILL), code
  assert names_the_lost_process(out), out[-2000:]


# ---------------------------------------------------------------------------
# experiments/run.py across processes.

ROUNDS = 12  # The uninterrupted reference's length.
RUN_ARGS = [
    "--config=configs/smoke.py", "--config.mesh.num_devices=-1",
    "--config.train.num_replicas=8", "--config.train.tensorboard=False",
    # One learning-rate horizon for every run below, however many rounds it
    # was started with (resumed runs keep their first run's horizon).
    f"--config.inner.schedule_steps={ROUNDS * 4}",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """The corpus, prepared once under this module's temporary directory."""
  from fedjax_lab import data  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp("tfds")
  data.prepare_stdlib_corpus(data_dir=str(path), subset="small")
  return path


def run_args(data_dir, workdir, rounds, *extra):
  return [sys.executable, RUN, *RUN_ARGS, f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}",
          f"--config.train.rounds={rounds}", *extra]


def wait_all(procs, bound=300):
  """Waits for every process; (outputs, exit codes). Kills all on a hang."""
  outs = []
  try:
    for p in procs:
      out, _ = p.communicate(timeout=bound)
      outs.append(out.decode(errors="replace"))
  except subprocess.TimeoutExpired:
    kill_all(procs)
    tails = [(p.communicate()[0] or b"").decode(errors="replace")[-3000:]
             for p in procs[len(outs):]]
    pytest.fail("a run.py process hung; the unfinished ones' output:\n" +
                "\n---\n".join(tails))
  finally:
    kill_all(procs)
  return outs, [p.returncode for p in procs]


def run_py(data_dir, workdir, rounds, *, processes=1, how="launcher"):
  """run.py as `processes` processes of 8/processes CPU devices each.

  how: 'launcher' (FEDJAX_LAB_* variables, as launch_local.py sets them),
  'flags' (--coordinator_address / --num_processes / --process_id /
  --num_cpu_devices on the command line, no variables) or 'auto'
  (--distributed_auto in a cluster JAX detects by itself: a SLURM job's
  variables for 127.0.0.1, whose coordinator port JAX derives from the job
  id).
  """
  base = cli_env(data_dir, devices=8)
  devices = 8 // processes
  commands, envs = [], []
  port = free_port()
  for i in range(processes):
    cmd = run_args(data_dir, workdir, rounds)
    env = dict(base)
    if processes == 1:
      pass  # XLA_FLAGS from cli_env: 8 devices.
    elif how == "launcher":
      env = launcher_env(i, port, processes, devices, base)
    elif how == "flags":
      cmd += [f"--coordinator_address=127.0.0.1:{port}",
              f"--num_processes={processes}", f"--process_id={i}",
              f"--num_cpu_devices={devices}"]
    else:
      assert how == "auto"
      # JAX's SlurmCluster: port = 61440 + job id % 4096.
      port = free_port_in(61440, 65535) if i == 0 else port
      cmd += ["--distributed_auto", f"--num_cpu_devices={devices}"]
      env.update(SLURM_JOB_ID=str(port - 61440), SLURM_STEP_NODELIST="127.0.0.1",
                 SLURM_NTASKS=str(processes), SLURM_PROCID=str(i),
                 SLURM_LOCALID=str(i), SLURM_STEP_NUM_NODES="1")
    commands.append(cmd)
    envs.append(env)
  if processes == 1:
    procs = [subprocess.Popen(commands[0], env=envs[0], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, cwd=ROOT,
                              start_new_session=True)]
  else:
    procs = start_processes(commands, envs)
  outs, codes = wait_all(procs)
  assert codes == [0] * processes, "\n".join(o[-3000:] for o in outs)
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return summary, rows


def free_port_in(lo, hi):
  """A free port in [lo, hi] (JAX derives a SLURM job's port from its id)."""
  rs = np.random.RandomState(os.getpid())
  for port in rs.permutation(np.arange(lo, hi + 1))[:200]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
      try:
        s.bind(("127.0.0.1", int(port)))
      except OSError:
        continue
      return int(port)
  raise AssertionError(f"no free port in [{lo}, {hi}]")


def train_losses(rows):
  return [r["train/loss"] for r in rows if r["kind"] == "train"]


def restore_state(workdir, step, like=None):
  """The state a run checkpointed at `step`, on this process's first device.

  like: a restored state whose structure and shapes to restore into; needed
  for a checkpoint written by 2 processes (its shardings name devices this
  process does not have).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  target = None
  if like is not None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), like)
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as mgr:
    out = mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
  return out["state"]


def assert_same_run(a_summary, a_rows, a_dir, b_summary, b_rows, b_dir):
  """Same losses every round, same final evaluation, same final params and
  replicas (to float rounding: 2 processes reduce in another order than 1).
  b is the uninterrupted single-process run."""
  np.testing.assert_allclose(train_losses(a_rows), train_losses(b_rows),
                             rtol=1e-5)
  np.testing.assert_allclose(a_summary["final_eval"]["loss"],
                             b_summary["final_eval"]["loss"], rtol=1e-5)
  import jax  # pylint: disable=g-import-not-at-top
  step = b_summary["rounds"]
  b_state = restore_state(b_dir, step)
  a_state = restore_state(a_dir, step, like=b_state)
  for part in ("params", "replica_params"):
    x, y = jax.tree.leaves(a_state[part]), jax.tree.leaves(b_state[part])
    assert len(x) == len(y) > 0
    for u, v in zip(x, y):
      np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5,
                                 atol=1e-6, err_msg=part)


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
  """One uninterrupted run: 1 process × 8 devices, ROUNDS rounds."""
  workdir = tmp_path_factory.mktemp("reference")
  summary, rows = run_py(data_dir, workdir, ROUNDS)
  assert summary["rounds"] == ROUNDS and summary["resumed_from"] is None
  return summary, rows, workdir


@pytest.mark.xdist_group("multiprocess_reference")  # One reference run.
def test_run_py_two_processes_then_resumed_with_one(data_dir, reference,
                                                    tmp_path):
  """run.py on 2 processes × 4 devices (started with --coordinator_address
  / --num_processes / --process_id flags) ≡ 1 × 8 round by round, with
  process 0 alone writing the metrics; resumed with 1 process it ends equal
  to the uninterrupted run."""
  ref_summary, ref_rows, ref_dir = reference
  workdir = tmp_path / "two"
  two, two_rows = run_py(data_dir, workdir, 6, processes=2, how="flags")
  assert two["devices"]["processes"] == 2
  # Process 0 alone writes: every row once, in order (a second writer would
  # duplicate or interleave them).
  assert [r["round"] for r in two_rows if r["kind"] == "train"] == list(
      range(1, 7))
  np.testing.assert_allclose(train_losses(two_rows),
                             train_losses(ref_rows)[:6], rtol=1e-5)
  resumed, rows = run_py(data_dir, workdir, ROUNDS)
  assert resumed["resumed_from"] == 6 and resumed["rounds"] == ROUNDS
  assert resumed["devices"]["processes"] == 1
  assert_same_run(resumed, rows, workdir, ref_summary, ref_rows, ref_dir)


@pytest.mark.xdist_group("multiprocess_reference")
def test_killed_run_py_stops_and_restart_resumes(data_dir, reference,
                                                 tmp_path):
  """run.py across 2 processes: kill one after a checkpoint; the other stops
  by itself, naming the lost process; the same run restarted (this time
  with --distributed_auto, the cluster found by JAX) resumes from that
  checkpoint and ends equal to the uninterrupted run."""
  ref_summary, ref_rows, ref_dir = reference
  workdir = tmp_path / "run"
  ckpt_dir = workdir / "checkpoints"
  steps = lambda: sorted(int(p.name) for p in ckpt_dir.glob("*")
                         if p.name.isdigit()) if ckpt_dir.exists() else []
  out, code = kill_one_of_two(
      run_args(data_dir, workdir, 100000,
               f"--heartbeat_timeout_seconds={HEARTBEAT_S}"),
      lambda: len(steps()) >= 2,  # Two finalised checkpoints.
      tmp_path, base_env=cli_env(data_dir, devices=8))
  assert code not in (0, None, -signal.SIGKILL), code
  assert names_the_lost_process(out), out[-2000:]
  last = steps()[-1]
  assert last < ROUNDS, last
  summary, rows = run_py(data_dir, workdir, ROUNDS, processes=2, how="auto")
  assert summary["resumed_from"] == last and summary["rounds"] == ROUNDS
  assert summary["devices"]["processes"] == 2
  assert [r["round"] for r in rows if r["kind"] == "train"] == list(
      range(1, ROUNDS + 1))
  assert_same_run(summary, rows, workdir, ref_summary, ref_rows, ref_dir)
