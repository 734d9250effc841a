r"""Round throughput: M replicas vs one big-batch model, and the outer step's share.

Measured in one run on one device (ratios, never absolute targets):

1. tokens/s of an engine round (M replicas, batch B each, H inner steps,
   DiLoCo outer step) vs one model taking the same H steps at batch M·B
   (a plain jitted `lax.scan` of AdamW steps): the cost of keeping replicas.
   Target: ≥ 0.95×.
2. The share of a round spent in the outer step (Δ, average, Nesterov, restart)
   at H = 10, 50, 100, timing the sync alone with the same jit machinery.
   Target: ≤ 1% at H = 100.

Run:
  python bench/round_throughput.py                       # default LM shape
  python bench/round_throughput.py --replicas=4 --batch=8 --steps=10,50,100
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fedjax_lab
from fedjax_lab import engine as engine_lib
from fedjax_lab import models


def _time(fns, repeats):
  """Median wall seconds of each fn() (each blocks until its result is ready).

  The functions are timed in turn, `repeats` times round, so that slow drifts
  of the machine (frequency, other load) hit all of them alike.
  """
  for fn in fns:
    fn()  # Warm-up / compile.
  times = [[] for _ in fns]
  for _ in range(repeats):
    for fn, ts in zip(fns, times):
      t = time.perf_counter()
      fn()
      ts.append(time.perf_counter() - t)
  return [statistics.median(ts) for ts in times]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--replicas", type=int, default=4)
  parser.add_argument("--batch", type=int, default=8, help="per replica")
  parser.add_argument("--steps", default="10,50,100", help="H values")
  parser.add_argument("--d_model", type=int, default=128)
  parser.add_argument("--num_layers", type=int, default=2)
  parser.add_argument("--seq_len", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  m, b, l = args.replicas, args.batch, args.seq_len
  task = models.lm_task(d_model=args.d_model, num_layers=args.num_layers,
                        seq_len=l)
  params = task.init(jax.random.PRNGKey(0))
  inner_opt = optax.adamw(4e-4, weight_decay=0.1)
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; "
        f"model: {task.num_params:,} params, d_model={args.d_model}, "
        f"layers={args.num_layers}, seq_len={l}; M={m}, B={b}")
  rs = np.random.RandomState(0)
  rows = []
  for h in [int(s) for s in args.steps.split(",")]:
    tokens = rs.randint(0, 256, size=(m, h, b, l + 1)).astype(np.int32)
    batch = {"tokens": tokens}
    big_batch = {"tokens": jnp.asarray(
        tokens.transpose(1, 0, 2, 3).reshape(h, m * b, l + 1))}

    engine = fedjax_lab.Engine(task.loss_fn, inner_opt=inner_opt,
                               outer=fedjax_lab.outer.get("diloco"),
                               num_replicas=m, inner_steps=h)
    holder = {"state": engine.init(params)}
    device_batch = jax.device_put(batch)

    def replicas_round():
      holder["state"], metrics = engine.round(holder["state"], device_batch)
      jax.block_until_ready(metrics["loss"])

    # The reference: one model, batch M·B, the same H AdamW steps in one jit.
    def big_step(carry, batch_t):
      p, o = carry
      (loss, _), grads = jax.value_and_grad(task.loss_fn, has_aux=True)(
          p, batch_t, None)
      updates, o = inner_opt.update(grads, o, p)
      return (optax.apply_updates(p, updates), o), loss

    @jax.jit
    def big_round(p, o, batch_h):
      (p, o), losses = jax.lax.scan(big_step, (p, o), batch_h)
      return p, o, losses.mean()

    big = {"p": params, "o": inner_opt.init(params)}

    def big_batch_round():
      big["p"], big["o"], loss = big_round(big["p"], big["o"], big_batch)
      jax.block_until_ready(loss)

    # The outer step alone: what a round adds on top of the inner steps.
    ops_holder = {}

    @jax.jit
    def sync_only(state):
      ops = engine_lib._local_ops(m)  # pylint: disable=protected-access
      ok = jnp.ones([m], bool)
      out = engine._sync(engine.outer, state.params, state.outer_state,  # pylint: disable=protected-access
                         state.replica_params, state.comm_state, ok,
                         jnp.ones([m], jnp.float32),
                         jax.random.split(jax.random.PRNGKey(1), m),
                         jax.random.PRNGKey(2), ops)
      return out[0]

    def outer_step():
      ops_holder["g"] = sync_only(holder["state"])
      jax.block_until_ready(ops_holder["g"])

    t_rep, t_big, t_sync = _time(
        [replicas_round, big_batch_round, outer_step], args.repeats)
    n_tokens = m * h * b * l
    rows.append((h, n_tokens / t_rep, n_tokens / t_big, t_big / t_rep,
                 t_sync / t_rep))
    assert engine.compiled_rounds() == 1

  print()
  print("| H | replicas tok/s | big-batch tok/s | replicas / big-batch | "
        "outer step share of round |")
  print("|---|---|---|---|---|")
  for h, rep, big_, ratio, share in rows:
    print(f"| {h} | {rep:,.0f} | {big_:,.0f} | {ratio:.3f}x | {100 * share:.2f}% |")
  print()
  print("targets: replicas >= 0.95x the big-batch model; outer step <= 1% "
        "of a round at H = 100")


if __name__ == "__main__":
  main()
