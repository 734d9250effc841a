"""Claims: small fixed experiments that check published results, and a verdict.

Each `Claim` is data: an id, the statement, its source (paper and table or
figure), the published number, a builder of its arms and a judge. All claims'
arms run in one comparison (`run_comparison`), an arm that several claims use
(the ddp arm, the tuned DiLoCo arm) once; each claim is then judged on the
test-split loss (`final_test['loss']`, nats per byte) of its arms or its
`measure` of each run, paired per seed; validation is for tuning only.

Sources (see docs/algorithms.md for the rules in the project's words):
  DiLoCo, Douillard et al., arXiv 2311.08105: outer optimizer, H and
    dropped-gradient ablations; Table 3 (non-i.i.d. data): `data_claims`.
  Scaling laws for DiLoCo, Charles et al., arXiv 2503.09799, Table 4.
  OpenDiLoCo, arXiv 2407.07852; INTELLECT-1, arXiv 2412.01152; Streaming
    DiLoCo, arXiv 2501.18512: quantized outer gradients.
  FedProx, Li et al., arXiv 1812.06127.
  The frontier methods in `frontier_claims`, asynchronous Local-SGD (arXiv
    2401.09135) in `time_claims`. Rules and judges: `verdicts`; the page
    (docs/claims.md): `claims_page.render`.
"""

import copy
import json
import math
import os
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import ml_collections

from experiments.study import data_claims
from experiments.study import frontier_claims
from experiments.study import time_claims
from experiments.study.verdicts import judge_budget
from experiments.study.verdicts import judge_drop
from experiments.study.verdicts import judge_fedprox
from experiments.study.verdicts import judge_h
from experiments.study.verdicts import judge_m1
from experiments.study.verdicts import judge_m_grid
from experiments.study.verdicts import judge_outer
from experiments.study.verdicts import judge_quant
from experiments.study.verdicts import Judgement
from fedjax_lab import config_validation
from fedjax_lab.config_validation import ConfigError
from fedjax_lab.run import progress
from fedjax_lab.run.compare import run_comparison
from fedjax_lab.run.loop import SUMMARY_FILE
from fedjax_lab.run.overrides import apply_overrides

BUDGETS = {"1x": "1×", "4x": "4×"}
ArmFn = Callable[..., Dict[str, Any]]


class Setup(NamedTuple):
  """What the arm builders need: budget configs, an arm factory, grids.

  Attributes:
    base: the config every arm's overrides apply to (run_comparison's).
    configs: {'1x', '4x'}: the base config at each token budget (arm()
      reads the budget from it; each arm's overrides carry its rounds).
    arm: tuned_arm-shaped factory (config, key, *, seed, inner_steps, name,
      extra) -> {'name', 'overrides'}.
    h_grid: inner steps H of large_h_cheap (each divides the 1× budget).
    m_grid: replicas M of gap_grows_with_m (1 first, the base M last).
    mu_grid: FedProx μ of fedprox_to_fedavg, largest first.
    compressors: the quantized_outer_free codecs (compress registry names).
    drop_prob: the outer-gradient drop probability of drop_half_costs_2pct.
  """
  base: ml_collections.ConfigDict
  configs: Dict[str, ml_collections.ConfigDict]
  arm: ArmFn
  h_grid: Tuple[int, ...]
  m_grid: Tuple[int, ...]
  mu_grid: Tuple[float, ...]
  compressors: Tuple[str, ...] = ("int8", "fp4")
  drop_prob: float = 0.5


class Claim(NamedTuple):
  """A published claim and the experiment that checks it.

  Attributes:
    id: short name (--only).
    statement: the claim in one sentence.
    source: paper (arXiv id) and table or figure.
    published: the published number(s).
    budget: which budget(s) the arms use ('1x', '4x' or '1x+4x').
    arms: (setup, seed) -> {role: arm}; roles are the judge's names.
    judge: {role: [test loss, or measure, per seed]} -> Judgement.
    measure: (summary, run dir) -> (value, '' or why not); None: test loss.
  """
  id: str
  statement: str
  source: str
  published: str
  budget: str
  arms: Callable[[Setup, int], Dict[str, Dict[str, Any]]]
  judge: Callable[[Dict[str, List[Any]]], Judgement]
  measure: Optional[Callable[[Dict[str, Any], str], Tuple[Any, str]]] = None


# -- Arms. --------------------------------------------------------------------


def _arm(setup: Setup, budget: str, key: str, seed: int, *, tag: str = "",
         inner_steps: Optional[int] = None,
         extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """The tuned arm `key` at `budget`, named so equal arms share a name."""
  name = f"{budget}_{key}{tag}"
  # The lr schedule spans the arm's own rounds × H; claims read only the
  # final evaluation, so no periodic ones.
  a = setup.arm(setup.configs[budget], key, seed=seed, inner_steps=inner_steps,
                name=f"{name}_s{seed}",
                extra={"inner.schedule_steps": 0, "train.eval_every": 0,
                       **(extra or {})})
  return dict(a, group=name)  # The report's seed statistics group by it.


def _m_arm(setup: Setup, m: int, seed: int, budget: str = "4x", tag: str = "",
           extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """DiLoCo with M replicas, the global batch M·B kept (tag, extra: _arm's)."""
  base = setup.configs[budget]
  if m == base.train.num_replicas and m != 1:  # M = 1: the m1 arm.
    return _arm(setup, budget, "diloco", seed, tag=tag, extra=extra)
  b = base.train.num_replicas * base.inner.batch_size // m  # M·B kept.
  extra = {"train.num_replicas": m, "inner.batch_size": b, **(extra or {})}
  return _arm(setup, budget, "diloco_m1" if m == 1 else "diloco", seed,
              tag=tag if m == 1 else f"_M{m}{tag}", extra=extra)


def _m1_arms(setup, seed):
  return {"ddp": _arm(setup, "4x", "ddp", seed),
          "diloco M=1": _m_arm(setup, 1, seed)}


def _m_grid_arms(setup, seed):
  arms = {"ddp": _arm(setup, "4x", "ddp", seed)}
  arms.update({f"diloco M={m}": _m_arm(setup, m, seed) for m in setup.m_grid})
  return arms


def _budget_arms(setup, seed):
  return {f"{b} {k}": _arm(setup, b, k, seed)
          for b in ("1x", "4x") for k in ("ddp", "diloco")}


def _outer_arms(setup, seed):
  return {k: _arm(setup, "1x", k, seed)
          for k in ("diloco", "fedavg", "fedadam")}


def _h_arms(setup, seed):
  base_h = setup.configs["1x"].inner.steps
  return {f"H={h}": _arm(setup, "1x", "diloco", seed,
                         tag="" if h == base_h else f"_H{h}",
                         inner_steps=None if h == base_h else h)
          for h in setup.h_grid}


def _quant_arms(setup, seed):
  arms = {"none": _arm(setup, "1x", "diloco", seed)}
  arms.update({c: _arm(setup, "1x", "diloco", seed, tag=f"_{c}",
                       extra={"comm.compressor": c})
               for c in setup.compressors})
  return arms


def _drop_arms(setup, seed):
  p = setup.drop_prob
  return {"drop 0": _arm(setup, "1x", "diloco", seed),
          f"drop {p:g}": _arm(setup, "1x", "diloco", seed, tag=f"_drop{p:g}",
                              extra={"train.outer_drop_prob": p})}


def _fedprox_arms(setup, seed):
  """FedProx on tuned FedAvg's arm (same inner lr), so μ = 0 is that arm."""
  arms = {"fedavg": _arm(setup, "1x", "fedavg", seed)}
  for mu in setup.mu_grid:
    a = copy.deepcopy(_arm(setup, "1x", "fedavg", seed, tag=f"_prox{mu:g}"))
    over = {k: v for k, v in a["overrides"].items()
            if not k.startswith("outer.hparams.")}  # FedAvg's own, if any.
    over.update({"outer.name": "fedprox", "outer.hparams": {"mu": mu}})
    arms[f"fedprox μ={mu:g}"] = dict(a, overrides=over)
  return arms


CLAIMS = (
    Claim("m1_matches_ddp",
          "DiLoCo with one replica (M=1) is no worse than data-parallel "
          "training at enough budget.",
          "DiLoCo scaling laws, arXiv 2503.09799, Table 4 (35M params)",
          "M=1: −0.1% loss vs data-parallel", "4x", _m1_arms, judge_m1),
    Claim("gap_grows_with_m",
          "The DiLoCo-vs-data-parallel loss gap grows with the number of "
          "replicas M.",
          "DiLoCo scaling laws, arXiv 2503.09799, Table 4 (35M params)",
          "M=1 −0.1%, M=2 +0.7%, M=4 +2.0%, M=8 +3.9%", "4x", _m_grid_arms,
          judge_m_grid),
    Claim("gap_shrinks_with_budget",
          "The DiLoCo-vs-data-parallel gap shrinks as the model and its "
          "token budget grow.",
          "DiLoCo scaling laws, arXiv 2503.09799, Table 4 (the gap across "
          "model sizes)",
          "M=4: +2.0% at 35M, smaller at larger sizes", "1x+4x",
          _budget_arms, judge_budget),
    Claim("nesterov_best_outer",
          "Outer Nesterov momentum (DiLoCo) beats outer SGD (FedAvg) and "
          "outer Adam (FedOpt).",
          "DiLoCo, arXiv 2311.08105, outer-optimizer ablation",
          "Nesterov best; SGD and Adam worse", "1x", _outer_arms,
          judge_outer),
    Claim("large_h_cheap",
          "Many more inner steps per round cost little: H=1000 is only 2.9% "
          "worse than H=50.",
          "DiLoCo, arXiv 2311.08105, communication-frequency (H) ablation",
          "H=1000 vs H=50: +2.9%", "1x", _h_arms, judge_h),
    Claim("quantized_outer_free",
          "Quantizing the outer gradients (int8, 4-bit E3M0) costs no loss.",
          "OpenDiLoCo arXiv 2407.07852, INTELLECT-1 arXiv 2412.01152 (int8); "
          "Streaming DiLoCo arXiv 2501.18512 (4-bit E3M0)",
          "no loss (0%)", "1x", _quant_arms, judge_quant),
    Claim("drop_half_costs_2pct",
          "Dropping 50% of the outer gradients costs about 2%.",
          "DiLoCo, arXiv 2311.08105, dropped outer gradients ablation",
          "+2.1% loss", "1x", _drop_arms, judge_drop),
    Claim("fedprox_to_fedavg",
          "FedProx with μ→0 tends to FedAvg (μ=0 is FedAvg).",
          "FedProx, Li et al., arXiv 1812.06127 (its proximal term)",
          "μ=0 ≡ FedAvg", "1x", _fedprox_arms, judge_fedprox),
) + tuple(Claim(**c) for c in time_claims.CLAIMS + data_claims.CLAIMS
          + frontier_claims.CLAIMS)  # The frontier claims last (their test).
CLAIM_IDS = tuple(c.id for c in CLAIMS)


# -- Setup. -------------------------------------------------------------------


def _at_rounds(config, rounds: int) -> ml_collections.ConfigDict:
  config = config.copy_and_resolve_references()
  config.train.rounds = rounds
  return config


def make_setup(base_config: ml_collections.ConfigDict, arm_fn: ArmFn,
               size: str) -> Setup:
  """The budgets and grids over `base_config` (its rounds are the 4× budget).

  size 'smoke' keeps the grids short (fewer arms) so tests run in seconds.
  """
  four = _at_rounds(base_config, base_config.train.rounds)
  one = _at_rounds(base_config, max(1, base_config.train.rounds // 4))
  h, m = one.inner.steps, one.train.num_replicas
  steps = one.train.rounds * h
  if size == "smoke":
    candidates, mus = (h, 3 * h), (0.1, 0.001)
  else:
    candidates, mus = (10, 25, 50, 100), (0.1, 0.01, 0.001)
  if not all(steps % c == 0 for c in candidates):
    candidates = (h // 2, h, 2 * h, 4 * h)
  h_grid = tuple(sorted({c for c in candidates if c >= 1 and steps % c == 0}))
  m_grid = tuple(sorted({1, max(1, m // 2), m}))
  return Setup(base=base_config, configs={"1x": one, "4x": four},
               arm=arm_fn, h_grid=h_grid, m_grid=m_grid, mu_grid=mus)


def _arms_of(claim: Claim, setup: Setup, seeds: Sequence[int]):
  """{role: [arm per seed]} of one claim."""
  out = {}
  for s in seeds:
    for role, a in claim.arms(setup, s).items():
      out.setdefault(role, []).append(a)
  return out


def _check(setup: Setup, arm: Dict[str, Any]) -> None:
  """Raises ConfigError when the arm's config (as it will run) is invalid."""
  cfg = apply_overrides(setup.base, arm["overrides"])
  config_validation.validate(cfg, device_count=_device_count())


def _device_count() -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.device_count()


def _test_loss(result: Optional[Dict[str, Any]]) -> Tuple[Optional[float], str]:
  """(loss, '') of a completed arm, or (None, why it does not count)."""
  if result is None:
    return None, "no summary"
  if result.get("status") != "completed":
    return None, f"status {result.get('status')!r}"
  loss = (result.get("final_test") or {}).get("loss")
  if not isinstance(loss, (int, float)) or not math.isfinite(loss):
    return None, f"test loss {loss!r}"
  return float(loss), ""


def _from_disk(workdir: str, arm: Dict[str, Any]) -> Optional[Dict[str, Any]]:
  path = os.path.join(workdir, arm["name"], SUMMARY_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      summary = json.load(f)
  except (OSError, ValueError):
    return None
  if summary.get("rounds") != arm["overrides"].get("train.rounds"):
    return None  # Another budget's leftover.
  return {"name": arm["name"], **summary}


class Outcome(NamedTuple):
  """One claim's result: the judgement (None: NOT RUN) and its evidence."""
  claim: Claim
  judgement: Optional[Judgement]
  why_not_run: str
  losses: Dict[str, List[Optional[float]]]
  arm_names: Dict[str, List[str]]
  tokens_per_param: Dict[str, float]


def run_claims(base_config: ml_collections.ConfigDict, arm_fn: ArmFn,
               workdir: str, *, size: str = "cpu", seeds: int = 2,
               only: Optional[Sequence[str]] = None,
               reuse: bool = True) -> List[Outcome]:
  """Runs the claims' arms (once each, in one comparison) and judges them.

  Args:
    base_config: the comparison's base config; its rounds are the 4× budget.
    arm_fn: configs/compare.py's tuned_arm (or one shaped like it).
    workdir: arms run in workdir/<arm name>.
    size: 'cpu' or 'smoke' (shorter grids).
    seeds: seeds 0 .. seeds-1 for every arm.
    only: claim ids to run (default all).
    reuse: reuse completed arms.

  Returns:
    One Outcome per claim, in CLAIMS order; a claim with an arm that did not
    complete has judgement None. A claim whose arms do not validate is not
    run; when the comparison stops on an error, what is on disk is judged.
  """
  setup = make_setup(base_config, arm_fn, size)
  claims = [c for c in CLAIMS if only is None or c.id in only]
  seed_list = list(range(seeds))
  plans, errors, unique = {}, {}, {}
  for c in claims:
    plans[c.id] = _arms_of(c, setup, seed_list)
    try:
      for arms in plans[c.id].values():
        for a in arms:
          old = unique.get(a["name"])
          if old is not None and old["overrides"] != a["overrides"]:
            raise ValueError(f"two different arms named {a['name']!r}")
          _check(setup, a)
    except ConfigError as e:
      errors[c.id] = f"its arms do not validate: {e}"
      progress.warn("claim %s: NOT RUN: %s", c.id, errors[c.id])
      continue
    for arms in plans[c.id].values():
      for a in arms:
        unique.setdefault(a["name"], a)
  by_name = {}
  if unique:
    try:
      results = run_comparison(base_config, list(unique.values()), workdir,
                               reuse=reuse)
      by_name = {r["name"]: r for r in results}
    except Exception as e:  # pylint: disable=broad-except
      # Judge what completed; the claims of the failed arm are NOT RUN.
      progress.warn("claims: the comparison stopped: %s: %s",
                    type(e).__name__, e)
      by_name = {n: r for n, r in ((n, _from_disk(workdir, a))
                                   for n, a in unique.items()) if r}
  return [_outcome(c, plans[c.id], by_name, errors.get(c.id), setup, workdir)
          for c in claims]


def _outcome(claim, plan, by_name, error, setup, workdir) -> Outcome:
  losses, values, why, tpp = {}, {}, [], {}
  for role, arms in plan.items():
    losses[role], values[role] = [], []
    for a in arms:
      r = by_name.get(a["name"])
      loss, reason = _test_loss(r)  # The judge reads it, or the measure:
      value, reason = (claim.measure(r, os.path.join(workdir, a["name"]))
                       if claim.measure and not reason else (loss, reason))
      losses[role].append(loss)
      values[role].append(value)
      if reason:
        why.append(f"{a['name']}: {reason}")
      elif r.get("num_params") and r.get("tokens"):
        budget = a["name"].split("_", 1)[0]
        tpp.setdefault(budget, r["tokens"] / r["num_params"])
  names = {role: [a["name"] for a in arms] for role, arms in plan.items()}
  if error or why:
    return Outcome(claim, None, error or "; ".join(why), losses, names, tpp)
  kwargs = {}
  if claim.judge is judge_h:  # Its note counts the outer steps left.
    kwargs["budget_steps"] = (setup.configs["1x"].train.rounds
                              * setup.configs["1x"].inner.steps)
  return Outcome(claim, claim.judge(values, **kwargs), "", losses, names, tpp)
