r"""Population throughput: N clients, M sampled per round, vs fixed replicas.

A population run (`train.num_clients` = N > M) draws each round's M clients
from a `PopulationLoader` and, for an algorithm with per-client state
(SCAFFOLD's c_i), gathers the sampled clients' states from the host
`ClientStateStore` into the round's slots and scatters them back after it.
This bench times that step exactly as the run loop does it
(`fedjax_lab/run/loop.py`, `_Loop._sync_round`: loader.next(), store.gather,
`_put_like` onto the device, `Engine.round`, `_host_value` back to the host,
store.scatter) against the same round with M fixed replicas fed by a
`RoundLoader` (a fixed-replica run's step: loader.next(), `Engine.round`,
client state staying on the device), in the same process:

* workload: the MLP of bench/round_throughput.py (784-256-10, inner SGD lr
  0.1, H = 10, B = 32), N = 1,000 clients (320 examples each), M = 64;
* algorithms: FedAvg (no per-client state) and SCAFFOLD (c_i: one params'
  worth per client, 0.8 MB; 0.8 GB for the population, host memory);
* both loaders prefetch 2 rounds in their thread (configs/default.py's
  data.prefetch), so their host work overlaps the rounds, as in a run;
* blocks of rounds alternate between the population and the fixed step (a
  loader's producer only runs while its own block does), median ms per
  round, and each population step split into its parts.

Run:
  python bench/population_throughput.py                  # N=1000, M=64
  python bench/population_throughput.py --clients=1000 --m=64 --blocks=4
"""

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import round_throughput  # noqa: E402  pylint: disable=wrong-import-position

import fedjax_lab  # noqa: E402
from fedjax_lab import data as data_lib  # noqa: E402
from fedjax_lab.run import loop as loop_lib  # noqa: E402


class ArraySource:
  """A random-access source of MLP examples (random pixels, labels)."""

  def __init__(self, n, seed=0):
    rs = np.random.RandomState(seed)
    self.image = rs.rand(n, 784).astype(np.float32)
    self.label = rs.randint(0, 10, size=n).astype(np.int32)

  def __len__(self):
    return len(self.label)

  def get_batch(self, indices):
    return {"image": self.image[indices], "label": self.label[indices]}


def client_shards(num_clients, per_client, source_size):
  """Client c reads examples c·n ... c·n + n − 1 (mod the source)."""
  return [(c * per_client + np.arange(per_client)) % source_size
          for c in range(num_clients)]


def make_engine(w, algorithm, m, h, num_clients):
  hp = {"local_lr": 0.1, "num_clients": num_clients} if (
      algorithm == "scaffold") else {}
  return fedjax_lab.Engine(
      w["loss_fn"], inner_opt=w["inner_opt"],
      outer=fedjax_lab.outer.get(algorithm, **hp), num_replicas=m,
      inner_steps=h)


class FixedStep:
  """A fixed-replica run's round: RoundLoader.next(), Engine.round."""

  def __init__(self, w, algorithm, m, h, source, shards, params, prefetch=2):
    self.engine = make_engine(w, algorithm, m, h, None)
    self.loader = data_lib.RoundLoader(source, shards[:m], batch_size=w["batch"],
                                       inner_steps=h, seed=0, prefetch=prefetch)
    self.state = self.engine.init(params)

  def __call__(self):
    t0 = time.perf_counter()
    batch = self.loader.next()
    t1 = time.perf_counter()
    self.state, mt = self.engine.round(self.state, batch)
    jax.block_until_ready(mt["loss"])
    t2 = time.perf_counter()
    return {"total": t2 - t0, "loader wait": t1 - t0, "round": t2 - t1}

  def close(self):
    self.loader.close()


class PopulationStep:
  """A population run's round, as `_Loop._sync_round` does it."""

  def __init__(self, w, algorithm, m, h, source, shards, params, prefetch=2):
    n = len(shards)
    self.engine = make_engine(w, algorithm, m, h, n)
    sampler = data_lib.ClientSampler(n, m, seed=0)
    self.loader = data_lib.PopulationLoader(
        source, shards, sampler, batch_size=w["batch"], seed=0, inner_steps=h,
        prefetch=prefetch)
    self.state = self.engine.init(params)
    template = jax.tree.map(lambda x: np.zeros(x.shape[1:], x.dtype),
                            self.state.client_state)
    self.store = (data_lib.ClientStateStore(template, n)
                  if jax.tree.leaves(template) else None)

  def __call__(self):
    t0 = time.perf_counter()
    rnd = self.loader.next()
    t1 = time.perf_counter()
    if self.store is not None:
      gathered = self.store.gather(rnd.client_ids)
      self.state = self.state.replace(client_state=jax.tree.map(
          loop_lib._put_like, gathered, self.state.client_state))  # pylint: disable=protected-access
    t2 = time.perf_counter()
    self.state, mt = self.engine.round(self.state, rnd.batch,
                                       num_steps=rnd.num_steps,
                                       num_examples=rnd.num_examples)
    jax.block_until_ready(mt["loss"])
    t3 = time.perf_counter()
    if self.store is not None:
      self.store.scatter(rnd.client_ids,
                         jax.tree.map(loop_lib._host_value,  # pylint: disable=protected-access
                                      self.state.client_state),
                         mask=rnd.num_steps > 0)
    t4 = time.perf_counter()
    return {"total": t4 - t0, "loader wait": t1 - t0,
            "store gather + put": t2 - t1, "round": t3 - t2,
            "fetch + store scatter": t4 - t3}

  def close(self):
    self.loader.close()


def run_blocks(steps, blocks, rounds_per_block, warmup):
  """Alternating blocks of rounds; per step, the median of each part (ms)."""
  for step in steps:
    for _ in range(warmup):
      step()
  parts = [dict() for _ in steps]
  for _ in range(blocks):
    for step, acc in zip(steps, parts):
      for _ in range(rounds_per_block):
        for k, v in step().items():
          acc.setdefault(k, []).append(v)
  return [{k: 1e3 * statistics.median(v) for k, v in acc.items()}
          for acc in parts]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--clients", type=int, default=1000)
  parser.add_argument("--m", type=int, default=64)
  parser.add_argument("--per_client", type=int, default=320)
  parser.add_argument("--source_size", type=int, default=32000)
  parser.add_argument("--blocks", type=int, default=3)
  parser.add_argument("--rounds_per_block", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=4)
  parser.add_argument("--algorithms", default="fedavg,scaffold")
  parser.add_argument("--prefetch", type=int, default=2,
                      help="rounds each loader prepares ahead (0: in next())")
  args = parser.parse_args()
  w = round_throughput.mlp_workload()
  h = 10
  source = ArraySource(args.source_size)
  shards = client_shards(args.clients, args.per_client, args.source_size)
  params = w["init"](jax.random.PRNGKey(0))
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}; {w['name']}, H = {h}, B = {w['batch']}, "
        f"N = {args.clients} clients, M = {args.m} per round; median ms per "
        f"round over {args.blocks} x {args.rounds_per_block} rounds; loaders "
        f"prefetch {args.prefetch}")
  print()
  print("| algorithm | fixed ms | population ms | population / fixed | "
        "population split (ms) |")
  print("|---|---|---|---|---|")
  for algorithm in args.algorithms.split(","):
    fixed = FixedStep(w, algorithm, args.m, h, source, shards, params,
                      args.prefetch)
    pop = PopulationStep(w, algorithm, args.m, h, source, shards, params,
                         args.prefetch)
    try:
      f, p = run_blocks([fixed, pop], args.blocks, args.rounds_per_block,
                        args.warmup)
    finally:
      fixed.close()
      pop.close()
    split = ", ".join(f"{k} {v:.1f}" for k, v in p.items() if k != "total")
    fsplit = ", ".join(f"{k} {v:.1f}" for k, v in f.items() if k != "total")
    store = "" if pop.store is None else f"; {pop.store.memory_line()}"
    print(f"| {algorithm} | {f['total']:.1f} ({fsplit}) | {p['total']:.1f} | "
          f"{p['total'] / f['total']:.2f}x | {split}{store} |", flush=True)
  print()
  print("target: population / fixed <= 1.2x")


if __name__ == "__main__":
  main()
