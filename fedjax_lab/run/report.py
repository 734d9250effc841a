"""The comparison report: a results table (markdown + CSV) and plots (PNG).

Reads each arm's summary (passed in) and its `metrics.jsonl` eval rows, and
writes into the comparison's directory:

* results.md / results.csv: per run, the final test loss (the reported
  number: test split, whole split), the final validation loss (what tuning
  chose by), perplexity, bytes each replica sent (payload and ring
  all-reduce), the ratio to the ddp arm's bytes, tokens and wall time; when
  an arm's config sets `train.target_eval_loss`, the rounds to target (the
  first eval round whose validation loss is <= it; '—' when never reached);
  with several seeds per setting (an arm's 'group'), a first table of test
  loss mean ± std and min–max over seeds with the setting's hyperparameters;
* eval_loss_vs_steps.png, eval_loss_vs_bytes.png and
  eval_loss_vs_simulated_wall.png (matplotlib Agg): the test loss during
  training (a fixed stratified sample; validation when a run has no test
  split), one line per setting: the seed mean, with a min–max band.

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
from fedjax_lab.metrics import METRICS_FILE
from fedjax_lab.metrics import read_rows

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
    te = r.get("final_test", {}) or {}
    cfg = r.get("config", {})
    hp = cfg.get("outer", {}).get("hparams", {}) or {}
    params, tokens = r.get("num_params"), r.get("tokens")
    rows.append({
        "arm": r["name"],
        "group": r.get("group") or r["name"],
        "algorithm": r.get("algorithm"),
        "num_replicas": r.get("num_replicas"),
        "inner_steps": r.get("inner_steps"),
        "inner_lr": cfg.get("inner", {}).get("learning_rate"),
        # Only what the arm set (unset registry hparams are None: defaults).
        "outer_hparams": ";".join(f"{k}={v}" for k, v in sorted(hp.items())
                                  if v is not None),
        "outer_lr": _outer_lr(r),
        "seed": cfg.get("train", {}).get("seed"),
        "status": r.get("status"),
        "rounds": r.get("rounds"),
        "tokens": tokens,
        "tokens_per_param": tokens / params if tokens and params else None,
        "final_test_loss": te.get("loss"),
        "final_test_perplexity": te.get("perplexity"),
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


def _reported(r: Dict[str, Any]) -> Optional[float]:
  """The number a row is ranked by: test loss, else validation loss."""
  loss = r.get("final_test_loss")
  return r.get("final_eval_loss") if loss is None else loss


def markdown_table(rows: Sequence[Dict[str, Any]]) -> str:
  """The per-arm table, best final eval loss first."""
  head = ("| arm | algorithm | M | H | inner lr | outer hparams | seed | "
          "test loss | validation loss | test perplexity | sent / replica | "
          "ring / replica | "
          f"bytes vs ddp | wall | simulated wall @ {SIM_BANDWIDTH_GBPS:g} Gbit/s |")
  target = any("rounds_to_target" in r for r in rows)
  if target:
    head += " rounds to target |"
  lines = [head, "|" + "---|" * (16 if target else 15)]
  key = lambda r: (_reported(r) is None, _reported(r) or 0.0)
  for r in sorted(rows, key=key):
    ratio = r["bytes_vs_ddp"]
    ratio_txt = ("—" if ratio is None else "1" if abs(ratio - 1) < 1e-12
                 else f"{ratio:.3g} ({1 / ratio:.0f}× less)" if ratio < 1
                 else f"{ratio:.3g}")
    status = "" if r["status"] == "completed" else f" ({r['status']})"
    lines.append(
        f"| {r['arm']}{status} | {r['algorithm']} | {r['num_replicas']} | "
        f"{r['inner_steps']} | {_num(r['inner_lr'], '{:g}')} | "
        f"{r['outer_hparams'] or '—'} | {r['seed']} | "
        f"{_num(r['final_test_loss'])} | {_num(r['final_eval_loss'])} | "
        f"{_num(r['final_test_perplexity'], '{:.2f}')} | "
        f"{_fmt_bytes(r['payload_bytes'] or 0)} | "
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


def seed_stats(values: Sequence[float]) -> Dict[str, Any]:
  """n, mean, std (ddof 1; 0 for one value), min and max of `values`
  (None and non-finite values are left out; all None for none left)."""
  x = np.array([v for v in values if v is not None and math.isfinite(v)],
               np.float64)
  if not len(x):
    return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
  return {"n": int(len(x)), "mean": float(x.mean()),
          "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
          "min": float(x.min()), "max": float(x.max())}


def group_rows(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """One row per setting ('group'): its hyperparameters and seed statistics
  of the test and validation losses, best test mean first."""
  groups: Dict[str, List[Dict[str, Any]]] = {}
  for r in rows:
    groups.setdefault(r["group"], []).append(r)
  out = []
  for name, g in groups.items():
    first = g[0]
    out.append({
        "group": name, "algorithm": first["algorithm"],
        "num_replicas": first["num_replicas"],
        "inner_steps": first["inner_steps"], "inner_lr": first["inner_lr"],
        "outer_hparams": first["outer_hparams"],
        "seeds": [r["seed"] for r in g],
        "failed": [r["seed"] for r in g if r["status"] != "completed"],
        "test": seed_stats([r["final_test_loss"] for r in g
                            if r["status"] == "completed"]),
        "validation": seed_stats([r["final_eval_loss"] for r in g
                                  if r["status"] == "completed"]),
        "payload_bytes": first["payload_bytes"],
        "bytes_vs_ddp": first["bytes_vs_ddp"],
        "tokens_per_param": first["tokens_per_param"],
    })
  return sorted(out, key=lambda r: (r["test"]["mean"] is None,
                                    r["test"]["mean"] or 0.0))


def seed_table(rows: Sequence[Dict[str, Any]]) -> Optional[str]:
  """Test loss mean ± std and min–max over seeds per setting, when a setting
  has repeats (None otherwise)."""
  groups = group_rows(rows)
  if all(len(g["seeds"]) < 2 for g in groups):
    return None
  lines = ["| setting | algorithm | M | H | inner lr | outer hparams | seeds | "
           "test loss mean ± std | test min–max | validation mean | "
           "sent / replica | bytes vs ddp |", "|" + "---|" * 12]
  for g in groups:
    t, v = g["test"], g["validation"]
    txt = "—" if t["mean"] is None else f"{t['mean']:.4f} ± {t['std']:.4f}"
    span = "—" if t["mean"] is None else f"{t['min']:.4f}–{t['max']:.4f}"
    failed = f" ({len(g['failed'])} failed)" if g["failed"] else ""
    ratio = g["bytes_vs_ddp"]
    lines.append(
        f"| {g['group']} | {g['algorithm']} | {g['num_replicas']} | "
        f"{g['inner_steps']} | {_num(g['inner_lr'], '{:g}')} | "
        f"{g['outer_hparams'] or '—'} | {len(g['seeds'])}{failed} | {txt} | "
        f"{span} | {_num(v['mean'])} | {_fmt_bytes(g['payload_bytes'] or 0)} | "
        f"{'—' if ratio is None else f'{ratio:.3g}'} |")
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


def seed_curves(results, workdir: str, key: str = "test/loss"
                ) -> Dict[str, Dict[str, np.ndarray]]:
  """Per setting ('group'): x values and the loss's seed mean, min and max.

  The seeds of a setting evaluate at the same rounds; rounds some seed lacks
  (a stopped run) are left out. `key` falls back to 'eval/loss' for runs
  without a test split.
  """
  group_of = {r["name"]: r.get("group") or r["name"] for r in results}
  by_group: Dict[str, List[List[Dict[str, Any]]]] = {}
  for name, ev in _curves(results, workdir):
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
    out[group] = {
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
  sim = simulated_seconds_per_step(results)
  group_sim = {}
  for r in results:
    group_sim.setdefault(r.get("group") or r["name"], sim.get(r["name"], np.nan))
  for group, c in curves.items():
    c["simulated_wall_s"] = c["step"] * group_sim.get(group, np.nan)
  split = ("test" if curves and all(c["key"] == "test/loss"
                                    for c in curves.values()) else "held-out")
  written = []
  for xkey, xlabel, fname, logx in (
      ("step", "inner steps per replica", PLOT_STEPS, False),
      ("payload_bytes", "bytes sent per replica (cumulative)", PLOT_BYTES, True),
      ("simulated_wall_s", f"simulated wall-clock (s), islands joined by "
       f"{SIM_BANDWIDTH_GBPS:g} Gbit/s", PLOT_SIM, True)):
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for i, (group, c) in enumerate(curves.items()):
      ddp = group.startswith("ddp")
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
    ax.set_title(f"{split} loss, equal token budget: seed mean, min–max band")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = os.path.join(workdir, fname)
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
  return written


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
