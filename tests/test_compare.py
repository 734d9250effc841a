"""experiments/compare.py on a tiny sweep: table (md + csv) and plots."""

import csv
import math

import pytest

from _runner_util import run_cli


@pytest.mark.slow
def test_compare_tiny_sweep_writes_table_and_plots(tmp_path):
  data_dir = tmp_path / "tfds"
  workdir = tmp_path / "compare"
  proc = run_cli("compare.py", [
      "--config=configs/compare.py:smoke", "--sweep=tiny",
      f"--workdir={workdir}", f"--config.data.data_dir={data_dir}"],
                 data_dir=data_dir, timeout=240)
  assert proc.returncode == 0, proc.stderr[-3000:]
  md = (workdir / "results.md").read_text()
  assert "| arm |" in md and "ddp" in md and "diloco" in md
  # Two seeds of ddp and diloco: the seed table, on the test split.
  assert "Over seeds (test split)" in md and "| ddp | ddp |" in md
  assert "tokens per parameter" in md and "whole split" not in md  # Smoke: samples.
  with open(workdir / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert {r["algorithm"] for r in rows} == {"ddp", "diloco", "fedavg"}
  assert sorted(r["seed"] for r in rows if r["algorithm"] == "ddp") == ["0", "1"]
  by_alg = {r["algorithm"]: r for r in rows if r["seed"] == "0"}
  assert float(by_alg["ddp"]["bytes_vs_ddp"]) == 1.0
  # H = 4 for diloco: 4× less than ddp's fp32 gradient every step; fedavg H = 8.
  assert float(by_alg["diloco"]["bytes_vs_ddp"]) == pytest.approx(0.25)
  assert float(by_alg["fedavg"]["bytes_vs_ddp"]) == pytest.approx(0.125)
  # Equal token budgets.
  assert len({r["tokens"] for r in rows}) == 1
  for r in rows:
    for split in ("final_eval_loss", "final_test_loss"):
      assert math.isfinite(float(r[split]))
      assert float(r[split]) < math.log(256)
  # Simulated wall-clock: same compute, so fewer bytes is never slower.
  sim = {a: float(r["simulated_wall_s"]) for a, r in by_alg.items()}
  assert all(math.isfinite(s) and s > 0 for s in sim.values())
  assert sim["fedavg"] <= sim["diloco"] <= sim["ddp"]
  for png in ("eval_loss_vs_steps.png", "eval_loss_vs_bytes.png",
              "eval_loss_vs_simulated_wall.png"):
    data = (workdir / png).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
