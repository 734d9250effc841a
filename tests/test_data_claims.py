"""experiments/study/data_claims.py: the non-i.i.d. claim's judge on hand-made
losses, its arms (only the partition differs; M = 8 keeps M·B) and its
plumbing with the comparison faked."""

import statistics

import pytest

from _runner_util import plant_comparison  # Also puts the repo root on sys.path.
from configs import compare as compare_config
from experiments.study import claims
from experiments.study import data_claims
from experiments.study import frontier_claims
from experiments.study import verdicts

CID = "noniid_no_worse"
VERDICTS = (verdicts.HOLDS, verdicts.FAILS, verdicts.NOISE)


def _claim(cid=CID):
  return {c.id: c for c in claims.CLAIMS}[cid]


def _q(noniid, iid):
  """Per seed 100·(noniid − iid)/iid, by hand."""
  return [100 * (a - b) / b for a, b in zip(noniid, iid)]


def _stats(q):
  """(mean, ddof-1 std, noise = max(0.5, std)) of q, by hand."""
  std = statistics.stdev(q) if len(q) > 1 else 0.0
  return statistics.mean(q), std, max(0.5, std)


# ---------------------------------------------------------------------------
# The judge by hand. Per M: q = 100·(L_noniid − L_iid)/L_iid per seed; that M
# fails when mean q > noise, else holds when noise ≤ 2%, else is
# inconclusive. The claim fails if some M fails, holds if every M holds.

IID = [2.0, 2.0]
# q = −0.3%, −0.2%: mean −0.25, std 0.07 → noise 0.5; −0.25 ≤ 0.5: holds.
GOOD = [1.994, 1.996]
# q = 0%, +0.2%: mean 0.1, std 0.14 → noise 0.5; 0.1 ≤ 0.5: holds.
TIE = [2.0, 2.004]
# q = +3%, +4%: mean 3.5, std 0.71 → noise 0.71; 3.5 > 0.71: fails.
WORSE = [2.06, 2.08]
# q = −5%, +7%: mean 1, std 8.49 → noise 8.49 > 2%: inconclusive.
WIDE = [1.9, 2.14]
# q = −10%, −9%: much better is no worse (mean −9.5 ≤ noise 0.71).
BETTER = [1.8, 1.82]


def _losses(m4, m8):
  return {"iid M=4": IID, "non-iid M=4": m4, "iid M=8": IID,
          "non-iid M=8": m8}


@pytest.mark.parametrize("m4, m8, verdict", [
    (GOOD, TIE, verdicts.HOLDS),
    (BETTER, GOOD, verdicts.HOLDS),
    (GOOD, WORSE, verdicts.FAILS),    # Clearly worse at one M.
    (WORSE, GOOD, verdicts.FAILS),
    (GOOD, WIDE, verdicts.NOISE),     # The spread at M = 8 is too wide.
    (WIDE, WIDE, verdicts.NOISE),
    (WORSE, WIDE, verdicts.FAILS),    # A fail outweighs an inconclusive M.
])
def test_judge_by_hand(m4, m8, verdict):
  j = data_claims.judge_noniid(_losses(m4, m8))
  assert j.verdict == verdict
  assert list(j.quantities) == ["non-iid vs iid M=4 (%)",
                                "non-iid vs iid M=8 (%)"]
  for m, noniid in ((4, m4), (8, m8)):
    q = _q(noniid, IID)
    assert j.quantities[f"non-iid vs iid M={m} (%)"] == pytest.approx(q)
    mean, std, noise = _stats(q)
    assert f"M={m}: {mean:+.2f}% ± {std:.2f}%" in j.ours
    assert f"M={m} {mean:+.2f}% (noise {noise:.2f}%)" in j.note
  assert j.ours.endswith("(n=2)")


def test_judge_texts_by_hand():
  j = data_claims.judge_noniid(_losses(GOOD, WORSE))
  # M=4: mean −0.25, std 0.0707; M=8: mean 3.5, std 0.7071 → noise 0.71.
  assert j.ours == "M=4: -0.25% ± 0.07%, M=8: +3.50% ± 0.71% (n=2)"
  assert "M=4 -0.25% (noise 0.50%): holds" in j.note
  assert "M=8 +3.50% (noise 0.71%): does not hold" in j.note
  assert "'by_content'" in j.note


@pytest.mark.parametrize("noniid", [GOOD, TIE, WORSE, WIDE, BETTER])
def test_per_m_rule_is_judge_noloco_s(noniid):
  # One M alone gets the verdict NoLoCo's no-loss judge gives the same pair.
  j = data_claims.judge_noniid({"iid M=4": IID, "non-iid M=4": noniid})
  same = verdicts.judge_noloco({"diloco": IID, "noloco": noniid})
  assert j.verdict == same.verdict
  assert j.ours.startswith("M=4: ") and list(j.quantities) == [
      "non-iid vs iid M=4 (%)"]


def test_one_seed_leaves_the_tolerance():
  # q = +0.4% < 0.5%: holds; q = +0.6% > 0.5%: does not hold.
  ok = data_claims.judge_noniid({"iid M=2": [2.0], "non-iid M=2": [2.008]})
  bad = data_claims.judge_noniid({"iid M=2": [2.0], "non-iid M=2": [2.012]})
  assert (ok.verdict, bad.verdict) == (verdicts.HOLDS, verdicts.FAILS)


# ---------------------------------------------------------------------------
# The arms (configs/tuned.json's points).


@pytest.fixture(scope="module")
def setup():
  base = compare_config.get_config("smoke")
  return claims.make_setup(base, compare_config.tuned_arm, "smoke")


def test_the_claim_is_in_claims():
  c = _claim()
  assert c.budget == "1x" and "arXiv 2311.08105" in c.source
  assert "Table 3" in c.source
  assert c.published == ("M=4: 15.18 vs 15.23 ppl (−0.3%); M=8: 15.02 vs "
                         "15.08 (−0.4%)")
  assert c.judge is data_claims.judge_noniid and c.measure is None
  assert len(set(claims.CLAIM_IDS)) == len(claims.CLAIM_IDS)
  # Before the frontier claims, which test that they come last.
  n = len(frontier_claims.CLAIMS)
  assert CID in claims.CLAIM_IDS[:-n]


def test_the_published_numbers():
  # Table 3's perplexities, i.i.d. / non-i.i.d.: the published percentages.
  assert 100 * (15.18 - 15.23) / 15.23 == pytest.approx(-0.33, abs=0.01)
  assert 100 * (15.02 - 15.08) / 15.08 == pytest.approx(-0.40, abs=0.01)


def test_replicas_per_size(setup):
  # Smoke: M = 2, B = 4 (M·B = 8): 8 divides it (B = 1).
  assert data_claims.replicas(setup) == (2, 8)
  cpu = claims.make_setup(compare_config.get_config("cpu"),
                          compare_config.tuned_arm, "cpu")
  assert data_claims.replicas(cpu) == (4, 8)  # The paper's M's.
  assert set(_claim().arms(cpu, 0)) == {"iid M=4", "non-iid M=4",
                                        "iid M=8", "non-iid M=8"}
  # M·B = 6: 8 does not divide it; the base M is 8: nothing larger. Only
  # the base M then.
  odd = compare_config.get_config("smoke")
  odd.inner.batch_size = 3
  assert data_claims.replicas(
      claims.make_setup(odd, compare_config.tuned_arm, "smoke")) == (2,)
  eight = compare_config.get_config("smoke")
  eight.train.num_replicas = 8
  assert data_claims.replicas(
      claims.make_setup(eight, compare_config.tuned_arm, "smoke")) == (8,)


def _without(over, *keys):
  return {k: v for k, v in over.items() if k not in keys}


def test_arms_for_one_seed(setup):
  arms = _claim().arms(setup, 1)
  assert set(arms) == {"iid M=2", "non-iid M=2", "iid M=8", "non-iid M=8"}
  # The base M's i.i.d. arm is the tuned DiLoCo arm every claim shares.
  # pylint: disable-next=protected-access
  shared = claims._arm(setup, "1x", "diloco", 1)
  assert arms["iid M=2"] == shared and shared["name"] == "1x_diloco_s1"
  assert _claim("nesterov_best_outer").arms(setup, 1)["diloco"] == shared
  names = {r: (a["name"], a["group"]) for r, a in arms.items()}
  assert names == {
      "iid M=2": ("1x_diloco_s1", "1x_diloco"),
      "non-iid M=2": ("1x_diloco_noniid_s1", "1x_diloco_noniid"),
      "iid M=8": ("1x_diloco_M8_s1", "1x_diloco_M8"),
      "non-iid M=8": ("1x_diloco_M8_noniid_s1", "1x_diloco_M8_noniid")}
  for m in (2, 8):
    iid, noniid = arms[f"iid M={m}"], arms[f"non-iid M={m}"]
    # Only the partition (and the name and group) differ.
    assert set(noniid) == set(iid)
    assert _without(noniid, "name", "group", "overrides") == _without(
        iid, "name", "group", "overrides")
    assert "data.partition" not in iid["overrides"]  # The main setting's.
    assert noniid["overrides"]["data.partition"] == "by_content"
    assert noniid["overrides"] == {**iid["overrides"],
                                   **compare_config.SETTINGS["hetero"]}
  for a in arms.values():
    o = a["overrides"]
    assert (o["train.seed"], o["model.init_seed"]) == (1, 1)
    assert o["train.rounds"] == setup.configs["1x"].train.rounds
    assert o["outer.name"] == "diloco"
    for field, value in compare_config.tuned("diloco").items():
      assert o[field] == value, field  # The main setting's tuned point.
    claims._check(setup, a)  # pylint: disable=protected-access
  # M = 8 keeps the global batch: 8 × 1 = the base 2 × 4; nothing else moves.
  one = setup.configs["1x"]
  m8 = arms["iid M=8"]["overrides"]
  assert (m8["train.num_replicas"], m8["inner.batch_size"]) == (8, 1)
  assert 8 * 1 == one.train.num_replicas * one.inner.batch_size
  assert _without(m8, "train.num_replicas", "inner.batch_size") == (
      arms["iid M=2"]["overrides"])


def test_m_arm_at_4x_is_as_before():
  # claims._m_arm gained a budget, tag and extra for this claim; at 4× with
  # none of them it builds gap_grows_with_m's arms as it did.
  cpu = claims.make_setup(compare_config.get_config("cpu"),
                          compare_config.tuned_arm, "cpu")
  got = _claim("gap_grows_with_m").arms(cpu, 0)
  arm = claims._arm  # pylint: disable=protected-access
  assert got["diloco M=4"] == arm(cpu, "4x", "diloco", 0)
  assert got["diloco M=2"] == arm(cpu, "4x", "diloco", 0, tag="_M2", extra={
      "train.num_replicas": 2, "inner.batch_size": 16})
  assert got["diloco M=1"] == arm(cpu, "4x", "diloco_m1", 0, extra={
      "train.num_replicas": 1, "inner.batch_size": 32})


def test_run_claims_runs_the_shared_arm_once(monkeypatch, tmp_path):
  planted = {"diloco": 2.0, "diloco_noniid": 1.994, "diloco_M8": 2.0,
             "diloco_M8_noniid": 2.06, "fedavg": 2.2, "fedadam": 2.1}
  seen = []
  plant_comparison(monkeypatch, claims, planted, seen)
  base = compare_config.get_config("smoke")
  outcomes = claims.run_claims(base, compare_config.tuned_arm, str(tmp_path),
                               size="smoke", seeds=2,
                               only=[CID, "nesterov_best_outer"])
  assert sorted(seen) == sorted(f"1x_{k}_s{s}" for k in planted
                                for s in (0, 1))  # 1x_diloco_s* once.
  by_id = {o.claim.id: o for o in outcomes}
  j = by_id[CID].judgement
  # M=2: −0.3% both seeds (holds); M=8: +3% both seeds > 0.5% (fails).
  assert j.verdict == verdicts.FAILS
  assert j.quantities["non-iid vs iid M=2 (%)"] == pytest.approx([-0.3, -0.3])
  assert j.quantities["non-iid vs iid M=8 (%)"] == pytest.approx([3.0, 3.0])
  assert by_id[CID].arm_names["iid M=2"] == ["1x_diloco_s0", "1x_diloco_s1"]
