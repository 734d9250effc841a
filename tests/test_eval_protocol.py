"""The evaluation protocol: three disjoint splits, fixed
stratified samples for curves, whole splits for final numbers (batch means
weighted by size), and outer gradients dropped by a seeded mask."""

import types

import jax.numpy as jnp
import numpy as np
import pytest

from _runner_util import run_cli  # Puts the repo root on sys.path.
from configs import smoke
from fedjax_lab import data
from fedjax_lab import run as run_lib
from fedjax_lab.data import stdlib_corpus
from fedjax_lab.data.data_spec import DataSpec
from fedjax_lab.metrics import read_rows
from fedjax_lab.run import loop as loop_lib
from fedjax_lab.run.evaluate import Evaluator


class _Grouped:
  """A source with strata: example i has value i and group groups[i]."""

  def __init__(self, groups):
    self.groups = np.asarray(groups)

  def __len__(self):
    return len(self.groups)

  def get_batch(self, idx):
    return {"x": np.asarray(idx, np.float32)}


def test_split_of_is_a_fixed_partition_of_the_hash_range():
  paths = [f"pkg{i % 7}/mod{i}.py" for i in range(4000)]
  splits = [stdlib_corpus.split_of(p) for p in paths]
  assert splits == [stdlib_corpus.split_of(p) for p in paths]  # Deterministic.
  counts = {s: splits.count(s) for s in stdlib_corpus.SPLITS}
  assert set(counts) == {"train", "validation", "test"}
  for held_out in ("validation", "test"):  # 5% each, within sampling noise.
    assert 0.035 < counts[held_out] / len(paths) < 0.065, counts
  # The validation split is the one of corpus version 1.0.0 (lowest 5%).
  assert all(stdlib_corpus.is_eval_path(p) == (s == "validation")
             for p, s in zip(paths, splits))


def test_stratified_sample_is_fixed_proportional_and_without_repeats():
  groups = np.repeat([0, 1, 2], [600, 300, 100])
  src = _Grouped(groups)
  a = data.stratified_sample(src, 100)
  assert np.array_equal(a, data.stratified_sample(src, 100))  # Fixed.
  assert len(set(a.tolist())) == 100
  assert np.bincount(groups[a], minlength=3).tolist() == [60, 30, 10]
  assert not np.all(np.diff(a) > 0)  # Shuffled, not in index order.
  # Largest remainders: 7 of [600, 300, 100] -> shares 4.2, 2.1, 0.7.
  b = data.stratified_sample(src, 7)
  assert np.bincount(groups[b], minlength=3).tolist() == [4, 2, 1]
  with pytest.raises(ValueError, match="size"):
    data.stratified_sample(src, 1001)


def test_whole_split_plan_covers_every_example_once():
  src = _Grouped(np.zeros(150, int))
  plan = data.eval_plan(src, batch_size=64)
  assert [len(b) for b in plan] == [64, 64, 22]
  assert np.array_equal(np.concatenate(plan), np.arange(150))
  # Asking for more batches than the split holds is the whole split too.
  assert [len(b) for b in data.eval_plan(src, batch_size=64, num_batches=9)] == [64, 64, 22]
  sample = data.eval_plan(src, batch_size=16, num_batches=3)
  assert [len(b) for b in sample] == [16, 16, 16]


def test_evaluator_weights_batches_by_size():
  """The whole-split mean equals the mean over examples (a numpy reference),
  not the mean of batch means, when the last batch is smaller."""
  values = np.arange(150, dtype=np.float64) ** 1.5

  def loss_fn(params, batch, rng):
    del rng
    per_example = params * jnp.asarray(batch["x"]) ** 1.5
    return None, {"loss": per_example.mean()}

  parts = types.SimpleNamespace(data=DataSpec(
      eval_batch_size=64, eval_batches=1, final_eval_batches=0))
  run = types.SimpleNamespace(
      parts=parts, engine=types.SimpleNamespace(eval_params=lambda s: s),
      eval_src=_Grouped(np.zeros(150, int)),
      test_src=_Grouped(np.repeat([0, 1], [75, 75])),
      task=types.SimpleNamespace(loss_fn=loss_fn, derived=None))
  ev = Evaluator(run)
  final = ev(jnp.float32(2.0), final=True)
  assert final["eval"]["loss"] == pytest.approx(2 * values.mean(), rel=1e-6)
  assert final["test"]["loss"] == pytest.approx(2 * values.mean(), rel=1e-6)
  periodic = ev(jnp.float32(2.0))  # One batch of 64: a stratified sample.
  idx = data.stratified_sample(run.test_src, 64)
  assert periodic["test"]["loss"] == pytest.approx(2 * values[idx].mean(),
                                                   rel=1e-6)
  assert "whole split" in ev.describe()["final"]
  assert "sample" in ev.describe()["periodic"]


def test_drop_mask_is_seeded_and_drops_about_p():
  masks = np.array([loop_lib.drop_mask(3, r, 8, 0.5) for r in range(1, 401)])
  assert np.array_equal(masks[0], loop_lib.drop_mask(3, 1, 8, 0.5))
  assert 0.45 < masks.mean() < 0.55
  assert not np.array_equal(masks[0], loop_lib.drop_mask(4, 1, 8, 0.5))
  assert loop_lib.drop_mask(3, 1, 8, 0.0).all()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tfds")
  data.prepare_stdlib_corpus(data_dir=str(path), subset="small")
  return path


@pytest.mark.slow
def test_run_reports_validation_and_test_and_drops_outer_gradients(
    data_dir, tmp_path):
  config = smoke.get_config()
  config.data.data_dir = str(data_dir)
  config.train.tensorboard = False
  config.train.checkpoint_every = 0
  config.train.num_replicas = 4
  config.train.outer_drop_prob = 0.5
  summary = run_lib.train_and_evaluate(config, str(tmp_path))
  assert summary["status"] == "completed"
  assert summary["data"]["eval_split"] == "validation"
  assert summary["data"]["test_split"] == "test"
  assert summary["final_eval"]["loss"] != summary["final_test"]["loss"]
  rows = read_rows(str(tmp_path / "metrics.jsonl"), kind="train")
  participants = [row["train/participants"] for row in rows]
  expected = [loop_lib.drop_mask(0, r, 4, 0.5).sum() for r in
              range(1, config.train.rounds + 1)]
  assert participants == expected
  evals = read_rows(str(tmp_path / "metrics.jsonl"), kind="eval")
  assert all("test/loss" in row and "eval/loss" in row for row in evals)


def test_drop_prob_is_refused_for_data_parallel(data_dir, tmp_path):
  proc = run_cli("run.py", ["--config=configs/smoke.py",
                            f"--workdir={tmp_path / 'w'}",
                            "--config.outer.name=ddp",
                            "--config.train.outer_drop_prob=0.5"],
                 data_dir=data_dir, timeout=120)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "train.outer_drop_prob" in lines[0], proc.stderr
  assert not (tmp_path / "w").exists()
