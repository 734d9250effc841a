"""Hyperparameters chosen on the validation split, saved, and re-used.

A tuning sweep runs a grid of points per setting (an arm of the comparison:
an algorithm with its M, H, ...); `choose` picks each setting's point by its
final loss on the validation split (`final_eval`) and nothing else: the test
split (`final_test`) is never read here, so a point that is best on test but
not on validation is not chosen. `save`/`load` keep the choices in a JSON
file that comparisons read, so re-running a comparison does not re-tune.
"""

import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence

from fedjax_lab.metrics import write_json

FORMAT = "fedjax_lab.tuning/1"


def validation_loss(result: Dict[str, Any]) -> Optional[float]:
  """A run's final validation loss; None when it did not complete finitely."""
  if result.get("status") != "completed":
    return None
  loss = (result.get("final_eval") or {}).get("loss")
  if loss is None or not math.isfinite(loss):
    return None
  return float(loss)


def choose(results: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
  """Each setting's point with the lowest validation loss.

  Args:
    results: run results, each with 'setting' (what is being tuned), 'point'
      (the overrides the grid varied, a dict) and the run's summary.

  Returns:
    {setting: {'point': the chosen overrides, 'validation_loss': its loss,
    'grid': [{'point', 'validation_loss'} for every point, in input order]}}.
    A setting whose every point failed is left out.
  """
  grids: Dict[str, List[Dict[str, Any]]] = {}
  for r in results:
    grids.setdefault(r["setting"], []).append(
        {"point": dict(r["point"]), "validation_loss": validation_loss(r),
         "status": r.get("status")})
  out = {}
  for setting, grid in grids.items():
    ok = [g for g in grid if g["validation_loss"] is not None]
    if not ok:
      continue
    best = min(ok, key=lambda g: g["validation_loss"])  # First of ties.
    out[setting] = {"point": best["point"],
                    "validation_loss": best["validation_loss"], "grid": grid}
  return out


def save(path: str, chosen: Dict[str, Dict[str, Any]], *,
         protocol: Dict[str, Any]) -> None:
  """Writes the choices (and how they were made) to `path` (JSON)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  write_json(path, {"format": FORMAT, "protocol": protocol,
                    "settings": chosen})


def load(path: str) -> Dict[str, Any]:
  """{'protocol', 'settings'} of a file `save` wrote.

  Raises:
    ValueError: naming the file, when it is absent or not such a file.
  """
  if not os.path.exists(path):
    raise ValueError(f"{path}: no tuning results; run the tuning sweep "
                     "first (experiments/compare.py --sweep=tune)")
  with open(path) as f:
    data = json.load(f)
  if data.get("format") != FORMAT:
    raise ValueError(f"{path}: not a tuning file (format "
                     f"{data.get('format')!r}, expected {FORMAT!r})")
  return data


def markdown(chosen: Dict[str, Dict[str, Any]]) -> str:
  """Every grid point's validation loss per setting, the chosen one marked."""
  lines = ["| setting | point | validation loss | chosen |",
           "|---|---|---|---|"]
  for setting, c in chosen.items():
    for g in c["grid"]:
      loss = g["validation_loss"]
      txt = "—" if loss is None else f"{loss:.4f}"
      if loss is None and g.get("status"):
        txt += f" ({g['status']})"
      point = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(g["point"].items()))
      mark = "**yes**" if g["point"] == c["point"] else ""
      lines.append(f"| {setting} | {point or '—'} | {txt} | {mark} |")
  return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
  if isinstance(v, dict):
    return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in sorted(v.items())) + "}"
  return f"{v:g}" if isinstance(v, float) else str(v)
