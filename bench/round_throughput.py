r"""Round throughput: M replicas vs the compute bound, in both replica modes.

(Over 400 lines on purpose: one benchmark, one file: the bound, every section
it measures (--only) and their tables.)

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

Workloads: a 784-256-10 ReLU MLP (softmax cross-entropy, FedAvg,
inner SGD lr 0.1, B = 32, H = 10) at M = 1, 8, 64, 256 (`--ms`), and the
byte-level LM (DiLoCo, inner AdamW) at M = 4, 16.

Issue 23 adds, beside those figures: the loop a user writes (a fresh host
numpy batch every round, 'auto' mode; and the same batch 64-byte aligned,
which XLA:CPU aliases instead of copying), the bound on a device-resident
batch, the MLP at M = 256, a split of where a round's time goes at M = 64
(transfer, local phase, sync, rest) beside the floor (M bare models, no
engine), every registry entry's ratio at M = 8, and the temporaries and
minor page faults of a round at M = 64 (steady whatever the machine's load;
`--stat=min` steadies the times too). Results: docs/throughput.md.

Run:
  python bench/round_throughput.py                  # everything (~12 min)
  python bench/round_throughput.py --quick          # M = 1, 8 MLP only
  python bench/round_throughput.py --only=table --ms=1,8,64,256 --no_lm
  python bench/round_throughput.py --only=profile   # the split at M = 64
  python bench/round_throughput.py --only=registry  # every entry at M = 8
  python bench/round_throughput.py --only=faults    # page faults at M = 64
"""

import argparse
import resource
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

# How `_time` sums up a fn's repeats: statistics.median (the default) or min
# (`--stat=min`: the least disturbed repeat, steadier on a shared machine).
_STAT = statistics.median


def _time(fns, repeats):
  """Median wall seconds of each fn(), timed in turn so drifts hit all alike.

  A fn that returns a Python float has timed itself (seconds; e.g. a
  user-loop round that makes its fresh host batch before starting its
  clock): that number is taken instead of the wall time of the call. Any
  other return value is ignored.
  """
  for fn in fns:
    fn()  # Compile and warm up.
    fn()
  times = [[] for _ in fns]
  for _ in range(repeats):
    for fn, ts in zip(fns, times):
      t = time.perf_counter()
      own = fn()
      wall = time.perf_counter() - t
      ts.append(own if type(own) is float else wall)  # pylint: disable=unidiomatic-typecheck
  return [_STAT(ts) for ts in times]


def faults_per_call(fn, calls=3):
  """(minor page faults, system CPU seconds) per call of fn, after a warm-up
  call: fresh memory the kernel maps in page by page shows here, steadily,
  whatever else the machine is doing."""
  fn()
  r0 = resource.getrusage(resource.RUSAGE_SELF)
  for _ in range(calls):
    fn()
  r1 = resource.getrusage(resource.RUSAGE_SELF)
  return ((r1.ru_minflt - r0.ru_minflt) / calls,
          (r1.ru_stime - r0.ru_stime) / calls)


def fresh_copy(tree):
  """A new host copy of every leaf (`np.array`, numpy's own allocator), as a
  loader hands out each round: large arrays come from fresh mmap'ed pages at
  an address 16 bytes past a page boundary, so XLA:CPU cannot alias them and
  copies them into a new device buffer."""
  return jax.tree.map(np.array, tree)


def aligned_copy(tree, align=64):
  """A new host copy of every leaf whose data starts on an `align`-byte
  boundary: XLA:CPU then aliases the numpy buffer instead of copying it
  (`jax.device_put` / a jit argument is zero-copy; see docs/throughput.md)."""

  def one(x):
    x = np.asarray(x)
    buf = np.empty(x.nbytes + align, np.uint8)
    off = (-buf.ctypes.data) % align
    out = buf[off:off + x.nbytes].view(x.dtype).reshape(x.shape)
    out[...] = x
    return out

  return jax.tree.map(one, tree)


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


def measure(w, m, h, repeats, modes, user=True):
  # Over 80 lines on purpose: the bound and each mode timed interleaved, in one place.
  """ms per round of the bound and of each mode, their ratio and memory.

  The bench's own figures hand every round the same host numpy batch (as
  it always has). With `user`, also: the bound on a device-resident batch
  (pure compute), and the loop a user writes, `Engine.round` in 'auto' mode
  with a fresh host numpy batch every round ('user'; the copy is made before
  the clock starts, as a loader would have it ready), and the same with the
  fresh batch 64-byte aligned ('user_aligned': XLA:CPU aliases it).
  """
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
  extra = []
  if user:
    big_dev = jax.device_put(big_batch)

    def bound_dev_round():
      big["p"], big["o"], loss = bound(big["p"], big["o"], big_dev)
      jax.block_until_ready(loss)

    auto = local_steps.default_replica_mode(m)
    if auto not in engines:
      engine = fedjax_lab.Engine(w["loss_fn"], inner_opt=w["inner_opt"],
                                 outer=w["outer"], num_replicas=m,
                                 inner_steps=h, replica_mode="auto")
      engines[auto] = (engine, {"state": engine.init(params)})
    engine, holder = engines[auto]

    def user_round(copy):
      batch = copy(host_batch)  # The user's data, ready before the clock.
      t = time.perf_counter()
      holder["state"], metrics = engine.round(holder["state"], batch)
      jax.block_until_ready(metrics["loss"])
      return time.perf_counter() - t

    extra = [("bound_dev", bound_dev_round),
             ("user", lambda: user_round(fresh_copy)),
             ("user_aligned", lambda: user_round(aligned_copy))]
  times = _time(fns + [fn for _, fn in extra], repeats)
  out = {"bound_ms": 1e3 * times[0],
         "bound_mib": _memory(bound.lower(big["p"], big["o"], big_batch)
                              .compile())}
  for (mode, (engine, holder)), t in zip(list(engines.items())[:len(fns) - 1],
                                         times[1:]):
    assert engine.compiled_rounds() == 1, (mode, engine.compiled_rounds())
    out[mode] = {"ms": 1e3 * t, "ratio": t / times[0],
                 "mib": _memory(engine.lower_round(holder["state"], host_batch)
                                .compile())}
  for (name, _), t in zip(extra, times[len(fns):]):
    out[name] = {"ms": 1e3 * t, "ratio": t / times[0]}
  if user:
    out["auto_mode"] = local_steps.default_replica_mode(m)
    for name in ("user", "user_aligned"):
      out[name]["ratio_dev"] = out[name]["ms"] / out["bound_dev"]["ms"]
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


def replica_steps_fn(w, h):
  """One replica's H inner steps (`lax.scan`) from params p, nothing else:
  (p, batch [H, B, ...]) -> (params after H steps, summed loss)."""
  opt = w["inner_opt"]

  def run(p, batch_h):
    def step(carry, b):
      p_, o = carry
      def loss(q):
        out = w["loss_fn"](q, b, None)
        return out[0] if isinstance(out, tuple) else out
      value, grads = jax.value_and_grad(loss)(p_)
      updates, o = opt.update(grads, o, p_)
      return (optax.apply_updates(p_, updates), o), value

    (p, _), losses = jax.lax.scan(step, (p, opt.init(p)), batch_h)
    return p, losses.sum()

  return run


def floor_fns(w, m, h):
  """The floor: M separate models taking the same H steps from the global
  params, then their plain average (a FedAvg round with nothing of the
  engine), each jitted: {'map': replicas in turn (`lax.map`), 'vmap': all at
  once, 'fused': in turn with the average accumulated in the loop's carry
  (the M models' params never stacked)}. (g, batch [M, H, B, ...]) -> (g',
  mean loss)."""
  run = replica_steps_fn(w, h)
  avg = lambda ps: jax.tree.map(
      lambda x: jnp.tensordot(jnp.full([m], 1.0 / m, x.dtype), x, axes=1), ps)

  @jax.jit
  def floor_map(g, batch):
    ps, losses = jax.lax.map(lambda b: run(g, b), batch)
    return avg(ps), losses.mean()

  @jax.jit
  def floor_vmap(g, batch):
    ps, losses = jax.vmap(run, in_axes=(None, 0))(g, batch)
    return avg(ps), losses.mean()

  @jax.jit
  def floor_fused(g, batch):
    def body(acc, b):
      p, loss = run(g, b)
      return jax.tree.map(lambda a, x: a + x / m, acc, p), loss

    acc, losses = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, g), batch)
    return acc, losses.mean()

  return {"map": floor_map, "vmap": floor_vmap, "fused": floor_fused}


def local_only_fn(engine, h):
  """The engine's local phase alone (`ReplicaSteps.local_phase`: the
  replicas' H steps, vmapped or in turn), jitted: (state, batch) -> its
  outputs."""
  m = engine.num_replicas

  @jax.jit
  def local_only(state, batch):
    keys = jax.random.split(jax.random.PRNGKey(1), m)
    return engine.steps.local_phase(
        state.replica_params, state.inner_state, batch,
        jnp.full([m], h, jnp.int32), keys, state.client_state,
        anchor=state.params, outer_state=state.outer_state[0], start=0,
        stragglers=False)

  return local_only


def user_loop(engine, holder, host_batch, copy, ahead, rounds):
  """Seconds per round of `rounds` rounds of a user's loop: a fresh host
  batch each round (made before the clock starts, as a loader has it
  ready), the loss read every round. With `ahead`, round r + 1's batch is
  handed to `jax.device_put` (asynchronous) as soon as round r is
  dispatched, so its transfer overlaps round r; the first batch's transfer
  is done before the clock, as the previous round would have done it."""
  batches = [copy(host_batch) for _ in range(rounds + 1)]
  nxt = jax.block_until_ready(jax.device_put(batches[0])) if ahead else (
      batches[0])
  t = time.perf_counter()
  for r in range(rounds):
    holder["state"], metrics = engine.round(holder["state"], nxt)
    nxt = (jax.device_put(batches[r + 1]) if ahead else batches[r + 1])
    jax.block_until_ready(metrics["loss"])
  return (time.perf_counter() - t) / rounds


def profile_split(w, m, h, repeats, loop_rounds=4):
  # Over 80 lines on purpose: every split of a round timed interleaved in one _time.
  """Where a round's time goes at M replicas, all interleaved in
  one `_time`: the batch's host->device transfer, the engine's round on a
  device-resident batch, on the same host batch every round (this bench's
  figure) and on a fresh host batch every round (a user's loop), its local
  phase alone, its outer sync alone, the floors and the bound. Returns
  {name: ms}."""
  rs = np.random.RandomState(0)
  b = w["batch"]
  params = w["init"](jax.random.PRNGKey(0))
  host_batch = w["make_batch"](rs, (m, h, b))
  dev_batch = jax.device_put(host_batch)
  big_host = jax.tree.map(
      lambda x: np.ascontiguousarray(
          x.swapaxes(0, 1).reshape((h, m * b) + x.shape[3:])), host_batch)
  big_dev = jax.device_put(big_host)
  bound = bound_round_fn(w, h)
  big = {"p": params, "o": w["inner_opt"].init(params)}
  fns = {}

  def bound_on(batch):
    def fn():
      big["p"], big["o"], loss = bound(big["p"], big["o"], batch)
      jax.block_until_ready(loss)
    return fn

  fns["bound (device batch)"] = bound_on(big_dev)
  fns["bound (host batch)"] = bound_on(big_host)

  def put(copy):
    def fn():
      batch = copy(host_batch)
      t = time.perf_counter()
      jax.block_until_ready(jax.device_put(batch))
      return time.perf_counter() - t
    return fn

  fns["transfer: device_put(fresh host batch)"] = put(fresh_copy)
  fns["transfer: device_put(same host batch)"] = put(lambda x: x)
  fns["transfer: device_put(fresh aligned batch)"] = put(aligned_copy)

  def host_copy(copy):
    def fn():
      t = time.perf_counter()
      copy(host_batch)
      return time.perf_counter() - t
    return fn

  fns["host copy into a fresh numpy array (np.array)"] = host_copy(fresh_copy)
  fns["host copy into a fresh 64-byte aligned array"] = host_copy(aligned_copy)
  for mode in ("auto", "vmap"):
    engine = fedjax_lab.Engine(w["loss_fn"], inner_opt=w["inner_opt"],
                               outer=w["outer"], num_replicas=m,
                               inner_steps=h, replica_mode=mode)
    holder = {"state": engine.init(params)}
    label = f"{engine.replica_mode}{' (auto)' if mode == 'auto' else ''}"

    def round_on(get_batch, engine=engine, holder=holder):
      def fn():
        batch = get_batch()
        t = time.perf_counter()
        holder["state"], metrics = engine.round(holder["state"], batch)
        jax.block_until_ready(metrics["loss"])
        return time.perf_counter() - t
      return fn

    fns[f"round {label}: device batch"] = round_on(lambda: dev_batch)
    if mode == "auto":
      fns[f"round {label}: same host batch"] = round_on(lambda: host_batch)
      fns[f"round {label}: fresh host batch"] = round_on(
          lambda: fresh_copy(host_batch))
      fns[f"round {label}: fresh aligned host batch"] = round_on(
          lambda: aligned_copy(host_batch))
    if mode == "auto":
      for name, copy, ahead in (("fresh host batches", fresh_copy, False),
                                ("fresh host batches, device_put one round "
                                 "ahead", fresh_copy, True),
                                ("fresh aligned host batches", aligned_copy,
                                 False)):
        fns[f"loop of {loop_rounds} rounds {label}: {name} (per round)"] = (
            lambda copy=copy, ahead=ahead, engine=engine, holder=holder:
            user_loop(engine, holder, host_batch, copy, ahead, loop_rounds))
    local_only = local_only_fn(engine, h)
    fns[f"local phase alone ({engine.replica_mode})"] = (
        lambda local_only=local_only, holder=holder: jax.block_until_ready(
            local_only(holder["state"], dev_batch)))
    if mode == "auto":
      sync_only = sync_only_fn(engine, h)
      fns["outer sync alone"] = lambda holder=holder, sync_only=sync_only: (
          jax.block_until_ready(sync_only(holder["state"])))
  g = jax.device_put(params)
  for name, floor in floor_fns(w, m, h).items():
    fns[f"floor {name} (device batch)"] = (
        lambda floor=floor: jax.block_until_ready(floor(g, dev_batch)))
  times = _time(list(fns.values()), repeats)
  faults = {name: faults_per_call(fn) for name, fn in fns.items()}
  return {name: (1e3 * t, faults[name]) for name, t in zip(fns, times)}


def registry_ratios(w, m, h, repeats, names=None):
  """Every registry entry's round at M replicas ('auto' mode) as a ratio to
  the bound, both on device-resident batches (compute only: the transfer,
  the same for all, would dilute a slowdown), interleaved in one `_time`.
  SCAFFOLD gets local_lr = the inner SGD's 0.1; an entry that needs Adam
  moments (desloc) gets inner AdamW (lr 1e-3), still against the SGD bound.
  Returns the bound's ms and {label: (ms, ratio)}."""
  rs = np.random.RandomState(0)
  b = w["batch"]
  params = w["init"](jax.random.PRNGKey(0))
  host_batch = w["make_batch"](rs, (m, h, b))
  dev_batch = jax.device_put(host_batch)
  big_dev = jax.device_put(jax.tree.map(
      lambda x: np.ascontiguousarray(
          x.swapaxes(0, 1).reshape((h, m * b) + x.shape[3:])), host_batch))
  bound = bound_round_fn(w, h)
  big = {"p": params, "o": w["inner_opt"].init(params)}

  def bound_round():
    big["p"], big["o"], loss = bound(big["p"], big["o"], big_dev)
    jax.block_until_ready(loss)

  fns, labels = [bound_round], []
  hparams = {"scaffold": {"local_lr": 0.1}}
  for name in names or fedjax_lab.outer.names():
    inner = ""
    for opt in (w["inner_opt"], optax.adamw(1e-3)):
      engine = fedjax_lab.Engine(
          w["loss_fn"], inner_opt=opt,
          outer=fedjax_lab.outer.get(name, **hparams.get(name, {})),
          num_replicas=m, inner_steps=h)
      try:
        engine.check(params)
        break
      except ValueError:  # Needs Adam moments (desloc): inner AdamW.
        inner = ", inner adamw"
    holder = {"state": engine.init(params)}

    def engine_round(engine=engine, holder=holder):
      holder["state"], metrics = engine.round(holder["state"], dev_batch)
      jax.block_until_ready(metrics["loss"])

    fns.append(engine_round)
    labels.append(f"{name} ({engine.replica_mode}{inner})")
  times = _time(fns, repeats)
  return 1e3 * times[0], {label: (1e3 * t, t / times[0])
                          for label, t in zip(labels, times[1:])}


def memory_faults(w, m, h, outers=("fedavg", "diloco", "scaffold")):
  """Per entry ('auto' mode, M replicas): the compiled round's temporaries
  (MiB) and the minor page faults and system CPU per round, on a
  device-resident batch and (FedAvg) on the same host numpy batch. XLA:CPU
  allocates a round's temporaries afresh at every call and the kernel maps
  them in 4 KiB page by page, so these counts are what a round pays in
  page faults; unlike times they do not depend on the machine's load.
  DiLoCo gets inner AdamW (lr 1e-3) and SCAFFOLD local_lr = 0.1."""
  rs = np.random.RandomState(0)
  params = w["init"](jax.random.PRNGKey(0))
  host_batch = w["make_batch"](rs, (m, h, w["batch"]))
  dev_batch = jax.device_put(host_batch)
  rows = []
  for name in outers:
    opt = optax.adamw(1e-3) if name == "diloco" else w["inner_opt"]
    engine = fedjax_lab.Engine(
        w["loss_fn"], inner_opt=opt,
        outer=fedjax_lab.outer.get(
            name, **({"local_lr": 0.1} if name == "scaffold" else {})),
        num_replicas=m, inner_steps=h)
    holder = {"state": engine.init(params)}
    for where, batch in (("device", dev_batch), ("host", host_batch)):
      if where == "host" and name != "fedavg":
        continue

      def one(engine=engine, holder=holder, batch=batch):
        holder["state"], metrics = engine.round(holder["state"], batch)
        jax.block_until_ready(metrics["loss"])

      faults, sys_s = faults_per_call(one)
      temp = engine.lower_round(holder["state"], batch).compile(
      ).memory_analysis().temp_size_in_bytes / 2**20
      rows.append((f"{name} ({engine.replica_mode})", where, temp, faults,
                   1e3 * sys_s))
  return rows


def _ints(text):
  return [int(x) for x in text.split(",") if x.strip()]


def main():
  # Over 80 lines on purpose: the flags and the sections they select, in one place.
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="MLP at M = 1, 8 only; no LM, profile or registry")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--ms", default="1,8,64,256",
                      help="MLP replica counts of the main table")
  parser.add_argument("--big_repeats", type=int, default=3,
                      help="repeats for M >= 256")
  parser.add_argument("--no_user", action="store_true",
                      help="without the user-loop columns (the old table)")
  parser.add_argument("--no_lm", action="store_true")
  parser.add_argument("--profile_m", type=int, default=64,
                      help="M of the time split (0: none)")
  parser.add_argument("--registry_m", type=int, default=8,
                      help="M of the per-registry-entry ratios (0: none)")
  parser.add_argument("--only", default="",
                      help="comma list of sections to run: table, outer, "
                           "profile, registry, faults (default all)")
  parser.add_argument("--stat", choices=("median", "min"), default="median",
                      help="how repeats are summed up")
  parser.add_argument("--lm_d_model", type=int, default=64)
  parser.add_argument("--lm_layers", type=int, default=2)
  parser.add_argument("--lm_seq_len", type=int, default=64)
  args = parser.parse_args()
  global _STAT
  _STAT = min if args.stat == "min" else statistics.median
  sections = set(args.only.split(",")) if args.only else {
      "table", "outer", "profile", "registry", "faults"}
  modes = ("vmap", "sequential")
  mlp = mlp_workload()
  lm = lm_workload(args.lm_d_model, args.lm_layers, args.lm_seq_len)
  ms = [1, 8] if args.quick else _ints(args.ms)
  plan = [(mlp, m) for m in ms]
  if not (args.quick or args.no_lm):
    plan += [(lm, 4), (lm, 16)]
  user = not args.no_user
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}; {args.stat} of {args.repeats} interleaved "
        f"repeats; H = 10; auto mode on CPU: "
        f"vmap below {local_steps.SEQUENTIAL_FROM} replicas a "
        f"device, sequential from there")
  if "table" in sections:
    print()
    head = ("| workload | M | bound ms | vmap ms | vmap / bound | sequential ms"
            " | sequential / bound | ddp / bound | bound MiB | vmap MiB | "
            "sequential MiB |")
    rule = "|---|---|---|---|---|---|---|---|---|---|---|"
    if user:
      head += (" bound (device batch) ms | user loop ms | user / bound | "
               "user / bound (device) | user aligned ms | user aligned / "
               "bound (device) |")
      rule += "---|---|---|---|---|---|"
    print(head)
    print(rule)
    for w, m in plan:
      r = measure(w, m, 10, args.big_repeats if m >= 256 else args.repeats,
                  modes, user=user)
      v, s, d = r["vmap"], r["sequential"], r["ddp"]
      line = (f"| {w['name']} | {m} | {r['bound_ms']:.1f} | {v['ms']:.1f} | "
              f"{v['ratio']:.2f}x | {s['ms']:.1f} | {s['ratio']:.2f}x | "
              f"{d['ratio']:.2f}x | {r['bound_mib']:.1f} | {v['mib']:.1f} | "
              f"{s['mib']:.1f} |")
      if user:
        u, a = r["user"], r["user_aligned"]
        line += (f" {r['bound_dev']['ms']:.1f} | {u['ms']:.1f} "
                 f"({r['auto_mode']}) | {u['ratio']:.2f}x | "
                 f"{u['ratio_dev']:.2f}x | {a['ms']:.1f} | "
                 f"{a['ratio_dev']:.2f}x |")
      print(line, flush=True)
    if user:
      print()
      print("bound / sequential / vmap / ddp: the same host numpy batch every "
            "round; user loop: Engine.round in 'auto' mode on a fresh host "
            "numpy batch every round (copied before the clock starts); user "
            "aligned: the same, the fresh batch 64-byte aligned (aliased by "
            "XLA:CPU, no copy); bound (device batch): the bound's batch "
            "already on the device")
  if "outer" in sections:
    print()
    for w, m in [(mlp, 8)] + ([] if args.quick or args.no_lm else [(lm, 4)]):
      share = outer_share(w, m, 100, max(3, args.repeats // 2))
      print(f"outer step share of a round at H = 100, {w['name']}, M = {m}: "
            f"{100 * share:.2f}%")
  if "profile" in sections and args.profile_m and not args.quick:
    m = args.profile_m
    split = profile_split(mlp, m, 10, args.repeats)
    print()
    print(f"where the time goes, {mlp['name']}, FedAvg, inner SGD, M = {m}, "
          f"H = 10, B = {mlp['batch']} ({args.stat} ms, interleaved):")
    print()
    print("| part | ms | / bound (device batch) | minor page faults per "
          "call | system CPU ms per call |")
    print("|---|---|---|---|---|")
    ref = split["bound (device batch)"][0]
    for name, (t, (faults, sys_s)) in split.items():
      print(f"| {name} | {t:.1f} | {t / ref:.2f}x | {faults:.0f} | "
            f"{1e3 * sys_s:.0f} |")
    ms = {k: v[0] for k, v in split.items()}
    rd = [k for k in ms if k.endswith("(auto): device batch")][0]
    lo = [k for k in ms if k.startswith("local phase alone")][0]
    rest = ms[rd] - ms[lo] - ms["outer sync alone"]
    print(f"| rest of the round ({rd} - local phase - sync) | {rest:.1f} | "
          f"{rest / ref:.2f}x | | |")
    split = ms
    best = min(v for k, v in split.items() if k.startswith("floor"))
    print()
    print(f"engine round (device batch, auto) / best floor: "
          f"{split[rd] / best:.2f}x; best floor / bound (device batch): "
          f"{best / ref:.2f}x")
  if "registry" in sections and args.registry_m and not args.quick:
    m = args.registry_m
    bound_ms, ratios = registry_ratios(mlp, m, 10, args.repeats)
    print()
    print(f"every registry entry, {mlp['name']}, M = {m}, H = 10, 'auto' "
          f"mode, device-resident batches; bound {bound_ms:.1f} ms:")
    print()
    print("| outer | ms | / bound |")
    print("|---|---|---|")
    for label, (t, ratio) in ratios.items():
      print(f"| {label} | {t:.1f} | {ratio:.2f}x |")
  if "faults" in sections and not args.quick:
    m = args.profile_m or 64
    print()
    print(f"temporaries and page faults per round, {mlp['name']}, M = {m}, "
          f"H = 10:")
    print()
    print("| outer | batch | temporaries MiB | minor page faults per round | "
          "system CPU ms per round |")
    print("|---|---|---|---|---|")
    for label, where, temp, faults, sys_ms in memory_faults(mlp, m, 10):
      print(f"| {label} | {where} | {temp:.1f} | {faults:.0f} | "
            f"{sys_ms:.0f} |")
  print()
  print("targets: best mode <= 1.3x the bound (MLP), <= 1.15x (LM); outer "
        "step <= 1% of a round at H = 100")


if __name__ == "__main__":
  main()
