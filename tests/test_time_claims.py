"""experiments/study/time_claims.py: the async and DyLU claims' judges on
hand-made numbers, their arms (clock overrides, equal inner steps), the
time-to-target measure read from metrics.jsonl, and the claims' plumbing with
the comparison faked."""

import json

import pytest

from _runner_util import REPO  # noqa: F401  (puts the repo root on sys.path)
from configs import compare as compare_config
from configs import heterogeneous
from experiments.study import claims
from experiments.study import claims_page
from experiments.study import time_claims
from experiments.study import verdicts

IDS = ("async_matches_sync_per_update", "dylu_beats_wait_all_time_to_target")
VERDICTS = (verdicts.HOLDS, verdicts.FAILS, verdicts.NOISE)
# Noise = max(0.5%, the ddof-1 std over seeds of the paired q); q in %.


def _claim(cid):
  return {c.id: c for c in claims.CLAIMS}[cid]


# ---------------------------------------------------------------------------
# judge_async: a no-loss claim. q = 100·(L_async − L_wait_all)/L_wait_all;
# does not hold when mean q > noise; otherwise holds when noise ≤ 2%, else
# inconclusive.


@pytest.mark.parametrize("async_losses, verdict", [
    # q = +0.2%, 0%: mean 0.1, std 0.14 → noise 0.5; 0.1 ≤ 0.5, noise ≤ 2%.
    ([2.004, 2.0], verdicts.HOLDS),
    # q = −5%, −4%: mean −4.5 ≤ noise 0.71, noise ≤ 2%: better is no worse.
    ([1.9, 1.92], verdicts.HOLDS),
    # q = +3%, +4%: mean 3.5, std 0.71 → noise 0.71; 3.5 > 0.71.
    ([2.06, 2.08], verdicts.FAILS),
    # q = −5%, +7%: mean 1, std 8.49 → noise 8.49; 1 ≤ 8.49 but 8.49 > 2%.
    ([1.9, 2.14], verdicts.NOISE),
])
def test_judge_async(async_losses, verdict):
  j = verdicts.judge_async({"wait_all": [2.0, 2.0], "async": async_losses})
  assert j.verdict == verdict
  assert list(j.quantities) == ["async vs wait_all (%)"]


# ---------------------------------------------------------------------------
# judge_dylu_time: a direction claim on simulated time. Per seed the target
# is the worse of the two curves' last losses; T = seconds at a curve's first
# evaluation at or below it; q = 100·(T_dylu − T_wait_all)/T_wait_all. Holds
# when mean q < −noise, does not hold when mean q > noise, else inconclusive.


def _curve(seconds, losses):
  return tuple(zip(seconds, losses))


WAIT = _curve((1.0, 2.0, 3.0), (3.0, 2.5, 2.0))  # Ends at 2.0 at 3 s.


def test_judge_dylu_time_holds():
  # Seed 0: dylu ends at 2.1 (worse), so the target is 2.1: wait_all first
  # at or below it at 3 s (2.0), dylu at 1.5 s (its end): q = −50%.
  # Seed 1: dylu ends at 1.9 (better), target 2.0 (wait_all's end, 3 s);
  # dylu first ≤ 2.0 at 1.8 s: q = −40%. Mean −45, std 7.07 → noise 7.07;
  # −45 < −7.07: holds.
  d0 = _curve((0.5, 1.0, 1.5), (2.9, 2.4, 2.1))
  d1 = _curve((0.6, 1.2, 1.8), (2.8, 2.3, 1.9))
  j = verdicts.judge_dylu_time({"wait_all": [WAIT, WAIT], "dylu": [d0, d1]})
  assert j.verdict == verdicts.HOLDS
  assert j.quantities["wait_all to target (ms)"] == pytest.approx([3e3, 3e3])
  assert j.quantities["dylu to target (ms)"] == pytest.approx([1.5e3, 1.8e3])
  assert j.quantities["dylu vs wait_all (%)"] == pytest.approx([-50, -40])
  assert " s vs wait_all " in j.ours and j.ours.startswith("dylu 1.65 s")
  assert "2.1000, 2.0000" in j.note  # The targets, per seed.


def test_judge_dylu_time_first_crossing_and_fails():
  # wait_all dips to 2.0 at 2 s, then ends at 2.2 (the worse end): target
  # 2.2, reached first at 2 s. dylu ends at 2.1 and is at or below 2.2 first
  # at 4 s: q = +100% on both seeds, std 0 → noise 0.5; 100 > 0.5: FAILS.
  w = _curve((1.0, 2.0, 3.0), (3.0, 2.0, 2.2))
  d = _curve((2.0, 4.0, 6.0), (2.5, 2.15, 2.1))
  j = verdicts.judge_dylu_time({"wait_all": [w, w], "dylu": [d, d]})
  assert j.quantities["wait_all to target (ms)"] == pytest.approx([2e3, 2e3])
  assert j.quantities["dylu to target (ms)"] == pytest.approx([4e3, 4e3])
  assert j.verdict == verdicts.FAILS


def test_judge_dylu_time_inside_noise():
  # Both end at 2.0 (target 2.0) at their last evaluation: T_wait = 1 s,
  # T_dylu = 0.998 s and 1.001 s → q = −0.2%, +0.1%: mean −0.05, std 0.21
  # → noise 0.5; |−0.05| < 0.5: inconclusive.
  w = _curve((0.5, 1.0), (2.5, 2.0))
  d0, d1 = _curve((0.5, 0.998), (2.5, 2.0)), _curve((0.5, 1.001), (2.5, 2.0))
  j = verdicts.judge_dylu_time({"wait_all": [w, w], "dylu": [d0, d1]})
  assert j.quantities["dylu vs wait_all (%)"] == pytest.approx([-0.2, 0.1])
  assert j.verdict == verdicts.NOISE


def test_the_rules_say_time_claims_compare_seconds():
  assert "simulated seconds to a target test loss" in verdicts.RULES


# ---------------------------------------------------------------------------
# The arms.


@pytest.fixture(scope="module", params=["smoke", "cpu"])
def setup(request):
  base = compare_config.get_config(request.param)
  return request.param, claims.make_setup(base, compare_config.tuned_arm,
                                          request.param)


def test_the_time_claims_are_in_claims():
  assert set(IDS) <= set(claims.CLAIM_IDS)
  assert len(set(claims.CLAIM_IDS)) == len(claims.CLAIM_IDS)
  for cid in IDS:
    c = _claim(cid)
    assert c.budget == "1x" and "arXiv 2401.09135" in c.source
  assert _claim(IDS[0]).measure is None  # Judged on the test loss.
  assert _claim(IDS[1]).measure is time_claims.sim_curve
  assert all(c.measure is None for c in claims.CLAIMS if c.id not in IDS)


def test_speeds_are_heterogeneous_spread(setup):
  size, s = setup
  assert time_claims.speeds(s) == heterogeneous.get_config(size).clock.speeds
  assert time_claims.speeds(s)[0] == 1.0
  assert time_claims.speeds(s)[-1] == 1 / heterogeneous.SPREAD  # 4×.


def test_arms_have_the_roles_and_clock_overrides(setup):
  size, s = setup
  one = s.configs["1x"]
  sp = time_claims.speeds(s)
  diloco = claims._arm(s, "1x", "diloco", 1)["overrides"]  # pylint: disable=protected-access
  arms_a = _claim(IDS[0]).arms(s, 1)
  arms_d = _claim(IDS[1]).arms(s, 1)
  assert set(arms_a) == {"wait_all", "async"}
  assert set(arms_d) == {"wait_all", "dylu"}
  # One wait_all arm serves both claims (same name and overrides: runs once).
  assert arms_a["wait_all"] == arms_d["wait_all"]
  every = max(1, one.train.rounds // time_claims.EVALS)
  assert every == {"smoke": 1, "cpu": 2}[size]  # 3 and 12 evaluations.
  clock = lambda o: {k: v for k, v in o.items() if k.startswith("clock.")}
  rest = lambda o: {k: v for k, v in o.items()
                    if not k.startswith("clock.")
                    and k not in ("train.rounds", "train.eval_every")}
  expected = {
      "wait_all": {"clock.speeds": sp, "clock.policy": "wait_all"},
      "dylu": {"clock.speeds": sp, "clock.policy": "dylu"},
      "async": {"clock.speeds": sp, "clock.policy": "async",
                "clock.async_rule": "delayed_nesterov",
                "clock.async_dylu": True,
                "clock.async_grace": heterogeneous.ASYNC_GRACE,
                # DN's lr and momentum: tuned DiLoCo's outer ones.
                "clock.async_learning_rate": 0.7, "clock.async_momentum": 0.9},
  }
  for role, a in {**arms_a, **arms_d}.items():
    over = a["overrides"]
    assert a["name"] == f"1x_diloco_{role}_s1"
    assert a["group"] == f"1x_diloco_{role}"
    assert clock(over) == expected[role], role
    # Otherwise the tuned DiLoCo arm (lr, outer step, H, seed).
    assert rest(over) == rest(diloco), role
    assert over["train.seed"] == 1 and over["inner.steps"] == one.inner.steps
    claims._check(s, a)  # pylint: disable=protected-access  (validates)
  assert diloco["outer.hparams.learning_rate"] == 0.7  # tuned.json's point.
  for role in ("wait_all", "dylu"):
    over = arms_d[role]["overrides"]
    assert over["train.rounds"] == one.train.rounds
    assert over["train.eval_every"] == every
  over = arms_a["async"]["overrides"]
  assert over["train.eval_every"] == 0  # Judged on its final test loss only.
  assert over["train.rounds"] == time_claims.async_rounds(s)


def test_async_rounds_give_equal_inner_steps(setup):
  size, s = setup
  one = s.configs["1x"]
  h, m, rounds = one.inner.steps, one.train.num_replicas, one.train.rounds
  # DyLU: H_i = max(⌊H·speed_i⌋, 1). smoke: M=2, H=4, speeds 1, 0.25 → 4, 1
  # (5 a round); cpu: M=4, H=25, speeds 1, .63, .3969, .25 → 25, 15, 9, 6
  # (55 a round).
  per_round = {"smoke": 5, "cpu": 55}[size]
  r = time_claims.async_rounds(s)
  # wait_all: smoke 3·2·4 = 24 steps → 24/5 = 4.8 → 5 rounds (25 steps);
  # cpu 24·4·25 = 2400 → 2400/55 = 43.6 → 44 rounds (2420 planned).
  assert (rounds * m * h, r) == {"smoke": (24, 5), "cpu": (2400, 44)}[size]
  assert abs(r * per_round - rounds * m * h) <= per_round / 2


# ---------------------------------------------------------------------------
# The measure: a run's curve from its metrics.jsonl.


def _write_metrics(run_dir, rows):
  run_dir.mkdir(parents=True, exist_ok=True)
  with open(run_dir / "metrics.jsonl", "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")


def test_sim_curve_reads_eval_rows(tmp_path):
  rows = [
      {"kind": "train", "round": 1, "sim_seconds": 0.1, "train/loss": 4.0},
      {"kind": "eval", "round": 2, "sim_seconds": 0.2, "eval/loss": 3.1,
       "test/loss": 3.0},
      {"kind": "eval", "round": 1, "sim_seconds": 0.1, "eval/loss": 3.6,
       "test/loss": 3.5},
      {"kind": "eval", "round": 3, "eval/loss": 2.9, "test/loss": 2.8},  # No clock.
      {"kind": "eval", "round": 4, "sim_seconds": 0.4, "test/loss": float("nan")},
      {"kind": "eval", "round": 2, "sim_seconds": 0.25, "test/loss": 2.9},  # Resumed.
      {"kind": "eval", "round": 5, "sim_seconds": 0.5, "test/loss": 2.5},
  ]
  _write_metrics(tmp_path / "run", rows)
  curve, why = time_claims.sim_curve({}, str(tmp_path / "run"))
  # Round order; a repeated round's last row; test (not validation) loss;
  # rows without a finite clock or loss left out.
  assert why == ""
  assert curve == ((0.1, 3.5), (0.25, 2.9), (0.5, 2.5))
  curve, why = time_claims.sim_curve({}, str(tmp_path / "none"))
  assert curve is None and why == "no metrics.jsonl"
  _write_metrics(tmp_path / "trainonly", rows[:1])
  curve, why = time_claims.sim_curve({}, str(tmp_path / "trainonly"))
  assert curve is None and "no evaluation with sim_seconds" in why


# ---------------------------------------------------------------------------
# The plumbing, with the comparison faked: the measure reaches the judge, the
# page says seconds, a missing curve makes the claim NOT RUN.


def _fake(tmp_path, planted, curves, seen):
  def fake_comparison(base, arms, workdir, reuse=True):
    del base, reuse
    seen.extend(a["name"] for a in arms)
    out = []
    for a in arms:
      role = a["name"][len("1x_diloco_"):].rsplit("_s", 1)[0]
      if role in curves:
        _write_metrics(tmp_path / a["name"], [
            {"kind": "eval", "round": i + 1, "sim_seconds": t,
             "test/loss": loss} for i, (t, loss) in enumerate(curves[role])])
      out.append({"name": a["name"], "status": "completed", "tokens": 1000,
                  "num_params": 100, "final_test": {"loss": planted[role]}})
    assert workdir == str(tmp_path)
    return out
  return fake_comparison


def test_run_claims_judges_seconds_and_loss(monkeypatch, tmp_path):
  planted = {"wait_all": 2.0, "async": 2.004, "dylu": 2.1}
  curves = {"wait_all": WAIT, "dylu": _curve((0.5, 1.0, 1.5), (2.9, 2.4, 2.1))}
  seen = []
  monkeypatch.setattr(claims, "run_comparison",
                      _fake(tmp_path, planted, curves, seen))
  base = compare_config.get_config("smoke")
  outcomes = claims.run_claims(base, compare_config.tuned_arm, str(tmp_path),
                               size="smoke", seeds=2, only=list(IDS))
  # wait_all once per seed for both claims, async and dylu: 3 arms × 2 seeds.
  assert sorted(seen) == sorted(f"1x_diloco_{k}_s{s}" for k in planted
                                for s in (0, 1))
  got = {o.claim.id: o for o in outcomes}
  # async +0.2% < noise 0.5%: no worse.
  assert got[IDS[0]].judgement.verdict == verdicts.HOLDS
  # dylu at 1.5 s vs wait_all at 3 s to the target 2.1 (dylu's end): −50%.
  j = got[IDS[1]].judgement
  assert j.verdict == verdicts.HOLDS
  assert j.quantities["dylu vs wait_all (%)"] == pytest.approx([-50, -50])
  # The page's per-role table keeps the test losses; the judge read seconds.
  assert got[IDS[1]].losses == {"wait_all": [2.0, 2.0], "dylu": [2.1, 2.1]}
  md = claims_page.render(outcomes, command="c", date="d", machine="m", seeds=2)
  assert f"| {IDS[1]} |" in md and "dylu 1.5 s vs wait_all 3 s to target" in md
  assert md.count("- Measure: The run's test loss against simulated seconds") == 1
  assert "| dylu to target (ms) | +1500.00 | +1500.00 |" in md


def test_a_run_without_a_curve_makes_its_claim_not_run(monkeypatch, tmp_path):
  planted = {"wait_all": 2.0, "async": 2.0, "dylu": 2.0}
  monkeypatch.setattr(claims, "run_comparison",
                      _fake(tmp_path, planted, {"wait_all": WAIT}, []))
  base = compare_config.get_config("smoke")
  outcomes = claims.run_claims(base, compare_config.tuned_arm, str(tmp_path),
                               size="smoke", seeds=1, only=list(IDS))
  got = {o.claim.id: o for o in outcomes}
  assert got[IDS[0]].judgement.verdict in VERDICTS  # Test losses only.
  assert got[IDS[1]].judgement is None
  assert got[IDS[1]].why_not_run == "1x_diloco_dylu_s0: no metrics.jsonl"
