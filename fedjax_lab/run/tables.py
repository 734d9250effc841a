"""The comparison report's tables: results.md/.csv rows and seed statistics.

`rows_of` reads each arm's summary and eval rows into one table row per run,
`markdown_table` renders them, `group_rows`, `seed_stats` and `seed_table`
summarise a setting's seeds; `profile_text` states the simulated clock's
profile. `fedjax_lab.run.report` (whose docstring lists every column) writes
them with the plots of `fedjax_lab.run.plots`.
"""

import math
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from fedjax_lab.metrics import METRICS_FILE
from fedjax_lab.metrics import read_rows

TABLE_MD = "results.md"
TABLE_CSV = "results.csv"


def is_data_parallel(r: Dict[str, Any]) -> bool:
  """Whether a run recorded that it syncs every step with a dense all-reduce
  (the data-parallel reference arm)."""
  return bool(r.get("syncs_every_step")) and r.get("collectives") == [
      "all_reduce"]


def _policy(r: Dict[str, Any]) -> Optional[str]:
  return (r.get("clock") or {}).get("policy")


def profile_text(results: Sequence[Dict[str, Any]]) -> str:
  """The simulated devices and network of a comparison, in one sentence."""
  configs = [(r.get("config") or {}).get("clock") for r in results]
  configs = [c for c in configs if c]
  if not configs:
    return ""
  c = configs[0]
  speeds = {tuple(x.get("speeds") or ()) for x in configs}
  device = (f"{c['step_seconds']:g} s per step at speed 1" if c.get(
      "step_seconds") else f"{c['device_flops']:.3g} FLOP/s per replica "
            "(step time from each arm's FLOPs per step)")
  spread = ("equal speeds" if speeds == {()} else "relative speeds " + "; ".join(
      str(list(s)) if s else "all 1" for s in sorted(speeds)))
  extra = []
  if c.get("lognormal_sigma"):
    extra.append(f"lognormal σ {c['lognormal_sigma']:g}")
  if c.get("straggler_prob"):
    extra.append(f"stragglers p {c['straggler_prob']:g} × "
                 f"{c['straggler_factor']:g}")
  bw, lat = c.get("bandwidths_gbps") or (), c.get("latencies_s") or ()
  links = (f"links per island {list(bw)} Gbit/s" if bw
           else f"links {c['bandwidth_gbps']:g} Gbit/s")
  links += (f", latency per island {list(lat)} s per hop" if lat
            else f", latency {c['latency_s']:g} s per hop")
  return (f"Simulated clock: {device}, {spread}"
          + "".join(", " + e for e in extra) + f"; {links}.")


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


def _first_at_target(eval_rows, target: float) -> Optional[Dict[str, Any]]:
  for row in sorted(eval_rows, key=lambda row: row["round"]):
    loss = row.get("eval/loss")
    if loss is not None and loss <= target:
      return row
  return None


def rounds_to_target(eval_rows: Sequence[Dict[str, Any]],
                     target: float) -> Optional[int]:
  """The first eval round whose loss is <= `target` (None: never)."""
  row = _first_at_target(eval_rows, target)
  return None if row is None else int(row["round"])


def time_to_target(eval_rows: Sequence[Dict[str, Any]],
                   target: float) -> Optional[float]:
  """Simulated seconds at the first eval whose loss is <= `target` (None:
  never, or rows without a simulated clock)."""
  row = _first_at_target(eval_rows, target)
  return None if row is None else row.get("sim_seconds")


def eval_curves(results, workdir):
  """(run name, its eval rows) for each run with a metrics file."""
  out = []
  for r in results:
    path = os.path.join(workdir, r["name"], METRICS_FILE)
    if not os.path.exists(path):
      continue
    ev = read_rows(path, kind="eval")
    if ev:
      out.append((r["name"], ev))
  return out


def rows_of(results: Sequence[Dict[str, Any]],
            workdir: Optional[str] = None) -> List[Dict[str, Any]]:
  """One flat row per arm (what the CSV holds).

  With `workdir` (the comparison's) and an arm with `train.target_eval_loss`
  set, every row also has `target_eval_loss` and `rounds_to_target`.
  """
  reference = [r for r in results if is_data_parallel(r)]
  ddp_bytes = reference[0]["payload_bytes"] if reference else None
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
        "policy": _policy(r),
        "simulated_wall_s": r.get("sim_seconds"),
        "simulated_hours": (None if r.get("sim_seconds") is None
                            else r["sim_seconds"] / 3600.0),
    })
  if workdir is not None and any(_target(r) for r in results):
    evals = dict(eval_curves(results, workdir))
    for row, r in zip(rows, results):
      target = _target(r)
      row["target_eval_loss"] = target or None
      row["rounds_to_target"] = (rounds_to_target(evals.get(r["name"], []),
                                                  target) if target else None)
      row["time_to_target_s"] = (time_to_target(evals.get(r["name"], []),
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
          "bytes vs ddp | wall | sync policy | simulated time |")
  target = any("rounds_to_target" in r for r in rows)
  if target:
    head += " rounds to target | simulated time to target |"
  lines = [head, "|" + "---|" * (18 if target else 16)]
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
        f"{_num(r['wall_s'], '{:.0f} s')} | {r.get('policy') or '—'} | "
        f"{_sim_text(r.get('simulated_wall_s'))} |"
        + (f" {_target_text(r)} | {_sim_text(r.get('time_to_target_s'))} |"
           if target else ""))
  return "\n".join(lines) + "\n"


def _sim_text(seconds: Optional[float]) -> str:
  """Simulated seconds, in hours when long."""
  if seconds is None:
    return "—"
  if seconds >= 3600:
    return f"{seconds / 3600:.3g} h"
  return f"{seconds:.3g} s"


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
        "simulated": seed_stats([r.get("simulated_wall_s") for r in g]),
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
           "sent / replica | bytes vs ddp | simulated time (mean) |",
           "|" + "---|" * 13]
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
        f"{'—' if ratio is None else f'{ratio:.3g}'} | "
        f"{_sim_text(g['simulated']['mean'])} |")
  return "\n".join(lines) + "\n"
