"""Replicas across processes on JAX's distributed runtime (127.0.0.1 only).

Every process is started through experiments/launch_local.py and bounded in
time; the worker is tests/mp_worker.py.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "experiments", "launch_local.py")
WORKER = os.path.join(ROOT, "tests", "mp_worker.py")

pytestmark = pytest.mark.slow


def launch(num_processes, devices, *worker_args, timeout=180):
  cmd = [sys.executable, LAUNCH, f"--num_processes={num_processes}",
         f"--devices_per_process={devices}", f"--timeout_seconds={timeout}",
         "--", sys.executable, WORKER, *worker_args]
  proc = subprocess.run(cmd, capture_output=True, text=True,
                        timeout=timeout + 30, cwd=ROOT)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout


def load(path):
  with np.load(path) as f:
    return {k: f[k] for k in f}


@pytest.mark.parametrize("algo", ["diloco", "ddp"])
@pytest.mark.parametrize("model_two,model_one", [(1, 1), (2, 4)],
                         ids=["1d", "2d"])
def test_two_processes_equal_one(tmp_path, algo, model_two, model_one):
  """1d: a replica mesh over 2 x 4 devices == over 1 x 8. 2d: 2 processes,
  each 2 replica slots x 2 model devices (a global 4x2 replica x model mesh),
  == 1 process with a 2x4 mesh; leaves are split over the model axis in both
  (tests/mp_worker.py uses min_shard_size=1)."""
  rounds = 3
  launch(2, 4, f"--algo={algo}", f"--rounds={rounds}",
         f"--model_devices={model_two}", f"--out={tmp_path}/two")
  launch(1, 8, f"--algo={algo}", f"--rounds={rounds}",
         f"--model_devices={model_one}", f"--out={tmp_path}/one")
  for r in range(rounds):
    a, b = load(f"{tmp_path}/two/round{r}.npz"), load(f"{tmp_path}/one/round{r}.npz")
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-6,
                                 err_msg=f"{algo} round {r} {k}")
  # And the model really moved.
  first = load(f"{tmp_path}/one/round0.npz")
  last = load(f"{tmp_path}/one/round{rounds - 1}.npz")
  assert not np.allclose(first["w1"], last["w1"])


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


def test_lost_peer_stops_the_survivor(tmp_path):
  """Kill process 1 mid-run: process 0 exits non-zero naming it, within 60 s."""
  out, code, elapsed = kill_one_of_two(
      [sys.executable, WORKER, f"--out={tmp_path}", "--rounds=1",
       "--stall_after=1"],
      # Under way once process 0 has written a round.
      lambda: os.path.exists(f"{tmp_path}/round1.npz"))
  assert code != 0
  assert elapsed < 60, elapsed
  # JAX's coordination service names the task that stopped sending heartbeats.
  assert "unhealthy" in out and "heartbeats):\n1" in out, out[-2000:]

def kill_one_of_two(command, ready, *, port_offset=0):
  """Starts `command` as 2 processes (4 CPU devices each) on 127.0.0.1, waits
  until `ready()`, SIGKILLs process 1 and waits (bounded) for process 0.

  Returns:
    (process 0's output, its exit code, seconds from the kill to its exit).
  """
  port = 20000 + (os.getpid() + port_offset) % 20000
  procs = []
  for i in range(2):
    env = dict(os.environ, FEDJAX_LAB_COORDINATOR=f"127.0.0.1:{port}",
               FEDJAX_LAB_NUM_PROCESSES="2", FEDJAX_LAB_PROCESS_ID=str(i),
               FEDJAX_LAB_NUM_CPU_DEVICES="4", JAX_PLATFORMS="cpu",
               PYTHONUNBUFFERED="1")
    env.pop("XLA_FLAGS", None)
    procs.append(subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, cwd=ROOT))
  try:
    deadline = time.monotonic() + 120
    while not ready():
      assert time.monotonic() < deadline, "the run never got under way"
      assert all(p.poll() is None for p in procs)
      time.sleep(0.2)
    killed_at = time.monotonic()
    os.killpg(procs[1].pid, signal.SIGKILL)
    out, _ = procs[0].communicate(timeout=90)
    elapsed = time.monotonic() - killed_at
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
      p.wait()
  return out.decode(errors="replace"), procs[0].returncode, elapsed


RUN = os.path.join(ROOT, "experiments", "run.py")


def run_py(num_processes, devices, workdir, *overrides, timeout=240):
  cmd = [sys.executable, LAUNCH, f"--num_processes={num_processes}",
         f"--devices_per_process={devices}", f"--timeout_seconds={timeout}",
         "--", sys.executable, RUN, "--config=configs/smoke.py",
         f"--workdir={workdir}", "--config.mesh.num_devices=-1",
         "--config.train.num_replicas=8", *overrides]
  proc = subprocess.run(cmd, capture_output=True, text=True,
                        timeout=timeout + 30, cwd=ROOT)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return summary, rows


def test_run_py_across_processes_and_resume_with_another_count(tmp_path):
  """experiments/run.py: 2 processes × 4 devices ≡ 1 × 8, and a run started
  with 2 processes resumes from its checkpoint with 1."""
  two, two_rows = run_py(2, 4, tmp_path / "two", "--config.train.rounds=6")
  one, one_rows = run_py(1, 8, tmp_path / "one", "--config.train.rounds=6")
  losses = lambda rows: [r["train/loss"] for r in rows if r["kind"] == "train"]
  np.testing.assert_allclose(losses(two_rows), losses(one_rows), rtol=1e-5)
  np.testing.assert_allclose(two["final_eval"]["loss"],
                             one["final_eval"]["loss"], rtol=1e-5)
  resumed, _ = run_py(1, 8, tmp_path / "two", "--config.train.rounds=8")
  assert resumed["resumed_from"] == 6 and resumed["rounds"] == 8
  assert np.isfinite(resumed["final_eval"]["loss"])


def test_killed_run_py_stops_and_restart_resumes(tmp_path):
  """run.py across 2 processes: kill one after a checkpoint, the other stops
  non-zero within 60 s, and the same command resumes from that checkpoint."""
  workdir = tmp_path / "run"
  ckpt_dir = workdir / "checkpoints"
  args = ["--config=configs/smoke.py", f"--workdir={workdir}",
          "--config.mesh.num_devices=-1", "--config.train.num_replicas=8"]
  steps = lambda: sorted(int(p.name) for p in ckpt_dir.glob("*")
                         if p.name.isdigit()) if ckpt_dir.exists() else []
  out, code, elapsed = kill_one_of_two(
      [sys.executable, RUN, *args, "--config.train.rounds=100000"],
      lambda: len(steps()) >= 2,  # Two finalised checkpoints.
      port_offset=7)
  assert code != 0 and elapsed < 60, elapsed
  assert "stopped sending heartbeats" in out
  last = steps()[-1]
  summary, rows = run_py(2, 4, workdir, f"--config.train.rounds={last + 4}")
  assert summary["resumed_from"] == last and summary["rounds"] == last + 4
  assert np.isfinite(summary["final_eval"]["loss"])
