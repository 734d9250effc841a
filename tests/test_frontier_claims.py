"""experiments/study/frontier_claims.py: the MuLoCo, SparseLoCo, NoLoCo and
DES-LOC claims' judges on hand-made losses, and their arms."""

import pytest

from _runner_util import plant_comparison  # Also puts the repo root on sys.path.
from configs import compare as compare_config
from experiments.study import claims
from experiments.study import frontier_claims
from experiments.study import verdicts

IDS = tuple(c["id"] for c in frontier_claims.CLAIMS)
# Noise = max(0.5%, the ddof-1 std over seeds of the paired q); q in %.


# ---------------------------------------------------------------------------
# Judges by hand. Direction claims (MuLoCo, SparseLoCo "beat" DiLoCo): holds
# when mean q < −noise, does not hold when mean q > noise, else inconclusive.


@pytest.mark.parametrize("judge, role", [
    (verdicts.judge_muloco, "muloco"),
    (verdicts.judge_sparseloco, "sparseloco"),
])
@pytest.mark.parametrize("method, verdict", [
    # q = −5%, −4%: mean −4.5, std √0.5 = 0.71 → noise 0.71; −4.5 < −0.71.
    ([1.9, 1.92], verdicts.HOLDS),
    # q = +5%, +5%: mean 5, std 0 → noise 0.5; 5 > 0.5.
    ([2.1, 2.1], verdicts.FAILS),
    # q = +0.2%, −0.1%: mean 0.05, std 0.21 → noise 0.5; |0.05| < 0.5.
    ([2.004, 1.998], verdicts.NOISE),
    # q = −5%, +5%: mean 0, std 7.07 → noise 7.07: the seeds disagree.
    ([1.9, 2.1], verdicts.NOISE),
])
def test_beats_diloco_judges(judge, role, method, verdict):
  j = judge({"diloco": [2.0, 2.0], role: method})
  assert j.verdict == verdict
  assert list(j.quantities) == [f"{role} vs diloco (%)"]


def test_sparseloco_on_the_frontier_sweeps_numbers():
  # docs/results.md's frontier run, per seed: DiLoCo 1.4128 / 1.4419,
  # SparseLoCo 1.4520 / 1.4594 → q = +2.775%, +1.214%: mean 1.99, std 1.10
  # → noise 1.10; 1.99 > 1.10: resolved against the claim.
  j = verdicts.judge_sparseloco({"diloco": [1.4128, 1.4419],
                                 "sparseloco": [1.4520, 1.4594]})
  assert j.verdict == verdicts.FAILS
  assert j.quantities["sparseloco vs diloco (%)"] == pytest.approx(
      [2.775, 1.214], abs=1e-3)


# No-loss claims (NoLoCo vs DiLoCo, DES-LOC vs Local Adam): does not hold when
# mean q > noise; otherwise holds when noise ≤ 2%, else inconclusive.


@pytest.mark.parametrize("judge, method_role, base_role", [
    (verdicts.judge_noloco, "noloco", "diloco"),
    (verdicts.judge_desloc, "desloc", "local_adam"),
])
@pytest.mark.parametrize("method, verdict", [
    # q = +0.2%, 0%: mean 0.1, std 0.14 → noise 0.5; 0.1 ≤ 0.5, noise ≤ 2%.
    ([2.004, 2.0], verdicts.HOLDS),
    # q = −5%, −4%: mean −4.5 ≤ noise 0.71, noise ≤ 2%: better is no worse.
    ([1.9, 1.92], verdicts.HOLDS),
    # q = +3%, +4%: mean 3.5, std 0.71 → noise 0.71; 3.5 > 0.71.
    ([2.06, 2.08], verdicts.FAILS),
    # q = −5%, +7%: mean 1, std 8.49 → noise 8.49; 1 ≤ 8.49 but 8.49 > 2%.
    ([1.9, 2.14], verdicts.NOISE),
])
def test_no_worse_judges(judge, method_role, base_role, method, verdict):
  j = judge({base_role: [2.0, 2.0], method_role: method})
  assert j.verdict == verdict
  assert list(j.quantities) == [f"{method_role} vs {base_role} (%)"]


def test_a_tie_confirms_a_match_but_not_a_win():
  # q = +0.2%, 0% (mean 0.1, noise 0.5): within noise. "No worse" holds;
  # "beats" is not shown.
  tie = [2.004, 2.0]
  assert verdicts.judge_noloco(
      {"diloco": [2.0, 2.0], "noloco": tie}).verdict == verdicts.HOLDS
  assert verdicts.judge_muloco(
      {"diloco": [2.0, 2.0], "muloco": tie}).verdict == verdicts.NOISE


# ---------------------------------------------------------------------------
# The arms (configs/tuned.json's points, the smoke config).


@pytest.fixture(scope="module")
def setup():
  base = compare_config.get_config("smoke")
  return claims.make_setup(base, compare_config.tuned_arm, "smoke")


def _claim(cid):
  return {c.id: c for c in claims.CLAIMS}[cid]


def test_the_frontier_claims_are_in_claims():
  assert claims.CLAIM_IDS[-len(IDS):] == IDS
  assert len(set(claims.CLAIM_IDS)) == len(claims.CLAIM_IDS)
  for cid in IDS:
    c = _claim(cid)
    assert c.budget == "1x" and "arXiv" in c.source and c.published


@pytest.mark.parametrize("cid, roles", [
    ("muloco_beats_adamw_inner", {"diloco", "muloco"}),
    ("sparseloco_beats_diloco", {"diloco", "sparseloco"}),
    ("noloco_matches_diloco", {"diloco", "noloco"}),
    ("desloc_matches_local_adam", {"local_adam", "desloc"}),
])
def test_arms_have_the_roles_the_judge_reads(setup, cid, roles):
  c = _claim(cid)
  arms = c.arms(setup, 1)
  assert set(arms) == roles
  for role, a in arms.items():
    assert a["name"].startswith("1x_") and a["name"].endswith("_s1")
    assert a["overrides"]["train.seed"] == 1
    assert a["overrides"]["train.rounds"] == setup.configs["1x"].train.rounds
  # The judge reads exactly these roles (it raises KeyError otherwise).
  assert c.judge({r: [2.0, 2.0] for r in arms}).verdict in (
      verdicts.HOLDS, verdicts.FAILS, verdicts.NOISE)
  if "diloco" in arms:  # The arm nesterov_best_outer uses: it runs once.
    shared = _claim("nesterov_best_outer").arms(setup, 1)["diloco"]
    assert arms["diloco"] == shared and shared["name"] == "1x_diloco_s1"


def test_method_arms_are_the_tuned_frontier_arms(setup):
  overrides = {
      k: _claim(cid).arms(setup, 0)[k]["overrides"]
      for cid, k in (("muloco_beats_adamw_inner", "muloco"),
                     ("sparseloco_beats_diloco", "sparseloco"),
                     ("noloco_matches_diloco", "noloco"))}
  assert overrides["muloco"]["inner.optimizer"] == "muon"
  assert overrides["sparseloco"]["outer.name"] == "sparseloco"
  assert overrides["noloco"]["outer.name"] == "noloco"
  for key, over in overrides.items():
    for field, value in compare_config.tuned(key).items():
      assert over[field] == value, (key, field)


def test_local_adam_and_desloc_differ_only_in_the_outer_rule(setup):
  arms = _claim("desloc_matches_local_adam").arms(setup, 0)
  la, dl = arms["local_adam"], arms["desloc"]
  assert (la["name"], la["group"]) == ("1x_local_adam_s0", "1x_local_adam")
  assert dl["name"] == "1x_desloc_s0"
  la_o, dl_o = la["overrides"], dl["overrides"]
  rest = lambda o: {k: v for k, v in o.items() if not k.startswith("outer.")}
  assert rest(la_o) == rest(dl_o)  # Inner AdamW and its lr, H, seed, budget.
  assert la_o["outer.name"] == "local_adam" and la_o["outer.hparams"] == {}
  assert not [k for k in la_o if k.startswith("outer.hparams.")]
  assert dl_o["outer.name"] == "desloc"
  assert rest(la_o).get("inner.optimizer", "adamw") == "adamw"
  # Building Local Adam did not change DES-LOC's own arm (a deep copy).
  assert _claim("desloc_matches_local_adam").arms(setup, 0)["desloc"] == dl


def test_run_claims_runs_the_diloco_arm_once(monkeypatch, tmp_path):
  planted = {"diloco": 2.0, "muloco": 1.9, "sparseloco": 2.1, "noloco": 2.0,
             "local_adam": 2.0, "desloc": 2.004}
  seen = []
  plant_comparison(monkeypatch, claims, planted, seen)
  base = compare_config.get_config("smoke")
  outcomes = claims.run_claims(base, compare_config.tuned_arm, str(tmp_path),
                               size="smoke", seeds=2, only=list(IDS))
  # DiLoCo once per seed, and the five methods: 6 arms × 2 seeds.
  assert sorted(seen) == sorted(f"1x_{k}_s{s}" for k in planted
                                for s in (0, 1))
  got = {o.claim.id: o.judgement.verdict for o in outcomes}
  assert got == {
      "muloco_beats_adamw_inner": verdicts.HOLDS,    # −5%: resolved lower.
      "sparseloco_beats_diloco": verdicts.FAILS,     # +5%: resolved higher.
      "noloco_matches_diloco": verdicts.HOLDS,       # 0%: no worse.
      "desloc_matches_local_adam": verdicts.HOLDS,   # +0.2% < noise 0.5%.
  }
