"""The comparison report's plots: test loss vs steps, bytes and simulated time.

`seed_curves` gathers each setting's eval rows (the seed mean, min and max
at the rounds all its seeds evaluated); `plot_curves` draws them
(matplotlib Agg, PNG files), one line per setting with a min–max band.
"""

import os
import textwrap
from typing import Any, Dict, List

import numpy as np

from fedjax_lab.run.tables import eval_curves
from fedjax_lab.run.tables import is_data_parallel
from fedjax_lab.run.tables import profile_text

PLOT_STEPS = "eval_loss_vs_steps.png"
PLOT_BYTES = "eval_loss_vs_bytes.png"
PLOT_SIM = "eval_loss_vs_simulated_wall.png"


def seed_curves(results, workdir: str, key: str = "test/loss"
                ) -> Dict[str, Dict[str, np.ndarray]]:
  """Per setting ('group'): x values and the loss's seed mean, min and max.

  The seeds of a setting evaluate at the same rounds; rounds some seed lacks
  (a stopped run) are left out. `key` falls back to 'eval/loss' for runs
  without a test split.
  """
  group_of = {r["name"]: r.get("group") or r["name"] for r in results}
  by_group: Dict[str, List[List[Dict[str, Any]]]] = {}
  for name, ev in eval_curves(results, workdir):
    by_group.setdefault(group_of[name], []).append(ev)
  out = {}
  for group, runs in by_group.items():
    loss_key = key if all(key in row for ev in runs for row in ev) else "eval/loss"
    common = set.intersection(*[{row["round"] for row in ev} for ev in runs])
    rounds = sorted(common)
    if not rounds:
      continue
    ys = np.array([[np.nan if row.get(loss_key) is None else row[loss_key]
                    for row in sorted(ev, key=lambda row: row["round"])
                    if row["round"] in common] for ev in runs], np.float64)
    first = {row["round"]: row for row in runs[0]}
    sims = np.array([[np.nan if row.get("sim_seconds") is None
                      else row["sim_seconds"]
                      for row in sorted(ev, key=lambda row: row["round"])
                      if row["round"] in common] for ev in runs], np.float64)
    out[group] = {
        # Simulated seconds: the seed mean (a seeded profile differs).
        "sim_seconds": (np.nanmean(sims, 0) if not np.all(np.isnan(sims))
                        else np.full(len(rounds), np.nan)),
        "round": np.array(rounds),
        "step": np.array([first[r]["step"] for r in rounds], np.float64),
        "payload_bytes": np.array([first[r]["payload_bytes"] for r in rounds],
                                  np.float64),
        "mean": np.nanmean(ys, 0), "min": np.nanmin(ys, 0),
        "max": np.nanmax(ys, 0), "seeds": len(runs), "key": loss_key}
  return out


def plot_curves(results, workdir: str) -> List[str]:
  """Test loss vs inner steps, bytes sent per replica and simulated wall
  clock (PNG files): per setting, the seed mean with a min–max band."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  curves = seed_curves(results, workdir)
  reference = {r.get("group") or r["name"] for r in results
               if is_data_parallel(r)}
  profile = profile_text(results)
  split = ("test" if curves and all(c["key"] == "test/loss"
                                    for c in curves.values()) else "held-out")
  written = []
  for xkey, xlabel, fname, logx in (
      ("step", "inner steps per replica", PLOT_STEPS, False),
      ("payload_bytes", "bytes sent per replica (cumulative)", PLOT_BYTES, True),
      ("sim_seconds", "simulated wall-clock (s)", PLOT_SIM, True)):
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for i, (group, c) in enumerate(curves.items()):
      ddp = group in reference
      color = "black" if ddp else plt.cm.tab20(i % 20)
      label = group + (f" ({c['seeds']} seeds)" if c["seeds"] > 1 else "")
      ax.plot(c[xkey], c["mean"], "-", marker="o", markersize=3,
              lw=2.5 if ddp else 1.5, color=color, label=label)
      if c["seeds"] > 1:
        ax.fill_between(c[xkey], c["min"], c["max"], color=color, alpha=0.2,
                        lw=0)
    if logx:
      ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{split} loss (nats/byte)")
    title = f"{split} loss, equal token budget: seed mean, min–max band"
    if xkey == "sim_seconds" and profile:
      title += "\n" + textwrap.fill(profile, 110)
    ax.set_title(title, fontsize=9 if "\n" in title else None)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = os.path.join(workdir, fname)
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
  return written
