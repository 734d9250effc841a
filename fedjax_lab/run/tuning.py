"""Hyperparameters chosen on the validation split, saved, and re-used.

A tuning sweep runs a grid of points per setting (an arm of the comparison:
an algorithm with its M, H, ...); `choose` picks each setting's point by its
final loss on the validation split (`final_eval`) and nothing else: the test
split (`final_test`) is never read here, so a point that is best on test but
not on validation is not chosen. `save`/`load` keep the choices in a JSON
file that comparisons read, so re-running a comparison does not re-tune.

A grid whose best point lies on its edge has not found the optimum: `widen`
adds, along that field, one value one step of the grid's own ratio further
(in log x, or log(1 − x) for momentum-like fields) until the best point is
interior along every field or stops at a stated bound (the field's `Axis`
bounds, or K values added); `tune` runs that search with an injected
evaluation (training runs in the experiments, a function in the tests) and
`mark_edges` records where each choice stands ('interior' / 'at bound').
"""

import dataclasses
import json
import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

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


def summary_markdown(chosen: Dict[str, Dict[str, Any]]) -> str:
  """One row per setting: its choice and whether it is interior or at a bound."""
  lines = ["| setting | chosen point | validation loss | where | points run |",
           "|---|---|---|---|---|"]
  for setting, c in chosen.items():
    point = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(c["point"].items()))
    lines.append(f"| {setting} | {point or '—'} | {c['validation_loss']:.4f} | "
                 f"{c.get('where', 'not checked')} | {len(c['grid'])} |")
  return "\n".join(lines) + "\n"


def markdown(chosen: Dict[str, Dict[str, Any]]) -> str:
  """Each setting's choice (interior or at a bound), then every point's
  validation loss per setting, the chosen one marked."""
  lines = [summary_markdown(chosen), "| setting | point | validation loss | chosen |",
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


# ---- Widening a grid whose best point lies on an edge. ----

SCALES = ("log", "log1m")


@dataclasses.dataclass(frozen=True)
class Axis:
  """How far, and in what steps, one tuned field may be widened.

  Attributes:
    low, high: the stated bounds (inclusive): the widened grid never leaves
      them, and a best point on one of them is 'at bound'.
    scale: 'log' (a positive x; a step multiplies x: learning rates, μ) or
      'log1m' (x < 1; a step multiplies 1 − x: momentum, β, α in [0, 1)).
    integer: the field takes integers (a step moves it by at least 1).
  """
  low: float
  high: float
  scale: str = "log"
  integer: bool = False

  def __post_init__(self):
    if self.scale not in SCALES:
      raise ValueError(f"Axis.scale: one of {SCALES}, got {self.scale!r}")
    if not self.low < self.high:
      raise ValueError(f"Axis: low {self.low} must be < high {self.high}")
    if self.scale == "log" and not self.low > 0:
      raise ValueError(f"Axis: a 'log' axis needs low > 0, got {self.low}")
    if self.scale == "log1m" and not self.high < 1:
      raise ValueError(f"Axis: a 'log1m' axis needs high < 1, got {self.high}")

  def _t(self, x: float) -> float:
    return math.log(x) if self.scale == "log" else math.log1p(-x)

  def _x(self, t: float) -> float:
    return math.exp(t) if self.scale == "log" else -math.expm1(t)

  def _round(self, x: float) -> float:
    if self.integer:
      return int(round(x))
    if self.scale == "log":
      return float(f"{x:.3g}")
    return round(1.0 - float(f"{1.0 - x:.3g}"), 12)

  def contains(self, x: float) -> bool:
    return self.low <= x <= self.high

  def beyond(self, edge: float, inner: float) -> Optional[float]:
    """The next value past `edge`, away from its neighbour `inner`.

    One step of the grid's own ratio there (|t(edge) − t(inner)| in the
    axis's scale), rounded to 3 significant digits (of 1 − x on 'log1m') and
    clipped to the bounds; None when `edge` is already on the bound.
    """
    up = edge > inner
    if (up and edge >= self.high) or (not up and edge <= self.low):
      return None
    x = self._round(self._x(self._t(edge) + (self._t(edge) - self._t(inner))))
    if self.integer and x == edge:
      x = edge + (1 if up else -1)
    x = min(max(x, self.low), self.high)
    if self.integer:
      x = int(x)
    return None if x == edge else x


def points_of(grid: Dict[str, Sequence[Any]]) -> List[Dict[str, Any]]:
  """The Cartesian product of a grid {field: values}, in the grid's order."""
  points = [{}]
  for field, values in grid.items():
    points = [dict(p, **{field: v}) for p in points for v in values]
  return points


def widen(grid: Dict[str, Sequence[Any]], evaluated: Sequence[Dict[str, Any]],
          axes: Dict[str, Axis], max_expansions: int):
  """The next points of one setting's search, and where its best point stands.

  The best point (lowest validation loss of `evaluated`, first of ties: as
  `choose`) is checked along every tuned field (one with more than one
  value in `grid`), on the line through it: its neighbour on each side is the
  next value of that field known so far (the grid's and any added); past the
  last one, one new value one step of the grid's own ratio further
  (`Axis.beyond`), unless the best value is on the axis's stated bound or the
  field has been widened `max_expansions` times already. Every neighbour not
  yet evaluated is a next point. With none left, the best is interior along
  every field (both neighbours evaluated and worse, or failed) or stopped at
  a bound.

  The search keeps no state: the expansions are counted from the values in
  `evaluated`, so a search resumed from the runs already done goes on where
  it stopped, to the same points.

  Args:
    grid: the initial grid {field: values}.
    evaluated: {'point', 'validation_loss'} (None: failed), every point run.
    axes: {field: Axis} for every tuned field.
    max_expansions: K, the most values added to one field beyond the grid's.

  Returns:
    (points to run next, status): status maps each tuned field to
    'interior', 'at bound (<field> = <low|high> bound <x>)' or
    'at bound (K = <K> expansions)'; empty when no point completed.
  """
  ok = [e for e in evaluated if e.get("validation_loss") is not None]
  if not ok:
    return [], {}
  best = min(ok, key=lambda e: e["validation_loss"])["point"]
  done = [dict(e["point"]) for e in evaluated]
  todo, status = [], {}
  for field, values in grid.items():
    if len(values) < 2:
      continue  # Fixed, not tuned.
    axis = axes.get(field)
    if axis is None:
      raise ValueError(f"tuning: no Axis (bounds) for tuned field {field!r}")
    known = sorted({v for v in values} | {e[field] for e in done if field in e})
    added = sum(1 for v in known if v < min(values) or v > max(values))
    i = known.index(best[field])
    states = []
    for side in (-1, 1):
      j = i + side
      if 0 <= j < len(known):
        neighbour = known[j]
      else:
        inner = known[i - side]
        neighbour = axis.beyond(best[field], inner)
        if neighbour is None:
          bound = "low" if side < 0 else "high"
          states.append(f"at bound ({field} = {bound} bound "
                        f"{_fmt(axis.low if side < 0 else axis.high)})")
          continue
        if added >= max_expansions:
          states.append(f"at bound (K = {max_expansions} expansions)")
          continue
      point = dict(best, **{field: neighbour})
      if point not in done and point not in todo:
        todo.append(point)
      states.append("interior")
    bounded = [s for s in states if s != "interior"]
    status[field] = bounded[0] if bounded else "interior"
  return (todo, status) if todo else ([], status)


def grid_of(chosen_setting: Dict[str, Any]) -> List[Dict[str, Any]]:
  """{'point', 'validation_loss'} of every point a setting's choice saw."""
  return [{"point": g["point"], "validation_loss": g["validation_loss"]}
          for g in chosen_setting["grid"]]


def mark_edges(chosen: Dict[str, Dict[str, Any]],
               grids: Dict[str, Dict[str, Sequence[Any]]],
               axes: Callable[[str], Dict[str, Axis]],
               max_expansions: int) -> Dict[str, Dict[str, Any]]:
  """`chosen` with each setting's 'edges' ({field: status}) and 'where'.

  'where' is 'interior' when every tuned field is, else the first
  'at bound (...)' (a search not finished is 'unfinished': run the sweep
  again to continue it).
  """
  out = {}
  for setting, c in chosen.items():
    more, status = widen(grids[setting], grid_of(c), axes(setting),
                         max_expansions)
    bounded = [f"{s}" for s in status.values() if s != "interior"]
    where = ("unfinished" if more else bounded[0] if bounded else "interior")
    out[setting] = dict(c, edges=status, where=where)
  return out


def tune(grids: Dict[str, Dict[str, Sequence[Any]]],
         evaluate: Callable[[List[Tuple[str, Dict[str, Any]]]],
                            Sequence[Dict[str, Any]]],
         axes: Callable[[str], Dict[str, Axis]], max_expansions: int):
  """Runs every setting's grid, widening it until its best point is interior
  or at a bound (`widen`), and chooses on validation (`choose`).

  Args:
    grids: {setting: {field: values}}, the initial grids.
    evaluate: runs [(setting, point)] and returns their results (dicts with
      'setting', 'point', 'status' and 'final_eval', as `choose` reads);
      the experiments pass one that runs (or reuses) training runs, tests a
      function of the point.
    axes: setting -> {field: Axis}.
    max_expansions: K (see `widen`).

  Returns:
    (every result, in the order run; `mark_edges(choose(results), ...)`).
  """
  pending = [(s, p) for s, g in grids.items() for p in points_of(g)]
  results, asked = [], set()
  while pending:
    for s, p in pending:
      asked.add((s, json.dumps(p, sort_keys=True)))
    results.extend(evaluate(pending))
    pending = []
    for s, g in grids.items():
      evaluated = [{"point": r["point"], "validation_loss": validation_loss(r)}
                   for r in results if r["setting"] == s]
      more, _ = widen(g, evaluated, axes(s), max_expansions)
      pending += [(s, p) for p in more
                  if (s, json.dumps(p, sort_keys=True)) not in asked]
  return results, mark_edges(choose(results), grids, axes, max_expansions)
