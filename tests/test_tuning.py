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
  main = {k for k in settings if "/" not in k}
  assert main == set(compare_config.MAIN_ARMS)
  others = {k.split("/")[0] for k in settings if "/" in k}
  assert others <= set(compare_config.SETTINGS) - {"main"}
  for setting in others:  # A tuned setting has every main arm.
    assert {k for k in settings if k.startswith(setting + "/")} == {
        f"{setting}/{k}" for k in compare_config.MAIN_ARMS}
  for name, c in settings.items():
    grid = compare_config.TUNE_GRID[name.split("/")[-1]]
    point = c["point"]
    assert set(point) == set(grid)
    axes = compare_config.axes_for(name)
    for f, values in grid.items():  # On the grid, or widened within bounds.
      assert point[f] in values or (
          len(values) > 1 and axes[f].contains(point[f])), (name, f)
    assert "edge" not in c.get("where", "")


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


# ---- Widening a grid whose best point is on an edge (no training: the
# evaluation is injected, a function of the point). ----

AXES = {"inner.learning_rate": tuning.Axis(1e-4, 1.0),
        "outer.hparams.beta": tuning.Axis(0.01, 0.999, "log1m")}
GRID = {"inner.learning_rate": (4e-3, 1e-2, 2.5e-2),
        "outer.hparams.beta": (0.5, 0.7, 0.9)}


def _objective(lr_opt, beta_opt):
  """A bowl in (log lr, log(1 − β)) with its minimum at the given point."""
  def loss(point):
    return (1.0 + (math.log(point["inner.learning_rate"] / lr_opt)) ** 2
            + (math.log1p(-point["outer.hparams.beta"])
               - math.log1p(-beta_opt)) ** 2)
  return loss


def _evaluator(loss, calls=None, test=lambda p: 0.0):
  def evaluate(requests):
    out = []
    for setting, point in requests:
      if calls is not None:
        calls.append((setting, json.dumps(point, sort_keys=True)))
      out.append(_result(setting, point, loss(point), test(point)))
    return out
  return evaluate


def _bracketed(chosen, field, results):
  """The chosen value's neighbours along `field`, on its line, were run."""
  best = chosen["point"]
  line = sorted(r["point"][field] for r in results
                if all(r["point"][f] == v for f, v in best.items() if f != field))
  i = line.index(best[field])
  return 0 < i < len(line) - 1


def test_widen_walks_to_an_off_grid_optimum():
  # Optimum at lr 3e-4 (below the grid's 4e-3) and β 0.99 (above its 0.9).
  results, chosen = tuning.tune({"a": GRID}, _evaluator(_objective(3e-4, 0.99)),
                                lambda s: AXES, max_expansions=10)
  c = chosen["a"]
  assert c["where"] == "interior"
  assert c["edges"] == {"inner.learning_rate": "interior",
                        "outer.hparams.beta": "interior"}
  lr, beta = c["point"]["inner.learning_rate"], c["point"]["outer.hparams.beta"]
  # Within one step of the grid's ratio (2.5 in lr; 3 in 1 − β) of the optimum.
  assert 3e-4 / 2.5 < lr < 3e-4 * 2.5
  assert 0.01 / 3 < 1 - beta < 0.01 * 3
  assert _bracketed(c, "inner.learning_rate", results)
  assert _bracketed(c, "outer.hparams.beta", results)
  # Log-spaced with the grid's own ratio, rounded to 3 digits.
  lrs = sorted({r["point"]["inner.learning_rate"] for r in results})
  assert lrs[:5] == [0.000102, 0.000256, 0.00064, 0.0016, 0.004]
  # Every point run once; the grid's 9 first.
  keys = [json.dumps(r["point"], sort_keys=True) for r in results]
  assert len(keys) == len(set(keys))
  assert [r["point"] for r in results[:9]] == tuning.points_of(GRID)
  md = tuning.markdown(chosen)
  assert "| interior |" in md and "edge" not in md


def test_widen_stops_at_the_stated_bound():
  # Optimum beyond both bounds: lr 1e-6 < 1e-4, β 0.99999 > 0.999.
  results, chosen = tuning.tune({"a": GRID},
                                _evaluator(_objective(1e-6, 0.99999)),
                                lambda s: AXES, max_expansions=20)
  c = chosen["a"]
  assert c["point"] == {"inner.learning_rate": 1e-4, "outer.hparams.beta": 0.999}
  assert c["edges"]["inner.learning_rate"] == (
      "at bound (inner.learning_rate = low bound 0.0001)")
  assert c["edges"]["outer.hparams.beta"] == (
      "at bound (outer.hparams.beta = high bound 0.999)")
  assert c["where"].startswith("at bound")
  for r in results:  # Never outside the bounds.
    assert AXES["inner.learning_rate"].contains(r["point"]["inner.learning_rate"])
    assert AXES["outer.hparams.beta"].contains(r["point"]["outer.hparams.beta"])
  assert "edge" not in tuning.markdown(chosen)


def test_widen_respects_k():
  far = _objective(1e-6, 0.5)
  results, chosen = tuning.tune({"a": GRID}, _evaluator(far), lambda s: AXES,
                                max_expansions=2)
  lrs = {r["point"]["inner.learning_rate"] for r in results}
  assert len(lrs - set(GRID["inner.learning_rate"])) == 2  # K values added.
  assert chosen["a"]["point"]["inner.learning_rate"] == 0.00064
  assert chosen["a"]["edges"]["inner.learning_rate"] == (
      "at bound (K = 2 expansions)")
  # K = 0 is the plain grid: 9 runs, the same choice as `choose`.
  results, chosen = tuning.tune({"a": GRID}, _evaluator(far), lambda s: AXES,
                                max_expansions=0)
  assert len(results) == 9
  assert chosen["a"]["point"] == tuning.choose(results)["a"]["point"]
  assert chosen["a"]["where"] == "at bound (K = 0 expansions)"


def test_widen_chooses_on_validation_only():
  """Test losses that would pull the search elsewhere change nothing."""
  loss = _objective(3e-4, 0.99)
  test_a = lambda p: 0.0
  test_b = lambda p: -100.0 * p["inner.learning_rate"]  # Best on test: large lr.
  ra, ca = tuning.tune({"a": GRID}, _evaluator(loss, test=test_a),
                       lambda s: AXES, max_expansions=10)
  rb, cb = tuning.tune({"a": GRID}, _evaluator(loss, test=test_b),
                       lambda s: AXES, max_expansions=10)
  assert [r["point"] for r in ra] == [r["point"] for r in rb]
  assert ca == cb
  assert "test" not in json.dumps(ca)


def test_widen_integer_and_fixed_fields():
  axes = {"outer.hparams.u_every": tuning.Axis(1, 48, integer=True)}
  grid = {"inner.learning_rate": (1e-2,), "outer.hparams.u_every": (1, 3, 6)}
  loss = lambda p: abs(p["outer.hparams.u_every"] - 30)
  results, chosen = tuning.tune({"d": grid},
                                _evaluator(lambda p: 1.0 + loss(p)),
                                lambda s: axes, max_expansions=5)
  us = sorted(r["point"]["outer.hparams.u_every"] for r in results)
  assert us == [1, 3, 6, 12, 24, 48]  # Ratio 2, up to the bound 48.
  assert all(isinstance(u, int) for u in us)
  assert chosen["d"]["point"]["outer.hparams.u_every"] == 24
  assert chosen["d"]["where"] == "interior"
  assert set(chosen["d"]["edges"]) == {"outer.hparams.u_every"}  # lr is fixed.
  # Best on the lowest legal value: at bound at once.
  results, chosen = tuning.tune({"d": grid}, _evaluator(
      lambda p: p["outer.hparams.u_every"]), lambda s: axes, max_expansions=5)
  assert len(results) == 3
  assert chosen["d"]["where"] == (
      "at bound (outer.hparams.u_every = low bound 1)")


class _Killed(Exception):
  pass


def test_resumed_tuning_reuses_finished_runs():
  """The search keeps no state: stopped part-way and run again over the
  same store of finished runs, it runs only what is missing and ends where
  an uninterrupted search ends."""
  loss = _objective(3e-4, 0.99)
  whole_calls = []
  whole, chosen = tuning.tune({"a": GRID}, _evaluator(loss, whole_calls),
                              lambda s: AXES, max_expansions=10)
  store, trained = {}, []

  def evaluate(requests, budget=[12]):  # noqa: B006  Dies after 12 runs.
    out = []
    for setting, point in requests:
      key = (setting, json.dumps(point, sort_keys=True))
      if key not in store:
        if budget[0] == 0:
          raise _Killed()
        budget[0] -= 1
        trained.append(key)
        store[key] = _result(setting, point, loss(point), 0.0)
      out.append(store[key])
    return out

  with pytest.raises(_Killed):
    tuning.tune({"a": GRID}, evaluate, lambda s: AXES, max_expansions=10)
  assert len(trained) == 12
  evaluate.__defaults__[0][0] = 10**6
  resumed, chosen2 = tuning.tune({"a": GRID}, evaluate, lambda s: AXES,
                                 max_expansions=10)
  assert len(trained) == len(whole_calls) == len(set(trained))  # Each once.
  assert chosen2 == chosen
  assert [r["point"] for r in resumed] == [r["point"] for r in whole]


def test_tuning_sweep_resumes_through_run_comparison(tmp_path, monkeypatch):
  """The experiments' path (configs/compare.py's expand_sweep and
  after_sweep over run_widening): training faked by a function of the
  point that writes summary.json; a second run reuses the finished arms."""
  from fedjax_lab.run import compare as compare_lib  # pylint: disable=g-import-not-at-top
  loss = _objective(1e-3, 0.5)
  trained = []

  def fake_train(cfg, workdir, budget=[10**6]):  # noqa: B006
    if budget[0] == 0:
      raise _Killed()
    budget[0] -= 1
    trained.append(workdir)
    os.makedirs(workdir, exist_ok=True)
    point = {"inner.learning_rate": cfg.inner.learning_rate,
             "outer.hparams.beta": 0.5}
    summary = {"status": "completed", "config": cfg.to_dict(),
               "rounds": cfg.train.rounds, "steps": 600,
               "final_eval": {"loss": loss(point)},
               "final_test": {"loss": -loss(point)}}
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f)
    return summary

  monkeypatch.setattr(compare_lib, "train_and_evaluate", fake_train)
  monkeypatch.setattr(report, "write_report", lambda results, workdir: {})
  base = compare_config.get_config("smoke")
  arms = compare_config.get_sweep(base, "tiny_tune_hetero")
  assert {a["setting"] for a in arms} == {"hetero/ddp", "hetero/diloco"}
  assert all(a["overrides"]["data.partition"] == "by_content" for a in arms)
  more = lambda results: compare_config.expand_sweep(
      "tiny_tune_hetero", base, results, max_expansions=3)
  fake_train.__defaults__[0][0] = 4  # Killed after 4 new runs.
  with pytest.raises(_Killed):
    compare_lib.run_widening(base, arms, str(tmp_path), more=more)
  assert len(trained) == 4
  fake_train.__defaults__[0][0] = 10**6
  results = compare_lib.run_widening(base, arms, str(tmp_path), more=more)
  assert len(trained) == len(results) == len(set(trained))  # Each run once.
  lrs = sorted({r["point"]["inner.learning_rate"] for r in results
                if r["setting"] == "hetero/ddp"})
  assert lrs[0] < 1e-3 < lrs[-1]  # Walked down past the optimum, 1e-3.
  compare_config.after_sweep("tiny_tune_hetero", base, results, str(tmp_path),
                             max_expansions=3)
  saved = tuning.load(str(tmp_path / "tuned.json"))
  assert set(saved["settings"]) == {"hetero/ddp", "hetero/diloco"}
  for c in saved["settings"].values():
    assert c["where"] == "interior"
    assert 1e-3 / 2.5 < c["point"]["inner.learning_rate"] < 1e-3 * 2.5
  assert saved["protocol"]["widening"]["max_expansions"] == 3
  md = (tmp_path / "tuning.md").read_text()
  assert "interior" in md and "edge" not in md
