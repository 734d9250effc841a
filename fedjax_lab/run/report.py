"""The comparison report: a results table (markdown + CSV) and plots (PNG).

Reads each arm's summary (passed in) and its `metrics.jsonl` eval rows, and
writes into the comparison's directory:

* results.md / results.csv: final and best eval loss, perplexity, bytes each
  replica sent (payload and ring all-reduce), the ratio to the ddp arm's
  bytes, tokens and wall time; when an arm's config sets
  `train.target_eval_loss`, the rounds to target (the first eval round whose
  loss is <= it; '—' when never reached); with several seeds per setting,
  also their mean ± std;
* eval_loss_vs_steps.png, eval_loss_vs_bytes.png and
  eval_loss_vs_simulated_wall.png (matplotlib Agg).

The simulated wall-clock (fedjax_lab.comm.netsim) is what each arm would take
with its replicas on separate islands joined by a `bandwidth_gbps` link: the
compute time of one replica's inner step is measured here (the median over
arms of round time / (H·M), since this machine runs the M replicas one after
another) and every arm's counted bytes go over the simulated ring all-reduce
(blocking: ddp every step, the others every H steps).
"""

import csv
import math
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from fedjax_lab.comm import netsim
from fedjax_lab.metrics import METRICS_FILE, read_rows

TABLE_MD = "results.md"
TABLE_CSV = "results.csv"
PLOT_STEPS = "eval_loss_vs_steps.png"
PLOT_BYTES = "eval_loss_vs_bytes.png"
PLOT_SIM = "eval_loss_vs_simulated_wall.png"
# The simulated link between islands: a fast WAN / slow datacenter link.
SIM_BANDWIDTH_GBPS = 1.0
SIM_LATENCY_S = 1e-3


def _measured_step_seconds(r: Dict[str, Any]) -> Optional[float]:
  """One replica's inner-step compute time in this arm (compile excluded)."""
  timing = r.get("timing") or {}
  rounds, h, m = r.get("rounds"), r.get("inner_steps"), r.get("num_replicas")
  total, first = timing.get("total_s"), timing.get("first_round_s")
  if not (rounds and rounds > 1 and h and m and total and first is not None):
    return None
  return max(total - first, 1e-9) / (rounds - 1) / h / m


def simulated_seconds_per_step(results: Sequence[Dict[str, Any]], *,
                               bandwidth_gbps: float = SIM_BANDWIDTH_GBPS,
                               latency_s: float = SIM_LATENCY_S
                               ) -> Dict[str, float]:
  """{arm name: simulated wall seconds per inner step} (see module doc)."""
  measured = [s for s in map(_measured_step_seconds, results) if s]
  if not measured:
    return {}
  step_s = float(np.median(measured))
  out = {}
  for r in results:
    steps = r.get("steps") or 0
    if not steps or not r.get("payload_bytes"):
      continue
    ddp = r.get("algorithm") == "ddp"
    h = 1 if ddp else r["inner_steps"]
    per_sync = r["payload_bytes"] / (steps / h)
    out[r["name"]] = netsim.simulate(
        "ddp" if ddp else "diloco", step_seconds=step_s,
        payload_bytes=per_sync, num_replicas=r.get("num_replicas") or 1,
        inner_steps=h, bandwidth_gbps=bandwidth_gbps,
        latency_s=latency_s)["wall_seconds_per_step"]
  return out


def _outer_lr(r: Dict[str, Any]) -> Optional[float]:
  hp = r.get("config", {}).get("outer", {}).get("hparams", {}) or {}
  for key in ("learning_rate", "beta", "alpha", "mu"):
    if key in hp and hp[key] is not None:
      return hp[key]
  return None


def _fmt_bytes(n: float) -> str:
  for unit in ("B", "KB", "MB", "GB", "TB"):
    if abs(n) < 1000 or unit == "TB":
      return f"{n:.3g} {unit}"
    n /= 1000.0
  return f"{n:.3g}"


def _num(x, fmt="{:.4f}") -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "—"
  return fmt.format(x)


def _target(r: Dict[str, Any]) -> float:
  return float(r.get("config", {}).get("train", {}).get("target_eval_loss")
               or 0.0)


def rounds_to_target(eval_rows: Sequence[Dict[str, Any]],
                     target: float) -> Optional[int]:
  """The first eval round whose loss is <= `target` (None: never)."""
  for row in sorted(eval_rows, key=lambda row: row["round"]):
    loss = row.get("eval/loss")
    if loss is not None and loss <= target:
      return int(row["round"])
  return None


def rows_of(results: Sequence[Dict[str, Any]],
            workdir: Optional[str] = None) -> List[Dict[str, Any]]:
  """One flat row per arm (what the CSV holds).

  With `workdir` (the comparison's) and an arm with `train.target_eval_loss`
  set, every row also has `target_eval_loss` and `rounds_to_target`.
  """
  sim = simulated_seconds_per_step(results)
  ddp = [r for r in results if r.get("algorithm") == "ddp"]
  ddp_bytes = ddp[0]["payload_bytes"] if ddp else None
  rows = []
  for r in results:
    ev = r.get("final_eval", {}) or {}
    hp = r.get("config", {}).get("outer", {}).get("hparams", {}) or {}
    rows.append({
        "arm": r["name"],
        "algorithm": r.get("algorithm"),
        "inner_steps": r.get("inner_steps"),
        # Only what the arm set (unset registry hparams are None: defaults).
        "outer_hparams": ";".join(f"{k}={v}" for k, v in sorted(hp.items())
                                  if v is not None),
        "outer_lr": _outer_lr(r),
        "seed": r.get("config", {}).get("train", {}).get("seed"),
        "status": r.get("status"),
        "rounds": r.get("rounds"),
        "tokens": r.get("tokens"),
        "final_eval_loss": ev.get("loss"),
        "final_eval_perplexity": ev.get("perplexity"),
        "final_eval_accuracy": ev.get("accuracy"),
        "best_eval_loss": r.get("best_eval_loss"),
        "payload_bytes": r.get("payload_bytes"),
        "ring_bytes": r.get("ring_bytes"),
        "bytes_vs_ddp": (r["payload_bytes"] / ddp_bytes
                         if ddp_bytes else None),
        "nonfinite_replicas": r.get("nonfinite_replicas"),
        "wall_s": r.get("wall_s"),
        "simulated_wall_s": (sim[r["name"]] * r["steps"]
                             if r["name"] in sim else None),
    })
  if workdir is not None and any(_target(r) for r in results):
    evals = dict(_curves(results, workdir))
    for row, r in zip(rows, results):
      target = _target(r)
      row["target_eval_loss"] = target or None
      row["rounds_to_target"] = (rounds_to_target(evals.get(r["name"], []),
                                                  target) if target else None)
  return rows


def markdown_table(rows: Sequence[Dict[str, Any]]) -> str:
  """The per-arm table, best final eval loss first."""
  head = ("| arm | algorithm | H | outer hparams | seed | final eval loss | "
          "perplexity | best eval loss | sent / replica | ring / replica | "
          f"bytes vs ddp | wall | simulated wall @ {SIM_BANDWIDTH_GBPS:g} Gbit/s |")
  target = any("rounds_to_target" in r for r in rows)
  if target:
    head += " rounds to target |"
  lines = [head, "|" + "---|" * (14 if target else 13)]
  key = lambda r: (r["final_eval_loss"] is None, r["final_eval_loss"] or 0.0)
  for r in sorted(rows, key=key):
    ratio = r["bytes_vs_ddp"]
    ratio_txt = ("—" if ratio is None else "1" if abs(ratio - 1) < 1e-12
                 else f"{ratio:.3g} ({1 / ratio:.0f}× less)" if ratio < 1
                 else f"{ratio:.3g}")
    status = "" if r["status"] == "completed" else f" ({r['status']})"
    lines.append(
        f"| {r['arm']}{status} | {r['algorithm']} | {r['inner_steps']} | "
        f"{r['outer_hparams'] or '—'} | {r['seed']} | "
        f"{_num(r['final_eval_loss'])} | {_num(r['final_eval_perplexity'], '{:.2f}')} | "
        f"{_num(r['best_eval_loss'])} | {_fmt_bytes(r['payload_bytes'] or 0)} | "
        f"{_fmt_bytes(r['ring_bytes'] or 0)} | {ratio_txt} | "
        f"{_num(r['wall_s'], '{:.0f} s')} | "
        f"{_num(r['simulated_wall_s'], '{:.3g} s')} |"
        + (f" {_target_text(r)} |" if target else ""))
  return "\n".join(lines) + "\n"


def _target_text(r: Dict[str, Any]) -> str:
  if not r.get("target_eval_loss"):
    return "—"
  got = r.get("rounds_to_target")
  return f"{got} (≤ {r['target_eval_loss']:g})" if got else f"— (≤ {r['target_eval_loss']:g})"


def seed_table(rows: Sequence[Dict[str, Any]]) -> Optional[str]:
  """Mean ± std over seeds per (algorithm, H, hparams), when there are repeats."""
  groups: Dict[tuple, List[Dict[str, Any]]] = {}
  for r in rows:
    groups.setdefault((r["algorithm"], r["inner_steps"], r["outer_hparams"]),
                      []).append(r)
  if all(len(g) < 2 for g in groups.values()):
    return None
  lines = ["| algorithm | H | outer hparams | seeds | final eval loss "
           "(mean ± std) |", "|---|---|---|---|---|"]
  for (alg, h, hp), g in sorted(groups.items(), key=lambda kv: np.mean(
      [x["final_eval_loss"] or np.inf for x in kv[1]])):
    losses = np.array([x["final_eval_loss"] for x in g
                       if x["final_eval_loss"] is not None], np.float64)
    txt = (f"{losses.mean():.4f} ± {losses.std(ddof=1) if len(losses) > 1 else 0:.4f}"
           if len(losses) else "—")
    lines.append(f"| {alg} | {h} | {hp or '—'} | {len(g)} | {txt} |")
  return "\n".join(lines) + "\n"


def _curves(results, workdir):
  out = []
  for r in results:
    path = os.path.join(workdir, r["name"], METRICS_FILE)
    if not os.path.exists(path):
      continue
    ev = read_rows(path, kind="eval")
    if ev:
      out.append((r["name"], ev))
  return out


def plot_curves(results, workdir: str) -> List[str]:
  """Eval loss vs inner steps and vs bytes sent per replica (PNG files)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  curves = _curves(results, workdir)
  sim = simulated_seconds_per_step(results)
  for name, ev in curves:
    for row in ev:
      row["simulated_wall_s"] = row["step"] * sim.get(name, np.nan)
  written = []
  for xkey, xlabel, fname, logx in (
      ("step", "inner steps per replica", PLOT_STEPS, False),
      ("payload_bytes", "bytes sent per replica (cumulative)", PLOT_BYTES, True),
      ("simulated_wall_s", f"simulated wall-clock (s), islands joined by "
       f"{SIM_BANDWIDTH_GBPS:g} Gbit/s", PLOT_SIM, True)):
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for i, (name, ev) in enumerate(curves):
      xs = [row[xkey] for row in ev]
      ys = [row.get("eval/loss") for row in ev]
      ys = [np.nan if y is None else y for y in ys]
      ddp = name.startswith("ddp")
      ax.plot(xs, ys, "-", marker="o", markersize=3, lw=2.5 if ddp else 1.5,
              color="black" if ddp else plt.cm.tab20(i % 20), label=name)
    if logx:
      ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("eval loss (nats/byte)")
    ax.set_title("held-out loss, equal token budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = os.path.join(workdir, fname)
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
  return written


def write_report(results, workdir: str) -> Dict[str, str]:
  """Writes the table (md + csv) and the plots; returns their paths."""
  rows = rows_of(results, workdir)
  md = markdown_table(rows)
  seeds = seed_table(rows)
  if seeds:
    md += "\nMean over seeds:\n\n" + seeds
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
