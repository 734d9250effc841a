"""Comparisons: many arms of one config, run here, reported by `report`."""

import json
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import jax
import ml_collections

from fedjax_lab import config_validation
from fedjax_lab.config_validation import ConfigError
from fedjax_lab.run import progress
from fedjax_lab.run import workdir as workdir_lib
from fedjax_lab.run.loop import SUMMARY_FILE
from fedjax_lab.run.loop import train_and_evaluate
from fedjax_lab.run.loop import TrainingStopped
from fedjax_lab.run.overrides import apply_overrides


def check_base_overrides(fields: Iterable[str],
                         arms: Sequence[Dict[str, Any]], sweep: str) -> None:
  """Refuses a base-config override that every arm overrides again.

  Args:
    fields: dotted fields set on the command line (`--config.<field>=...`).
    arms: the sweep's arms.
    sweep: its name, for the message.

  Raises:
    ConfigError: naming the first such field.
  """
  for field in fields:
    def covered(arm):
      return any(field == key or field.startswith(key + ".")
                 or key.startswith(field + ".")
                 for key in arm.get("overrides", {}))
    if arms and all(covered(a) for a in arms):
      raise ConfigError(
          f"{field}: every arm of sweep {sweep!r} sets it, so "
          f"--config.{field} would be ignored; change the sweep in the config "
          "file (get_sweep) or run one config with experiments/run.py")


# Arm fields passed through to its result: the setting an arm is a seed of
# ('group', for seed statistics) and a tuning arm's ('setting', 'point').
_CARRIED = ("group", "setting", "point")


def _reusable(path: str, config: ml_collections.ConfigDict):
  """The arm's old summary when it completed with this very config."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    old = json.load(f)
  same = old.get("config") is not None and workdir_lib.same_config(
      old["config"], config)
  if (old.get("status") == "completed" and same
      and old.get("rounds") == config.train.rounds):
    return old
  if old.get("status") == "completed" and not same:
    progress.warn("arm at %s completed with another config: running it "
                  "again", os.path.dirname(path))
  return None


def run_comparison(base_config: ml_collections.ConfigDict,
                   arms: Sequence[Dict[str, Any]], workdir: str, *,
                   reuse: bool = True) -> List[Dict[str, Any]]:
  """Runs every arm (one engine each, in this process) and reports.

  Every arm shares the base config's data, model, inner optimizer and token
  budget; an arm only overrides fields (the algorithm, H, outer lr, seed;
  its `train.rounds` is set so rounds × H stays equal).

  Args:
    base_config: the shared config.
    arms: dicts with 'name' (a directory name) and 'overrides' (dotted
      keys); optional 'group', 'setting' and 'point' are copied to results.
    workdir: arms run in workdir/<name>; the table and plots go to workdir.
    reuse: an arm whose summary.json says it completed, with the same
      config, is not run again (with another config it is rerun: a tuned
      point or a code default changed).

  Returns:
    One result dict per arm (its summary plus 'name' and 'overrides').
  """
  from fedjax_lab.run import report  # pylint: disable=g-import-not-at-top
  names = [a["name"] for a in arms]
  if len(set(names)) != len(names):
    raise ConfigError(f"sweep: arm names must be unique, got {names}")
  configs = []
  for arm in arms:  # Validate every arm before running any.
    try:
      cfg = apply_overrides(base_config,
                                              arm.get("overrides", {}))
      config_validation.validate(cfg, device_count=jax.device_count())
    except ConfigError as e:
      raise ConfigError(f"sweep arm {arm['name']!r}: {e}") from None
    configs.append(cfg)
  results = []
  clock = progress.Clock(0, len(arms))
  for i, (arm, cfg) in enumerate(zip(arms, configs)):
    arm_dir = os.path.join(workdir, arm["name"])
    summary_path = os.path.join(arm_dir, SUMMARY_FILE)
    summary = _reusable(summary_path, cfg) if reuse else None
    if summary is not None:
      progress.say("arm %s: reusing %s", arm["name"], summary_path)
    else:
      progress.say("arm %d/%d: %s (%s)", i + 1, len(arms), arm["name"],
                   arm.get("overrides"))
      try:
        summary = train_and_evaluate(cfg, arm_dir)
      except TrainingStopped as e:
        progress.warn("arm %s stopped: %s", arm["name"], e)
        with open(summary_path) as f:
          summary = json.load(f)
    results.append({"name": arm["name"],
                    "overrides": arm.get("overrides", {}),
                    **{k: arm[k] for k in _CARRIED if k in arm}, **summary})
    progress.say("comparison: %d/%d arms done, elapsed %s, ETA %s", i + 1,
                 len(arms), progress.fmt_time(clock.elapsed()),
                 progress.fmt_time(clock.elapsed() / (i + 1)
                                   * (len(arms) - i - 1)))
  if jax.process_index() == 0:
    report.write_report(results, workdir)
  return results


def run_widening(base_config: ml_collections.ConfigDict,
                 arms: Sequence[Dict[str, Any]], workdir: str, *,
                 reuse: bool = True,
                 more: Optional[Callable[[List[Dict[str, Any]]],
                                         List[Dict[str, Any]]]] = None
                 ) -> List[Dict[str, Any]]:
  """`run_comparison`, then again with the arms `more(results)` adds, until
  it adds none (a tuning grid widened where its best point is on an edge).

  Every pass runs the whole list (the report covers every arm); arms already
  run, in this call or an earlier one with the same config, are reused, so
  an interrupted search resumes where it stopped. With `reuse=False` the
  first pass reruns the initial arms and later passes reuse only what this
  call ran (or an identical completed run).
  """
  results = run_comparison(base_config, arms, workdir, reuse=reuse)
  arms = list(arms)
  while more is not None:
    new = more(results)
    if not new:
      break
    arms += new
    progress.say("widening: %d more arm(s): %s", len(new),
                 ", ".join(a["name"] for a in new))
    results = run_comparison(base_config, arms, workdir, reuse=True)
  return results
