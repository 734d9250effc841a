"""Verdicts of the claims: paired seed differences, noise, and the judges.

(Over 400 lines on purpose: every verdict rule in one module, read side by side.)

Verdict rules (`RULES`, also written into docs/claims.md). Every compared
quantity is a relative test-loss difference in percent,
d = 100·(L_a − L_b)/L_b (positive: a is worse; for a claim about time, of
the simulated seconds to a target test loss), computed per seed on arms that
share that seed, then summarised by `report.seed_stats`. Its noise is

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

from typing import Dict, List, NamedTuple, Optional, Sequence

from fedjax_lab.run import report

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
    "d = 100·(L_a − L_b)/L_b (positive: a is worse), paired per seed; a "
    "claim about time compares the simulated seconds to a target test loss "
    "the same way. "
    f"noise = max({TOL_PCT}%, the std of d over seeds); a difference is "
    "resolved when |mean d| > noise. Direction claims (A beats B, a gap "
    "grows or shrinks) hold when resolved in the claimed direction, do not "
    "hold when resolved against it, else are inconclusive. No-loss claims "
    "(A no worse than B) do not hold when mean d > noise; size claims (A "
    "costs about X%) do not hold when mean d > 2·X + noise; otherwise both "
    f"hold when noise ≤ {MAX_NOISE_PCT}% and are inconclusive when noisier. "
    "Any arm missing, not completed or with a non-finite test loss: NOT RUN.")


class Judgement(NamedTuple):
  """A claim's verdict, its headline number, a note and per-seed quantities."""
  verdict: str
  ours: str
  note: str
  quantities: Dict[str, List[float]]


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


# -- The frontier methods (experiments/study/frontier_claims.py). -------------


def _versus(losses, a: str, b: str):
  """(q, noise): per seed how much worse arm a's loss is than b's (%), and
  the noise of that paired difference."""
  q = rel_pct(losses[a], losses[b])
  return q, noise_pct(q)


def _beats(losses, method: str, what: str):
  """A direction claim: `method` has lower loss than the DiLoCo arm.

  q = rel_pct(method, diloco) per seed. Holds when mean q < −noise (lower
  beyond seed noise), does not hold when mean q > noise (higher beyond it),
  else inconclusive: a tie does not confirm "beats".
  """
  q, noise = _versus(losses, method, "diloco")
  v = direction(q, noise, "down")
  return Judgement(
      v, f"{_pm(q)} (n={_n(losses)})",
      f"{what} vs DiLoCo: {_mean(q):+.2f}% (noise {noise:.2f}%); "
      + {HOLDS: "lower loss beyond seed noise.",
         FAILS: "higher loss beyond seed noise.",
         NOISE: "within seed noise, so not shown better."}[v]
      + " Each arm at its own tuned point.",
      {f"{method} vs diloco (%)": q})


def _matches(losses, method: str, baseline: str, what: str, extra: str = ""):
  """A no-loss claim: `method` is no worse than `baseline`.

  q = rel_pct(method, baseline) per seed. Does not hold when mean q > noise;
  otherwise holds when noise <= MAX_NOISE_PCT, else inconclusive.
  """
  q, noise = _versus(losses, method, baseline)
  v = no_loss(q, noise)
  return Judgement(
      v, f"{_pm(q)} (n={_n(losses)})",
      f"{what}: {_mean(q):+.2f}% (noise {noise:.2f}%); "
      + {HOLDS: "no worse beyond seed noise.",
         FAILS: "worse beyond seed noise.",
         NOISE: "not worse beyond noise, but the seeds disagree too much "
                "to confirm a match."}[v] + extra,
      {f"{method} vs {baseline} (%)": q})


def judge_muloco(losses):
  """MuLoCo (Muon inner) beats DiLoCo (AdamW inner): a direction claim.

  Roles 'diloco', 'muloco'. q = 100·(L_muloco − L_diloco)/L_diloco per seed;
  holds when mean q < −noise, does not hold when mean q > noise, else
  inconclusive (noise = noise_pct(q)).
  """
  return _beats(losses, "muloco", "Muon inside DiLoCo (MuLoCo)")


def judge_sparseloco(losses):
  """SparseLoCo beats full-precision DiLoCo: a direction claim.

  Roles 'diloco', 'sparseloco'. q = 100·(L_sparseloco − L_diloco)/L_diloco
  per seed; holds when mean q < −noise, does not hold when mean q > noise,
  else inconclusive (noise = noise_pct(q)).
  """
  return _beats(losses, "sparseloco",
                "SparseLoCo (top-k 128 per 64×64 chunk, 2-bit values)")


def judge_noloco(losses):
  """NoLoCo converges as fast as DiLoCo or faster: a no-loss claim at equal
  budget (the final test loss stands for convergence speed).

  Roles 'diloco', 'noloco'. q = 100·(L_noloco − L_diloco)/L_diloco per seed;
  does not hold when mean q > noise; otherwise holds when noise <=
  MAX_NOISE_PCT, else inconclusive (noise = noise_pct(q)).
  """
  return _matches(losses, "noloco", "diloco", "NoLoCo vs DiLoCo",
                  " Same tokens: a lower or equal final loss is read as "
                  "converging at least as fast.")


def judge_desloc(losses):
  """DES-LOC keeps Local Adam's quality: a no-loss claim.

  Roles 'local_adam', 'desloc' (the same arm but for the moments' sync
  periods). q = 100·(L_desloc − L_local_adam)/L_local_adam per seed; does not
  hold when mean q > noise; otherwise holds when noise <= MAX_NOISE_PCT, else
  inconclusive (noise = noise_pct(q)). The traffic saving follows from the
  periods and is not judged: per round one model copy plus 1/u_every +
  1/v_every moment copies, against Local Adam's 3.
  """
  return _matches(losses, "desloc", "local_adam", "DES-LOC vs Local Adam",
                  " The traffic is set by the periods (1 + 1/u_every + "
                  "1/v_every model copies per round vs 3), not measured here.")


# -- Time, unequal speeds (experiments/study/time_claims.py). -----------------


def judge_async(losses):
  """Async DiLoCo (DN + DyLU) matches synchronous DiLoCo per update: a
  no-loss claim at equal inner steps.

  Roles 'wait_all', 'async' (time_claims.async_rounds gives the async arm
  about the wait_all arm's inner steps). q = 100·(L_async − L_wait_all)/
  L_wait_all per seed; does not hold when mean q > noise; otherwise holds
  when noise <= MAX_NOISE_PCT, else inconclusive (noise = noise_pct(q)).
  """
  return _matches(losses, "async", "wait_all",
                  "Async DN + DyLU vs synchronous DiLoCo (wait_all)",
                  " About the same inner steps in total: the async arm runs "
                  "more rounds of M arrivals, as DyLU shortens slow tasks.")


def _seconds_to(curve, target: float) -> float:
  """Simulated seconds at a curve's first evaluation at or below target."""
  return next(s for s, loss in curve if loss <= target)


def judge_dylu_time(curves):
  """DyLU reaches a target test loss sooner than wait_all: a direction claim
  on simulated time.

  Roles 'wait_all', 'dylu'; each value is one run's (sim_seconds, test loss)
  per evaluation along the way, in order, the last at its last round
  (time_claims.sim_curve). Per seed the target is the worse (higher) of the
  two curves' last test losses, so both reach it (the one that ends worse at
  its end, or sooner); T is the simulated seconds at a run's first
  evaluation at or below it, and q = 100·(T_dylu − T_wait_all)/T_wait_all.
  Holds when mean q < −noise (dylu faster beyond seed noise), does not hold
  when mean q > noise, else inconclusive (noise = noise_pct(q)).
  """
  pairs = list(zip(curves["wait_all"], curves["dylu"]))
  targets = [max(w[-1][1], d[-1][1]) for w, d in pairs]
  t_wait = [_seconds_to(w, t) for (w, _), t in zip(pairs, targets)]
  t_dylu = [_seconds_to(d, t) for (_, d), t in zip(pairs, targets)]
  q = rel_pct(t_dylu, t_wait)
  noise = noise_pct(q)
  v = direction(q, noise, "down")
  return Judgement(
      v, f"dylu {_mean(t_dylu):.3g} s vs wait_all {_mean(t_wait):.3g} s to "
      f"target: {_pm(q)} (n={_n(curves)})",
      "Simulated seconds to a target test loss (per seed the worse of the "
      "two at the last evaluation: "
      f"{', '.join(f'{t:.4f}' for t in targets)}), dylu vs wait_all: "
      f"{_mean(q):+.2f}% (noise {noise:.2f}%); "
      + {HOLDS: "dylu gets there sooner beyond seed noise.",
         FAILS: "dylu gets there later beyond seed noise.",
         NOISE: "within seed noise, so not shown faster."}[v]
      + " Times are at evaluations (their resolution).",
      {"wait_all to target (ms)": [1e3 * t for t in t_wait],
       "dylu to target (ms)": [1e3 * t for t in t_dylu],
       "dylu vs wait_all (%)": q})
