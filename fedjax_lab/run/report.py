"""The comparison report: a results table (markdown + CSV) and plots (PNG).

Reads each arm's summary (passed in) and its `metrics.jsonl` eval rows, and
writes into the comparison's directory:

* results.md / results.csv: per run, the final test loss (the reported
  number: test split, whole split), the final validation loss (what tuning
  chose by), perplexity, bytes each replica sent (payload and ring
  all-reduce), the ratio to the data-parallel arm's bytes, tokens, wall time
  and simulated time (hours); when an arm's config sets
  `train.target_eval_loss`, the rounds and the simulated time to target (the
  first eval whose validation loss is <= it; '—' when never reached);
  with several seeds per setting (an arm's 'group'), a first table of test
  loss mean ± std and min–max over seeds with the setting's hyperparameters;
* eval_loss_vs_steps.png, eval_loss_vs_bytes.png and
  eval_loss_vs_simulated_wall.png (matplotlib Agg): the test loss during
  training (a fixed stratified sample; validation when a run has no test
  split), one line per setting: the seed mean, with a min–max band.

The simulated wall-clock is what each run recorded (fedjax_lab.clock: every
metrics row's `sim_seconds`, summary.json's `sim_seconds` and `clock`): each
replica's steps at its own device's speed (its batch's FLOPs), the messages
its algorithm sends (every step or once a round, per fragment) over the
profile's network, and the sync policy. The report header states the profile.
The data-parallel reference of `bytes_vs_ddp` is the run that recorded that it
syncs every step with a dense all-reduce (`syncs_every_step`, `collectives`).

The tables are made in `fedjax_lab.run.tables`, the plots in
`fedjax_lab.run.plots`; their names are importable from here.
"""

import csv
import os
from typing import Dict

from fedjax_lab.run.plots import PLOT_BYTES  # noqa: F401 (re-exported)
from fedjax_lab.run.plots import plot_curves
from fedjax_lab.run.plots import PLOT_SIM  # noqa: F401 (re-exported)
from fedjax_lab.run.plots import PLOT_STEPS  # noqa: F401 (re-exported)
from fedjax_lab.run.plots import seed_curves  # noqa: F401 (re-exported)
from fedjax_lab.run.tables import group_rows  # noqa: F401 (re-exported)
from fedjax_lab.run.tables import is_data_parallel  # noqa: F401 (re-exported)
from fedjax_lab.run.tables import markdown_table
from fedjax_lab.run.tables import profile_text
from fedjax_lab.run.tables import rounds_to_target  # noqa: F401 (re-exported)
from fedjax_lab.run.tables import rows_of
from fedjax_lab.run.tables import seed_stats  # noqa: F401 (re-exported)
from fedjax_lab.run.tables import seed_table
from fedjax_lab.run.tables import TABLE_CSV
from fedjax_lab.run.tables import TABLE_MD
from fedjax_lab.run.tables import time_to_target  # noqa: F401 (re-exported)


def _header(results, rows) -> str:
  """The budget and the evaluation protocol, from the runs themselves."""
  tpp = [r["tokens_per_param"] for r in rows if r["tokens_per_param"]]
  tokens = [r["tokens"] for r in rows if r["tokens"]]
  protocol = next((r.get("eval_protocol") for r in results
                   if r.get("eval_protocol")), {}) or {}
  lines = []
  if tokens:
    lines.append(f"Budget: {max(tokens):,} training tokens per run"
                 + (f", {max(tpp):.3g} tokens per parameter" if tpp else "")
                 + ".")
  if protocol.get("final"):
    lines.append(f"Final numbers: {protocol['final']}.")
  if protocol.get("periodic"):
    lines.append(f"Curves: {protocol['periodic']}.")
  profile = profile_text(results)
  if profile:
    lines.append(profile)
  return "\n".join(lines) + ("\n\n" if lines else "")


def write_report(results, workdir: str) -> Dict[str, str]:
  """Writes the table (md + csv) and the plots; returns their paths."""
  rows = rows_of(results, workdir)
  md = _header(results, rows)
  seeds = seed_table(rows)
  if seeds:
    md += "Over seeds (test split):\n\n" + seeds + "\nEvery run:\n\n"
  md += markdown_table(rows)
  with open(os.path.join(workdir, TABLE_MD), "w") as f:
    f.write(md)
  with open(os.path.join(workdir, TABLE_CSV), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  plots = plot_curves(results, workdir)
  return {"markdown": os.path.join(workdir, TABLE_MD),
          "csv": os.path.join(workdir, TABLE_CSV),
          "plots": plots}
