r"""Asynchronous Local-SGD's simulation overhead against the synchronous round.

The same work both ways: M workers, H = 10 inner steps a task, the 784-256-10
MLP of bench/round_throughput.py (inner SGD, B = 32), DiLoCo's Nesterov outer
step. Measured in one run, as ratios (never an absolute target):

* sync: `Engine.round` (M replicas × H steps, one jitted call), ms per task
  (a round / M);
* async: `AsyncSimulator` on the same engine with Delayed Nesterov N = M, run
  for R·M arrivals; ms per task launched (every launched task computed, the
  ones still in flight at the end included). Two speed profiles:
  - equal speeds: every burst is the M workers together (one vmapped call a
    burst, M single-update calls);
  - a 4× spread (sec_i = 1 + 3i/(M − 1), grace 0.5 s): launches are mostly
    one or a few workers, each its own call.
  Each run starts from a fresh state and is timed after a first identical
  run compiled every program (one per power-of-two launch size); the three
  are timed in turn, repeatedly, so load drifts hit all alike.

Run:
  python bench/async_overhead.py               # M = 4, 8, 16, 32, 64
  python bench/async_overhead.py --ms=4,8      # quick look
"""

import argparse
import os
import statistics
import time

import jax
import numpy as np
import round_throughput  # bench/ is on sys.path when run as a script.

import fedjax_lab
from fedjax_lab import async_local_sgd as al


def _sync_run(engine, params, batch, rounds):
  """R engine rounds; returns the replica-tasks computed."""
  holder = {"state": engine.init(params)}

  def run():
    for _ in range(rounds):
      holder["state"], metrics = engine.round(holder["state"], batch)
    jax.block_until_ready(metrics["loss"])
    return rounds * engine.num_replicas

  return run


def _async_run(engine, params, pool, secs, rounds, info):
  """R·M arrivals from a fresh state; returns the tasks launched (those
  still in flight at the end included). `info` gets the launch sizes."""
  m = engine.num_replicas
  sim = al.AsyncSimulator(engine, al.AsyncProfile(secs, grace=0.5),
                          al.server_rule("delayed_nesterov", num_workers=m))
  sizes = []

  def batches(launch):
    sizes.append(len(launch.workers))
    return jax.tree.map(lambda x: x[launch.workers], pool)

  def run():
    sizes.clear()
    state, _ = sim.run_until(sim.init(params), batches, updates=rounds * m)
    jax.block_until_ready(state.params)
    info.update(launches=len(sizes), size=float(np.mean(sizes)),
                programs=sim.compiled_programs())
    return sum(sizes)

  return run


def _ms_per_task(fns, repeats):
  """Median ms per task of each fn, timed in turn so drifts hit all alike
  (a first call of each compiles every program it needs)."""
  for fn in fns:
    fn()
  times = [[] for _ in fns]
  for _ in range(repeats):
    for fn, ts in zip(fns, times):
      t = time.perf_counter()
      tasks = fn()
      ts.append(1e3 * (time.perf_counter() - t) / tasks)
  return [statistics.median(ts) for ts in times]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--ms", default="4,8,16,32,64")
  parser.add_argument("--rounds", type=int, default=4, help="R: work of R sync rounds")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  w = round_throughput.mlp_workload()
  h = 10
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax "
        f"{jax.__version__}; {w['name']}, H = {h}, B = {w['batch']}, "
        f"R = {args.rounds} rounds of work; median of {args.repeats}; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (shared machines: "
        f"compare the ratios, not the ms)")
  print()
  print("| M | sync ms/task | async equal ms/task | equal / sync | "
        "async 4x spread ms/task | spread / sync | spread launches (mean size) | "
        "programs |")
  print("|---|---|---|---|---|---|---|---|")
  for m in [int(x) for x in args.ms.split(",")]:
    rs = np.random.RandomState(0)
    params = w["init"](jax.random.PRNGKey(0))
    pool = w["make_batch"](rs, (m, h, w["batch"]))
    engine = fedjax_lab.Engine(w["loss_fn"], inner_opt=w["inner_opt"],
                               outer=fedjax_lab.outer.get("diloco"),
                               num_replicas=m, inner_steps=h)
    spread = tuple(1.0 + 3.0 * i / max(m - 1, 1) for i in range(m))
    info = {}
    sync, equal, uneq = _ms_per_task([
        _sync_run(engine, params, pool, args.rounds),
        _async_run(engine, params, pool, (1.0,) * m, args.rounds, {}),
        _async_run(engine, params, pool, spread, args.rounds, info)], args.repeats)
    launches, size, programs = info["launches"], info["size"], info["programs"]
    print(f"| {m} | {sync:.2f} | {equal:.2f} | {equal / sync:.2f}x | {uneq:.2f} | "
          f"{uneq / sync:.2f}x | {launches} ({size:.1f}) | {programs} |", flush=True)


if __name__ == "__main__":
  main()
