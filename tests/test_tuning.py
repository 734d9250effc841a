"""Tuning picks on validation only; seed statistics and seed curves are right
(numbers computed by hand here)."""

import json
import math
import os

import numpy as np
import pytest

import _runner_util  # noqa: F401  Puts the repo root on sys.path.
from configs import compare as compare_config
from fedjax_lab.run import report
from fedjax_lab.run import tuning


def _result(setting, point, val, test, status="completed"):
  return {"setting": setting, "point": point, "status": status,
          "final_eval": {"loss": val}, "final_test": {"loss": test}}


def test_choose_picks_by_validation_not_test():
  # 'planted' wins on test by far but loses on validation: not chosen.
  results = [
      _result("diloco", {"inner.learning_rate": 0.01}, 2.00, 1.50),
      _result("diloco", {"inner.learning_rate": 0.03}, 2.10, 0.10),  # planted
      _result("diloco", {"inner.learning_rate": 0.1}, 1.99, 2.50),
      _result("diloco", {"inner.learning_rate": 1.0}, float("nan"), 0.0,
              status="diverged"),
      _result("ddp", {"inner.learning_rate": 0.01}, 1.7, 1.8),
      _result("ddp", {"inner.learning_rate": 0.03}, 1.7, 0.9),  # a tie: first wins
  ]
  chosen = tuning.choose(results)
  assert chosen["diloco"]["point"] == {"inner.learning_rate": 0.1}
  assert chosen["diloco"]["validation_loss"] == 1.99
  assert chosen["ddp"]["point"] == {"inner.learning_rate": 0.01}
  grid = chosen["diloco"]["grid"]
  assert [g["validation_loss"] for g in grid] == [2.00, 2.10, 1.99, None]
  assert "test" not in json.dumps(chosen)  # Test numbers are never kept.


def test_choose_ignores_test_entirely():
  """Changing every test number changes nothing."""
  base = [_result("a", {"x": i}, v, 0.0) for i, v in enumerate([3.0, 1.0, 2.0])]
  shuffled = [_result("a", {"x": i}, v, t) for (i, v), t in
              zip(enumerate([3.0, 1.0, 2.0]), [-5.0, 99.0, -7.0])]
  assert tuning.choose(base) == tuning.choose(shuffled)


def test_save_load_and_tuned_arm(tmp_path):
  path = str(tmp_path / "tuned.json")
  with pytest.raises(ValueError, match="tuned.json"):
    tuning.load(path)
  chosen = tuning.choose([_result("diloco", {
      "inner.learning_rate": 0.01, "outer.hparams.learning_rate": 0.5},
                                  1.0, 1.0)])
  tuning.save(path, chosen, protocol={"selected_on": "validation"})
  assert tuning.load(path)["settings"]["diloco"]["point"][
      "outer.hparams.learning_rate"] == 0.5
  assert compare_config.tuned("diloco", path) == {
      "inner.learning_rate": 0.01, "outer.hparams.learning_rate": 0.5}
  with pytest.raises(ValueError, match="fedadam"):
    compare_config.tuned("fedadam", path)
  md = tuning.markdown(chosen)
  assert "**yes**" in md and "outer.hparams.learning_rate=0.5" in md


def test_after_sweep_writes_the_choice(tmp_path):
  results = [dict(_result("ddp", {"inner.learning_rate": lr}, v, 0.0),
                  steps=600)
             for lr, v in ((0.004, 2.0), (0.01, 1.5), (0.025, 1.6))]
  compare_config.after_sweep("tiny_tune", None, results, str(tmp_path))
  saved = tuning.load(str(tmp_path / "tuned.json"))
  assert saved["settings"]["ddp"]["point"] == {"inner.learning_rate": 0.01}
  assert "validation" in saved["protocol"]["selected_on"]
  assert (tmp_path / "tuning.md").exists()
  compare_config.after_sweep("default", None, results, str(tmp_path / "x"))
  assert not (tmp_path / "x").exists()  # Other sweeps choose nothing.


def test_committed_tuning_covers_every_main_arm():
  settings = tuning.load(compare_config.TUNED_FILE)["settings"]
  assert set(settings) == set(compare_config.MAIN_ARMS)
  for key, grid in compare_config.TUNE_GRID.items():
    point = settings[key]["point"]
    assert set(point) == set(grid)
    assert all(point[f] in values for f, values in grid.items())


def test_seed_stats_by_hand():
  s = report.seed_stats([1.0, 2.0, 4.0, None, float("nan")])
  assert s["n"] == 3 and s["mean"] == pytest.approx(7 / 3)
  # Deviations -4/3, -1/3, 5/3: squares sum to 42/9, over n - 1 = 2.
  assert s["std"] == pytest.approx(math.sqrt(21 / 9))
  assert (s["min"], s["max"]) == (1.0, 4.0)
  assert report.seed_stats([2.5]) == {"n": 1, "mean": 2.5, "std": 0.0,
                                      "min": 2.5, "max": 2.5}
  assert report.seed_stats([])["mean"] is None


def _row(group, seed, test, val, status="completed"):
  return {"group": group, "algorithm": group, "num_replicas": 4,
          "inner_steps": 25, "inner_lr": 0.01, "outer_hparams": "",
          "seed": seed, "status": status, "final_test_loss": test,
          "final_eval_loss": val, "payload_bytes": 1.0, "bytes_vs_ddp": 1.0,
          "tokens_per_param": 40.0}


def test_group_rows_and_seed_table():
  rows = [_row("b", 0, 2.0, 2.1), _row("b", 1, 2.2, 2.3),
          _row("a", 0, 1.0, 1.1), _row("a", 1, 1.4, 1.2),
          _row("a", 2, None, None, status="diverged")]
  groups = report.group_rows(rows)
  assert [g["group"] for g in groups] == ["a", "b"]  # Best test mean first.
  a = groups[0]
  assert a["seeds"] == [0, 1, 2] and a["failed"] == [2]
  assert a["test"]["mean"] == pytest.approx(1.2)
  assert a["test"]["std"] == pytest.approx(math.sqrt(0.08))
  assert a["validation"]["mean"] == pytest.approx(1.15)
  table = report.seed_table(rows)
  assert "1.2000 ± 0.2828" in table and "1.0000–1.4000" in table
  assert "3 (1 failed)" in table
  assert report.seed_table([_row("a", 0, 1.0, 1.0)]) is None


def test_seed_curves_mean_and_band(tmp_path):
  results = []
  for seed, losses in ((0, [3.0, 2.0, 1.0]), (1, [5.0, 2.5, 2.0])):
    name = f"x_s{seed}"
    os.makedirs(tmp_path / name)
    with open(tmp_path / name / "metrics.jsonl", "w") as f:
      for r, loss in enumerate(losses, 1):
        f.write(json.dumps({"kind": "eval", "round": r, "step": 10 * r,
                            "payload_bytes": 100.0 * r, "eval/loss": 9.0,
                            "test/loss": loss}) + "\n")
    results.append({"name": name, "group": "x"})
  c = report.seed_curves(results, str(tmp_path))["x"]
  assert c["seeds"] == 2 and c["key"] == "test/loss"
  np.testing.assert_allclose(c["mean"], [4.0, 2.25, 1.5])
  np.testing.assert_allclose(c["min"], [3.0, 2.0, 1.0])
  np.testing.assert_allclose(c["max"], [5.0, 2.5, 2.0])
  np.testing.assert_allclose(c["payload_bytes"], [100.0, 200.0, 300.0])
