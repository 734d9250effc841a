"""Asynchronous Local-SGD (fedjax_lab/async_local_sgd.py).

Against an independent float64 numpy reference of the rule in
docs/algorithms.md (its own event loop, server rules and inner optimizers; no
fedjax_lab or optax code), the special cases the rule reduces to (equal speeds
with Delayed Nesterov N = M is synchronous DiLoCo, run by the engine; N = 1 is
vanilla Nesterov with weight 1; M = 1 is DiLoCo with one replica), the clock's
event order, staleness and DyLU steps by hand, and a bit-identical resume.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_lab
from fedjax_lab import async_local_sgd as al
from fedjax_lab import outer

D, B, H = 3, 5, 4
TASKS = 24  # Tasks of data generated per worker (more than any test uses).


def make_data(m, steps=H, seed=0):
  """Heterogeneous workers: shifted inputs and different true weights.
  Leaves [M, TASKS, steps, B, ...]."""
  rs = np.random.RandomState(seed)
  xs, ys = [], []
  for i in range(m):
    w_true = rs.randn(D) + 0.5 * i
    x = rs.randn(TASKS, steps, B, D) + 0.3 * i
    xs.append(x)
    ys.append(x @ w_true + 0.2 * rs.randn(TASKS, steps, B) - 0.5 * i)
  return np.stack(xs), np.stack(ys)


def loss_fn(params, batch, rng):
  del rng
  pred = batch["x"] @ params["w"] + params["b"]
  return jnp.mean(jnp.square(pred - batch["y"]))


def batches_fn(xs, ys):
  """Worker w's task t reads xs[w, t] (what a resumable loader does)."""
  def fn(launch):
    take = lambda a: np.stack([a[w, t] for w, t in zip(launch.workers, launch.tasks)])
    return {"x": take(xs).astype(np.float32), "y": take(ys).astype(np.float32)}
  return fn


PARAMS0 = {"w": np.array([0.1, -0.2, 0.3], np.float32), "b": np.float32(0.05)}
THETA0 = np.array([0.1, -0.2, 0.3, 0.05])
flat = lambda p: np.concatenate([np.asarray(p["w"], np.float64).ravel(),
                                 np.asarray(p["b"], np.float64).ravel()])


# ---------------------------------------------------------------------------
# The numpy reference. θ is the vector [w; b].


def grad_np(theta, x, y):
  xt = np.concatenate([x, np.ones(x.shape[:-1] + (1,))], -1)
  return 2.0 / x.shape[0] * xt.T @ (xt @ theta - y)


def inner_np(kind, theta, x, y, steps, lr):
  """`steps` inner steps from a fresh optimizer state."""
  m, v = np.zeros_like(theta), np.zeros_like(theta)
  for t in range(steps):
    g = grad_np(theta, x[t], y[t])
    if kind == "sgd_momentum":  # optax.sgd(lr, 0.5): m ← g + 0.5·m.
      m = g + 0.5 * m
      theta = theta - lr * m
    else:  # Adam (0.9, 0.999, eps 1e-8), bias-corrected.
      m = 0.9 * m + 0.1 * g
      v = 0.999 * v + 0.001 * g * g
      mh, vh = m / (1 - 0.9 ** (t + 1)), v / (1 - 0.999 ** (t + 1))
      theta = theta - lr * mh / (np.sqrt(vh) + 1e-8)
  return theta


class ServerNp:
  """'vanilla' (weight w, Nesterov) or 'dn' (Delayed Nesterov, delay N)."""

  def __init__(self, rule, lr, beta, n_or_w, size):
    self.rule, self.lr, self.beta, self.k = rule, lr, beta, n_or_w
    self.m, self.buf, self.count = np.zeros(size), np.zeros(size), 0

  def apply(self, theta, delta):
    lr, beta = self.lr, self.beta
    if self.rule == "vanilla":
      g = self.k * delta
      self.m = beta * self.m + g
      return theta - lr * (g + beta * self.m)
    n = self.k
    self.count += 1
    self.buf = self.buf + delta
    if self.count % n == 0:
      self.m = beta * self.m + self.buf / n
      self.buf = np.zeros_like(self.buf)
      return theta - lr * (delta / n + beta * self.m)
    return theta - lr * delta / n


def reference(secs, steps, grace, server, inner, inner_lr, xs, ys, n_updates):
  """The event loop written out: [(worker, time, staleness, θ after)]."""
  m = len(secs)
  theta = THETA0.copy()
  busy, finish, launched_at = [False] * m, [0.0] * m, [0] * m
  tasks, result = [0] * m, [None] * m
  version, now, burst, out = 0, 0.0, None, []

  def relaunch():
    for i in range(m):
      if not busy[i]:
        end = inner_np(inner, theta, xs[i, tasks[i]], ys[i, tasks[i]], steps[i],
                       inner_lr)
        result[i] = theta - end  # Δ_i = θ_launch − θ_end.
        busy[i], launched_at[i], finish[i] = True, version, now + steps[i] * secs[i]
        tasks[i] += 1

  while version < n_updates:
    waiting = [(finish[i], i) for i in range(m) if busy[i]]
    if not waiting or (burst is not None and min(waiting)[0] - burst > grace):
      burst = None
      relaunch()
      continue
    f, i = min(waiting)
    now = max(now, f)
    burst = now if burst is None else burst
    staleness = version - launched_at[i]
    theta = server.apply(theta, result[i])
    version += 1
    busy[i] = False
    out.append((i, now, staleness, theta.copy()))
  return out


def run_sim(sim, xs, ys, n_updates, params=PARAMS0):
  """θ after every update, and the arrivals (one run_until per update)."""
  state = sim.init(params)
  thetas, arrivals = [], []
  for k in range(1, n_updates + 1):
    state, got = sim.run_until(state, batches_fn(xs, ys), updates=k)
    arrivals += got
    thetas.append(flat(state.params))
  return state, thetas, arrivals


INNER = {"sgd_momentum": (optax.sgd(0.05, momentum=0.5), 0.05),
         "adam": (optax.adam(0.02), 0.02)}


@pytest.mark.parametrize("inner,rule,dylu", [
    ("sgd_momentum", "dn", False), ("adam", "dn", True),
    ("adam", "vanilla", False), ("sgd_momentum", "vanilla", True)])
def test_against_numpy_reference(inner, rule, dylu):
  """3 workers of unequal speed, 12 arrivals, DN(N = 2) or vanilla."""
  secs, grace, n = (1.0, 1.7, 2.9), 0.5, 12
  profile = al.AsyncProfile(secs, grace=grace, dylu=dylu, min_steps=2)
  steps = [H, 2, 2] if dylu else [H] * 3  # ⌊4·1/1.7⌋ = 2, ⌊4·1/2.9⌋ = 1 → 2.
  np.testing.assert_array_equal(profile.steps(H), steps)
  if rule == "dn":
    server = al.delayed_nesterov(learning_rate=0.6, momentum=0.9, delay=2)
    ref_server = ServerNp("dn", 0.6, 0.9, 2, D + 1)
  else:
    server = al.vanilla(learning_rate=0.3, momentum=0.9, weight=1 / math.sqrt(3))
    ref_server = ServerNp("vanilla", 0.3, 0.9, 1 / math.sqrt(3), D + 1)
  opt, lr = INNER[inner]
  xs, ys = make_data(3)
  sim = al.AsyncSimulator((loss_fn, opt), profile, server, inner_steps=H)
  _, thetas, arrivals = run_sim(sim, xs, ys, n)
  ref = reference(secs, steps, grace, ref_server, inner, lr, xs, ys, n)
  assert [(a.worker, a.staleness) for a in arrivals] == [r[:3:2] for r in ref]
  np.testing.assert_allclose([a.time for a in arrivals], [r[1] for r in ref])
  assert max(a.staleness for a in arrivals) >= 2  # Staleness did occur.
  for got, want in zip(thetas, ref):
    np.testing.assert_allclose(got, want[3], rtol=2e-5, atol=2e-5)


def engine_for(m, outer_alg, opt):
  return fedjax_lab.Engine(loss_fn, inner_opt=opt, outer=outer_alg,
                           num_replicas=m, inner_steps=H)


def engine_thetas(engine, xs, ys, rounds):
  state = engine.init(PARAMS0)
  out = []
  for r in range(rounds):
    state, _ = engine.round(state, {"x": xs[:, r].astype(np.float32),
                                    "y": ys[:, r].astype(np.float32)})
    out.append(flat(state.params))
  return out


@pytest.mark.parametrize("m,grace", [(4, 0.5), (3, 0.0), (1, 0.5)])
def test_equal_speeds_delayed_nesterov_is_sync_diloco(m, grace):
  """Equal speeds, DN(N = M): θ after every M-th update is DiLoCo's (Nesterov
  on the mean, fresh inner Adam) after that many rounds; M = 1 included."""
  rounds = 3
  opt = optax.adam(0.02)
  xs, ys = make_data(m)
  engine = engine_for(m, outer.get("diloco", learning_rate=0.7, momentum=0.9,
                                   reset_inner_state=True), opt)
  want = engine_thetas(engine, xs, ys, rounds)
  sim = al.AsyncSimulator(engine, al.AsyncProfile((1.3,) * m, grace=grace),
                          al.server_rule("delayed_nesterov", num_workers=m,
                                         learning_rate=0.7, momentum=0.9))
  _, thetas, arrivals = run_sim(sim, xs, ys, rounds * m)
  for r in range(rounds):
    np.testing.assert_allclose(thetas[(r + 1) * m - 1], want[r], rtol=1e-5, atol=1e-6)
  # Every task of a burst started from the same θ: staleness 0, 1, ..., M − 1.
  assert [a.staleness for a in arrivals] == list(range(m)) * rounds
  assert [a.worker for a in arrivals] == list(range(m)) * rounds


def test_equal_speeds_vanilla_sgd_weight_one_over_m_is_sync_outer_sgd():
  """Vanilla without momentum, w = 1/M, equal speeds: outer SGD on the mean."""
  m, rounds = 3, 2
  opt = optax.sgd(0.05, momentum=0.5)
  xs, ys = make_data(m)
  want = engine_thetas(engine_for(m, outer.get("fedavg", learning_rate=0.8), opt),
                       xs, ys, rounds)
  sim = al.AsyncSimulator((loss_fn, opt), al.AsyncProfile((2.0,) * m, grace=0.0),
                          al.vanilla(learning_rate=0.8, momentum=0.0, weight=1 / m),
                          inner_steps=H)
  _, thetas, _ = run_sim(sim, xs, ys, rounds * m)
  for r in range(rounds):
    np.testing.assert_allclose(thetas[(r + 1) * m - 1], want[r], rtol=1e-5, atol=1e-6)


def test_delay_one_is_vanilla_nesterov_weight_one():
  profile = al.AsyncProfile((1.0, 1.6, 2.5, 0.7), grace=0.3)
  xs, ys = make_data(4)
  opt = optax.adam(0.02)
  runs = [run_sim(al.AsyncSimulator((loss_fn, opt), profile, rule, inner_steps=H),
                  xs, ys, 10)[1]
          for rule in (al.delayed_nesterov(learning_rate=0.4, momentum=0.9, delay=1),
                       al.vanilla(learning_rate=0.4, momentum=0.9, weight=1.0))]
  np.testing.assert_allclose(runs[0], runs[1], rtol=1e-6, atol=1e-7)


def clock_run(secs, steps, grace, n):
  """(worker, time, staleness) of n arrivals, from the clock alone."""
  clock, out = al.ClockState.initial(len(secs)), []
  while int(clock.version) < n:
    i = al.next_arrival(clock, grace)
    if i is None:
      clock, _ = al.launch(clock, np.asarray(steps), secs)
      continue
    clock, staleness = al.arrive(clock, i, 0.0)
    out.append((i, float(clock.time), staleness))
  return out


def test_staleness_and_ties_by_hand():
  """sec = (1, 2, 3), one step a task, grace 0: equal finishes form one
  burst, lower index first; worked out on paper."""
  want = [(0, 1, 0), (0, 2, 0), (1, 2, 2), (0, 3, 0), (2, 3, 4), (0, 4, 0),
          (1, 4, 3), (0, 5, 0), (0, 6, 0), (1, 6, 2), (2, 6, 5)]
  assert clock_run((1.0, 2.0, 3.0), [1, 1, 1], 0.0, len(want)) == want


def test_grace_lets_a_near_arrival_join_the_burst():
  """sec = (1, 1.3), grace 0.5: worker 1 arrives 0.3 s after worker 0, inside
  the burst, so worker 0 waits and both relaunch together at 1.3."""
  got = clock_run((1.0, 1.3), [1, 1], 0.5, 4)
  assert [(w, s) for w, _, s in got] == [(0, 0), (1, 1), (0, 0), (1, 1)]
  np.testing.assert_allclose([t for _, t, _ in got], [1.0, 1.3, 2.3, 2.6])
  # With no grace each relaunches when it arrives: 0 at 1.0 (finishes 2.0),
  # 1 at 1.3 (2.6), 0 at 2.0 (3.0): every update after the first is 1 stale.
  got = clock_run((1.0, 1.3), [1, 1], 0.0, 4)
  assert [(w, s) for w, _, s in got] == [(0, 0), (1, 1), (0, 1), (1, 1)]
  np.testing.assert_allclose([t for _, t, _ in got], [1.0, 1.3, 2.0, 2.6])


def test_dylu_steps_by_hand():
  """The paper's speeds (0.58, 0.75, 1.51, 3.33), H = 20, h_min = 5:
  ⌊20·0.773⌋ = 15, ⌊20·0.384⌋ = 7, ⌊20·0.174⌋ = 3 → 5."""
  profile = al.AsyncProfile((0.58, 0.75, 1.51, 3.33), dylu=True, min_steps=5)
  np.testing.assert_array_equal(profile.steps(20), [20, 15, 7, 5])
  assert list(al.AsyncProfile((0.58, 0.75)).steps(20)) == [20, 20]


def test_resume_from_a_numpy_snapshot_is_bit_identical():
  """Stop after 7 updates (inside a burst), snapshot every leaf to numpy,
  continue to 20: the same state, bit for bit, as 20 uninterrupted."""
  profile = al.AsyncProfile((1.0, 1.9, 1.4, 3.1), grace=0.6, dylu=True, min_steps=2)
  xs, ys = make_data(4)
  make = lambda: al.AsyncSimulator(
      (loss_fn, optax.adam(0.02)), profile,
      al.server_rule("delayed_nesterov", num_workers=4, learning_rate=0.5),
      inner_steps=H)
  fn = batches_fn(xs, ys)
  sim = make()
  full, arrivals = sim.run_until(sim.init(PARAMS0, seed=3), fn, updates=20)
  sim2 = make()
  part, first = sim2.run_until(sim2.init(PARAMS0, seed=3), fn, updates=7)
  snapshot = jax.tree.map(np.asarray, part)
  del part
  resumed, rest = make().run_until(snapshot, fn, updates=20)
  assert [a[:5] for a in first + rest] == [a[:5] for a in arrivals]
  leaves = lambda s: jax.tree.leaves(jax.tree.map(np.asarray, s))
  for a, b in zip(leaves(full), leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)
  # The time limit stops before the first arrival after it.
  state, got = make().run_until(snapshot, fn, time=10.0)
  assert got and all(a.time <= 10.0 for a in got)
  assert state.clock.finish[al.next_arrival(state.clock, profile.grace)] > 10.0


def test_launches_share_calls_and_programs():
  """M = 8 equal workers: one vmapped call per burst, one program; unequal
  speeds compile at most one program per power-of-two size and straggler flag."""
  xs, ys = make_data(8)
  sim = al.AsyncSimulator((loss_fn, optax.sgd(0.05)), al.AsyncProfile((1.0,) * 8),
                          al.server_rule("delayed_nesterov", num_workers=8),
                          inner_steps=H)
  sizes = []
  fn = batches_fn(xs, ys)
  spy = lambda launch: sizes.append(len(launch.workers)) or fn(launch)
  sim.run_until(sim.init(PARAMS0), spy, updates=24)
  assert sizes == [8, 8, 8] and sim.compiled_programs() == 1
  secs = tuple(1.0 + 0.37 * i for i in range(8))
  sim = al.AsyncSimulator((loss_fn, optax.sgd(0.05)),
                          al.AsyncProfile(secs, dylu=True, min_steps=1),
                          al.server_rule("vanilla", num_workers=8), inner_steps=H)
  sim.run_until(sim.init(PARAMS0), fn, updates=40)
  assert sim.compiled_programs() <= 2 * 4


def test_bad_inputs_name_the_field():
  with pytest.raises(ValueError, match="seconds_per_step"):
    al.AsyncProfile((1.0, -2.0))
  with pytest.raises(ValueError, match="grace"):
    al.AsyncProfile((1.0,), grace=-1)
  with pytest.raises(ValueError, match="delay"):
    al.delayed_nesterov(delay=0)
  with pytest.raises(ValueError, match="clock.async_rule: unknown server rule 'nesterov'"):
    al.server_rule("nesterov", num_workers=2)
  with pytest.raises(ValueError, match="every step"):
    al.AsyncSimulator(engine_for(2, "ddp", optax.sgd(0.1)), al.AsyncProfile((1.0, 2.0)),
                      al.vanilla())
  with pytest.raises(ValueError, match="seconds_per_step: 3 entries"):
    al.AsyncSimulator(engine_for(2, "diloco", optax.sgd(0.1)),
                      al.AsyncProfile((1.0, 2.0, 3.0)), al.vanilla())
  sim = al.AsyncSimulator((loss_fn, optax.sgd(0.1)), al.AsyncProfile((1.0,)),
                          al.vanilla(), inner_steps=H)
  with pytest.raises(ValueError, match="max_steps=4"):
    sim.run_until(sim.init(PARAMS0), lambda launch: {"x": np.zeros((1, 2, B, D))},
                  updates=1)
