"""The runner: end-to-end runs, resume after SIGKILL, checkpoints, metrics,
divergence policies and the inner optimizer schedule."""

import json
import math
import os
import shutil
import signal
import time

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from _fault import nan_fault
from _runner_util import popen_cli  # Puts the repo root on sys.path.
from _runner_util import run_cli  # Puts the repo root on sys.path.
from configs import smoke
from fedjax_lab import distributed
from fedjax_lab import run as run_lib
from fedjax_lab.metrics import read_rows


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """One prepared corpus per test module (and xdist worker)."""
  from fedjax_lab import data  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp("tfds")
  data.prepare_stdlib_corpus(data_dir=str(path), subset="small")
  return path


def smoke_config(data_dir, **overrides):
  config = smoke.get_config()
  config.data.data_dir = str(data_dir)
  config.train.tensorboard = False
  return run_lib.apply_overrides(config, overrides)


def _finite(x):
  return isinstance(x, (int, float)) and math.isfinite(x)


def _restore_raw(ckpt_dir, step):
  """A checkpoint's state as numpy leaves (no target: plain nested dicts)."""
  with ocp.CheckpointManager(ckpt_dir) as mgr:
    out = mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))
  return out["state"]


# ---------------------------------------------------------------------------
# End to end through experiments/run.py.


@pytest.mark.slow
def test_smoke_run_cli_writes_everything(tmp_path, data_dir):
  workdir = tmp_path / "run"
  proc = run_cli("run.py", ["--config=configs/smoke.py", f"--workdir={workdir}",
                            f"--config.data.data_dir={data_dir}"],
                 data_dir=data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == "completed"
  for key in ("rounds", "tokens", "steps", "payload_bytes", "ring_bytes",
              "wall_s", "best_eval_loss", "num_params"):
    assert _finite(summary[key]), key
  for key in ("loss", "accuracy", "perplexity", "bits_per_byte"):
    assert _finite(summary["final_eval"][key]), key
  cfg = smoke.get_config()
  h, m, b, seq = (cfg.inner.steps, cfg.train.num_replicas, cfg.inner.batch_size,
                  cfg.model.seq_len)
  assert summary["rounds"] == cfg.train.rounds
  assert summary["tokens"] == cfg.train.rounds * m * h * b * seq
  assert summary["payload_bytes"] == cfg.train.rounds * 4 * summary["num_params"]
  assert summary["compiled_rounds"] == 1  # No recompilation after round 1.
  assert summary["corpus"]["sha256"] and summary["corpus"]["python_version"]
  for lib in ("jax", "flax", "optax", "orbax_checkpoint", "python"):
    assert summary["versions"][lib]
  assert summary["config"]["outer"]["name"] == "diloco"
  # Every train row has cumulative bytes; eval rows at the eval rounds.
  rows = read_rows(str(workdir / "metrics.jsonl"), kind="train")
  assert [r["round"] for r in rows] == list(range(1, cfg.train.rounds + 1))
  bytes_ = [r["payload_bytes"] for r in rows]
  assert bytes_ == sorted(bytes_) and bytes_[0] > 0
  assert all("ring_bytes" in r and "tokens" in r for r in rows)
  evals = read_rows(str(workdir / "metrics.jsonl"), kind="eval")
  assert [r["round"] for r in evals] == [4, 8, 12]
  assert all(_finite(r["eval/loss"]) for r in evals)
  assert evals[-1]["eval/loss"] < math.log(256)  # It learned something.
  events = os.listdir(workdir / "tensorboard")
  assert any(f.startswith("events.out.tfevents") for f in events)


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(tmp_path, data_dir):
  args = ["--config=configs/smoke.py", f"--config.data.data_dir={data_dir}",
          "--config.train.rounds=24", "--config.train.checkpoint_every=2",
          "--config.train.keep=3", "--config.train.eval_every=6"]
  # The reference: one uninterrupted run.
  ref = tmp_path / "ref"
  proc = run_cli("run.py", args + [f"--workdir={ref}"], data_dir=data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # The interrupted run: SIGKILL as soon as a first checkpoint is final.
  work = tmp_path / "killed"
  child = popen_cli("run.py", args + [f"--workdir={work}"], data_dir=data_dir)
  deadline = time.time() + 150
  ckpts = work / "checkpoints"
  try:
    while time.time() < deadline and child.poll() is None:
      if ckpts.exists() and any(p.isdigit() for p in os.listdir(ckpts)):
        break
      time.sleep(0.005)
    assert child.poll() is None, "the run ended before it could be killed"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
  finally:
    if child.poll() is None:
      child.kill()
  assert child.returncode == -signal.SIGKILL
  steps = sorted(int(p) for p in os.listdir(ckpts) if p.isdigit())
  assert steps and steps[-1] < 24, steps
  assert not (work / "summary.json").exists() or json.loads(
      (work / "summary.json").read_text())["rounds"] < 24
  # Restart with the same workdir: it resumes and finishes.
  proc = run_cli("run.py", args + [f"--workdir={work}"], data_dir=data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((work / "summary.json").read_text())
  assert summary["resumed_from"] is not None and summary["resumed_from"] >= 2
  assert summary["resumes"] == 1 and summary["rounds"] == 24
  # Bit-identical final state (params, replicas, optimizer states, rng).
  a = jax.tree.leaves(_restore_raw(str(ref / "checkpoints"), 24))
  b = jax.tree.leaves(_restore_raw(str(ckpts), 24))
  assert len(a) == len(b) > 0
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  ref_summary = json.loads((ref / "summary.json").read_text())
  assert summary["final_eval"] == ref_summary["final_eval"]
  # The resumed metrics file has each round once.
  rounds = [r["round"] for r in read_rows(str(work / "metrics.jsonl"), "train")]
  assert rounds == list(range(1, 25))


# ---------------------------------------------------------------------------
# Checkpoints: half-written, corrupt, incompatible.


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_and_tmp_is_ignored(
    tmp_path, data_dir):
  workdir = str(tmp_path / "run")
  config = smoke_config(data_dir, **{"train.rounds": 4, "train.eval_every": 0})
  run_lib.train_and_evaluate(config, workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  assert sorted(int(p) for p in os.listdir(ckpts) if p.isdigit()) == [2, 4]
  # A save killed half-way leaves a tmp directory: never listed or used.
  os.makedirs(os.path.join(ckpts, "6.orbax-checkpoint-tmp-1234", "state"))
  # Damage the latest complete checkpoint.
  state_dir = os.path.join(ckpts, "4", "state")
  for name in os.listdir(state_dir):
    path = os.path.join(state_dir, name)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
  config.train.rounds = 6
  summary = run_lib.train_and_evaluate(config, workdir)
  assert summary["resumed_from"] == 2 and summary["rounds"] == 6
  assert os.listdir(os.path.join(workdir, "corrupt_checkpoints"))
  assert _finite(summary["final_eval"]["loss"])


def test_no_restorable_checkpoint_is_an_error_not_a_fresh_start(
    tmp_path, data_dir):
  workdir = str(tmp_path / "run")
  config = smoke_config(data_dir, **{"train.rounds": 2, "train.eval_every": 0})
  run_lib.train_and_evaluate(config, workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "2", "state"))
  with pytest.raises(run_lib.CheckpointError, match="can be restored"):
    run_lib.train_and_evaluate(config, workdir)
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))  # Left alone.


def test_resume_with_another_config_is_a_config_error(tmp_path, data_dir):
  workdir = str(tmp_path / "run")
  config = smoke_config(data_dir, **{"train.rounds": 2, "train.eval_every": 0})
  run_lib.train_and_evaluate(config, workdir)
  config.inner.learning_rate = 1e-4
  with pytest.raises(run_lib.ConfigError, match="inner.learning_rate"):
    run_lib.train_and_evaluate(config, workdir)


# ---------------------------------------------------------------------------
# Divergence: a replica forced to produce NaN.


@pytest.mark.parametrize("algorithm", ["diloco", "ddp"])
def test_nan_replica_is_dropped_and_run_finishes_finite(tmp_path, data_dir,
                                                        algorithm):
  config = smoke_config(data_dir, **{
      "train.rounds": 6, "train.eval_every": 3, "train.checkpoint_every": 0,
      "train.nonfinite_policy": "drop", "outer.name": algorithm,
      "outer.hparams": {} if algorithm == "ddp" else {"learning_rate": 0.7}})
  workdir = str(tmp_path / "run")
  summary = run_lib.train_and_evaluate(config, workdir, **nan_fault(3, 1))
  assert summary["status"] == "completed"
  assert summary["nonfinite_replicas"] == 1
  assert _finite(summary["final_eval"]["loss"])
  rows = read_rows(os.path.join(workdir, "metrics.jsonl"), "train")
  bad = {r["round"]: r["train/nonfinite_replicas"] for r in rows}
  assert bad[3] == 1 and sum(bad.values()) == 1
  assert all(_finite(r["train/loss"]) for r in rows)


@pytest.mark.slow
def test_nan_replica_under_stop_policy_exits_cleanly(tmp_path, data_dir):
  workdir = tmp_path / "run"
  proc = run_cli("tests/fault_run.py", [
      "--config=configs/smoke.py", f"--workdir={workdir}",
      f"--config.data.data_dir={data_dir}",
      "--config.train.nonfinite_policy=stop", "--config.train.keep=5"],
                 data_dir=data_dir, env={"FEDJAX_LAB_TEST_FAULT": "5,0"})
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert "round 5" in proc.stderr and "non-finite" in proc.stderr
  assert "Traceback" not in proc.stderr
  steps = sorted(int(p) for p in os.listdir(workdir / "checkpoints")
                 if p.isdigit())
  assert steps == [2, 4]  # Nothing saved from the bad round on.
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == "stopped_nonfinite"
  state = _restore_raw(str(workdir / "checkpoints"), 4)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


# ---------------------------------------------------------------------------
# Pieces.


def _reference_lrs(peak, warmup, final, decay, total, n):
  """The schedule in float64 numpy, from its definition."""
  warmup = min(warmup, total)
  span = max(total - warmup, 1)
  out = []
  for t in range(n):
    if t < warmup:
      out.append(peak * (t + 1) / warmup)
      continue
    p = min(max((t - warmup) / span, 0.0), 1.0)
    f = {"cosine": final + (1 - final) * 0.5 * (1 + np.cos(np.pi * p)),
         "linear": 1 - (1 - final) * p, "constant": 1.0}[decay]
    out.append(peak * f)
  return np.array(out)


@pytest.mark.parametrize("decay", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("warmup,total", [(4, 14), (0, 10), (1, 5), (20, 10),
                                          (3, 3)])
def test_optax_schedule_matches_the_definition(decay, warmup, total):
  inner = smoke.get_config().inner
  inner.learning_rate, inner.warmup_steps = 0.3, warmup
  inner.final_lr_fraction, inner.decay = 0.1, decay
  sched = run_lib.make_schedule(inner, total_steps=total)
  lrs = np.array([float(sched(t)) for t in range(total + 4)])
  np.testing.assert_allclose(
      lrs, _reference_lrs(0.3, warmup, 0.1, decay, total, total + 4),
      rtol=2e-6)


def test_schedule_warmup_then_cosine():
  config = smoke.get_config()
  inner = config.inner
  inner.learning_rate, inner.warmup_steps, inner.final_lr_fraction = 1.0, 4, 0.1
  sched = run_lib.make_schedule(inner, total_steps=14)
  lrs = np.array([float(sched(t)) for t in range(15)])
  np.testing.assert_allclose(lrs[:4], [0.25, 0.5, 0.75, 1.0], rtol=1e-6)
  np.testing.assert_allclose(lrs[4], 1.0, rtol=1e-6)
  np.testing.assert_allclose(lrs[9], 0.1 + 0.9 * 0.5, rtol=1e-6)  # Half-way.
  np.testing.assert_allclose(lrs[14], 0.1, rtol=1e-6)
  assert np.all(np.diff(lrs[4:]) <= 1e-7)


def test_local_replica_ids_single_process():
  import fedjax_lab  # pylint: disable=g-import-not-at-top
  loss = lambda p, b, r: ((p["w"] - b["x"].mean()) ** 2).sum()
  for mesh in (None, fedjax_lab.replica_mesh(jax.device_count())):
    engine = fedjax_lab.Engine(loss, inner_opt=optax.sgd(0.1),
                               outer="fedavg", num_replicas=16, inner_steps=1,
                               mesh=mesh)
    assert distributed.local_replica_ids(
        engine.mesh, engine.num_replicas) == list(range(16))


def test_sgd_inner_optimizer_is_heavy_ball_with_matrix_weight_decay():
  inner = smoke.get_config().inner
  inner.optimizer, inner.learning_rate, inner.momentum = "sgd", 0.1, 0.5
  inner.warmup_steps, inner.decay, inner.grad_clip = 0, "constant", 0.0
  inner.weight_decay = 0.01
  tx = run_lib.make_inner_opt(inner, total_steps=10)
  params = {"w": np.array([[1.0, -2.0]], np.float32),
            "b": np.array([3.0], np.float32)}
  grads = {"w": np.array([[0.5, 0.25]], np.float32),
           "b": np.array([-1.0], np.float32)}
  state = tx.init(params)
  # float64 reference: g' = g + wd·θ (matrices only); v ← g' + μ·v; u = −lr·v.
  p64 = {k: v.astype(np.float64) for k, v in params.items()}
  v = {k: np.zeros_like(x) for k, x in p64.items()}
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
    params = optax_apply(params, updates)
    for k in p64:
      g = grads[k] + (0.01 * p64[k] if p64[k].ndim >= 2 else 0.0)
      v[k] = g + 0.5 * v[k]
      p64[k] = p64[k] - 0.1 * v[k]
  for k in p64:
    np.testing.assert_allclose(params[k], p64[k], rtol=1e-6)


def optax_apply(params, updates):
  return {k: np.asarray(params[k]) + np.asarray(updates[k]) for k in params}
