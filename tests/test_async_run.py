"""clock.policy='async' end to end: a run through experiments/run.py records
its simulated clock and staleness, a killed run resumes bit-identically, and
configs async cannot run are refused naming the field (run/async_rounds.py).
"""

import json
import os

import pytest

from _runner_util import popen_cli
from _runner_util import REPO  # noqa: F401  (puts the repo root on sys.path)
from _runner_util import run_cli
from _runner_util import sigkill_when
from configs import smoke
from fedjax_lab import run as run_lib
from fedjax_lab.metrics import read_rows
from fedjax_lab.run import loop as loop_lib

# Worker 1 is half as fast as worker 0.
ASYNC = {"clock.policy": "async", "clock.speeds": (1.0, 0.5)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  from fedjax_lab import data  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp("tfds")
  data.prepare_stdlib_corpus(data_dir=str(path), subset="small")
  return path


def _argv(data_dir, workdir, overrides):
  argv = [f"--config={os.path.join(REPO, 'configs', 'smoke.py')}",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
          "--config.train.tensorboard=False"]
  return argv + [f"--config.{k}={v}" for k, v in overrides.items()]


def _rows(workdir):
  rows = read_rows(os.path.join(workdir, "metrics.jsonl"))
  return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


class _Interrupt(Exception):
  pass


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
def test_async_run_records_clock_and_staleness_and_resumes_bit_identically(
    tmp_path, data_dir, capsys, monkeypatch):
  from test_fuzz_config import run_py_in_process  # pylint: disable=g-import-not-at-top
  short = {"train.rounds": 4, "train.eval_every": 2,
           "train.checkpoint_every": 2}
  whole = tmp_path / "whole"
  flags = {**short, "clock.policy": "async", "clock.speeds": "(1.0,0.5)"}
  assert run_py_in_process(_argv(data_dir, whole, flags), monkeypatch) in (
      None, 0), capsys.readouterr().err[-2000:]
  with open(whole / "summary.json") as f:
    expected = json.load(f)
  assert expected["status"] == "completed"
  assert expected["clock"]["policy"] == "async"
  assert expected["clock"]["async_rule"] == "delayed_nesterov"
  rows = _rows(whole)
  train = [r for r in rows if r["kind"] == "train"]
  assert [r["round"] for r in train] == [1, 2, 3, 4]
  sims = [r["sim_seconds"] for r in train]
  assert sims == sorted(sims) and len(set(sims)) == 4 and sims[0] > 0
  assert expected["sim_seconds"] == sims[-1]
  # Round 1: worker 0 arrives from the model it started from (staleness 0),
  # then worker 1, whose task started one server update earlier.
  assert (train[0]["train/staleness_mean"],
          train[0]["train/staleness_max"]) == (0.5, 1), train
  assert all(r["train/staleness_max"] >= 1 for r in train), train
  assert all(r["train/task_steps"] == 8 for r in train)  # 2 tasks of H = 4.
  assert all(r["train/participants"] == 2 for r in train)
  tokens = [r["tokens"] for r in train]
  assert tokens == sorted(tokens) and expected["tokens"] == tokens[-1]

  # Killed in round 3 (after the round-2 checkpoint), then resumed.
  config = run_lib.apply_overrides(smoke.get_config(), {
      **short, **ASYNC, "data.data_dir": str(data_dir),
      "train.tensorboard": False})

  def stop_at_3(batch, r, replica_ids):
    del replica_ids
    if r == 3:
      raise _Interrupt()
    return batch

  cut = str(tmp_path / "cut")
  with pytest.raises(_Interrupt):
    loop_lib.train_and_evaluate(config, cut, batch_hook=stop_at_3)
  summary = loop_lib.train_and_evaluate(config, cut)
  assert summary["resumed_from"] == 2
  assert summary["sim_seconds"] == expected["sim_seconds"]
  assert summary["final_eval"] == expected["final_eval"]
  assert summary["tokens"] == expected["tokens"]
  assert _rows(cut) == rows


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
@pytest.mark.parametrize("overrides,field", [
    ({"outer.name": "ddp"}, "clock.policy"),  # Every-step.
    ({"comm.compressor": "int8"}, "comm.compressor"),
    ({"engine.num_fragments": "2"}, "engine.num_fragments"),
    ({"mesh.num_devices": "1"}, "mesh.num_devices"),
    ({"train.num_clients": "4"}, "clock.policy"),
    ({"clock.async_rule": "adam"}, "clock.async_rule"),
    ({"clock.async_rule": "vanilla", "clock.async_delay": "2"},
     "clock.async_delay"),
    ({"clock.straggler_prob": "0.1"}, "clock.straggler_prob"),
])
def test_bad_async_configs_exit_2_naming_the_field(
    tmp_path, data_dir, capsys, monkeypatch, overrides, field):
  from test_fuzz_config import run_py_in_process  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  argv = _argv(data_dir, workdir, {"clock.policy": "async", **overrides})
  capsys.readouterr()
  code = run_py_in_process(argv, monkeypatch)
  lines = [s for s in capsys.readouterr().err.splitlines() if s.strip()]
  assert code == 2, lines
  assert len(lines) == 1 and lines[0].startswith("error:"), lines
  assert field in lines[0], lines
  assert not workdir.exists()


def _final_checkpoints(workdir):
  ckpts = workdir / "checkpoints"
  return sorted(int(p) for p in os.listdir(ckpts) if p.isdigit()) if (
      ckpts.exists()) else []


def _written_rounds(workdir):
  """Rounds of the train rows on disk (a line being written is skipped)."""
  try:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
  except FileNotFoundError:
    return []
  out = []
  for line in lines:
    try:
      row = json.loads(line)
    except ValueError:
      continue
    if row.get("kind") == "train":
      out.append(row["round"])
  return out


@pytest.mark.slow
def test_async_run_sigkilled_mid_round_resumes_bit_identically(tmp_path,
                                                               data_dir):
  """experiments/run.py under 'async' with speeds (1, 0.5), SIGKILLed after a
  checkpoint, in a round past it (its rows and the in-flight updates since
  are lost), restarted: the same rows, clock and model as a run never
  killed."""
  rounds = 16
  flags = {"train.rounds": rounds, "train.eval_every": 8,
           "train.checkpoint_every": 4, "train.log_every": 1,
           "clock.policy": "async", "clock.speeds": "(1.0,0.5)",
           "clock.async_dylu": True}  # Unequal tasks: H and H/2 steps.
  ref = tmp_path / "ref"
  proc = run_cli("run.py", _argv(data_dir, ref, flags), data_dir=data_dir,
                 timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]

  work = tmp_path / "killed"

  def past_a_checkpoint():
    """(checkpoints, rounds written) once a round after the last final
    checkpoint has its row: the run is then inside the round after it."""
    steps, written = _final_checkpoints(work), _written_rounds(work)
    if steps and written and max(written) > steps[-1]:
      return steps, written
    return None

  with open(tmp_path / "killed.log", "w") as log:
    child = popen_cli("run.py", _argv(data_dir, work, flags),
                      data_dir=data_dir, stderr=log)
    steps, written = sigkill_when(child, past_a_checkpoint, timeout=300)
  assert steps[-1] < max(written) < rounds, (steps, written)
  assert not (work / "summary.json").exists() or json.loads(
      (work / "summary.json").read_text())["status"] != "completed"

  proc = run_cli("run.py", _argv(data_dir, work, flags), data_dir=data_dir,
                 timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((work / "summary.json").read_text())
  expected = json.loads((ref / "summary.json").read_text())
  assert summary["status"] == "completed" and summary["rounds"] == rounds
  assert summary["resumes"] == 1
  assert summary["resumed_from"] >= steps[-1] >= 4
  for key in ("sim_seconds", "final_eval", "tokens", "best_eval_loss"):
    assert summary[key] == expected[key], key
  assert summary["clock"] == expected["clock"]
  rows = _rows(work)
  assert rows == _rows(ref)
  train = [r for r in rows if r["kind"] == "train"]
  assert [r["round"] for r in train] == list(range(1, rounds + 1))
  # Tokens are the arrivals' own steps (DyLU: the slow worker's tasks are
  # half as long), in the summary as in the rows; not rounds × M·H.
  tokens_per_step = 4 * 32  # configs/smoke.py: B = 4, seq_len 32.
  steps = sum(r["train/task_steps"] for r in train)
  assert summary["tokens"] == train[-1]["tokens"] == steps * tokens_per_step
  assert steps < rounds * 2 * 4, steps  # M = 2, H = 4 without DyLU.
