"""The simulated clock (fedjax_lab/clock.py) and its sync policies.

(Over 400 lines on purpose: each policy's times worked out by hand from one
shared profile.)

Times are worked out by hand below from the profile (3 replicas, step times
0.1, 0.2 and 0.4 s, a 1000 bytes/s link with 10 ms per hop) and the bytes each
algorithm sends; the code's own output is never the reference.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from _runner_util import REPO  # noqa: F401  (puts the repo root on sys.path)
from configs import smoke
import fedjax_lab
from fedjax_lab import clock as clock_lib
from fedjax_lab import outer
from fedjax_lab import run as run_lib
from fedjax_lab.comm import netsim
from fedjax_lab.comm.collectives import collective_seconds
from fedjax_lab.comm.collectives import Message
from fedjax_lab.fragments import FragmentSchedule
from fedjax_lab.metrics import read_rows
from fedjax_lab.run import loop as loop_lib
from fedjax_lab.run.simclock import RoundClock

# The hand profile: 1000 bytes/s = 8e-6 Gbit/s; 10 ms per hop.
BW, LAT = 8e-6, 0.01
STEP = np.array([0.1, 0.2, 0.4])  # Speeds 1, 1/2, 1/4 at 0.1 s per step.
H = 4


def loss_fn(params, batch, rng):
  del rng
  pred = batch["x"] @ params["layer_0"]["w"] @ params["layer_1"]["w"]
  return jnp.mean(jnp.square(pred - batch["y"]))


# Two 5×5 float32 layers: 100 bytes each, 200 bytes in all; a 2-fragment
# schedule puts one layer in each fragment.
PARAMS = {"layer_0": {"w": np.eye(5, dtype=np.float32)},
          "layer_1": {"w": np.eye(5, dtype=np.float32)}}


def hand_clock(algorithm, *, policy=clock_lib.Policy(), num_fragments=1,
               overlap_steps=0, bandwidth_gbps=BW, step=STEP):
  engine = fedjax_lab.Engine(
      loss_fn, inner_opt=optax.sgd(0.1), outer=algorithm,
      num_replicas=len(step), inner_steps=H,
      fragments=FragmentSchedule(num_fragments, overlap_steps))
  return clock_lib.Clock(
      clock_lib.DeviceProfile(np.asarray(step, np.float64)),
      clock_lib.NetworkProfile(bandwidth_gbps, LAT), policy,
      engine.messages(PARAMS), inner_steps=H, overlap_steps=overlap_steps)


def run_rounds(clock, rounds):
  state, out = clock_lib.ClockState(), []
  for r in range(1, rounds + 1):
    seconds, state = clock.advance(r, clock.plan(r), state)
    out.append(seconds)
  return out, state


# A dense all-reduce of B bytes over M = 3: 2(M − 1) = 4 hops and
# 2(M − 1)/M = 4/3 of B on the link: 0.04 + (4/3)·B/1000 s.
ALLREDUCE_200 = 0.04 + 200 * 4 / 3 / 1000  # 0.3066667 s.
ALLREDUCE_100 = 0.04 + 100 * 4 / 3 / 1000  # 0.1733333 s.


def test_collective_seconds_by_hand():
  assert collective_seconds(Message(200.0), 3, BW, LAT) == pytest.approx(
      ALLREDUCE_200)
  # All-gather: M − 1 = 2 hops, (M − 1)·B = 2B on the link.
  assert collective_seconds(Message(38.0, "all_gather"), 3, BW,
                            LAT) == pytest.approx(0.02 + 0.076)
  # Pairs: one hop, B on the link; every 2nd sync: half of it on average.
  assert collective_seconds(Message(50.0, "group", group_size=2, every=2.0),
                            3, BW, LAT) == pytest.approx((0.01 + 0.05) / 2)
  assert collective_seconds(Message(200.0), 1, BW, LAT) == 0.0
  # netsim's all-reduce is the same model.
  assert netsim.allreduce_seconds(200.0, 3, BW, LAT) == pytest.approx(
      ALLREDUCE_200, rel=1e-12)


@pytest.mark.parametrize("name,seconds", [
    # One blocking all-reduce of Δ (200 bytes) after the slowest replica's
    # 4 × 0.4 s.
    ("diloco", 1.6 + ALLREDUCE_200),
    # SCAFFOLD sends Δy and Δc: two such all-reduces.
    ("scaffold", 1.6 + 2 * ALLREDUCE_200),
    # ddp: every step waits for the slowest (0.4 s) and all-reduces the
    # 200-byte gradient.
    ("ddp", 4 * (0.4 + ALLREDUCE_200)),
    # DeMo (top-4 per 5×5 block): per leaf ceil(4 · (32 + 5 index bits) / 8)
    # = 19 bytes, 38 in all, all-gathered every step: 2 hops, 2 × 38 bytes.
    ("demo", 4 * (0.4 + 0.02 + 0.076)),
])
def test_round_seconds_by_hand(name, seconds):
  hp = {"demo": {"compression_topk": 4},
        "scaffold": {"local_lr": 0.1}}.get(name, {})
  got, _ = run_rounds(hand_clock(outer.get(name, **hp)), 2)
  assert got == pytest.approx([seconds, seconds], rel=1e-9)


def test_streaming_two_fragments_by_hand():
  diloco = outer.get("diloco")
  # τ = 0: fragment 0 (100 bytes) after step 2, fragment 1 after step 4,
  # each blocking: 2 × (2 × 0.4 + 0.17333).
  got, _ = run_rounds(hand_clock(diloco, num_fragments=2), 2)
  assert got == pytest.approx([2 * (0.8 + ALLREDUCE_100)] * 2)
  # τ = 1: each fragment's all-reduce (0.173 s) hides behind the next step
  # (0.4 s on the slowest replica): 1.6 s a round.
  got, _ = run_rounds(hand_clock(diloco, num_fragments=2, overlap_steps=1), 3)
  assert got == pytest.approx([1.6] * 3)
  # A 10× slower link (100 bytes/s): each all-reduce takes
  # c = 0.04 + 1.3333 = 1.37333 s and shows. Round 1: fragment 0 starts at
  # 0.8, done 2.17333; the merge after step 3 waits for it; the slowest
  # replica ends step 4 at 2.57333; fragment 1's all-reduce (2.57333 →
  # 3.94667) is merged one step into round 2: 1.37333 s after round 1 ended.
  # Round 2: the merge after step 1 waits until 1.37333; fragment 0 starts
  # after step 2 at 1.77333, done 3.14667; merge after step 3; the slowest
  # ends at 3.14667 + 0.4 = 3.54667.
  c = 0.04 + 100 * 4 / 3 / 100
  got, state = run_rounds(hand_clock(diloco, num_fragments=2, overlap_steps=1,
                                     bandwidth_gbps=8e-7), 2)
  assert got == pytest.approx([0.8 + c + 0.4, c + 0.4 + c + 0.4])
  assert state.seconds == pytest.approx(sum(got))
  assert dict(state.pending)[4] == pytest.approx(c)  # Round 2's fragment 1.


def test_m1_control_with_the_global_batch_is_not_faster():
  # Step time ∝ the replica's batch: M = 1 at batch M·B does M× the work.
  flops_per_example, device = 1e9, 1e12
  m4 = clock_lib.DeviceProfile.build(4, step_seconds=flops_per_example * 8 /
                                     device)
  m1 = clock_lib.DeviceProfile.build(1, step_seconds=flops_per_example * 32 /
                                     device)
  assert m1.step_seconds[0] == pytest.approx(4 * m4.step_seconds[0])


def test_dylu_steps_by_hand():
  # H_i = max(⌊H · t_min / t_i⌋, h_min): ⌊10 · 0.1 / 0.3⌋ = 3 (not 3.33).
  t = np.array([0.1, 0.2, 0.4, 0.3])
  np.testing.assert_array_equal(clock_lib.dylu_steps(t, 10), [10, 5, 2, 3])
  np.testing.assert_array_equal(clock_lib.dylu_steps(t, 10, 3), [10, 5, 3, 3])
  # Everyone is done together: 4 × 0.1 = 2 × 0.2 = 1 × 0.4, then the sync.
  clock = hand_clock(outer.get("diloco"), policy=clock_lib.Policy("dylu"))
  plan = clock.plan(1)
  np.testing.assert_array_equal(plan.num_steps, [4, 2, 1])
  assert plan.mask.all()
  got, _ = run_rounds(clock, 1)
  assert got == pytest.approx([0.4 + ALLREDUCE_200])


def test_deadline_partial_vs_drop_by_hand():
  # Round compute times 4 × [0.1, 0.2, 0.4] = [0.4, 0.8, 1.6]; their median
  # (quantile 0.5) is D = 0.8 s.
  diloco = outer.get("diloco")
  partial = hand_clock(diloco, policy=clock_lib.Policy(
      "deadline", deadline_quantile=0.5, deadline_mode="partial"))
  plan = partial.plan(1)
  assert plan.deadline == pytest.approx(0.8)
  np.testing.assert_array_equal(plan.num_steps, [4, 4, 2])  # ⌊0.8 / 0.4⌋.
  assert plan.mask.all()
  drop = hand_clock(diloco, policy=clock_lib.Policy(
      "deadline", deadline_quantile=0.5, deadline_mode="drop"))
  plan = drop.plan(1)
  np.testing.assert_array_equal(plan.num_steps, [4, 4, 4])
  np.testing.assert_array_equal(plan.mask, [True, True, False])
  # Both end at D, then all-reduce.
  for clock in (partial, drop):
    assert run_rounds(clock, 1)[0] == pytest.approx([0.8 + ALLREDUCE_200])
  # A fixed deadline of 0.5 s: ⌊0.5 / t⌋ = 5, 2, 1 steps (at most H).
  fixed = hand_clock(diloco, policy=clock_lib.Policy(
      "deadline", deadline_seconds=0.5)).plan(1)
  np.testing.assert_array_equal(fixed.num_steps, [4, 2, 1])
  # One no replica meets (the fastest needs 0.4 s) is refused by name.
  with pytest.raises(ValueError, match="deadline_seconds"):
    hand_clock(diloco, policy=clock_lib.Policy(
        "deadline", deadline_seconds=0.3)).check_deadline()


def test_deadline_partial_and_drop_through_the_engine():
  """The plans reach the engine: partial keeps 3 replicas (one with 2
  steps), drop 2; they train differently."""
  diloco = outer.get("diloco")
  rs = np.random.RandomState(0)
  batch = {"x": rs.randn(3, H, 2, 5).astype(np.float32),
           "y": rs.randn(3, H, 2, 5).astype(np.float32)}
  out = {}
  for mode in ("partial", "drop"):
    clock = hand_clock(diloco, policy=clock_lib.Policy(
        "deadline", deadline_quantile=0.5, deadline_mode=mode))
    kwargs, _ = RoundClock(clock, {}).round_kwargs(1, {})
    engine = fedjax_lab.Engine(loss_fn, inner_opt=optax.sgd(0.1),
                               outer=diloco, num_replicas=3, inner_steps=H)
    state, metrics = engine.round(engine.init(PARAMS), batch, **kwargs)
    assert float(metrics["participants"]) == {"partial": 3, "drop": 2}[mode]
    out[mode] = np.asarray(state.params["layer_0"]["w"])
  assert not np.array_equal(out["partial"], out["drop"])


def test_stragglers_are_a_pure_function_of_seed_and_round():
  p = clock_lib.DeviceProfile.build(8, step_seconds=1.0, straggler_prob=0.5,
                                    straggler_factor=3.0, seed=7)
  a = [p.round_step_seconds(r) for r in range(1, 20)]
  b = [p.round_step_seconds(r) for r in range(1, 20)]
  np.testing.assert_array_equal(np.stack(a), np.stack(b))
  assert set(np.unique(np.stack(a))) == {1.0, 3.0}
  sigma = clock_lib.DeviceProfile.build(4, step_seconds=1.0, speeds=(1, 1, 2, 4),
                                        lognormal_sigma=0.5, seed=3)
  assert len(set(sigma.step_seconds)) == 4 and np.all(sigma.step_seconds > 0)


# ----------------------------------------------------------------------------
# Registry-wide: wait_all (equal or unequal speeds) changes no parameter.

M, HR = 4, 2
REQUIRED = {"scaffold": {"local_lr": 0.05}}


def _reg_loss(params, batch, rng):
  del rng
  pred = jnp.tanh(batch["x"] @ params["w1"]) @ params["w2"]
  return jnp.mean(jnp.square(pred - batch["y"]))


def _reg_batches():
  rs = np.random.RandomState(1)
  return [{"x": rs.randn(M, HR, 3, 4).astype(np.float32),
           "y": rs.randn(M, HR, 3).astype(np.float32)} for _ in range(2)]


@pytest.mark.parametrize("name", outer.names())
def test_wait_all_is_bit_identical_to_no_clock(name):
  algo = outer.get(name, **REQUIRED.get(name, {}))
  opt = optax.sgd(0.05) if name == "scaffold" else optax.adam(1e-2)
  engine = fedjax_lab.Engine(_reg_loss, inner_opt=opt, outer=algo,
                             num_replicas=M, inner_steps=HR, donate=False)
  params = {"w1": 0.5 * np.ones((4, 6), np.float32) + np.eye(4, 6, dtype=np.float32),
            "w2": np.linspace(-1, 1, 6).astype(np.float32)}

  def round_clock(speeds):
    return RoundClock(clock_lib.Clock(
        clock_lib.DeviceProfile.build(M, step_seconds=0.1, speeds=speeds),
        clock_lib.NetworkProfile(), clock_lib.Policy("wait_all"),
        engine.messages(params), inner_steps=HR), {})

  equal, unequal = round_clock(()), round_clock((1.0, 0.5, 0.25, 1.0))
  plain = clocked = explicit = engine.init(params, seed=2)
  for r, batch in enumerate(_reg_batches(), 1):
    kwargs, plan = equal.round_kwargs(r, {})
    # wait_all asks the engine for nothing, whatever the speeds.
    assert kwargs == {} and unequal.round_kwargs(r, {})[0] == {}
    plain, _ = engine.round(plain, batch)
    clocked, _ = engine.round(clocked, batch, **kwargs)
    # Even its plan passed explicitly (all H steps, everyone) is the same.
    explicit, _ = engine.round(explicit, batch, num_steps=plan.num_steps,
                               mask=plan.mask)
    assert equal.advance(r, plan) > 0
  for a, b, c in zip(jax.tree.leaves(plain), jax.tree.leaves(clocked),
                     jax.tree.leaves(explicit)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
  assert engine.compiled_rounds() == 1


# ----------------------------------------------------------------------------
# Runs: recorded, resumed, refused.


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  from fedjax_lab import data  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp("tfds")
  data.prepare_stdlib_corpus(data_dir=str(path), subset="small")
  return path


def _config(data_dir, **overrides):
  config = smoke.get_config()
  config.data.data_dir = str(data_dir)
  config.train.tensorboard = False
  config.train.rounds = 4
  config.train.eval_every = 2
  config.train.checkpoint_every = 2
  return run_lib.apply_overrides(config, overrides)


class _Interrupt(Exception):
  pass


def _rows(workdir):
  rows = read_rows(os.path.join(workdir, "metrics.jsonl"))
  return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


@pytest.mark.slow
def test_interrupted_run_resumes_bit_identically_clock_included(tmp_path,
                                                                data_dir):
  # Streaming with overlap (a merge carried into the next round), transient
  # stragglers and a partial deadline: everything the clock carries.
  config = _config(data_dir, **{
      "engine.num_fragments": 2, "engine.overlap_steps": 1,
      "clock.policy": "deadline", "clock.deadline_quantile": 0.5,
      "clock.speeds": (1.0, 0.3), "clock.straggler_prob": 0.5,
      "clock.bandwidth_gbps": 0.01})
  whole = str(tmp_path / "whole")
  expected = loop_lib.train_and_evaluate(config, whole)

  def stop_at_3(batch, r, replica_ids):
    del replica_ids
    if r == 3:
      raise _Interrupt()
    return batch

  cut = str(tmp_path / "cut")
  with pytest.raises(_Interrupt):
    loop_lib.train_and_evaluate(config, cut, batch_hook=stop_at_3)
  summary = loop_lib.train_and_evaluate(config, cut)
  assert summary["resumed_from"] == 2
  assert summary["sim_seconds"] == expected["sim_seconds"] > 0
  assert summary["final_eval"] == expected["final_eval"]
  rows = _rows(cut)
  assert rows == _rows(whole)
  sims = [r["sim_seconds"] for r in rows if r["kind"] == "train"]
  assert sims == sorted(sims) and len(set(sims)) == 4
  with open(os.path.join(cut, "summary.json")) as f:
    recorded = json.load(f)
  assert recorded["clock"]["policy"] == "deadline"
  assert recorded["syncs_every_step"] is False


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
@pytest.mark.parametrize("overrides,field", [
    ({"clock.speeds": "(1.0,-0.5)"}, "clock.speeds"),
    ({"clock.speeds": "(1.0,0.5,0.25)"}, "clock.speeds"),  # M = 2.
    ({"clock.bandwidth_gbps": "0.0"}, "clock.bandwidth_gbps"),
    ({"clock.latency_s": "-1.0"}, "clock.latency_s"),
    # Per-island links (M = 2): the wrong length, out of range, not finite.
    ({"clock.bandwidths_gbps": "(1.0,0.25,1.0)"}, "clock.bandwidths_gbps"),
    ({"clock.bandwidths_gbps": "(1.0,0.0)"}, "clock.bandwidths_gbps"),
    ({"clock.bandwidths_gbps": "(1.0,1e999)"}, "clock.bandwidths_gbps"),
    ({"clock.latencies_s": "(0.01,)"}, "clock.latencies_s"),
    ({"clock.latencies_s": "(0.01,-0.01)"}, "clock.latencies_s"),
    ({"clock.latencies_s": "(0.01,-1e999)"}, "clock.latencies_s"),
    ({"clock.policy": "async", "clock.bandwidths_gbps": "(1.0,)"},
     "clock.bandwidths_gbps"),
    ({"clock.straggler_factor": "0.5"}, "clock.straggler_factor"),
    ({"clock.policy": "asynchronous"}, "clock.policy"),  # Unknown.
    ({"clock.policy": "dylu", "outer.name": "ddp"}, "clock.policy"),
    ({"clock.policy": "deadline", "clock.deadline_seconds": "1e-12"},
     "clock.deadline_seconds"),
])
def test_bad_profiles_exit_2_naming_the_field(tmp_path, data_dir, capsys,
                                              monkeypatch, overrides, field):
  from test_fuzz_config import run_py_in_process  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  argv = [f"--config={os.path.join(REPO, 'configs', 'smoke.py')}",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
          "--config.train.tensorboard=False"]
  argv += [f"--config.{k}={v}" for k, v in overrides.items()]
  capsys.readouterr()
  code = run_py_in_process(argv, monkeypatch)
  lines = [s for s in capsys.readouterr().err.splitlines() if s.strip()]
  assert code == 2, lines
  assert len(lines) == 1 and lines[0].startswith("error:"), lines
  assert field in lines[0], lines
  assert not workdir.exists()


def test_report_reads_the_recorded_clock(tmp_path):
  from fedjax_lab.run import report  # pylint: disable=g-import-not-at-top
  # (arm, every step?, collectives, bytes, eval losses, sim seconds per eval)
  arms = [("a_every_step_gather", True, ["all_gather"], 10.0, [3.0, 2.0],
           [5.0, 10.0]),
          ("b_dense_every_step", True, ["all_reduce"], 100.0, [2.8, 2.2],
           [20.0, 40.0]),
          ("c_rounds", False, ["all_reduce"], 4.0, [2.9, 2.4], [1.0, 7200.0])]
  results = []
  for name, every, coll, sent, losses, sims in arms:
    os.makedirs(tmp_path / name)
    with open(tmp_path / name / "metrics.jsonl", "w") as f:
      for i, (loss, sim) in enumerate(zip(losses, sims)):
        f.write(json.dumps({"kind": "eval", "round": i + 1, "step": i + 1,
                            "payload_bytes": sent * (i + 1), "eval/loss": loss,
                            "sim_seconds": sim}) + "\n")
    results.append({
        "name": name, "algorithm": "x", "inner_steps": 1, "steps": 2,
        "status": "completed", "rounds": 2, "final_eval": {"loss": losses[-1]},
        "payload_bytes": sent, "ring_bytes": sent, "wall_s": 1.0,
        "sim_seconds": sims[-1], "syncs_every_step": every,
        "collectives": coll, "clock": {"policy": "wait_all"},
        "config": {"train": {"target_eval_loss": 2.4, "seed": 0},
                   "outer": {"hparams": {}},
                   "clock": {"step_seconds": 0.0, "device_flops": 1e12,
                             "speeds": [1.0, 0.25], "bandwidth_gbps": 1.0,
                             "latency_s": 0.001}}})
  rows = {r["arm"]: r for r in report.rows_of(results, str(tmp_path))}
  # The reference is the dense every-step run, whatever its name.
  assert rows["b_dense_every_step"]["bytes_vs_ddp"] == 1.0
  assert rows["c_rounds"]["bytes_vs_ddp"] == pytest.approx(0.04)
  assert rows["c_rounds"]["simulated_hours"] == pytest.approx(2.0)
  # First eval with loss <= 2.4: a at 10 s, b at 40 s, c at 7200 s.
  assert [rows[k]["time_to_target_s"] for k in sorted(rows)] == [10.0, 40.0,
                                                               7200.0]
  md = report.markdown_table(list(rows.values()))
  assert "simulated time to target" in md and "| 2 h |" in md
  header = report.profile_text(results)
  assert "1 Gbit/s" in header and "[1.0, 0.25]" in header
  curves = report.seed_curves(results, str(tmp_path))
  np.testing.assert_array_equal(curves["c_rounds"]["sim_seconds"], [1.0, 7200.0])
  paths = report.plot_curves(results, str(tmp_path))
  assert any(p.endswith(report.PLOT_SIM) for p in paths)
