"""Claims: small fixed experiments that check published results, and a verdict.

Each `Claim` is data: an id, the statement, its source (paper and table or
figure), the published number, a builder of its arms and a judge. All claims'
arms run in one comparison (`run_comparison`), an arm that several claims use
(the ddp arm, the tuned DiLoCo arm) once; each claim is then judged on the
test-split loss (`final_test['loss']`, nats per byte) of its arms, paired per
seed. Validation is for tuning only and is never read here.

Sources (see docs/algorithms.md for the rules in the project's words):
  DiLoCo, Douillard et al., arXiv 2311.08105: outer optimizer, H and
    dropped-gradient ablations.
  Scaling laws for DiLoCo, Charles et al., arXiv 2503.09799, Table 4.
  OpenDiLoCo, arXiv 2407.07852; INTELLECT-1, arXiv 2412.01152; Streaming
    DiLoCo, arXiv 2501.18512: quantized outer gradients.
  FedProx, Li et al., arXiv 1812.06127.

Verdict rules (`RULES`, also written into docs/claims.md). Every compared
quantity is a relative test-loss difference in percent,
d = 100·(L_a − L_b)/L_b (positive: a is worse), computed per seed on arms
that share that seed, then summarised by `report.seed_stats`. Its noise is

  noise = max(TOL_PCT, the std over seeds of d),

so one seed leaves only the tolerance. Pairing by seed takes out what the
seed does to both arms alike (initial parameters, data order): two arms that
differ only in their outer-gradient codec can agree to 0.01% on every seed
while each arm's loss moves by several percent between seeds, and only the
former says whether the codec costs anything. A difference is *resolved* when
|mean d| > noise. Direction claims ("A beats B", "the gap grows") hold when
resolved in the claimed direction, do not hold when resolved against it, and
are inconclusive otherwise. No-loss claims ("A is no worse than B") do not
hold when mean d > noise; size claims ("costs about X%") do not hold when
mean d > 2·X + noise (more than the same order as published); otherwise both
hold when noise <= MAX_NOISE_PCT and are inconclusive when noisier (seeds
that disagree this much cannot confirm a small effect). A claim with any arm
missing, not completed or with a non-finite test loss is NOT RUN, never given
a verdict.
"""

import copy
import json
import math
import os
from typing import (Any, Callable, Dict, List, NamedTuple, Optional, Sequence,
                    Tuple)

import ml_collections

from fedjax_lab import config_validation
from fedjax_lab.config_validation import ConfigError
from fedjax_lab.run import progress
from fedjax_lab.run import report
from fedjax_lab.run.compare import run_comparison
from fedjax_lab.run.loop import SUMMARY_FILE
from fedjax_lab.run.overrides import apply_overrides

HOLDS = "holds"
FAILS = "does not hold"
NOISE = "inconclusive: within seed noise"
NOT_RUN = "NOT RUN"

# The smallest relative test-loss difference called real, whatever the seeds
# say: two seeds give a crude std, and 0.5% is below every published effect
# checked here except M = 1's −0.1%.
TOL_PCT = 0.5
# The most noise under which "no loss" or "a small cost" is confirmed.
MAX_NOISE_PCT = 2.0

RULES = (
    "Every compared quantity is a relative test-loss difference in percent, "
    "d = 100·(L_a − L_b)/L_b (positive: a is worse), paired per seed. "
    f"noise = max({TOL_PCT}%, the std of d over seeds); a difference is "
    "resolved when |mean d| > noise. Direction claims (A beats B, a gap "
    "grows or shrinks) hold when resolved in the claimed direction, do not "
    "hold when resolved against it, else are inconclusive. No-loss claims "
    "(A no worse than B) do not hold when mean d > noise; size claims (A "
    "costs about X%) do not hold when mean d > 2·X + noise; otherwise both "
    f"hold when noise ≤ {MAX_NOISE_PCT}% and are inconclusive when noisier. "
    "Any arm missing, not completed or with a non-finite test loss: NOT RUN.")

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


class Judgement(NamedTuple):
  """A claim's verdict, its headline number, a note and per-seed quantities."""
  verdict: str
  ours: str
  note: str
  quantities: Dict[str, List[float]]


class Claim(NamedTuple):
  """A published claim and the experiment that checks it.

  Attributes:
    id: short name (--only).
    statement: the claim in one sentence.
    source: paper (arXiv id) and table or figure.
    published: the published number(s).
    budget: which budget(s) the arms use ('1x', '4x' or '1x+4x').
    arms: (setup, seed) -> {role: arm}; roles are the judge's names.
    judge: {role: [test loss per seed]} -> Judgement.
  """
  id: str
  statement: str
  source: str
  published: str
  budget: str
  arms: Callable[[Setup, int], Dict[str, Dict[str, Any]]]
  judge: Callable[[Dict[str, List[float]]], Judgement]


# -- Numbers. -----------------------------------------------------------------


def rel_pct(a: Sequence[float], b: Sequence[float]) -> List[float]:
  """Per seed, 100·(a − b)/b: how much worse a's loss is than b's, in %."""
  return [100.0 * (x - y) / y for x, y in zip(a, b)]


def noise_pct(q: Sequence[float]) -> float:
  """The noise of a paired quantity q (%, one value per seed): module doc."""
  return max(TOL_PCT, report.seed_stats(q)["std"])


def _pm(q: Sequence[float]) -> str:
  s = report.seed_stats(q)
  return f"{s['mean']:+.2f}% ± {s['std']:.2f}%"


def _mean(q: Sequence[float]) -> float:
  return report.seed_stats(q)["mean"]


def _n(losses: Dict[str, List[float]]) -> int:
  return min(len(v) for v in losses.values())


def direction(q: Sequence[float], noise: float, want: str) -> str:
  """HOLDS/FAILS/NOISE of a direction claim: want 'up' (q > 0) or 'down'."""
  m = _mean(q) * (1 if want == "up" else -1)
  return HOLDS if m > noise else FAILS if m < -noise else NOISE


def no_loss(q: Sequence[float], noise: float, allowed: float = 0.0) -> str:
  """FAILS when q (how much worse, %) exceeds allowed + noise, else HOLDS,
  or NOISE when the noise exceeds MAX_NOISE_PCT."""
  if _mean(q) > allowed + noise:
    return FAILS
  return HOLDS if noise <= MAX_NOISE_PCT else NOISE


def about(q: Sequence[float], published: float, noise: float) -> str:
  """A size claim: q (a cost, %) at most twice the published cost (no_loss)."""
  return no_loss(q, noise, allowed=2 * published)


def _size_text(verdict: str, published: float, noise: float) -> str:
  limit = 2 * published + noise
  return {HOLDS: f"within the allowed {limit:.2f}%",
          FAILS: f"more than the allowed {limit:.2f}%",
          NOISE: f"under the allowed {limit:.2f}%, but the noise is above "
                 f"{MAX_NOISE_PCT}%"}[verdict]


def _all(verdicts) -> str:
  """FAILS if any part fails, HOLDS if every part holds, else NOISE."""
  verdicts = list(verdicts)
  return (FAILS if FAILS in verdicts else
          HOLDS if all(v == HOLDS for v in verdicts) else NOISE)


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


def _m_arm(setup: Setup, m: int, seed: int) -> Dict[str, Any]:
  """DiLoCo with M replicas at 4×, the global batch M·B kept."""
  base = setup.configs["4x"]
  global_batch = base.train.num_replicas * base.inner.batch_size
  if m == 1:
    return _arm(setup, "4x", "diloco_m1", seed, extra={
        "train.num_replicas": 1, "inner.batch_size": global_batch})
  if m == base.train.num_replicas:
    return _arm(setup, "4x", "diloco", seed)
  return _arm(setup, "4x", "diloco", seed, tag=f"_M{m}", extra={
      "train.num_replicas": m, "inner.batch_size": global_batch // m})


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


# -- Judges. ------------------------------------------------------------------


def judge_m1(losses):
  q = rel_pct(losses["diloco M=1"], losses["ddp"])
  noise = noise_pct(q)
  v = no_loss(q, noise)
  return Judgement(v, f"{_pm(q)} (n={_n(losses)})",
                   f"DiLoCo M=1 vs ddp: {_mean(q):+.2f}% (noise {noise:.2f}%); "
                   + {HOLDS: "no worse than data-parallel.",
                      FAILS: "worse than data-parallel beyond seed noise.",
                      NOISE: "not worse beyond noise, but the seeds disagree "
                             "too much to confirm a match."}[v],
                   {"M=1 vs ddp (%)": q})


def _m_gaps(losses):
  return {r: rel_pct(v, losses["ddp"]) for r, v in losses.items()
          if r.startswith("diloco M=")}


def judge_m_grid(losses):
  gaps = _m_gaps(losses)
  roles = list(gaps)
  lo, hi = roles[0], roles[-1]
  growth = [b - a for a, b in zip(gaps[lo], gaps[hi])]
  noise = noise_pct(growth)
  v = direction(growth, noise, "up")
  means = [_mean(gaps[r]) for r in roles]
  monotone = all(b >= a for a, b in zip(means, means[1:]))
  ours = ", ".join(f"{r[len('diloco '):]}: {_pm(gaps[r])}" for r in roles)
  return Judgement(
      v, f"{ours} (n={_n(losses)})",
      f"Gap({hi[7:]}) − gap({lo[7:]}) = {_mean(growth):+.2f} points (noise "
      f"{noise:.2f}); the mean gaps are {'' if monotone else 'not '}monotone "
      "in M. M ≠ base M reuses the outer lr tuned at the base M.",
      {**{f"{r[7:]} vs ddp (%)": g for r, g in gaps.items()},
       f"gap {hi[7:]} − gap {lo[7:]} (points)": growth})


def judge_budget(losses):
  g1 = rel_pct(losses["1x diloco"], losses["1x ddp"])
  g4 = rel_pct(losses["4x diloco"], losses["4x ddp"])
  shrink = [a - b for a, b in zip(g1, g4)]
  noise = noise_pct(shrink)
  v = direction(shrink, noise, "up")
  return Judgement(
      v, f"1×: {_pm(g1)}, 4×: {_pm(g4)} (n={_n(losses)})",
      f"The DiLoCo-vs-ddp gap (base M) goes from {_mean(g1):+.2f}% at 1× to "
      f"{_mean(g4):+.2f}% at 4×: it shrinks by {_mean(shrink):+.2f} points "
      f"(noise {noise:.2f}).",
      {"1× gap (%)": g1, "4× gap (%)": g4,
       "1× gap − 4× gap (points)": shrink})


def judge_outer(losses):
  d_avg = rel_pct(losses["diloco"], losses["fedavg"])
  d_adam = rel_pct(losses["diloco"], losses["fedadam"])
  n_avg = noise_pct(d_avg)
  n_adam = noise_pct(d_adam)
  vs = [direction(d_avg, n_avg, "down"), direction(d_adam, n_adam, "down")]
  v = _all(vs)
  return Judgement(
      v, f"vs FedAvg {_pm(d_avg)}, vs FedAdam {_pm(d_adam)} (n={_n(losses)})",
      f"Nesterov (diloco) vs outer SGD lr 1 (fedavg): {vs[0]} "
      f"(noise {n_avg:.2f}%); vs FedAdam: {vs[1]} (noise {n_adam:.2f}%); "
      "each with its own tuned inner and outer lr.",
      {"diloco vs fedavg (%)": d_avg, "diloco vs fedadam (%)": d_adam})


def _h_of(role: str) -> int:
  return int(role.split("=")[1])


def judge_h(losses, budget_steps: Optional[int] = None):
  roles = sorted(losses, key=_h_of)
  lo, hi = roles[0], roles[-1]
  q = rel_pct(losses[hi], losses[lo])
  noise = noise_pct(q)
  v = about(q, 2.9, noise)
  curve = {f"{r} vs {lo} (%)": rel_pct(losses[r], losses[lo])
           for r in roles[1:]}
  outer = budget_steps // _h_of(hi) if budget_steps else 0
  steps = (f"; at this budget {hi} leaves {outer} outer step"
           f"{'' if outer == 1 else 's'}" if budget_steps else "")
  return Judgement(
      v, f"{hi} vs {lo}: {_pm(q)} (n={_n(losses)})",
      f"{_h_of(hi) // _h_of(lo)}× larger H costs {_mean(q):+.2f}% (noise "
      f"{noise:.2f}%; published: 20× larger H, +2.9%): "
      f"{_size_text(v, 2.9, noise)}{steps}.",
      curve)


def judge_quant(losses):
  qs = {c: rel_pct(v, losses["none"]) for c, v in losses.items() if c != "none"}
  noises = {c: noise_pct(q) for c, q in qs.items()}
  vs = {c: no_loss(q, noises[c]) for c, q in qs.items()}
  v = _all(vs.values())
  return Judgement(
      v, ", ".join(f"{c}: {_pm(q)}" for c, q in qs.items())
      + f" (n={_n(losses)})",
      "; ".join(f"{c} vs fp32 outer gradients {_mean(q):+.2f}% (noise "
                f"{noises[c]:.2f}%): {vs[c]}" for c, q in qs.items()) + ".",
      {f"{c} vs none (%)": q for c, q in qs.items()})


def judge_drop(losses):
  dropped = [r for r in losses if r != "drop 0"][0]
  q = rel_pct(losses[dropped], losses["drop 0"])
  noise = noise_pct(q)
  v = about(q, 2.1, noise)
  return Judgement(
      v, f"{_pm(q)} (n={_n(losses)})",
      f"Dropping each outer gradient with probability {dropped[5:]} costs "
      f"{_mean(q):+.2f}% (noise {noise:.2f}%): {_size_text(v, 2.1, noise)}.",
      {f"{dropped} vs drop 0 (%)": q})


def judge_fedprox(losses):
  roles = [r for r in losses if r.startswith("fedprox")]  # Largest μ first.
  gaps = {r: [abs(x) for x in rel_pct(losses[r], losses["fedavg"])]
          for r in roles}
  shrink = [a - b for a, b in zip(gaps[roles[0]], gaps[roles[-1]])]
  noise = noise_pct(shrink)
  v = direction(shrink, noise, "up")
  all_close = all(_mean(g) <= noise for g in gaps.values())
  return Judgement(
      v, "abs gap " + ", ".join(f"{r[8:]}: {_pm(g).lstrip('+')}"
                                for r, g in gaps.items())
      + f" (n={_n(losses)})",
      f"The absolute gap to FedAvg shrinks by {_mean(shrink):+.2f} points from "
      f"{roles[0][8:]} to {roles[-1][8:]} (noise {noise:.2f})"
      + ("; every μ is within noise of FedAvg, so the trend is not resolved"
         if all_close and v == NOISE else "") + ". FedProx runs on tuned "
      "FedAvg's arm (its inner lr), so μ = 0 would be that arm exactly.",
      {f"{r[8:]} vs fedavg, absolute (%)": g for r, g in gaps.items()}
      | {"shrink (points)": shrink})


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
)
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
               arm=arm_fn, h_grid=h_grid,
               m_grid=m_grid, mu_grid=mus)


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
  return [_outcome(c, plans[c.id], by_name, errors.get(c.id), setup)
          for c in claims]


def _outcome(claim, plan, by_name, error, setup) -> Outcome:
  losses, why, tpp = {}, [], {}
  for role, arms in plan.items():
    losses[role] = []
    for a in arms:
      r = by_name.get(a["name"])
      loss, reason = _test_loss(r)
      losses[role].append(loss)
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
  return Outcome(claim, claim.judge(losses, **kwargs), "", losses, names, tpp)


# -- The page. ----------------------------------------------------------------


def _budget_text(o: Outcome) -> str:
  parts = []
  for b in o.claim.budget.split("+"):
    tpp = o.tokens_per_param.get(b)
    parts.append(f"{BUDGETS[b]} ({tpp:.1f} tokens/param)" if tpp else
                 f"{BUDGETS[b]}")
  return ", ".join(parts)


def _cell(x: Optional[float], fmt: str = "{:.4f}") -> str:
  return "—" if x is None else fmt.format(x)


def _stats_cell(values: Sequence[Optional[float]], fmt: str) -> str:
  if any(v is None for v in values) or not values:
    return "—"
  s = report.seed_stats(values)
  return f"{fmt.format(s['mean'])} ± {fmt.replace('+', '').format(s['std'])}"


def render(outcomes: Sequence[Outcome], *, command: str, date: str,
           machine: str, seeds: int) -> str:
  """docs/claims.md: header, summary table, one section per claim."""
  budgets = {}
  for o in outcomes:
    budgets.update(o.tokens_per_param)
  budget_line = ", ".join(f"{BUDGETS[b]} = {budgets[b]:.1f} tokens/param"
                          for b in sorted(budgets)) or "(no arm completed)"
  lines = [
      "# Published claims, checked at small scale",
      "",
      "Generated by `experiments/claims.py` (fedjax_lab/run/claims.py holds "
      "the claims, their arms and judges); do not edit by hand.",
      "",
      f"- Command: `{command}`",
      f"- Date (UTC): {date}",
      f"- Machine: {machine}",
      f"- Seeds: {seeds} (0 … {seeds - 1}); each arm's seed sets its data "
      "order and its initial parameters.",
      f"- Budgets: {budget_line} (1× is a quarter of 4×'s rounds).",
      "- Metric: test-split loss (nats/byte, whole split) at the end of "
      "training; validation is only used to tune the arms.",
      "- Arms: configs/compare.py's tuned arms (inner lr and outer "
      "hyperparameters chosen on the validation split by its tuning sweep, "
      "configs/tuned.json); a claim's variants (H, M, codec, drop, μ) change "
      "only that field of the tuned arm. Runs in the workdir, one per arm "
      "and seed, named <budget>_<arm>_s<seed>.",
      f"- Verdict rules: {RULES}",
      "",
      "| claim | source | published | ours (mean ± std) | verdict |",
      "|---|---|---|---|---|",
  ]
  for o in outcomes:
    j = o.judgement
    lines.append(f"| {o.claim.id} | {o.claim.source} | {o.claim.published} | "
                 f"{j.ours if j else '—'} | {j.verdict if j else NOT_RUN} |")
  for o in outcomes:
    j = o.judgement
    lines += ["", f"## {o.claim.id}", "", o.claim.statement, "",
              f"- Source: {o.claim.source}; published: {o.claim.published}.",
              f"- Budget: {_budget_text(o)}.",
              f"- Verdict: **{j.verdict if j else NOT_RUN}**. "
              + (j.note if j else f"Not judged: {o.why_not_run}."), ""]
    n = max(len(v) for v in o.losses.values())
    head = " | ".join(f"seed {s}" for s in range(n))
    lines += [f"| test loss | {head} | mean ± std | arm |",
              "|---|" + "---|" * (n + 2)]
    for role, values in o.losses.items():
      cells = " | ".join(_cell(v) for v in values)
      arm = o.arm_names[role][0].rsplit("_s", 1)[0] + "_s*"
      lines.append(f"| {role} | {cells} | {_stats_cell(values, '{:.4f}')} | "
                   f"{arm} |")
    if j:
      lines += ["", f"| quantity | {head} | mean ± std |",
                "|---|" + "---|" * (n + 1)]
      for label, values in j.quantities.items():
        cells = " | ".join(_cell(v, "{:+.2f}") for v in values)
        stats = _stats_cell(values, "{:+.2f}")
        lines.append(f"| {label} | {cells} | {stats} |")
  return "\n".join(lines) + "\n"
