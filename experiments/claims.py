r"""Checks published claims about DiLoCo-style training: a thin entry point.

  python experiments/claims.py --workdir=runs/claims [--only=m1_matches_ddp]

Runs the claims' small fixed experiments (experiments/study/claims.py: the
claims, their arms and the verdict rules) on configs/compare.py's base config
with its tuned arms, every arm once in workdir/<arm>, and writes
docs/claims.md: per claim its source, the published number, ours (mean ± std
over seeds, and per seed), the budget in tokens per parameter and a verdict.
Completed arms are reused when run again (--noreuse to rerun them).

The cpu size runs 56 arms (two seeds; 8 at the 4× budget, ~75 s each, and
48 at 1×, ~20 s each, the async arm's 44 rounds longer): an estimated 27
minutes on 2 CPU cores (from the main comparison's per-arm times; not yet
timed as a whole).

--size=smoke runs the tiny form (seconds per arm, for tests); its page goes
to workdir/claims.md unless --out is given.

Exit codes: 0 every claim's experiments ran; 1 some claim is NOT RUN (an arm
missing, not completed or with a non-finite test loss; the page is written
anyway); 2 a bad flag, or no configs/tuned.json (one line naming it;
nothing written).
"""

import datetime
import os
import platform
import shlex
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # `configs` and `experiments` are packages there.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from configs import compare as compare_config
from experiments.study import claims as claims_lib
from experiments.study import claims_page
from fedjax_lab import cli
from fedjax_lab import run as run_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the arms.")
_SIZE = flags.DEFINE_enum("size", "cpu", ["cpu", "smoke"],
                          "configs/compare.py size: 'cpu' or 'smoke' (tests).")
_OUT = flags.DEFINE_string(
    "out", None, "The page to write (default docs/claims.md; with "
    "--size=smoke, <workdir>/claims.md).")
_ONLY = flags.DEFINE_list("only", None, "Claim ids to run (default all): "
                          + ", ".join(claims_lib.CLAIM_IDS))
_SEEDS = flags.DEFINE_integer("seeds", 2, "Seeds per arm (0 … N-1).")
_REUSE = flags.DEFINE_bool("reuse", True, "Skip arms that already completed.")
_MACHINE = flags.DEFINE_string(
    "machine", None, "The machine, for the page (default: what Python sees).")


def _machine() -> str:
  import jax  # pylint: disable=g-import-not-at-top
  return (f"{platform.machine()}, {os.cpu_count()} CPU cores, jax "
          f"{jax.__version__} on {jax.default_backend()} "
          f"({jax.device_count()} device(s))")


def main(argv):
  if len(argv) > 1:
    cli.fail(2, f"unexpected arguments {argv[1:]}")
  workdir = cli.workdir_ok(_WORKDIR.value)
  if _SEEDS.value < 1:
    cli.fail(2, f"--seeds: must be >= 1, got {_SEEDS.value}")
  unknown = sorted(set(_ONLY.value or ()) - set(claims_lib.CLAIM_IDS))
  if unknown or _ONLY.value == []:
    cli.fail(2, f"--only: unknown claim ids {unknown}; known: "
             f"{', '.join(claims_lib.CLAIM_IDS)}")
  out = _OUT.value or (os.path.join(workdir, "claims.md")
                       if _SIZE.value == "smoke"
                       else os.path.join(REPO, "docs", "claims.md"))
  if _OUT.value and not os.path.isdir(os.path.dirname(os.path.abspath(out))):
    cli.fail(2, f"--out: no directory {os.path.dirname(os.path.abspath(out))}")
  run_lib.quiet_orbax_logs()
  base = compare_config.get_config(_SIZE.value)
  try:
    outcomes = claims_lib.run_claims(
        base, compare_config.tuned_arm, workdir,
        size=_SIZE.value, seeds=_SEEDS.value, only=_ONLY.value,
        reuse=_REUSE.value)
  except (run_lib.ConfigError, ValueError) as e:  # ValueError: tuned.json.
    cli.fail(2, f"config: {e}")
  command = " ".join(["python experiments/claims.py"]
                     + [shlex.quote(a) for a in sys.argv[1:]])
  page = claims_page.render(
      outcomes, command=command,
      date=datetime.datetime.now(datetime.timezone.utc).strftime(
          "%Y-%m-%d %H:%M"),
      machine=_MACHINE.value or _machine(), seeds=_SEEDS.value)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    f.write(page)
  logging.info("claims: %s", out)
  not_run = [o.claim.id for o in outcomes if o.judgement is None]
  if not_run:
    cli.fail(1, f"claims NOT RUN: {', '.join(not_run)} (see {out})")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
