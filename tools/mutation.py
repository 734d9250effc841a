"""Mutation testing of the update rules (mutmut 2.x), one module at a time.

    pip install -e '.[mutation]'          # mutmut==2.5.1, not in the `test` extra
    python tools/mutation.py              # every module, a deterministic 1-in-16 sample
    python tools/mutation.py --sample 1   # the full space
    python tools/mutation.py outer/fedopt sync --jobs 2
    python tools/mutation.py --report     # the table from the last results, no run

For each module (MODULES below: a source file and the fast tests that cover
it) the script copies the checkout (`git ls-files -co --exclude-standard`) to
.mutation/work/<module>/ and runs `mutmut run` there, so mutmut's in-place
mutation never touches the checkout: a killed or crashed run leaves at worst a
mutated copy under .mutation/ (git-ignored), never a mutated fedjax_lab/.
Each mutant's test run is `pytest -x` over that module's subset only, bounded
by `timeout` at max(--min-timeout, --timeout-factor × the unmutated run); a
run that hits it counts as a timeout (listed apart, not as a kill).

Why mutmut 2.x and not 3.x: mutmut 3 runs every mutant in a fork of one
process that has already imported JAX and traced the code; jit's trace cache
would then hand the mutant the unmutated program (and JAX is not fork-safe).
A fresh process per mutant is slow (JAX import, tracing), so all runs share one
persistent XLA compilation cache (.mutation/jax_cache): its key is the
compiled program itself, so a mutant that changes the program misses it and a
mutant that does not hits an executable identical to a fresh compile.

Mutation types: mutmut's `string` and `fstring` mutants are left out (they
change error messages, dict keys and names, not numbers; a wrong dict key is
an immediate KeyError). Everything else (numbers, operators, comparisons,
keywords, assignments, lambdas, arguments, decorators) is kept.

Sampling: with --sample N one mutant in N is tested, chosen by a hash of
(file, source line, index on the line), so the same mutants are chosen on
every run. mutmut's cache (.mutation/cache/<module>.sqlite) is kept between
runs: a killed mutant stays killed (tests are only ever added), the others are
tested again when any test file changed; --fresh starts over.

Time (measured on 2 shared cores at load 12-15; docs/mutation.md, "Time"):
a killed mutant costs 20-60 s, a surviving one 1-4 min (its whole subset
runs), and each module's unmutated baseline 80-270 s. The 1-in-16 sample of
all 18 modules is about 1.5-2 hours, the full space (~1150 mutants without
string mutants) about 15-20 hours: run it module by module
(`python tools/mutation.py outer/fedopt --sample 1`), never in CI.
"""

import argparse
import concurrent.futures
import json
import os
import pathlib
import shutil
import sqlite3
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
STATE = ROOT / ".mutation"
OR = "tests/test_outer_reference.py"
ENGINE = "tests/test_engine.py"

# module -> (source file, pytest arguments; see pytest_args). Each subset is the fast tests that
# exercise the file, the most direct reference first (pytest -x stops at the
# first failure, so a killed mutant rarely runs more than one test).
MODULES = {
    "outer/__init__":
        ("fedjax_lab/outer/__init__.py", [OR]),
    "outer/base":
        ("fedjax_lab/outer/base.py",
         [OR, ENGINE, "-k", "matches_numpy_reference or partner_out or partial_participation "
          "or nonfinite_replica_is_dropped or nobody or reset_inner_state or papa_2_pairs"]),
    "outer/ddp":
        ("fedjax_lab/outer/ddp.py", [OR, ENGINE, "-k", "ddp"]),
    "outer/diloco":
        ("fedjax_lab/outer/diloco.py", [OR, ENGINE, "-k", "diloco"]),
    "outer/fedavg":
        ("fedjax_lab/outer/fedavg.py", [OR, ENGINE, "-k", "fedavg-0 or fedavg-1 "
                                   "or fedavg_h1 or fedavgm"]),
    "outer/fedopt":
        ("fedjax_lab/outer/fedopt.py",
         [OR, ENGINE, "-k", "fedavgm or fedadam or fedyogi or fedadagrad"]),
    "outer/fedprox":
        ("fedjax_lab/outer/fedprox.py", [OR, ENGINE, "-k", "fedprox"]),
    "outer/easgd":
        ("fedjax_lab/outer/easgd.py", [OR, "-k", "easgd"]),
    "outer/papa":
        ("fedjax_lab/outer/papa.py", [OR, ENGINE, "-k", "papa"]),
    "outer/demo":
        ("fedjax_lab/outer/demo.py",
         ["tests/test_demo.py", "-k", "matches_numpy_reference or full_k or bytes_by_hand "
          "or nonfinite or bad_hparams or registry_entry"]),
    "outer/desloc":
        ("fedjax_lab/outer/desloc.py", ["tests/test_desloc.py"]),
    "outer/noloco":
        ("fedjax_lab/outer/noloco.py", ["tests/test_noloco.py"]),
    "outer/scaffold":
        ("fedjax_lab/outer/scaffold.py",
         ["tests/test_scaffold.py", "-k", "matches_numpy_reference or first_round or controls "
          "or num_clients or bad_hparams or check_inner or nonfinite or traffic"]),
    "outer/sparseloco":
        ("fedjax_lab/outer/sparseloco.py", ["tests/test_sparseloco.py"]),
    "outer/async_rules":
        ("fedjax_lab/outer/async_rules.py",
         ["tests/test_async_local_sgd.py", "-k", "reference or equal_speeds or delay_one"]),
    "sync":
        ("fedjax_lab/sync.py",
         [OR, ENGINE, "-k", "matches_numpy_reference or partner_out or partial_participation "
          "or stragglers or nobody or nonfinite or comm_bytes"]),
    "comm/compress":
        ("fedjax_lab/comm/compress.py", ["tests/test_compress.py"]),
    "comm/codecs":
        ("fedjax_lab/comm/codecs.py", ["tests/test_compress.py"]),
    "comm/quantizers":
        ("fedjax_lab/comm/quantizers.py", ["tests/test_compress.py"]),
    "comm/feedback":
        ("fedjax_lab/comm/feedback.py", ["tests/test_compress.py"]),
    "comm/dct":
        ("fedjax_lab/comm/dct.py", ["tests/test_dct.py", "tests/test_compress.py", "-k",
                                     "not compress or dct"]),
    "fragments":
        ("fedjax_lab/fragments.py",
         ["tests/test_streaming.py", "-k", "one_fragment or partition or strided or offsets "
          "or overlap_merge or bytes_peak or bad_input or immediate_merge "
          "or (matches_numpy_reference and diloco)"]),
}

MUTMUT_CONFIG = '''\
"""Written by tools/mutation.py into the scratch copy: sampling, mutant id."""
import hashlib
import os


def pre_mutation(context):
  mid = context.mutation_id
  key = "%s\\0%s\\0%d" % (context.filename, mid.line.strip(), mid.index)
  h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
  if h % int(os.environ["MUT_SAMPLE"]) != 0:
    context.skip = True
    return
  with open(".mutation_current", "w") as f:
    f.write("%s:%d:%d" % (context.filename, mid.line_number + 1, mid.index))
'''


def _copy_checkout(dst):
  files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                         check=True, capture_output=True).stdout.decode().split("\0")
  for f in files:
    if not f or f.startswith((".mutation/", "runs/", "notebooks/")):
      continue
    src = ROOT / f
    if not src.is_file():
      continue
    (dst / f).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst / f)


KILLS = "tests/test_mutation_kills.py"


def pytest_args(key):
  """MODULES[key]'s tests without the sharded-vs-vmapped ones (8 to 16 replicas, slow),
  then the tests of tests/test_mutation_kills.py named after the module
  (`test_<last part of the key>_...`, e.g. test_fedopt_...: written against
  this module's survivors)."""
  args = list(MODULES[key][1])
  expr = "not sharded"
  if "-k" in args:
    i = args.index("-k")
    expr = "(%s) and not sharded" % args.pop(i + 1)
    args.pop(i)
  tag = key.split("/")[-1].strip("_")
  if (ROOT / KILLS).exists() or pathlib.Path(KILLS).exists():
    args.append(KILLS)
    expr = "(%s and not mutation_kills) or (mutation_kills and test_%s_)" % (expr, tag)
  return args + ["-k", expr]


def run_tests(key):
  """The test command mutmut runs for each mutant (inside the scratch copy)."""
  args = pytest_args(key)
  baseline = pathlib.Path(".mutation_baseline_s")
  if baseline.exists():
    limit = max(float(os.environ["MUT_MIN_TIMEOUT"]),
                float(os.environ["MUT_TIMEOUT_FACTOR"]) * float(baseline.read_text()))
  else:
    limit = 1800.0
  plugin = pathlib.Path("_mutation_cache_plugin.py")
  plugin.write_text(
      "import os\n\n\ndef pytest_sessionstart(session):\n  import jax\n"
      "  jax.config.update('jax_compilation_cache_dir', os.environ['MUT_JAX_CACHE'])\n")
  # --foreground: pytest stays in this process group (one kill stops a run).
  cmd = ["timeout", "--foreground", "-k", "10", str(int(limit)), sys.executable, "-m", "pytest",
         "-x", "-q", "-p", "_mutation_cache_plugin", *args]
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  start = time.time()
  rc = subprocess.call(cmd, env=env)
  elapsed = time.time() - start
  if not baseline.exists():
    if rc != 0:
      return rc  # mutmut reports the failing baseline and stops.
    baseline.write_text("%.1f" % elapsed)
    return 0
  if rc in (124, 137):
    with open(".mutation_timeouts", "a") as f:
      f.write(pathlib.Path(".mutation_current").read_text() + "\n")
    return 1
  # mutmut 2 counts only exit code 1 as a kill (`tests_pass` is `rc != 1`):
  # a mutant that breaks an import makes pytest exit 2 (collection error)
  # and would be reported as surviving. Any failure of the tests is a kill.
  return 0 if rc == 0 else 1


def _results_from_cache(work, key):
  db = sqlite3.connect(work / ".mutmut-cache")
  rows = db.execute(
      "SELECT m.id, m.status, l.line_number, m.\"index\", l.line FROM mutant m "
      "JOIN line l ON m.line = l.id").fetchall()
  timeouts = set()
  tfile = work / ".mutation_timeouts"
  if tfile.exists():
    timeouts = set(tfile.read_text().split())
  counts = {"killed": 0, "survived": 0, "timeout": 0, "suspicious": 0, "skipped": 0,
            "untested": 0}
  survivors = []
  path = MODULES[key][0]
  for pk, status, line_number, index, line in rows:
    if status == "ok_killed" and "%s:%d:%d" % (path, line_number + 1, index) in timeouts:
      status = "bad_timeout"
    name = {"ok_killed": "killed", "bad_survived": "survived", "bad_timeout": "timeout",
            "ok_suspicious": "suspicious", "skipped": "skipped"}.get(status, "untested")
    counts[name] += 1
    if name in ("survived", "timeout"):
      diff = subprocess.run(["mutmut", "show", str(pk)], cwd=work, capture_output=True,
                            text=True).stdout
      diff = "\n".join(ln for ln in diff.splitlines() if ln.startswith(("-", "+", "@@"))
                       and not ln.startswith(("---", "+++")))
      survivors.append({"status": name, "line": line_number + 1, "index": index,
                        "source": line.strip(), "diff": diff})
  survivors.sort(key=lambda s: (s["line"], s["index"]))
  return counts, survivors


def count_mutants(path):
  """mutmut's mutants of `path` without the string ones (what `mutmut run` below tests)."""
  import mutmut  # pylint: disable=import-outside-toplevel
  ctx = mutmut.Context(filename=str(ROOT / path))
  orig = mutmut.Context.should_mutate
  mutmut.Context.should_mutate = lambda self, node: node.type not in ("string", "fstring")
  try:
    return len(mutmut.list_mutations(ctx))
  finally:
    mutmut.Context.should_mutate = orig


def run_module(key, args):
  path, _ = MODULES[key]
  sample = 1 if count_mutants(path) <= args.full_below else args.sample
  work = STATE / "work" / key.replace("/", "_")
  cache = STATE / "cache" / (key.replace("/", "_") + ".sqlite")
  shutil.rmtree(work, ignore_errors=True)
  work.mkdir(parents=True)
  _copy_checkout(work)
  (work / "mutmut_config.py").write_text(MUTMUT_CONFIG)
  if cache.exists() and not args.fresh:
    shutil.copy2(cache, work / ".mutmut-cache")
  env = dict(os.environ, MUT_SAMPLE=str(sample), MUT_JAX_CACHE=str(STATE / "jax_cache"),
             MUT_MIN_TIMEOUT=str(args.min_timeout), MUT_TIMEOUT_FACTOR=str(args.timeout_factor),
             PYTHONPATH=str(work))
  runner = "%s tools/mutation.py --run-tests %s" % (sys.executable, key)
  start = time.time()
  log_path = STATE / ("log_" + key.replace("/", "_") + ".txt")
  crashed = False
  with open(log_path, "w") as log:
    proc = subprocess.Popen(
        ["mutmut", "run", "--paths-to-mutate", path, "--runner", runner, "--tests-dir", "tests",
         "--disable-mutation-types", "string,fstring", "--simple-output", "--no-progress"],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    # mutmut 2.5.1 can lose a row of its cache ("assert line" in
    # cached_mutation_status); its worker then dies and the parent waits
    # forever. Stop it; the module is reported with its untested mutants
    # (run it again with --fresh).
    while proc.poll() is None:
      time.sleep(5)
      if "Process check_mutants:" in log_path.read_text(errors="replace"):
        crashed = True
        proc.kill()
        proc.wait()
    rc = proc.returncode
  elapsed = time.time() - start
  if not (work / ".mutmut-cache").exists():
    raise RuntimeError("%s: mutmut failed (rc %d), see .mutation/log_*.txt" % (key, rc))
  # The checkout must be untouched; the copy must hold no leftover mutant.
  if (work / (path + ".bak")).exists():
    raise RuntimeError("%s: mutmut left %s.bak in the scratch copy" % (key, path))
  counts, survivors = _results_from_cache(work, key)
  shutil.copy2(work / ".mutmut-cache", cache)
  baseline = work / ".mutation_baseline_s"
  result = {"module": key, "file": path, "sample": sample, "seconds": round(elapsed),
            "baseline_s": float(baseline.read_text()) if baseline.exists() else None,
            "counts": counts, "survivors": survivors, "finished": time.strftime("%F %T"),
            "crashed": crashed}
  (STATE / "results").mkdir(exist_ok=True)
  (STATE / "results" / (key.replace("/", "_") + ".json")).write_text(json.dumps(result, indent=1))
  if not args.keep:
    shutil.rmtree(work, ignore_errors=True)
  return result


def report(keys):
  print("%-18s %6s %7s %7s %8s %7s %6s %8s %6s" % (
      "module", "sample", "tested", "killed", "survived", "timeout", "rate", "baseline", "time"))
  total = {"killed": 0, "tested": 0}
  for key in keys:
    f = STATE / "results" / (key.replace("/", "_") + ".json")
    if not f.exists():
      print("%-18s  (no result)" % key)
      continue
    r = json.loads(f.read_text())
    c = r["counts"]
    tested = c["killed"] + c["survived"] + c["timeout"] + c["suspicious"]
    killed = c["killed"] + c["suspicious"]  # suspicious: killed, but slowly.
    total["killed"] += killed
    total["tested"] += tested
    print("%-18s %6s %7d %7d %8d %7d %5.0f%% %7.0fs %5.0fs%s" % (
        key, "1/%d" % r["sample"], tested, killed, c["survived"], c["timeout"],
        100.0 * killed / max(tested, 1), r["baseline_s"] or 0, r["seconds"],
        "  (%d untested: mutmut crashed, rerun with --fresh)" % c["untested"]
        if c["untested"] else ""))
    for s in r["survivors"]:
      print("    %s L%d: %s" % (s["status"], s["line"], " | ".join(s["diff"].splitlines()[1:])))
  print("%-18s %6s %7d %7d   kill rate %.0f%%" % ("all", "", total["tested"], total["killed"],
                                              100.0 * total["killed"] / max(total["tested"], 1)))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("modules", nargs="*", help="keys of MODULES (default: all)")
  ap.add_argument("--sample", type=int, default=16, help="test one mutant in N (1: all)")
  ap.add_argument("--full-below", type=int, default=12,
                  help="test every mutant of a module with at most this many")
  ap.add_argument("--jobs", type=int, default=2, help="modules run at once")
  ap.add_argument("--min-timeout", type=float, default=120.0, help="seconds a mutant may take")
  ap.add_argument("--timeout-factor", type=float, default=3.0,
                  help="... or this times the unmutated run, whichever is longer")
  ap.add_argument("--fresh", action="store_true", help="ignore mutmut's cache of past results")
  ap.add_argument("--keep", action="store_true", help="keep the scratch copies")
  ap.add_argument("--report", action="store_true", help="print the last results only")
  ap.add_argument("--list", action="store_true", help="list the modules and their tests")
  ap.add_argument("--run-tests", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.run_tests:
    sys.exit(run_tests(args.run_tests))
  keys = args.modules or list(MODULES)
  unknown = [k for k in keys if k not in MODULES]
  if unknown:
    ap.error("unknown module(s) %s; known: %s" % (unknown, ", ".join(MODULES)))
  if args.list:
    for k in keys:
      print(k, MODULES[k][0], " ".join(pytest_args(k)))
    return
  if not args.report:
    if shutil.which("mutmut") is None:
      sys.exit("mutmut not found: pip install -e '.[mutation]'")
    STATE.mkdir(exist_ok=True)
    (STATE / "cache").mkdir(exist_ok=True)
    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
      futures = {pool.submit(run_module, k, args): k for k in keys}
      for fut in concurrent.futures.as_completed(futures):
        r = fut.result()
        print("done %s in %ds: %s" % (r["module"], r["seconds"], r["counts"]), flush=True)
    print("wall clock: %ds" % (time.time() - start))
  report(keys)


if __name__ == "__main__":
  main()
