"""Federated populations in the run layer: N clients, M slots.

train_and_evaluate with train.num_clients > 0: N = M with every client every
round is today's run bit for bit; a sampled run completes with the right
rounds and tokens; SCAFFOLD's per-client c_i live in the client store (zero
for clients never sampled, N·c = Σ_i c_i with N the population); a run
interrupted after a checkpoint resumes bit-identically, store included; bad
population fields are refused naming the field.
"""

import json
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from _runner_util import REPO  # noqa: F401  (puts the repo root on sys.path)
from configs import scaffold as scaffold_config
from configs import smoke
from fedjax_lab import config_schema
from fedjax_lab import config_validation
from fedjax_lab import data as data_lib
from fedjax_lab import run as run_lib
from fedjax_lab.config_validation import ConfigError
from fedjax_lab.metrics import read_rows
from fedjax_lab.run import build as build_lib
from fedjax_lab.run import loop as loop_lib


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tfds")
  data_lib.prepare_stdlib_corpus(data_dir=str(path), subset="small")
  return path


def _config(data_dir, algorithm="diloco", **overrides):
  config = smoke.get_config()
  if algorithm == "scaffold":
    sc = scaffold_config.get_config()
    config.inner = sc.inner
    config.inner.steps, config.inner.batch_size = 4, 4  # smoke's H, B.
    config.outer.name = "scaffold"
    config.outer.hparams.local_lr = sc.outer.hparams.local_lr
    config.outer.hparams.server_lr = sc.outer.hparams.server_lr
  elif algorithm != "diloco":
    config.outer.name = algorithm
  config.data.data_dir = str(data_dir)
  config.train.tensorboard = False
  config.train.rounds = 4
  config.train.eval_every = 2
  return run_lib.apply_overrides(config, overrides)


def _rows(workdir):
  """Metrics rows without wall-clock times."""
  rows = read_rows(os.path.join(workdir, "metrics.jsonl"))
  return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def _restore_raw(workdir, step):
  """A checkpoint's 'state' item as plain numpy trees (no target)."""
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as mgr:
    out = mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))
  return out["state"]


def _leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("algorithm", ["diloco", "scaffold"])
def test_every_client_every_round_is_todays_run_bit_for_bit(
    tmp_path, data_dir, algorithm):
  base = _config(data_dir, algorithm, **{"data.partition": "iid"})
  # The premise: the iid client partition of N = M is the replicas' one.
  src = build_lib.load_sources(config_schema.read(base))[0]
  m = base.train.num_replicas
  for a, b in zip(data_lib.partition(src, m, method="iid", seed=0),
                  data_lib.client_partition(src, m, "iid", seed=0)):
    np.testing.assert_array_equal(a, b)
  today = loop_lib.train_and_evaluate(base, str(tmp_path / "today"))
  pop = loop_lib.train_and_evaluate(
      run_lib.apply_overrides(base, {"train.num_clients": m}),
      str(tmp_path / "pop"))
  assert pop["status"] == today["status"] == "completed"
  assert pop["final_eval"] == today["final_eval"]
  assert _rows(tmp_path / "pop") == _rows(tmp_path / "today")
  assert pop["tokens"] == today["tokens"] and pop["compiled_rounds"] == 1
  ckpt_today = _restore_raw(str(tmp_path / "today"), 4)
  ckpt_pop = _restore_raw(str(tmp_path / "pop"), 4)
  if algorithm == "scaffold":  # The store rides along with the TrainState.
    store = ckpt_pop["client_store"]
    ckpt_pop = ckpt_pop["train_state"]
    for s, c in zip(_leaves(store), _leaves(ckpt_pop["client_state"])):
      np.testing.assert_array_equal(s, c)  # Client m is slot m.
  for a, b in zip(_leaves(ckpt_today), _leaves(ckpt_pop), strict=True):
    np.testing.assert_array_equal(a, b)


def test_sampled_population_with_local_epochs_completes(tmp_path, data_dir):
  cap, n = 3, 8
  config = _config(data_dir, "fedavg", **{
      "train.num_clients": n, "data.partition": "by_file",
      "train.local_epochs": 1, "train.max_local_steps": cap})
  summary = loop_lib.train_and_evaluate(config, str(tmp_path / "w"))
  assert summary["status"] == "completed" and summary["rounds"] == 4
  pop = summary["population"]
  b, m = config.inner.batch_size, config.train.num_replicas
  # Every merged client has more than cap·B examples: each takes cap steps.
  assert pop["client_examples"]["min"] > cap * b
  assert pop["num_clients"] == n and pop["step_axis"] == cap
  assert summary["inner_steps"] == cap and summary["steps"] == 4 * cap
  seq = config.model.seq_len  # Tokens predicted per sequence.
  assert summary["tokens"] == 4 * m * cap * b * seq
  rows = read_rows(str(tmp_path / "w" / "metrics.jsonl"), "train")
  assert [r["round"] for r in rows] == [1, 2, 3, 4]
  assert all(np.isfinite(r["train/loss"]) for r in rows)
  assert rows[-1]["tokens"] == summary["tokens"]
  assert summary["compiled_rounds"] == 1


def test_scaffold_store_holds_sampled_clients_and_n_scales_c(tmp_path,
                                                             data_dir):
  n, rounds = 6, 3
  config = _config(data_dir, "scaffold", **{
      "train.num_clients": n, "data.partition": "by_file",
      "train.rounds": rounds, "train.checkpoint_every": rounds})
  summary = loop_lib.train_and_evaluate(config, str(tmp_path / "w"))
  assert summary["status"] == "completed"
  assert summary["population"]["client_state_bytes"] > 0
  ckpt = _restore_raw(str(tmp_path / "w"), rounds)
  store = ckpt["client_store"]
  sampler = data_lib.ClientSampler(n, config.train.num_replicas, seed=0)
  seen = set()
  for r in range(rounds):
    seen |= set(sampler.sample(r).tolist())
  assert 0 < len(seen) < n  # Some clients never sampled (seed 0).
  for leaf in _leaves(store):
    assert leaf.shape[0] == n
    for i in range(n):
      assert bool(np.any(leaf[i] != 0)) == (i in seen), i
  # c starts at 0 and moves by Σ_{i∈S} Δc_i / N, each c_i by its own Δc_i:
  # N·c = Σ_i c_i with N = train.num_clients, not the M = 2 slots.
  control = ckpt["train_state"]["outer_state"][0]["control"]
  for c, ci in zip(_leaves(control), _leaves(store), strict=True):
    np.testing.assert_allclose(n * c, ci.sum(0), rtol=1e-4, atol=1e-6)


class _Interrupt(Exception):
  pass


@pytest.mark.slow
def test_interrupted_population_resumes_bit_identically(tmp_path, data_dir):
  config = _config(data_dir, "scaffold", **{
      "train.num_clients": 6, "data.partition": "by_file",
      "train.local_epochs": 1, "train.max_local_steps": 3,
      "train.checkpoint_every": 2})
  whole = str(tmp_path / "whole")
  loop_lib.train_and_evaluate(config, whole)

  def stop_at_3(batch, r, replica_ids):
    del replica_ids
    if r == 3:
      raise _Interrupt()
    return batch

  cut = str(tmp_path / "cut")
  with pytest.raises(_Interrupt):
    loop_lib.train_and_evaluate(config, cut, batch_hook=stop_at_3)
  summary = loop_lib.train_and_evaluate(config, cut)
  assert summary["resumed_from"] == 2 and summary["rounds"] == 4
  with open(os.path.join(whole, "summary.json")) as f:
    expected = json.load(f)
  assert summary["final_eval"] == expected["final_eval"]
  assert summary["tokens"] == expected["tokens"]
  assert _rows(cut) == _rows(whole)
  a, b = _restore_raw(whole, 4), _restore_raw(cut, 4)
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


BAD = [
    ({"train.num_clients": 1}, "train.num_clients"),  # Fewer than M = 2.
    ({"train.num_clients": -3}, "train.num_clients"),
    ({"train.num_clients": 8, "train.clients_per_round": 3},
     "train.clients_per_round"),
    ({"train.clients_per_round": 2}, "train.clients_per_round"),
    ({"data.partition": "by_file"}, "data.partition"),  # No population.
    ({"train.num_clients": 8}, "data.partition"),  # by_source: not clients.
    ({"train.sampling": "weighted"}, "train.sampling"),
    ({"train.sampling": "roundrobin"}, "train.sampling"),
    ({"train.local_epochs": 1}, "train.local_epochs"),
    ({"train.num_clients": 8, "data.partition": "iid",
      "train.max_local_steps": 3}, "train.max_local_steps"),
    ({"train.num_clients": 8, "data.partition": "iid"},
     "outer.hparams.reset_inner_state"),  # diloco keeps its AdamW state.
    ({"train.num_clients": 8, "data.partition": "iid", "outer.name": "easgd"},
     "outer.name"),
    ({"train.num_clients": 8, "data.partition": "iid", "outer.name": "ddp",
      "train.local_epochs": 1}, "train.local_epochs"),
]


@pytest.mark.parametrize("overrides,field", BAD)
def test_bad_population_fields_name_the_field(overrides, field):
  config = run_lib.apply_overrides(smoke.get_config(), overrides)
  with pytest.raises(ConfigError) as e:
    config_validation.validate(config, device_count=1)
  assert str(e.value).startswith(f"{field}:"), str(e.value)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("algorithm,overrides,field", [
    ("fedavg", {"train.num_clients": 10**6, "data.partition": "by_file"},
     "train.num_clients"),  # More clients than source files.
    ("fedavg", {"train.num_clients": 8, "data.partition": "iid",
                "comm.compressor": "topk", "comm.hparams.ef": True},
     "comm.hparams.ef"),  # Error feedback would pass between clients.
    ("scaffold", {"train.num_clients": 8, "data.partition": "iid",
                  "outer.hparams.num_clients": 3},
     "outer.hparams.num_clients"),  # N is train.num_clients.
])
def test_population_refusals_that_need_the_data(tmp_path, data_dir, algorithm,
                                                overrides, field):
  config = _config(data_dir, algorithm, **overrides)
  workdir = tmp_path / "w"
  with pytest.raises(ConfigError) as e:
    loop_lib.train_and_evaluate(config, str(workdir))
  assert str(e.value).startswith(f"{field}:"), str(e.value)
  assert not workdir.exists()


def test_memory_check_counts_the_client_store():
  config = run_lib.apply_overrides(smoke.get_config(), {
      "train.num_clients": 10**6, "data.partition": "iid",
      "outer.name": "fedavg"})
  parts = config_schema.read(config)
  build_lib.check_memory(parts, 16576, limit=1e9)  # Fits without a store.
  with pytest.raises(ConfigError, match=r"^train\.num_clients: .*client state"):
    build_lib.check_memory(parts, 16576, limit=1e9,
                           client_state_bytes=10**6 * 4 * 16576)


def test_report_rounds_to_target(tmp_path):
  from fedjax_lab.run import report  # pylint: disable=g-import-not-at-top
  losses = {"a": [3.0, 2.4, 2.1, 2.3], "b": [3.1, 2.9, 2.6, 2.5]}
  results = []
  for name, ls in losses.items():
    os.makedirs(tmp_path / name)
    with open(tmp_path / name / "metrics.jsonl", "w") as f:
      for i, loss in enumerate(ls):
        f.write(json.dumps({"kind": "eval", "round": 5 * (i + 1),
                            "step": 50 * (i + 1), "payload_bytes": 0,
                            "eval/loss": loss}) + "\n")
    results.append({"name": name, "algorithm": "fedavg", "inner_steps": 10,
                    "status": "completed", "rounds": 20, "steps": 200,
                    "final_eval": {"loss": ls[-1]}, "payload_bytes": 1.0,
                    "ring_bytes": 1.0, "wall_s": 1.0,
                    "config": {"train": {"target_eval_loss": 2.4, "seed": 0},
                               "outer": {"hparams": {}}}})
  rows = {r["arm"]: r for r in report.rows_of(results, str(tmp_path))}
  # a: 2.4 <= 2.4 at its second eval (round 10); b never gets there.
  assert rows["a"]["rounds_to_target"] == 10
  assert rows["b"]["rounds_to_target"] is None
  md = report.markdown_table(list(rows.values()))
  assert "rounds to target" in md and "| 10 (≤ 2.4) |" in md
  # No target set: the table is as before (13 columns).
  for r in results:
    r["config"]["train"]["target_eval_loss"] = 0.0
  plain = report.rows_of(results, str(tmp_path))
  assert "rounds_to_target" not in plain[0]
  assert "rounds to target" not in report.markdown_table(plain)


@pytest.mark.slow
def test_sampled_scaffold_sharded_over_devices_matches_vmapped(tmp_path,
                                                               data_dir):
  overrides = {"train.num_clients": 6, "data.partition": "by_file",
               "train.rounds": 2, "train.checkpoint_every": 2}
  vmapped = _config(data_dir, "scaffold", **overrides)
  sharded = run_lib.apply_overrides(vmapped, {"mesh.num_devices": 2})
  loop_lib.train_and_evaluate(vmapped, str(tmp_path / "v"))
  summary = loop_lib.train_and_evaluate(sharded, str(tmp_path / "s"))
  assert summary["devices"]["mesh_devices"] == 2
  assert summary["compiled_rounds"] == 1
  a, b = _restore_raw(str(tmp_path / "v"), 2), _restore_raw(str(tmp_path / "s"), 2)
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  assert any(np.any(x != 0) for x in _leaves(b["client_store"]))
