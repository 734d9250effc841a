r"""Round throughput: M replicas vs the compute bound, in both replica modes.

Everything is measured in one run on one device, as ratios against a reference
measured in the same run (never an absolute target):

* the compute bound: ONE model taking the same H inner steps at batch M·B in
  one jit (`lax.scan`), batches handed over from host numpy like the engine's;
* `Engine.round` with the replicas vmapped ('vmap') or run one after another
  ('sequential'), and the data-parallel baseline `ddp` on the same data, ms
  per round (median, interleaved repeats), the ratio to the
  bound, and the compiled program's memory (`memory_analysis()`: arguments +
  temporaries);
* the outer step's share of a round at H = 100 (the sync alone, timed with the
  same jit machinery).

Workloads (issue 9): a 784-256-10 ReLU MLP (softmax cross-entropy, FedAvg,
inner SGD lr 0.1, B = 32, H = 10) at M = 1, 8, 64, and the byte-level LM
(DiLoCo, inner AdamW) at M = 4, 16.

Run:
  python bench/round_throughput.py                  # the whole table
  python bench/round_throughput.py --quick          # M = 1, 8 MLP only
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fedjax_lab
from fedjax_lab import local_steps
from fedjax_lab import models
from fedjax_lab import replicas as rep_lib
from fedjax_lab import sync as sync_lib


def _time(fns, repeats):
  """Median wall seconds of each fn(), timed in turn so drifts hit all alike."""
  for fn in fns:
    fn()  # Compile and warm up.
    fn()
  times = [[] for _ in fns]
  for _ in range(repeats):
    for fn, ts in zip(fns, times):
      t = time.perf_counter()
      fn()
      ts.append(time.perf_counter() - t)
  return [statistics.median(ts) for ts in times]


def mlp_workload():
  """784-256-10 ReLU MLP with softmax cross-entropy."""
  def init(rng):
    k1, k2 = jax.random.split(rng)
    return {"w1": jax.random.normal(k1, (784, 256)) * 0.05,
            "b1": jnp.zeros(256),
            "w2": jax.random.normal(k2, (256, 10)) * 0.05,
            "b2": jnp.zeros(10)}

  def loss_fn(params, batch, rng):
    del rng
    h = jax.nn.relu(batch["image"] @ params["w1"] + params["b1"])
    logits = h @ params["w2"] + params["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["label"]).mean()

  def make_batch(rs, lead):
    return {"image": rs.rand(*lead, 784).astype(np.float32),
            "label": rs.randint(0, 10, size=lead).astype(np.int32)}

  return dict(name="MLP 784-256-10", init=init, loss_fn=loss_fn,
              make_batch=make_batch, inner_opt=optax.sgd(0.1), outer="fedavg",
              batch=32)


def lm_workload(d_model, num_layers, seq_len):
  task = models.lm_task(d_model=d_model, num_layers=num_layers,
                        seq_len=seq_len)

  def make_batch(rs, lead):
    return {"tokens": rs.randint(0, 256, size=lead + (seq_len + 1,)).astype(
        np.int32)}

  return dict(name=f"LM d{d_model} L{num_layers} seq{seq_len} "
                   f"({task.num_params:,} params)",
              init=task.init, loss_fn=task.loss_fn, make_batch=make_batch,
              inner_opt=optax.adamw(4e-4, weight_decay=0.1), outer="diloco",
              batch=4)


def _memory(compiled) -> float:
  """MiB of a compiled program's arguments and temporaries."""
  ma = compiled.memory_analysis()
  if ma is None:
    return float("nan")
  return (ma.argument_size_in_bytes + ma.temp_size_in_bytes) / 2**20


def bound_round_fn(w, h):
  """One model, batch M·B, the same H steps in one jit."""
  opt = w["inner_opt"]

  def step(carry, batch_t):
    p, o = carry
    def loss(p_):
      out = w["loss_fn"](p_, batch_t, None)
      return out[0] if isinstance(out, tuple) else out

    loss, grads = jax.value_and_grad(loss)(p)
    updates, o = opt.update(grads, o, p)
    return (optax.apply_updates(p, updates), o), loss

  @jax.jit
  def run(p, o, batch_h):
    (p, o), losses = jax.lax.scan(step, (p, o), batch_h)
    return p, o, losses.mean()

  return run


def measure(w, m, h, repeats, modes):
  """ms per round of the bound and of each mode, their ratio and memory."""
  rs = np.random.RandomState(0)
  b = w["batch"]
  params = w["init"](jax.random.PRNGKey(0))
  host_batch = w["make_batch"](rs, (m, h, b))
  big_batch = jax.tree.map(
      lambda x: np.ascontiguousarray(
          x.swapaxes(0, 1).reshape((h, m * b) + x.shape[3:])), host_batch)
  bound = bound_round_fn(w, h)
  big = {"p": params, "o": w["inner_opt"].init(params)}

  def bound_round():
    big["p"], big["o"], loss = bound(big["p"], big["o"], big_batch)
    jax.block_until_ready(loss)

  fns, engines = [bound_round], {}
  for mode in modes + ("ddp",):
    engine = fedjax_lab.Engine(
        w["loss_fn"], inner_opt=w["inner_opt"],
        outer="ddp" if mode == "ddp" else w["outer"], num_replicas=m,
        inner_steps=h, replica_mode="auto" if mode == "ddp" else mode)
    holder = {"state": engine.init(params)}

    def engine_round(engine=engine, holder=holder):
      holder["state"], metrics = engine.round(holder["state"], host_batch)
      jax.block_until_ready(metrics["loss"])

    fns.append(engine_round)
    engines[mode] = (engine, holder)
  times = _time(fns, repeats)
  out = {"bound_ms": 1e3 * times[0],
         "bound_mib": _memory(bound.lower(big["p"], big["o"], big_batch)
                              .compile())}
  for (mode, (engine, holder)), t in zip(engines.items(), times[1:]):
    assert engine.compiled_rounds() == 1, (mode, engine.compiled_rounds())
    out[mode] = {"ms": 1e3 * t, "ratio": t / times[0],
                 "mib": _memory(engine.lower_round(holder["state"], host_batch)
                                .compile())}
  return out


def sync_only_fn(engine, h):
  """The engine's outer step alone (Δ, average, outer rule, restart), jitted:
  state -> new global params. Every replica counts, each took H steps."""
  m = engine.num_replicas

  @jax.jit
  def sync_only(state):
    ok = jnp.ones([m], bool)
    keys = jax.random.split(jax.random.PRNGKey(1), m)
    out = sync_lib.outer_sync(engine.outer, engine.codec, sync_lib.SyncArgs(
        global_params=state.params, outer_state=state.outer_state[0],
        replica_params=state.replica_params,
        replica_start=state.replica_params, comm_state=state.comm_state[0],
        client_state=state.client_state, inner_state=state.inner_state,
        ok=ok, num_examples=jnp.ones([m], jnp.float32),
        num_steps=jnp.full([m], h, jnp.int32), comm_keys=keys,
        key=jax.random.PRNGKey(2), round=state.round), rep_lib.local_ops(m))
    return out.params

  return sync_only


def outer_share(w, m, h, repeats):
  """The sync alone as a share of a whole round (sequential mode)."""
  rs = np.random.RandomState(1)
  params = w["init"](jax.random.PRNGKey(0))
  engine = fedjax_lab.Engine(w["loss_fn"], inner_opt=w["inner_opt"],
                             outer=w["outer"], num_replicas=m, inner_steps=h)
  holder = {"state": engine.init(params)}
  host_batch = w["make_batch"](rs, (m, h, w["batch"]))

  def full_round():
    holder["state"], metrics = engine.round(holder["state"], host_batch)
    jax.block_until_ready(metrics["loss"])

  sync_only = sync_only_fn(engine, h)

  def outer_step():
    jax.block_until_ready(sync_only(holder["state"]))

  t_round, t_sync = _time([full_round, outer_step], repeats)
  return t_sync / t_round


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--lm_d_model", type=int, default=64)
  parser.add_argument("--lm_layers", type=int, default=2)
  parser.add_argument("--lm_seq_len", type=int, default=64)
  args = parser.parse_args()
  modes = ("vmap", "sequential")
  mlp = mlp_workload()
  lm = lm_workload(args.lm_d_model, args.lm_layers, args.lm_seq_len)
  plan = [(mlp, 1), (mlp, 8)] if args.quick else [
      (mlp, 1), (mlp, 8), (mlp, 64), (lm, 4), (lm, 16)]
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}; H = 10; auto mode on CPU: "
        f"vmap below {local_steps.SEQUENTIAL_FROM} replicas a "
        f"device, sequential from there")
  print()
  print("| workload | M | bound ms | vmap ms | vmap / bound | sequential ms | "
        "sequential / bound | ddp / bound | bound MiB | vmap MiB | "
        "sequential MiB |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for w, m in plan:
    r = measure(w, m, 10, args.repeats, modes)
    v, s, d = r["vmap"], r["sequential"], r["ddp"]
    print(f"| {w['name']} | {m} | {r['bound_ms']:.1f} | {v['ms']:.1f} | "
          f"{v['ratio']:.2f}x | {s['ms']:.1f} | {s['ratio']:.2f}x | "
          f"{d['ratio']:.2f}x | {r['bound_mib']:.1f} | {v['mib']:.1f} | "
          f"{s['mib']:.1f} |", flush=True)
  print()
  for w, m in [(mlp, 8)] + ([] if args.quick else [(lm, 4)]):
    share = outer_share(w, m, 100, max(3, args.repeats // 2))
    print(f"outer step share of a round at H = 100, {w['name']}, M = {m}: "
          f"{100 * share:.2f}%")
  print()
  print("targets: best mode <= 1.3x the bound (MLP), <= 1.15x (LM); outer "
        "step <= 1% of a round at H = 100")


if __name__ == "__main__":
  main()
