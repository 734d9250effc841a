"""Data-layer throughput: corpus size, LM train-step tokens/s, data vs step time.

Run:
  python bench/data_throughput.py                  # defaults below
  python bench/data_throughput.py --subset=small --rounds=5

Measures, in one run on whatever JAX backend is the default (CPU here):
  1. The stdlib corpus: files and bytes, and the time to prepare it (TFDS
     array_record, into --data_dir or a temporary directory) and to load it as
     LM sequences.
  2. Tokens/s of one jitted train step (value_and_grad + optax.adamw) of the
     default CPU LM: d_model=256, num_layers=4, num_heads=4, mlp_ratio=4,
     seq_len=128, batch 8 (3.2M parameters), and the FLOP/s that implies
     (Task.flops_per_example, 6·N + attention, per sequence).
  3. Data time vs step time: a RoundLoader producing [M=4, H=10, B=8] rounds
     against a jitted round step over the same shape (vmap over replicas of a
     lax.scan over the H inner steps). Reports host time per round to produce
     a batch (no prefetch), the jitted round step time, their ratio, and with
     prefetch=2 the share of wall time the step loop spent waiting for data.
"""

import argparse
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_lab import data
from fedjax_lab import models


def _parse():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data_dir", default=None,
                 help="TFDS data dir; default a fresh temporary directory")
  p.add_argument("--subset", default="full", choices=data.STDLIB_SUBSETS)
  p.add_argument("--d_model", type=int, default=256)
  p.add_argument("--num_layers", type=int, default=4)
  p.add_argument("--num_heads", type=int, default=4)
  p.add_argument("--seq_len", type=int, default=128)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--batch_size", type=int, default=8, help="B per replica")
  p.add_argument("--replicas", type=int, default=4, help="M")
  p.add_argument("--inner_steps", type=int, default=10, help="H")
  p.add_argument("--steps", type=int, default=10, help="timed single steps")
  p.add_argument("--rounds", type=int, default=3, help="timed rounds")
  return p.parse_args()


def _train_step(task, tx):
  def step(params, opt_state, batch):
    (loss, _), grads = jax.value_and_grad(task.loss_fn, has_aux=True)(
        params, batch, None)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return step


def main():
  # Over 80 lines on purpose: one measurement per stage, printed as it runs.
  args = _parse()
  # Other jobs on a shared machine slow the step, not the data: report load.
  results = {"backend": jax.default_backend(), "devices": jax.device_count(),
             "cpu_count": os.cpu_count(), "loadavg_1min": os.getloadavg()[0]}
  print(f"backend {results['backend']}, {results['cpu_count']} CPUs, load "
        f"average {results['loadavg_1min']:.1f}")

  # 1. Corpus.
  fingerprint = data.corpus_fingerprint(subset=args.subset)
  results["corpus"] = fingerprint
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = args.data_dir or tmp
    start = time.perf_counter()
    data.prepare_stdlib_corpus(data_dir=data_dir, subset=args.subset)
    results["prepare_s"] = time.perf_counter() - start
    start = time.perf_counter()
    train, _ = data.lm_sources(dataset="stdlib", data_dir=data_dir,
                               seq_len=args.seq_len, subset=args.subset)
    results["load_sequences_s"] = time.perf_counter() - start
  results["train_sequences"] = len(train)
  print(f"corpus[{args.subset}]: {fingerprint['num_files']} files, "
        f"{fingerprint['num_bytes'] / 1e6:.1f} MB (python "
        f"{fingerprint['python_version']}); prepare {results['prepare_s']:.2f} s,"
        f" load {len(train)} sequences of {args.seq_len + 1} B in "
        f"{results['load_sequences_s']:.2f} s")

  # 2. One jitted train step.
  task = models.lm_task(d_model=args.d_model, num_layers=args.num_layers,
                        num_heads=args.num_heads, seq_len=args.seq_len,
                        dtype=args.dtype)
  tx = optax.adamw(1e-3)
  params = jax.jit(task.init)(jax.random.key(0))
  opt_state = tx.init(params)
  step = jax.jit(_train_step(task, tx), donate_argnums=(0, 1))
  batch = {"tokens": jnp.asarray(train.get_batch(np.arange(args.batch_size))[
      "tokens"])}
  params, opt_state, loss = step(params, opt_state, batch)  # Compile.
  jax.block_until_ready(loss)
  start = time.perf_counter()
  for _ in range(args.steps):
    params, opt_state, loss = step(params, opt_state, batch)
  jax.block_until_ready(loss)
  step_s = (time.perf_counter() - start) / args.steps
  tokens_per_s = args.batch_size * args.seq_len / step_s
  flops_per_s = task.flops_per_example * args.batch_size / step_s
  results.update(num_params=task.num_params, step_s=step_s,
                 tokens_per_s=tokens_per_s, train_flops_per_s=flops_per_s)
  print(f"LM d={args.d_model} L={args.num_layers} heads={args.num_heads} "
        f"seq={args.seq_len} B={args.batch_size} {args.dtype}: "
        f"{task.num_params / 1e6:.2f}M params, step {step_s * 1e3:.1f} ms, "
        f"{tokens_per_s:,.0f} tokens/s, {flops_per_s / 1e9:.1f} GFLOP/s")

  # 3. Data vs step time for rounds [M, H, B].
  m, h, b = args.replicas, args.inner_steps, args.batch_size
  shards = data.partition(train, m, method="by_source")
  inner = _train_step(task, tx)

  def replica_round(params, opt_state, round_batch):
    def body(carry, batch):
      p, s, loss = inner(*carry, batch)
      return (p, s), loss
    (params, opt_state), losses = jax.lax.scan(body, (params, opt_state),
                                               round_batch)
    return params, opt_state, losses.mean()

  round_step = jax.jit(jax.vmap(replica_round), donate_argnums=(0, 1))
  stack = lambda t: jax.tree.map(lambda x: jnp.stack([x] * m), t)
  rparams = stack(jax.jit(task.init)(jax.random.key(0)))
  ropt = stack(tx.init(jax.tree.map(lambda x: x[0], rparams)))

  with data.RoundLoader(train, shards, batch_size=b, inner_steps=h, seed=0,
                        prefetch=0) as loader:
    next(loader)
    start = time.perf_counter()
    for _ in range(args.rounds):
      round_batch = next(loader)
    data_s = (time.perf_counter() - start) / args.rounds
  rparams, ropt, loss = round_step(rparams, ropt, round_batch)  # Compile.
  jax.block_until_ready(loss)
  start = time.perf_counter()
  for _ in range(args.rounds):
    rparams, ropt, loss = round_step(rparams, ropt, round_batch)
  jax.block_until_ready(loss)
  round_s = (time.perf_counter() - start) / args.rounds

  with data.RoundLoader(train, shards, batch_size=b, inner_steps=h, seed=0,
                        prefetch=2) as loader:
    next(loader)
    waited = loader.wait_seconds
    start = time.perf_counter()
    for _ in range(args.rounds):
      rparams, ropt, loss = round_step(rparams, ropt, next(loader))
    jax.block_until_ready(loss)
    wall_s = time.perf_counter() - start
    stall_s = loader.wait_seconds - waited
  results.update(round_shape=[m, h, b, args.seq_len + 1], data_s_per_round=data_s,
                 step_s_per_round=round_s, data_over_step=data_s / round_s,
                 prefetch_wall_s_per_round=wall_s / args.rounds,
                 prefetch_stall_share=stall_s / wall_s,
                 round_tokens_per_s=m * h * b * args.seq_len / round_s)
  print(f"round [M={m}, H={h}, B={b}]: data {data_s * 1e3:.2f} ms/round (host, "
        f"no prefetch), step {round_s * 1e3:.0f} ms/round "
        f"({results['round_tokens_per_s']:,.0f} tokens/s); data/step = "
        f"{data_s / round_s:.2e}")
  print(f"with prefetch=2: {wall_s / args.rounds * 1e3:.0f} ms/round wall, "
        f"waiting for data {100 * stall_s / wall_s:.2f}% of it")
  print(json.dumps(results, default=float))


if __name__ == "__main__":
  main()
