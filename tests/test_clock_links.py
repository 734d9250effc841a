"""Per-island links of the simulated clock (fedjax_lab/comm/links.py).

The hand profile of tests/test_clock.py (3 replicas, 0.1, 0.2 and 0.4 s per
step, H = 4, 200 bytes of parameters), now with a link per island:
1000, 250 and 1000 bytes/s (8e-6, 2e-6 and 8e-6 Gbit/s: the ratios of 1,
0.25 and 1 Gbit/s) and 10, 20 and 5 ms per hop. Every expected time is worked
out below from the formula; the code's own output is never the reference.
"""

import json
import os

import jax
import numpy as np
import optax
import pytest

from _runner_util import REPO  # noqa: F401  (puts the repo root on sys.path)
from configs import smoke
import fedjax_lab
from fedjax_lab import clock as clock_lib
from fedjax_lab import config_schema
from fedjax_lab import outer
from fedjax_lab import run as run_lib
from fedjax_lab.comm.collectives import Message
from fedjax_lab.fragments import FragmentSchedule
from fedjax_lab.metrics import read_rows
from fedjax_lab.run import async_rounds
from fedjax_lab.run import loop as loop_lib
from test_clock import loss_fn
from test_clock import PARAMS
from test_clock import run_rounds
from test_clock import STEP

H = 4
BW, LAT = 8e-6, 0.01  # The uniform link: 1000 bytes/s, 10 ms.
BWS = (8e-6, 2e-6, 8e-6)  # 1000, 250, 1000 bytes/s.
LATS = (0.01, 0.02, 0.005)
ISLANDS = clock_lib.NetworkProfile.build(3, bandwidths_gbps=BWS,
                                         latencies_s=LATS)


def engine_of(algorithm, m=3, num_fragments=1, overlap_steps=0):
  return fedjax_lab.Engine(
      loss_fn, inner_opt=optax.sgd(0.1), outer=algorithm, num_replicas=m,
      inner_steps=H, fragments=FragmentSchedule(num_fragments, overlap_steps),
      donate=False)


def clock_of(algorithm, network, *, step=STEP, policy=clock_lib.Policy(),
             num_fragments=1, overlap_steps=0):
  engine = engine_of(algorithm, len(step), num_fragments, overlap_steps)
  return clock_lib.Clock(
      clock_lib.DeviceProfile(np.asarray(step, np.float64)), network, policy,
      engine.messages(PARAMS), inner_steps=H, overlap_steps=overlap_steps)


def test_ring_all_reduce_is_paced_by_the_slowest_link_by_hand():
  # DiLoCo: one all-reduce of Δ (200 bytes) after the slowest replica's
  # 4 × 0.4 s. Each of the ring's 2(M − 1) = 4 steps pays the largest
  # latency (20 ms) and moves its chunk at the smallest bandwidth (250 B/s):
  # 4 · 0.02 + (4/3) · 200 / 250 = 0.08 + 1.0666667 s.
  ring = 4 * 0.02 + 4 / 3 * 200 / 250
  got, state = run_rounds(clock_of(outer.get("diloco"), ISLANDS), 2)
  assert got == pytest.approx([1.6 + ring] * 2, rel=1e-12)
  assert state.seconds == pytest.approx(2 * (1.6 + ring), rel=1e-12)
  # Uniform 1000 B/s and 10 ms links: 0.04 + 0.2666667 (tests/test_clock.py).
  uniform, _ = run_rounds(clock_of(outer.get("diloco"),
                                   clock_lib.NetworkProfile(BW, LAT)), 1)
  assert uniform == pytest.approx([1.6 + 0.04 + 4 / 3 * 200 / 1000])
  # Where the slow link sits does not matter to a ring.
  moved = clock_lib.NetworkProfile.build(
      3, bandwidths_gbps=(2e-6, 8e-6, 8e-6), latencies_s=(0.005, 0.01, 0.02))
  assert run_rounds(clock_of(outer.get("diloco"), moved), 1)[0] == (
      pytest.approx([1.6 + ring], rel=1e-12))
  # DeMo's all-gather every step (38 bytes, M − 1 = 2 hops, 2 × 38 bytes
  # on the link): 4 × (0.4 + 2 · 0.02 + 2 · 38 / 250).
  demo = clock_of(outer.get("demo", compression_topk=4), ISLANDS)
  assert run_rounds(demo, 1)[0] == pytest.approx(
      [4 * (0.4 + 0.04 + 76 / 250)], rel=1e-12)


def test_only_the_bandwidth_or_only_the_latency_per_island():
  diloco = outer.get("diloco")
  bw_only = clock_lib.NetworkProfile.build(3, latency_s=LAT,
                                           bandwidths_gbps=BWS)
  lat_only = clock_lib.NetworkProfile.build(3, bandwidth_gbps=BW,
                                            latencies_s=LATS)
  assert run_rounds(clock_of(diloco, bw_only), 1)[0] == pytest.approx(
      [1.6 + 4 * 0.01 + 4 / 3 * 200 / 250], rel=1e-12)
  assert run_rounds(clock_of(diloco, lat_only), 1)[0] == pytest.approx(
      [1.6 + 4 * 0.02 + 4 / 3 * 200 / 1000], rel=1e-12)


def test_pairwise_exchange_is_paced_by_the_slower_of_the_two():
  # One hop and the payload: latency max(l_i, l_j) + 50 B / min(b_i, b_j).
  msg = Message(50.0, "group", group_size=2)
  assert ISLANDS.seconds(msg, 3, members=(0, 1)) == pytest.approx(
      0.02 + 50 / 250)
  assert ISLANDS.seconds(msg, 3, members=(0, 2)) == pytest.approx(
      0.01 + 50 / 1000)
  assert ISLANDS.seconds(msg, 3, members=(2,)) == pytest.approx(
      0.005 + 50 / 1000)
  # NoLoCo's random pairs (M = 4) are not the clock's to see: a sync lasts
  # until the slowest pair there can be is done. It sends θ_i and φ_i (400
  # bytes) to its peer: one hop of 30 ms and 400 B at 250 B/s, after
  # 4 × 0.1 s of compute.
  net = clock_lib.NetworkProfile.build(
      4, bandwidths_gbps=(8e-6, 8e-6, 2e-6, 8e-6),
      latencies_s=(0.01, 0.01, 0.01, 0.03))
  noloco = clock_of(outer.get("noloco"), net, step=[0.1] * 4)
  assert run_rounds(noloco, 1)[0] == pytest.approx([0.4 + 0.03 + 400 / 250],
                                                   rel=1e-12)


@pytest.mark.parametrize("name,policy,fragments,overlap", [
    ("diloco", clock_lib.Policy(), 1, 0),
    ("diloco", clock_lib.Policy(), 2, 1),  # Streaming, merges carried over.
    ("diloco", clock_lib.Policy("dylu"), 1, 0),
    ("diloco", clock_lib.Policy("deadline", deadline_quantile=0.5,
                                deadline_mode="drop"), 1, 0),
    ("scaffold", clock_lib.Policy(), 1, 0),
    ("ddp", clock_lib.Policy(), 1, 0),
    ("demo", clock_lib.Policy(), 1, 0),
])
def test_equal_islands_are_bit_identical_to_the_uniform_link(
    name, policy, fragments, overlap):
  hp = {"demo": {"compression_topk": 4}, "scaffold": {"local_lr": 0.1}}
  algo = outer.get(name, **hp.get(name, {}))
  kw = dict(policy=policy, num_fragments=fragments, overlap_steps=overlap)
  uniform = clock_of(algo, clock_lib.NetworkProfile(BW / 10, LAT), **kw)
  # The scalars are replaced by the lists: set them to something else.
  equal = clock_of(algo, clock_lib.NetworkProfile.build(
      3, bandwidth_gbps=5.0, latency_s=1.0, bandwidths_gbps=(BW / 10,) * 3,
      latencies_s=(LAT,) * 3), **kw)
  assert equal.events == uniform.events
  a, sa = run_rounds(uniform, 3)
  b, sb = run_rounds(equal, 3)
  assert a == b and sa == sb  # Exactly, not approximately.
  da, db = uniform.describe(), equal.describe()
  assert db.pop("bandwidths_gbps") == [BW / 10] * 3
  assert db.pop("latencies_s") == [LAT] * 3
  assert da == db


def test_describe_records_the_islands():
  d = clock_of(outer.get("diloco"), ISLANDS).describe()
  assert d["bandwidths_gbps"] == list(BWS) and d["latencies_s"] == list(LATS)
  # The link that paces a ring over every island.
  assert (d["bandwidth_gbps"], d["latency_s"]) == (2e-6, 0.02)
  uniform = clock_of(outer.get("diloco"), clock_lib.NetworkProfile(BW, LAT))
  assert "bandwidths_gbps" not in uniform.describe()


@pytest.mark.parametrize("kwargs,field", [
    ({"bandwidths_gbps": (1.0, 1.0)}, "bandwidths_gbps"),  # Not M = 3.
    ({"bandwidths_gbps": (1.0, 0.0, 1.0)}, "bandwidths_gbps"),
    ({"bandwidths_gbps": (1.0, -1.0, 1.0)}, "bandwidths_gbps"),
    ({"bandwidths_gbps": (1.0, float("inf"), 1.0)}, "bandwidths_gbps"),
    ({"latencies_s": (0.1, 0.1, 0.1, 0.1)}, "latencies_s"),
    ({"latencies_s": (0.1, -0.1, 0.1)}, "latencies_s"),
    ({"latencies_s": (0.1, float("nan"), 0.1)}, "latencies_s"),
    ({"bandwidth_gbps": 0.0}, "bandwidth_gbps"),
    ({"latency_s": float("inf")}, "latency_s"),
])
def test_bad_islands_are_refused_naming_the_field(kwargs, field):
  with pytest.raises(ValueError, match=f"^{field}:"):
    clock_lib.NetworkProfile.build(3, **kwargs)
  # A latency of 0 is allowed, as for the uniform latency_s.
  clock_lib.NetworkProfile.build(3, latencies_s=(0.0, 0.0, 0.0))


# ----------------------------------------------------------------------------
# clock.policy='async': each arrival over the arriving replica's own link.


def _async_sim(network, grace=0.0):
  config = run_lib.apply_overrides(smoke.get_config(), {
      "train.num_replicas": 3, "inner.steps": H, "clock.policy": "async",
      "clock.async_grace": grace})
  engine = engine_of(outer.get("diloco"))
  clock = clock_of(outer.get("diloco"), network, step=[0.1] * 3)
  return async_rounds.build_simulator(config_schema.read(config), engine,
                                     clock, PARAMS)


def _batches(launch):
  rs = np.random.RandomState(int(launch.tasks.sum()))
  k = len(launch.workers)
  return {"x": rs.randn(k, launch.max_steps, 2, 5).astype(np.float32),
          "y": rs.randn(k, launch.max_steps, 2, 5).astype(np.float32)}


def test_async_arrivals_use_each_replicas_own_link_by_hand():
  # An arrival costs the server Δ_i (200 bytes) in and θ back out over
  # replica i's link, one hop each way: 2 · (l_i + 200 / b_i) =
  # 2 · (0.01 + 0.2), 2 · (0.02 + 0.8), 2 · (0.005 + 0.2).
  sync = (0.42, 1.64, 0.41)
  sim = _async_sim(ISLANDS)
  np.testing.assert_allclose(sim.profile.sync_seconds, sync, rtol=1e-12)
  # Equal speeds: all finish their 4 × 0.1 s at 0.4 and arrive in one
  # burst, lowest index first; the server takes them one after another, each
  # for its own link's time; then all relaunch at 2.87 and finish at 3.27.
  state, arrivals = sim.run_until(sim.init(PARAMS), _batches, updates=6)
  assert [a.worker for a in arrivals] == [0, 1, 2, 0, 1, 2]
  want = [0.4 + 0.42, 0.4 + 0.42 + 1.64, 0.4 + 0.42 + 1.64 + 0.41]
  want += [want[-1] + 0.4 + t for t in (0.42, 0.42 + 1.64, 0.42 + 1.64 + 0.41)]
  np.testing.assert_allclose([a.time for a in arrivals], want, rtol=1e-12)
  assert float(state.clock.time) == pytest.approx(want[-1], rel=1e-12)
  # The same replicas on uniform 1000 B/s, 10 ms links: 0.42 s each.
  uniform = _async_sim(clock_lib.NetworkProfile(BW, LAT))
  assert uniform.profile.sync_seconds == pytest.approx(0.42)
  _, arrivals = uniform.run_until(uniform.init(PARAMS), _batches, updates=3)
  np.testing.assert_allclose([a.time for a in arrivals], [0.82, 1.24, 1.66],
                             rtol=1e-12)
  d = async_rounds.describe(sim, smoke.get_config())
  assert d["async_sync_seconds"] == pytest.approx(list(sync), rel=1e-12)


def test_async_equal_islands_are_bit_identical_to_the_uniform_link():
  uniform = _async_sim(clock_lib.NetworkProfile(BW, LAT), grace=0.5)
  equal = _async_sim(clock_lib.NetworkProfile.build(
      3, bandwidth_gbps=1.0, latency_s=0.5, bandwidths_gbps=(BW,) * 3,
      latencies_s=(LAT,) * 3), grace=0.5)
  assert equal.profile.sync_seconds == (uniform.profile.sync_seconds,) * 3
  sa, aa = uniform.run_until(uniform.init(PARAMS), _batches, updates=9)
  sb, ab = equal.run_until(equal.init(PARAMS), _batches, updates=9)
  assert [(a.worker, a.time, a.staleness) for a in aa] == [
      (a.worker, a.time, a.staleness) for a in ab]
  for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----------------------------------------------------------------------------
# Runs: equal islands train, time and record exactly as the uniform link.


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  from fedjax_lab import data  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp("tfds")
  data.prepare_stdlib_corpus(data_dir=str(path), subset="small")
  return path


def _rows(workdir):
  rows = read_rows(os.path.join(workdir, "metrics.jsonl"))
  return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


# One policy end to end: async builds its own per-replica link times
# (run/async_rounds.py); wait_all's run goes through the same
# NetworkProfile.build that the clock-level tests above pin for every policy,
# so a second ~50 s run would add only time.
@pytest.mark.slow
@pytest.mark.parametrize("policy", ["async"])
def test_runs_with_equal_islands_are_bit_identical(tmp_path, data_dir, policy):
  base = {"data.data_dir": str(data_dir), "train.tensorboard": False,
          "train.rounds": 2, "train.eval_every": 2,
          "train.checkpoint_every": 0, "clock.policy": policy,
          "clock.speeds": (1.0, 0.5), "clock.bandwidth_gbps": 0.01,
          "clock.latency_s": 0.02}
  islands = {**base, "clock.bandwidths_gbps": (0.01, 0.01),
             "clock.latencies_s": (0.02, 0.02)}
  out = {}
  for name, overrides in (("uniform", base), ("islands", islands)):
    config = run_lib.apply_overrides(smoke.get_config(), overrides)
    out[name] = loop_lib.train_and_evaluate(config, str(tmp_path / name))
  a, b = out["uniform"], out["islands"]
  assert a["sim_seconds"] == b["sim_seconds"] > 0
  assert a["final_eval"] == b["final_eval"] and a["tokens"] == b["tokens"]
  assert _rows(tmp_path / "uniform") == _rows(tmp_path / "islands")
  with open(tmp_path / "islands" / "summary.json") as f:
    recorded = json.load(f)["clock"]
  assert recorded["bandwidths_gbps"] == [0.01, 0.01]
  assert recorded["latencies_s"] == [0.02, 0.02]


def test_report_header_names_the_per_island_links():
  from fedjax_lab.run import report  # pylint: disable=g-import-not-at-top
  clock = {"step_seconds": 0.5, "device_flops": 1e12, "speeds": [],
           "bandwidth_gbps": 1.0, "latency_s": 0.001,
           "bandwidths_gbps": [1.0, 0.25, 1.0], "latencies_s": []}
  header = report.profile_text([{"config": {"clock": clock}}])
  assert "links per island [1.0, 0.25, 1.0] Gbit/s" in header, header
  assert "latency 0.001 s per hop" in header, header
  clock["bandwidths_gbps"], clock["latencies_s"] = [], [0.01, 0.02, 0.005]
  header = report.profile_text([{"config": {"clock": clock}}])
  assert "links 1 Gbit/s" in header, header
  assert "latency per island [0.01, 0.02, 0.005] s per hop" in header, header
