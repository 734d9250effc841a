"""Two claims about time, with replicas of unequal speed: async and DyLU.

Two claims of experiments/study/claims.py (it adds `CLAIMS` below to its own,
as `Claim`s), kept here so that module stays short. Both run DiLoCo's tuned
arm at the 1× budget with configs/heterogeneous.py's 4× speed spread (relative
speeds 1 down to 1/SPREAD over the M replicas, evenly in log: M = 4 gives 1,
0.63, 0.3969, 0.25; M = 2 gives 1, 0.25) and its policy overrides
(heterogeneous.POLICIES), on the default links:

  Asynchronous Local-SGD, Liu et al., arXiv 2401.09135 (abstract): with
    Delayed Nesterov (DN) and Dynamic Local Updates (DyLU) it matches
    synchronous Local-SGD in perplexity per update step, and beats it in wall
    clock time.

* async_matches_sync_per_update: DiLoCo under clock.policy 'async' (DN with
  N = M at DiLoCo's tuned outer lr and momentum, DyLU, the paper's burst
  grace) against 'wait_all', at equal total inner steps (`async_rounds`), on
  the test loss (a no-loss claim).
* dylu_beats_wait_all_time_to_target: DiLoCo under the synchronous 'dylu'
  policy (docs/clock.md) against 'wait_all', on the simulated seconds to a
  target test loss (a direction claim). Its judge reads each run's test-loss
  curve against simulated seconds (`sim_curve`, the claim's measure) and
  sets the target per seed (verdicts.judge_dylu_time).

The 'wait_all' arm is the same arm in both claims (name and overrides), so it
runs once; per seed the two claims add three runs. configs/tuned.json has no
point tuned under unequal speeds (heterogeneous.py uses the main points too):
every arm is the main setting's tuned DiLoCo arm.
"""

import math
import os
from typing import Any, Dict, Optional, Tuple

from configs import heterogeneous
from experiments.study.verdicts import judge_async
from experiments.study.verdicts import judge_dylu_time
from fedjax_lab import async_local_sgd
from fedjax_lab.metrics import METRICS_FILE
from fedjax_lab.metrics import read_rows

# The wait_all and dylu arms evaluate about this many times (every
# rounds // EVALS rounds, at least every round), so their curves resolve the
# time to target; at smoke size (3 rounds at 1×) that is every round.
EVALS = 12


def _arm(setup, budget: str, key: str, seed: int, **kwargs) -> Dict[str, Any]:
  """claims._arm: the arm as every claim names it (so equal arms share one)."""
  # Imported here: claims.py imports this module to add CLAIMS to its own.
  from experiments.study import claims  # pylint: disable=g-import-not-at-top
  return claims._arm(setup, budget, key, seed, **kwargs)  # pylint: disable=protected-access


def speeds(setup) -> Tuple[float, ...]:
  """configs/heterogeneous.py's spread (its get_config) over the setup's M."""
  m = setup.configs["1x"].train.num_replicas
  return tuple(round(heterogeneous.SPREAD ** (-i / max(m - 1, 1)), 4)
               for i in range(m))


def async_rounds(setup) -> int:
  """The async arm's rounds: about the wait_all arm's inner steps in total.

  wait_all takes R rounds × M replicas × H steps. Under 'async' a round is M
  arrivals (docs/clock.md; run/async_rounds.py: its metrics rows' tokens and
  train/task_steps count each arrival's own steps), and with DyLU replica
  i's task is H_i = max(⌊H · speed_i / max speed⌋, clock.dylu_min_steps)
  steps (`AsyncProfile.steps`), each lasting about H of the fastest
  replica's steps, so the replicas arrive about equally often and a round
  costs about Σ_i H_i steps. R' = round(R·M·H / Σ_i H_i) rounds then take
  the same inner steps (tokens) as wait_all, up to the rounding and the
  exact arrival order: smoke (M = 2, H = 4, H_i = 4, 1) 5 rounds × 5 = 25
  steps vs 24 (as run); cpu (M = 4, H = 25, H_i = 25, 15, 9, 6) 44 rounds,
  about 2404 steps in a replay of the cpu profile's events vs 2400. The
  async arm thus makes more server updates (M per round) for the same work:
  "per update step" compares at equal work, not at equal rounds.
  """
  one = setup.configs["1x"]
  h, m = one.inner.steps, one.train.num_replicas
  profile = async_local_sgd.AsyncProfile(
      tuple(1.0 / s for s in speeds(setup)), dylu=True,
      min_steps=one.clock.dylu_min_steps)
  per_round = int(profile.steps(h).sum())
  return max(1, round(one.train.rounds * m * h / per_round))


def _policy_arm(setup, seed: int, policy: str,
                extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """The tuned DiLoCo arm at 1× under the spread and `policy`'s overrides."""
  return _arm(setup, "1x", "diloco", seed, tag=f"_{policy}", extra={
      "clock.speeds": speeds(setup), **heterogeneous.POLICIES[policy],
      **(extra or {})})


def _timed_arm(setup, seed: int, policy: str) -> Dict[str, Any]:
  """A synchronous policy's arm, evaluated along the way (`EVALS`)."""
  every = max(1, setup.configs["1x"].train.rounds // EVALS)
  return _policy_arm(setup, seed, policy, {"train.eval_every": every})


def _async_arm(setup, seed: int) -> Dict[str, Any]:
  """'async' with DN on DiLoCo's tuned outer step (as heterogeneous.py's
  arm: the rule's lr and momentum are the outer lr and momentum), DyLU, and
  `async_rounds` rounds."""
  over = _arm(setup, "1x", "diloco", seed)["overrides"]
  hp = over.get("outer.hparams") or {}
  return _policy_arm(setup, seed, "async", {
      "train.rounds": async_rounds(setup),
      "clock.async_learning_rate": over.get(
          "outer.hparams.learning_rate", hp.get("learning_rate", 0.0)),
      "clock.async_momentum": over.get("outer.hparams.momentum",
                                       hp.get("momentum", 0.9))})


def _async_arms(setup, seed):
  return {"wait_all": _timed_arm(setup, seed, "wait_all"),
          "async": _async_arm(setup, seed)}


def _dylu_arms(setup, seed):
  return {"wait_all": _timed_arm(setup, seed, "wait_all"),
          "dylu": _timed_arm(setup, seed, "dylu")}


def sim_curve(summary: Dict[str, Any], run_dir: str):
  """The run's test loss against simulated seconds at each evaluation along
  the way (metrics.jsonl eval rows, in round order, the last at its last
  round).

  These are the periodic evaluations, on a fixed sample of the test split
  (data.eval_batches), not the whole-split final one of final_test. Returns
  ((sim_seconds, test loss) pairs, '') or (None, why not).
  """
  del summary  # The rows have it all.
  path = os.path.join(run_dir, METRICS_FILE)
  if not os.path.exists(path):
    return None, f"no {METRICS_FILE}"
  # By round, the last row of each (a resumed run may repeat one).
  by_round = {r.get("round"): r for r in read_rows(path, kind="eval")}
  rows = [by_round[k] for k in sorted(k for k in by_round
                                      if isinstance(k, int))]
  curve = tuple((float(r["sim_seconds"]), float(r["test/loss"])) for r in rows
                if all(isinstance(r.get(f), (int, float))
                       and math.isfinite(r[f])
                       for f in ("sim_seconds", "test/loss")))
  if not curve:
    return None, f"no evaluation with sim_seconds and test/loss in {path}"
  return curve, ""


# claims.Claim's fields, as dicts: claims.py makes them Claims (it imports
# this module, so this one does not import Claim from it).
CLAIMS = (
    dict(id="async_matches_sync_per_update",
         statement="With replicas of unequal speed (4× spread), asynchronous "
                   "DiLoCo with Delayed Nesterov and DyLU is no worse than "
                   "synchronous DiLoCo for the same inner steps.",
         source="Asynchronous Local-SGD, arXiv 2401.09135 (abstract: up to "
                "150M on C4)",
         published="matches synchronous Local-SGD in perplexity per update "
                   "step",
         budget="1x", arms=_async_arms, judge=judge_async),
    dict(id="dylu_beats_wait_all_time_to_target",
         statement="With replicas of unequal speed (4× spread), DyLU (each "
                   "replica takes steps in proportion to its speed) reaches "
                   "a target loss in less simulated time than waiting for "
                   "the slowest replica.",
         source="Asynchronous Local-SGD, arXiv 2401.09135 (DyLU; abstract)",
         published="significantly less wall-clock time than synchronous "
                   "Local-SGD (with DN, asynchronous; no number in the "
                   "abstract)",
         budget="1x", arms=_dylu_arms, judge=judge_dylu_time,
         measure=sim_curve),
)
