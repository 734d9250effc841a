"""Regression tests for the run layer's user-facing defects.

(Over 400 lines on purpose: one regression test per user-facing defect, all
through the CLI.)

Each goes through experiments/run.py (or compare.py) where the defect was
found there; in process where the entry point adds nothing.
"""

import json
import os
import signal
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from _runner_util import popen_cli  # Puts the repo root on sys.path.
from _runner_util import run_cli  # Puts the repo root on sys.path.
from configs import smoke
from fedjax_lab import checkpoint
from fedjax_lab import run as run_lib
from fedjax_lab.metrics import read_rows

SMOKE = "--config=configs/smoke.py"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  from fedjax_lab import data  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp("tfds")
  data.prepare_stdlib_corpus(data_dir=str(path), subset="small")
  return path


def cli(data_dir, workdir, *args, script="run.py", **kwargs):
  return run_cli(script, [SMOKE, f"--workdir={workdir}",
                          f"--config.data.data_dir={data_dir}",
                          "--config.train.tensorboard=False", *args],
                 data_dir=data_dir, **kwargs)


def error_line(proc):
  lines = [s for s in proc.stderr.splitlines() if s.startswith("error:")]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return lines[0]


def strict_json(text):
  """json.loads that refuses NaN/Infinity (what other readers refuse)."""
  def refuse(constant):
    raise ValueError(f"not strict JSON: {constant}")
  return json.loads(text, parse_constant=refuse)


def smoke_config(data_dir, **overrides):
  config = smoke.get_config()
  config.data.data_dir = str(data_dir)
  config.train.tensorboard = False
  return run_lib.apply_overrides(config, overrides)


def restore_raw(ckpt_dir, step):
  with ocp.CheckpointManager(str(ckpt_dir)) as mgr:
    out = mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))
  return jax.tree.leaves(out["state"])


# 1. Non-finite values are refused by name.


@pytest.mark.slow
@pytest.mark.parametrize("override,field", [
    ("inner.learning_rate=nan", "inner.learning_rate"),
    ("inner.b2=inf", "inner.b2"),
    ("model.dropout=nan", "model.dropout"),
    ("outer.hparams.learning_rate=inf", "outer.hparams.learning_rate"),
])
def test_nonfinite_values_exit_2_naming_the_field(tmp_path, data_dir, override,
                                                  field):
  workdir = tmp_path / "run"
  proc = cli(data_dir, workdir, f"--config.{override}")
  assert proc.returncode == 2
  assert field in error_line(proc) and "finite" in error_line(proc)
  # One line: the config is checked before JAX's runtime starts (and logs).
  assert proc.stderr.strip().splitlines() == [error_line(proc)]
  assert not workdir.exists()


# 2 and 3. A run in which no replica contributes ends 'diverged', exit 3, with
# strict JSON everywhere and no loss for empty rounds.


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["drop", "stop"])
def test_run_with_no_participant_ends_diverged_with_valid_json(
    tmp_path, data_dir, policy):
  workdir = tmp_path / "run"
  proc = cli(data_dir, workdir, "--config.inner.learning_rate=1000",
             f"--config.train.nonfinite_policy={policy}")
  assert proc.returncode == 3, proc.stderr[-3000:]
  line = error_line(proc)
  summary = strict_json((workdir / "summary.json").read_text())
  assert summary["status"] in ("diverged", "stopped_nonfinite")
  assert summary["status"] in line
  if policy == "drop":
    assert summary["status"] == "diverged"
    assert summary["empty_rounds"] == 3  # train.max_empty_rounds.
  rows = [strict_json(line) for line in
          (workdir / "metrics.jsonl").read_text().splitlines()]
  for row in rows:
    if row.get("train/participants") == 0:
      assert row["train/loss"] is None  # Not a perfect loss of 0.
  assert summary["final_train_loss"] != 0.0


def test_nonfinite_eval_is_diverged_under_drop(tmp_path, data_dir,
                                                monkeypatch):
  from fedjax_lab.run import loop  # pylint: disable=g-import-not-at-top

  class NaNEvaluator:
    def __init__(self, run):
      del run

    def __call__(self, state, final=False):
      return {"eval": {"loss": float("nan"), "accuracy": 0.0}}

    def describe(self):
      return {"periodic": "a NaN", "final": "a NaN"}

  monkeypatch.setattr(loop, "Evaluator", NaNEvaluator)
  config = smoke_config(data_dir, **{"train.rounds": 4, "train.eval_every": 2,
                                     "train.checkpoint_every": 1})
  workdir = tmp_path / "run"
  with pytest.raises(run_lib.Diverged, match="eval loss"):
    run_lib.train_and_evaluate(config, str(workdir))
  summary = strict_json((workdir / "summary.json").read_text())
  assert summary["status"] == "diverged" and summary["rounds"] == 2
  assert summary["final_eval"]["loss"] is None
  # Nothing saved from the diverged evaluation on.
  assert max(int(p) for p in os.listdir(workdir / "checkpoints")
             if p.isdigit()) == 1


def test_metrics_encoding_is_strict_json(tmp_path):
  from fedjax_lab import metrics  # pylint: disable=g-import-not-at-top
  writer = metrics.MetricsWriter(str(tmp_path), tensorboard=False)
  writer.write({"round": 1, "a": float("nan"), "b": float("inf"),
                "c": np.array([1.0, -np.inf]), "d": np.float32(2.5)})
  writer.close()
  metrics.write_json(str(tmp_path / "s.json"), {"x": float("nan"),
                                                "y": [float("-inf"), 1]})
  row = strict_json((tmp_path / "metrics.jsonl").read_text())
  assert row == {"round": 1, "a": None, "b": None, "c": [1.0, None], "d": 2.5}
  assert strict_json((tmp_path / "s.json").read_text()) == {
      "x": None, "y": [None, 1]}


# 4. User mistakes about files: one line, exit 2, nothing written.


@pytest.mark.slow
def test_missing_config_file_exits_2(tmp_path, data_dir):
  proc = run_cli("run.py", ["--config=configs/nope.py",
                            f"--workdir={tmp_path / 'run'}"], data_dir=data_dir)
  assert proc.returncode == 2 and "--config" in error_line(proc)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs procfs")
def test_workdir_the_filesystem_refuses_exits_2(tmp_path, data_dir):
  """Under /proc nothing can be made, even by root (whom os.access passes)."""
  proc = run_cli("run.py", [SMOKE, "--workdir=/proc/fedjax_lab_no/run"],
                 data_dir=data_dir)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "--workdir" in error_line(proc) and "Traceback" not in proc.stderr
  assert not os.path.exists("/proc/fedjax_lab_no")


def test_workdir_probe_leaves_another_processs_directory(tmp_path,
                                                         monkeypatch):
  """The processes of a multi-process run probe the same new workdir at
  once: a directory another one makes between this probe's steps is taken
  as proof (no 'File exists' error) and left in place; what this probe made
  itself is removed."""
  from fedjax_lab.run import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  full = tmp_path / "a" / "b"
  real_mkdir = os.mkdir

  def racing_mkdir(d, *args):  # The other process wins the race for a/b.
    if os.fspath(d) == os.fspath(full):
      real_mkdir(d, *args)
    real_mkdir(d, *args)

  monkeypatch.setattr(os, "mkdir", racing_mkdir)
  workdir_lib.check_path("--workdir", str(full), write=True)
  monkeypatch.undo()
  assert full.is_dir()  # The other process's: kept.
  workdir_lib.check_path("--workdir", str(tmp_path / "c" / "d"), write=True)
  assert not (tmp_path / "c").exists()  # This probe's own: removed.


@pytest.mark.slow
def test_bad_workdirs_and_data_dirs_exit_2_before_loading(tmp_path, data_dir):
  a_file = tmp_path / "file"
  a_file.write_text("keep me")
  cases = [
      ([f"--workdir={a_file}"], "--workdir"),
      ([f"--workdir={a_file}/sub"], "--workdir"),
      ([f"--workdir={tmp_path / ('a' * 300)}"], "--workdir"),
      ([f"--config.data.data_dir={a_file}"], "data.data_dir"),
      (["--config.data.dataset=tiny_shakespeare",
        f"--config.data.data_dir={tmp_path / 'empty'}"], "data.dataset"),
      (["--config.train.seed=5000000000"], "train.seed"),
      (["--config.inner.steps=1000000000"], "inner.steps"),
      (["--config.model.d_model=1048576", "--config.model.num_heads=2"],
       "model.d_model"),
  ]
  for args, field in cases:
    workdir = tmp_path / "run"
    full = [SMOKE, f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
            *args]
    proc = run_cli("run.py", full, data_dir=data_dir)
    assert proc.returncode == 2, (args, proc.stderr[-2000:])
    assert field in error_line(proc), (args, error_line(proc))
    assert not workdir.exists(), args
  assert a_file.read_text() == "keep me"


def test_unwritable_workdir_and_data_dir(tmp_path, data_dir):
  """A workdir or data dir that cannot be made: a path under a regular file
  (ENOTDIR holds for root too, which ignores permission bits). Where the
  test does not run as root, a directory without write permission as well."""
  from fedjax_lab.run import build  # pylint: disable=g-import-not-at-top
  a_file = tmp_path / "a_file"
  a_file.write_text("keep me")
  config = smoke_config(data_dir)
  with pytest.raises(run_lib.ConfigError, match="--workdir"):
    build.build_run(config, str(a_file / "run"))
  config.data.data_dir = str(a_file / "tfds")
  with pytest.raises(run_lib.ConfigError, match="data.data_dir"):
    build.build_run(config, str(tmp_path / "run"))
  assert a_file.read_text() == "keep me"
  assert not (tmp_path / "run").exists()
  if os.geteuid() != 0:  # Permission bits bind everyone else.
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    config = smoke_config(data_dir)
    with pytest.raises(run_lib.ConfigError, match="--workdir"):
      build.build_run(config, str(locked / "run"))
    config.data.data_dir = str(locked)
    with pytest.raises(run_lib.ConfigError, match="data.data_dir"):
      build.build_run(config, str(tmp_path / "run"))


# 5. One run per workdir.


@pytest.mark.slow
def test_second_run_on_a_workdir_is_refused_naming_the_holder(tmp_path,
                                                               data_dir):
  workdir = tmp_path / "run"
  args = [SMOKE, f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
          "--config.train.rounds=100000", "--config.train.checkpoint_every=2",
          "--config.train.tensorboard=False"]
  first = popen_cli("run.py", args, data_dir=data_dir)
  try:
    deadline = time.time() + 150
    while time.time() < deadline and first.poll() is None:
      if (workdir / "metrics.jsonl").exists() and (
          workdir / "metrics.jsonl").read_text().count("\n") >= 2:
        break
      time.sleep(0.05)
    assert first.poll() is None
    second = run_cli("run.py", args, data_dir=data_dir)
    assert second.returncode == 2
    line = error_line(second)
    assert "in use" in line and f"pid {first.pid}" in line
    assert first.poll() is None  # The first run goes on.
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
  rounds = [r["round"] for r in read_rows(str(workdir / "metrics.jsonl"),
                                          "train")]
  assert rounds == list(range(1, len(rounds) + 1))


# 6. train.rounds changed on resume keeps the schedule's horizon.


@pytest.mark.slow
def test_resume_with_more_rounds_keeps_the_schedule(tmp_path, data_dir):
  common = ["--config.train.checkpoint_every=4", "--config.train.eval_every=0"]
  resumed = tmp_path / "resumed"
  for rounds in (8, 12):
    proc = cli(data_dir, resumed, f"--config.train.rounds={rounds}", *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
  # The same trajectory, said explicitly: decay over the first run's steps.
  explicit = tmp_path / "explicit"
  h = smoke.get_config().inner.steps
  proc = cli(data_dir, explicit, "--config.train.rounds=12",
             f"--config.inner.schedule_steps={8 * h}", *common)
  assert proc.returncode == 0, proc.stderr[-3000:]
  fresh = tmp_path / "fresh"  # A 12-round schedule: another trajectory.
  proc = cli(data_dir, fresh, "--config.train.rounds=12", *common)
  assert proc.returncode == 0, proc.stderr[-3000:]
  a = restore_raw(resumed / "checkpoints", 12)
  b = restore_raw(explicit / "checkpoints", 12)
  c = restore_raw(fresh / "checkpoints", 12)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert any(not np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(a, c))
  summary = strict_json((resumed / "summary.json").read_text())
  assert summary["schedule_steps"] == 8 * h and summary["resumed_from"] == 8


# 7. The README's compressor example.


@pytest.mark.slow
def test_comm_hparams_ef_override_runs(tmp_path, data_dir):
  workdir = tmp_path / "run"
  proc = cli(data_dir, workdir, "--config.comm.compressor=int8",
             "--config.comm.hparams.ef=True", "--config.train.rounds=2",
             "--config.train.checkpoint_every=0")
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = strict_json((workdir / "summary.json").read_text())
  assert summary["config"]["comm"]["hparams"]["ef"] is True
  assert summary["status"] == "completed"


# 8. Messages.


@pytest.mark.slow
@pytest.mark.parametrize("override,expected", [
    ("train.roundz=3", ["train.roundz: unknown field", "rounds"]),
    ("foo.bar=1", ["foo: unknown field", "train"]),
    ("outer.hparams.lr=0.1", ["outer.hparams.lr", "learning_rate",
                              "--list_algorithms"]),
    ("outer.hparams.learning_rate=" + "9" * 100_000, ["outer.hparams"]),
    ("data.dataset=" + "x" * 100_000, ["data.dataset"]),
])
def test_override_mistakes_read_as_one_short_line(tmp_path, data_dir, override,
                                                  expected):
  workdir = tmp_path / "run"
  proc = cli(data_dir, workdir, f"--config.{override}")
  assert proc.returncode == 2
  line = error_line(proc)
  for text in expected:
    assert text in line, line
  assert "\\" not in line and len(line) < 1000, line[:2000]
  assert not workdir.exists()


def test_long_causes_keep_their_end():
  text = "checkpoint failed: " + "x" * 5000 + " because the file is truncated"
  out = checkpoint.short(text)
  assert out.startswith("checkpoint failed") and out.endswith("truncated")
  assert len(out) < 600 and "\n" not in out


# 9 and 8. Bit rot in a checkpoint is found; the warning shows the cause.


@pytest.mark.slow
def test_bit_flipped_checkpoint_falls_back(tmp_path, data_dir, caplog):
  workdir = tmp_path / "run"
  config = smoke_config(data_dir, **{"train.rounds": 4, "train.eval_every": 0})
  run_lib.train_and_evaluate(config, str(workdir))
  step_dir = workdir / "checkpoints" / "4"
  files = [p for p in step_dir.rglob("*") if p.is_file()]
  largest = max(files, key=lambda p: p.stat().st_size)
  data = bytearray(largest.read_bytes())
  mid = len(data) // 2
  for i in range(mid, min(mid + 64, len(data))):
    data[i] ^= 0xFF
  largest.write_bytes(bytes(data))
  config.train.rounds = 6
  summary = run_lib.train_and_evaluate(config, str(workdir))
  assert summary["resumed_from"] == 2 and summary["rounds"] == 6
  assert os.listdir(workdir / "corrupt_checkpoints")
  assert "SHA-256" in caplog.text


# 10. A truncated metrics line is rewritten from the checkpoint.


def test_truncated_metrics_line_is_rewritten_on_resume(tmp_path, data_dir):
  workdir = tmp_path / "run"
  config = smoke_config(data_dir, **{"train.rounds": 4, "train.eval_every": 2,
                                     "train.log_every": 1})
  run_lib.train_and_evaluate(config, str(workdir))
  path = workdir / "metrics.jsonl"
  complete = read_rows(str(path))
  text = path.read_text()
  path.write_text(text[:len(text) - len(text.splitlines()[-1]) // 2 - 1])
  config.train.rounds = 6
  run_lib.train_and_evaluate(config, str(workdir))
  rows = read_rows(str(path))
  assert rows[:len(complete)] == complete  # The cut row is back.
  assert [r["round"] for r in rows if r["kind"] == "train"] == list(range(1, 7))
  assert [r["round"] for r in rows if r["kind"] == "eval"] == [2, 4, 6]


# 11. compare.py refuses a base override every arm sets.


@pytest.mark.slow
def test_compare_refuses_a_base_override_every_arm_sets(tmp_path, data_dir):
  workdir = tmp_path / "compare"
  proc = run_cli("compare.py", ["--config=configs/compare.py:smoke",
                                "--sweep=tiny", f"--workdir={workdir}",
                                f"--config.data.data_dir={data_dir}",
                                "--config.outer.name=fedmagic"],
                 data_dir=data_dir)
  assert proc.returncode == 2
  assert "outer.name" in error_line(proc)
  assert not workdir.exists()


def test_check_base_overrides():
  from fedjax_lab import run  # pylint: disable=g-import-not-at-top
  arms = [{"name": "a", "overrides": {"outer.name": "x", "outer.hparams": {}}},
          {"name": "b", "overrides": {"outer.name": "y", "outer.hparams": {}}}]
  run.check_base_overrides(["inner.learning_rate"], arms, "s")
  for field in ("outer.name", "outer.hparams.learning_rate"):
    with pytest.raises(run.ConfigError, match=field.replace(".", r"\.")):
      run.check_base_overrides([field], arms, "s")


# 12. Progress from Python, --print_config and --list_algorithms.


def test_progress_shows_when_called_from_python(tmp_path, data_dir, capsys):
  config = smoke_config(data_dir, **{"train.rounds": 2,
                                     "train.checkpoint_every": 0})
  run_lib.train_and_evaluate(config, str(tmp_path / "run"))
  out = capsys.readouterr().out
  assert "round 2/2" in out and "ETA" in out and "done:" in out


@pytest.mark.slow
def test_print_config_and_list_algorithms(tmp_path, data_dir):
  proc = run_cli("run.py", [SMOKE, "--print_config",
                            "--config.inner.learning_rate=0.01"],
                 data_dir=data_dir)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "learning_rate: 0.01" in proc.stdout and "replica_mode" in proc.stdout
  proc = run_cli("run.py", ["--list_algorithms"], data_dir=data_dir)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "diloco: learning_rate=0.7" in proc.stdout
  assert "int8:" in proc.stdout and "ef=False" in proc.stdout
  proc = run_cli("run.py", [SMOKE, "--help"], data_dir=data_dir)
  out = proc.stdout + proc.stderr
  assert "--print_config" in out and "--list_algorithms" in out
  assert "--config.inner.learning_rate=0.003" in out
  assert "--config.comm.hparams.ef=None" in out


# 13. A mesh on a single device compiles the round once.


@pytest.mark.slow
def test_single_device_mesh_compiles_once(tmp_path, data_dir):
  workdir = tmp_path / "run"
  proc = cli(data_dir, workdir, "--config.mesh.num_devices=-1",
             "--config.train.rounds=4", "--config.train.checkpoint_every=0",
             devices=1)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = strict_json((workdir / "summary.json").read_text())
  assert summary["devices"]["mesh_devices"] == 1
  assert summary["compiled_rounds"] == 1


def test_workdirs_of_the_previous_schema_still_resume(tmp_path):
  from fedjax_lab.run import workdir  # pylint: disable=g-import-not-at-top
  config = smoke.get_config()
  old = json.loads(config.to_json())
  del old["inner"]["schedule_steps"], old["train"]["max_empty_rounds"]
  del old["engine"]
  old["train"]["fault"] = {"round": 0, "replica": 0}
  (tmp_path / "config.json").write_text(json.dumps(old))
  assert workdir.check_resumable(str(tmp_path), config) is not None
  old["inner"]["learning_rate"] = 1.0
  (tmp_path / "config.json").write_text(json.dumps(old))
  with pytest.raises(run_lib.ConfigError, match="inner.learning_rate"):
    workdir.check_resumable(str(tmp_path), config)
