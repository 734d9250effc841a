"""A claim about the islands' data: DiLoCo on non-i.i.d. islands.

One claim of experiments/study/claims.py (it adds `CLAIMS` below to its own,
as `Claim`s), kept here so that module stays short:

  DiLoCo, Douillard et al., arXiv 2311.08105, Table 3: perplexity with the
    replicas' shards i.i.d. / non-i.i.d., the same hyperparameters for both:
    M = 4: 15.23 / 15.18; M = 8: 15.08 / 15.02. Non-i.i.d. is no worse.

* noniid_no_worse: at the 1× budget, paired per seed, DiLoCo's tuned arm (the
  `1x_diloco_s<seed>` arm the other claims share, so it runs once) against
  the same arm with only the islands' data changed: data.partition from the
  main setting's to configs/compare.py's heterogeneous one
  (SETTINGS['hetero']: 'by_content', the sequences clustered by their byte
  histograms into equal shards; mean JSD 0.0196 against by_source's 0.00446,
  docs/results.md). Both keep the main setting's tuned point (not tuned.json's
  'hetero/diloco'): the paper ran both with one set of hyperparameters. Then
  the same pair at M = 8 with the global batch M·B kept (claims._m_arm, as
  gap_grows_with_m builds its M's), when it runs (`replicas`).

"i.i.d." here is the main setting's partition, 'by_source' (whole packages
per island: alike islands, the comparison's usual data), not a uniformly
random split. The judge (`judge_noniid`) uses verdicts' no-loss rule per M.
"""

from typing import Any, Dict, Tuple

from configs import compare as compare_config
from experiments.study import verdicts
from experiments.study.verdicts import Judgement
from experiments.study.verdicts import no_loss
from experiments.study.verdicts import noise_pct
from experiments.study.verdicts import rel_pct

# The non-i.i.d. islands: configs/compare.py's heterogeneous setting, the
# project's one non-i.i.d. partition (its only overrides are the data's).
NONIID = dict(compare_config.SETTINGS["hetero"])
# The paper's larger M (Table 3: M = 4 and 8).
LARGE_M = 8


def _m_arm(setup, m: int, seed: int, **kwargs) -> Dict[str, Any]:
  """claims._m_arm at 1×: DiLoCo's tuned arm with M replicas, M·B kept."""
  # Imported here: claims.py imports this module to add CLAIMS to its own.
  from experiments.study import claims  # pylint: disable=g-import-not-at-top
  return claims._m_arm(setup, m, seed, "1x", **kwargs)  # pylint: disable=protected-access


def replicas(setup) -> Tuple[int, ...]:
  """The M's compared: the base M, then LARGE_M if it runs here.

  The base M's DiLoCo arm is the tuned one every claim shares: M = 4 at the
  cpu size, the paper's smaller M. LARGE_M runs with B = M·B / LARGE_M when
  that divides and LARGE_M is above the base M. At the smoke size (M = 2,
  B = 4: M·B = 8) it does, with B = 1, so the smoke run still has two M's
  (2 and 8, not the paper's 4 and 8). Where it does not, only the base M
  runs: the fallback of the largest M of setup.m_grid is the base M itself
  (make_setup: m_grid = {1, M/2, M}), so it would add nothing.
  """
  one = setup.configs["1x"]
  m, b = one.train.num_replicas, one.inner.batch_size
  return (m,) + ((LARGE_M,) if LARGE_M > m and m * b % LARGE_M == 0 else ())


def _noniid_arms(setup, seed):
  arms = {}
  for m in replicas(setup):
    arms[f"iid M={m}"] = _m_arm(setup, m, seed)
    arms[f"non-iid M={m}"] = _m_arm(setup, m, seed, tag="_noniid", extra=NONIID)
  return arms


def _m_of(role: str) -> int:
  return int(role.split("=")[1])


def judge_noniid(losses):
  """Non-i.i.d. islands are no worse than i.i.d. ones, at every M: a no-loss
  claim per M (judge_noloco's rule), all of which must hold.

  Roles 'iid M=<m>', 'non-iid M=<m>' per M. Per M, q = 100·(L_noniid −
  L_iid)/L_iid per seed and noise = noise_pct(q); that M fails when mean q >
  noise, else holds when noise <= MAX_NOISE_PCT, else is inconclusive. The
  claim does not hold when some M fails, holds when every M holds, else is
  inconclusive.
  """
  ms = sorted(_m_of(r) for r in losses if r.startswith("iid M="))
  qs = {m: rel_pct(losses[f"non-iid M={m}"], losses[f"iid M={m}"]) for m in ms}
  noises = {m: noise_pct(q) for m, q in qs.items()}
  vs = {m: no_loss(q, noises[m]) for m, q in qs.items()}
  # pylint: disable=protected-access
  pm, mean, n = verdicts._pm, verdicts._mean, verdicts._n(losses)
  return Judgement(
      verdicts._all(vs.values()),
      ", ".join(f"M={m}: {pm(q)}" for m, q in qs.items()) + f" (n={n})",
      "Non-i.i.d. vs i.i.d. islands: "
      + "; ".join(f"M={m} {mean(q):+.2f}% (noise {noises[m]:.2f}%): {vs[m]}"
                  for m, q in qs.items())
      + f". Non-i.i.d.: data.partition={NONIID['data.partition']!r}; "
      "i.i.d.: the main setting's islands (by_source); otherwise the same "
      "tuned DiLoCo arm (M ≠ base M: the global batch kept, the outer lr "
      "tuned at the base M).",
      {f"non-iid vs iid M={m} (%)": q for m, q in qs.items()})


# claims.Claim's fields, as dicts: claims.py makes them Claims (it imports
# this module, so this one does not import Claim from it).
CLAIMS = (
    dict(id="noniid_no_worse",
         statement="DiLoCo on non-i.i.d. islands is no worse than on i.i.d. "
                   "islands at M = 4 and M = 8.",
         source="DiLoCo, arXiv 2311.08105, Table 3 (perplexity, i.i.d. vs "
                "non-i.i.d. shards)",
         published="M=4: 15.18 vs 15.23 ppl (−0.3%); M=8: 15.02 vs 15.08 "
                   "(−0.4%)",
         budget="1x", arms=_noniid_arms, judge=judge_noniid),
)
